"""The run configuration: data, model and training settings in one typed tree.

Loaded from YAML plus ``key=value`` overrides (list entries by index: ``model.tasks.0.weight=2``);
every key and value is checked before anything runs, and every problem is reported at once,
one line each, naming the dotted key and what is allowed::

    train.epochs: must be >= 1, got -3
    train.loss_balance: 'gradnrm' is not one of ['fixed', 'gradnorm', 'mgda_ub', 'uncertainty']

The allowed names of ``train.sharding``, the optimizers and pipelines are defined here, once;
``model.backbone``, ``train.loss_balance``, ``model.tasks[*].type`` (the label kind) and
``model.tasks[*].loss`` are the names of their registries (``model/backbones``,
``model/balancing.py``, ``data/label_kinds.py``, ``model/losses``).

Example::

    cfg = load_config("mtl_torchrec/configs/default.yaml", ["train.epochs=2", "model.backbone=mmoe"])
    cfg.train.epochs  # 2
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Dict, Literal, Optional, Sequence, Tuple, Union

from pydantic import Field, model_validator

from mtl_torchrec.core.config import load as _loader
from mtl_torchrec.core.config.fields import (
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    config_dataclass,
    one_of,
    problem,
)
from mtl_torchrec.core.config.validate import to_dict
from mtl_torchrec.core.config.yaml_files import save_config
from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.config import DataConfig, MovieLensConfig, SyntheticConfig
from mtl_torchrec.data.label_kinds import LABEL_KINDS
from mtl_torchrec.model.balancing import BALANCERS
from mtl_torchrec.model.config import (
    BalanceConfig,
    MMoEConfig,
    ModelConfig,
    PLEConfig,
    SharedBottomConfig,
    SingleTaskConfig,
    TaskConfig,
    model_config_class,
)
from mtl_torchrec.model.tasks import conditional_name, is_probability
from mtl_torchrec.text.config import TextConfig, TextEncoderConfig

# planner: TorchRec's planner chooses; otherwise one plan for every table (distributed/sharding.py).
SHARDING_STRATEGIES = (
    "planner", "table_wise", "column_wise", "row_wise", "table_column_wise", "table_row_wise", "data_parallel",
)
# Fused optimizers of the embedding tables (distributed/sharding.py) and torch optimizers of the
# rest (distributed/optim.py).
SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")
DENSE_OPTIMIZERS = ("adam", "adagrad", "sgd")
# TorchRec train pipelines: TrainPipelineSparseDist or TrainPipelineBase.
PIPELINES = ("sparse_dist", "base")
RESUME_MODES = ("auto", "required", "never")
# Post-hoc calibration of binary tasks, fitted on the validation split after training (eval/calibration.py).
CALIBRATION_METHODS = ("none", "temperature", "platt", "isotonic")
# Validation metrics ``train.select_by`` may name: (True when higher is better, the label kind they
# exist for), from each label kind's ``selection_metrics`` (data/label_kinds.py).
SELECTION_METRICS: Dict[str, Tuple[bool, str]] = {
    metric: (higher, name) for name, kind in LABEL_KINDS.items() for metric, higher in kind.selection_metrics.items()
}


@dataclass(frozen=True)
class SelectBy:
    """A parsed ``train.select_by``: the mean of ``metric`` over ``tasks`` on the validation split,
    better when higher if ``higher_is_better`` (see :func:`parse_select_by`)."""

    metric: str
    tasks: Tuple[str, ...]
    higher_is_better: bool

    def __str__(self) -> str:
        return f"{self.metric}:{','.join(self.tasks)}"


def parse_select_by(text: str, tasks: Sequence[Any]) -> SelectBy:
    """Parses ``METRIC`` or ``METRIC:TASK[,TASK...]`` against the run's tasks.

    ``METRIC`` is a key of :data:`SELECTION_METRICS` (``auc``, ``gauc``, ``gauc_unweighted`` higher is
    better; ``logloss``, ``ne``, ``ece``, ``rmse``, ``mse``, ``mae`` lower is better). Without tasks,
    every task of the metric's type (``model.tasks`` only); an ESMM task's conditional entry
    (``conversion_given_click``) may be named. ``tasks`` are TaskConfigs (``name``, ``type``,
    ``esmm_parent``). Raises ValueError with the message for ``train.select_by``.

    Example::

        parse_select_by("auc:click,conversion", cfg.model.tasks)  # SelectBy("auc", ("click", "conversion"), True)
    """
    form = "the form is METRIC or METRIC:TASK,TASK (e.g. 'auc:click,conversion')"
    metric, sep, listed = text.strip().partition(":")
    metric = metric.strip()
    if metric not in SELECTION_METRICS:
        raise ValueError(f"metric '{metric}' is not one of {sorted(SELECTION_METRICS)}; {form}")
    higher, kind = SELECTION_METRICS[metric]
    types = {t.name: t.type for t in tasks}
    types.update({conditional_name(t): t.type for t in tasks if t.esmm_parent is not None})
    if not sep:
        chosen = tuple(t.name for t in tasks if t.type == kind)
        if not chosen:
            raise ValueError(f"'{metric}' is a metric of {kind} tasks and the run has none; {form}")
        return SelectBy(metric, chosen, higher)
    chosen = tuple(name.strip() for name in listed.split(","))
    for name in chosen:
        if name not in types:
            raise ValueError(f"'{name}' is not a task (tasks: {sorted(types)}); {form}")
        if types[name] != kind:
            raise ValueError(f"'{metric}' is a metric of {kind} tasks; '{name}' is {types[name]}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"a task is listed twice in '{listed}'")
    return SelectBy(metric, chosen, higher)
# What the learning rates do after the warmup (train/schedule.py).
LR_DECAYS = ("constant", "linear", "cosine", "step")


@config_dataclass
class LRScheduleConfig:
    """``train.lr_schedule``: a linear warmup over ``warmup_steps`` optimizer steps, then ``decay``:

    - ``constant``: the configured rate;
    - ``linear`` / ``cosine``: down to ``min_lr_ratio`` x the rate at the run's last step
      (``train.max_steps``, or all epochs when it is 0 or larger);
    - ``step``: multiplied by ``gamma`` every ``step_size`` steps after the warmup.

    ``dense`` / ``sparse`` choose which learning rates follow it: the dense optimizer's (with the
    loss balancer's, ``train.balance.lr``) and the fused embedding-table optimizer's.
    """

    # Optimizer steps of linear warmup from rate/warmup_steps to the rate (0: no warmup).
    warmup_steps: NonNegativeInt = 0
    decay: Literal[LR_DECAYS] = "constant"
    # linear / cosine: the rate at the last step, as a fraction of the configured one.
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0
    # step: every step_size steps after the warmup the rate is multiplied by gamma.
    step_size: PositiveInt = 1000
    gamma: PositiveFloat = 0.1
    dense: bool = True
    sparse: bool = True


@config_dataclass
class TrainConfig:
    """``train.*``: length, optimizers, sharding, loss balancing, and the step intervals of logging,
    validation, checkpoints and diagnostics (0: never during training)."""

    epochs: PositiveInt = 2
    # Stop after this many steps in total (0: run all epochs).
    max_steps: NonNegativeInt = 0
    seed: int = 0
    dense_optimizer: Literal[DENSE_OPTIMIZERS] = "adam"
    dense_lr: PositiveFloat = 1e-3
    sparse_optimizer: Literal[SPARSE_OPTIMIZERS] = "rowwise_adagrad"
    sparse_lr: PositiveFloat = 0.05
    # planner, or one plan applied to every table (see SHARDING_STRATEGIES).
    sharding: Literal[SHARDING_STRATEGIES] = "planner"
    pipeline: Literal[PIPELINES] = "sparse_dist"
    # A registered balancer: fixed | uncertainty | gradnorm | mgda_ub.
    loss_balance: Annotated[str, one_of(BALANCERS)] = "fixed"
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    # Gate/expert/gradient diagnostics on a held-out batch every N steps (0: only at the end).
    diagnostics_every: NonNegativeInt = 500
    log_every: NonNegativeInt = 50
    # Validation every N steps (0: only at the end of each epoch, which always validates).
    eval_every: NonNegativeInt = 0
    # Best-checkpoint selection by a validation metric, "METRIC" or "METRIC:TASK,TASK" (parse_select_by),
    # e.g. "auc:click,conversion": the mean validation AUC of both. None: off (the final state is used).
    select_by: Optional[str] = None
    # Validations in a row without improvement of select_by before training stops (0: never early).
    patience: NonNegativeInt = 0
    # Post-hoc calibration of each binary task's probability, fitted on the validation split after
    # training: none | temperature | platt | isotonic (eval/calibration.py).
    calibration: Literal[CALIBRATION_METHODS] = "none"
    checkpoint_every: NonNegativeInt = 0
    keep_checkpoints: NonNegativeInt = 3
    # auto: continue from run_dir's latest checkpoint if there is one; required: error if none;
    # never: start fresh (error if run_dir already has checkpoints).
    resume: Literal[RESUME_MODES] = "auto"
    # Warm start: a previous run directory (its latest checkpoint), RUN_DIR/step_N or a checkpoint
    # folder; tables and dense modules whose names and shapes match are loaded before training.
    # Ignored when run_dir already has checkpoints (resume wins).
    init_from: Optional[str] = None
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    progress: bool = True


def _check_run(self: Any) -> Any:
    """Rules across sections: a learned balancer needs positive task weights; a spec source a spec."""
    balancer = BALANCERS.get(self.train.loss_balance)
    zero = [i for i, t in enumerate(self.model.tasks) if t.weight <= 0]
    if balancer.needs_positive_weights and zero:
        raise problem(
            f"'{self.train.loss_balance}' needs every model.tasks[*].weight > 0, "
            f"got {self.model.tasks[zero[0]].weight} for model.tasks[{zero[0]}]",
            "train", "loss_balance",
        )
    if self.train.init_from is not None and not self.train.init_from.strip():
        raise problem("must be a run directory or checkpoint folder, got an empty string", "train", "init_from")
    if self.data.source == "spec" and not self.data.spec:
        raise problem("required with data.source=spec (the path of a YAML data spec)", "data", "spec")
    if self.train.select_by is not None:
        try:
            parse_select_by(self.train.select_by, self.model.tasks)
        except ValueError as e:
            raise problem(str(e), "train", "select_by") from None
    elif self.train.patience > 0:
        raise problem("needs train.select_by (the validation metric that decides what improves)", "train", "patience")
    if self.train.calibration != "none" and not any(is_probability(t) for t in self.model.tasks):
        raise problem(f"'{self.train.calibration}' calibrates binary tasks and model.tasks has none",
                      "train", "calibration")
    return self


@config_dataclass
class Config:
    """The run config: ``data``, ``model``, ``train``, and where the run is written."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Where runs are written; each run gets its own sub-directory unless run_dir is given.
    output_dir: str = "runs"
    run_dir: Optional[str] = None

    _run_valid = model_validator(mode="after")(_check_run)


_CLASSES: Dict[type, type] = {}


def config_class() -> type:
    """The run config dataclass whose ``model`` section is :func:`model_config_class` (the
    registered backbones' sections): ``Config`` while they are the built-in ones, else a class with
    the same fields and checks built once per ``model`` class."""
    model_cls = model_config_class()
    if model_cls is ModelConfig:
        return Config
    if model_cls not in _CLASSES:
        fields = [(f.name, model_cls if f.name == "model" else f.type,
                   field(default_factory=model_cls) if f.name == "model" else
                   field(default=f.default) if f.default_factory is dataclasses.MISSING else
                   field(default_factory=f.default_factory))
                  for f in dataclasses.fields(Config)]
        namespace = {
            "__module__": __name__,
            "__doc__": Config.__doc__,
            "_run_valid": model_validator(mode="after")(_check_run),
        }
        _CLASSES[model_cls] = config_dataclass(dataclasses.make_dataclass("Config", fields, namespace=namespace))
    return _CLASSES[model_cls]


def load_config(
    path: Optional[Union[str, Path]] = None,
    overrides: Sequence[str] = (),
    cls: Any = None,
) -> Any:
    """Reads a YAML file (optional) and applies ``a.b=c`` overrides, then checks everything.

    ``cls`` defaults to :func:`config_class` (``Config`` unless backbones were registered after
    import). Raises ConfigError listing every problem, one line each, before anything is written.
    """
    return _loader.load_config(cls if cls is not None else config_class(), path, overrides)


__all__ = [
    "CALIBRATION_METHODS", "DENSE_OPTIMIZERS", "LR_DECAYS", "PIPELINES", "RESUME_MODES", "SELECTION_METRICS",
    "SHARDING_STRATEGIES", "SPARSE_OPTIMIZERS", "SelectBy", "parse_select_by",
    "BalanceConfig", "Config", "ConfigError", "DataConfig", "LRScheduleConfig", "MMoEConfig", "ModelConfig", "MovieLensConfig",
    "PLEConfig", "SharedBottomConfig", "SingleTaskConfig", "SyntheticConfig", "TaskConfig", "TextConfig",
    "TextEncoderConfig", "TrainConfig", "config_class", "load_config", "save_config", "to_dict",
]
