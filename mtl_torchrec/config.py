"""The run configuration: data, model and training settings in one typed tree.

Loaded from YAML plus ``key=value`` overrides (list entries by index: ``model.tasks.0.weight=2``);
every key and value is checked before anything runs, and every problem is reported at once,
one line each, naming the dotted key and what is allowed::

    train.epochs: must be >= 1, got -3
    train.loss_balance: 'gradnrm' is not one of ['fixed', 'gradnorm', 'mgda_ub', 'uncertainty']

The allowed names of ``train.sharding``, the optimizers and pipelines are defined here, once;
``model.backbone``, ``train.loss_balance`` and ``model.tasks[*].type`` are the names of their
registries (``model/backbones``, ``model/balancing.py``, ``model/tasks.py``).

Example::

    cfg = load_config("mtl_torchrec/configs/default.yaml", ["train.epochs=2", "model.backbone=mmoe"])
    cfg.train.epochs  # 2
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Dict, Literal, Optional, Sequence, Union

from pydantic import Field, model_validator

from mtl_torchrec.core import config as _loader
from mtl_torchrec.core.config import (
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    config_dataclass,
    one_of,
    problem,
    save_config,
    to_dict,
)
from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.config import DataConfig, MovieLensConfig, SyntheticConfig
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
    eval_every: NonNegativeInt = 0
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
    return self


_CLASSES: Dict[type, type] = {}


def config_class() -> type:
    """The run config dataclass whose ``model`` section is :func:`model_config_class` (the
    registered backbones' sections). The same class while the backbone registry is unchanged:
    ``Config`` for the built-in backbones."""
    model_cls = model_config_class()
    if model_cls not in _CLASSES:
        fields = [
            ("data", DataConfig, field(default_factory=DataConfig)),
            ("model", model_cls, field(default_factory=model_cls)),
            ("train", TrainConfig, field(default_factory=TrainConfig)),
            # Where runs are written; each run gets its own sub-directory unless run_dir is given.
            ("output_dir", str, field(default="runs")),
            ("run_dir", Optional[str], field(default=None)),
        ]
        namespace = {
            "__module__": __name__,
            "__doc__": "The run config: ``data``, ``model``, ``train``, and where the run is written.",
            "_check_run": model_validator(mode="after")(_check_run),
        }
        _CLASSES[model_cls] = config_dataclass(dataclasses.make_dataclass("Config", fields, namespace=namespace))
    return _CLASSES[model_cls]


Config = config_class()


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
    "DENSE_OPTIMIZERS", "LR_DECAYS", "PIPELINES", "RESUME_MODES", "SHARDING_STRATEGIES", "SPARSE_OPTIMIZERS",
    "BalanceConfig", "Config", "ConfigError", "DataConfig", "LRScheduleConfig", "MMoEConfig", "ModelConfig", "MovieLensConfig",
    "PLEConfig", "SharedBottomConfig", "SingleTaskConfig", "SyntheticConfig", "TaskConfig", "TextConfig",
    "TextEncoderConfig", "TrainConfig", "config_class", "load_config", "save_config", "to_dict",
]
