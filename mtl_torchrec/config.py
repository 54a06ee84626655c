"""The run configuration: data, model and training settings in one typed tree.

Loaded from YAML plus ``key=value`` overrides; every key is checked, so a typo is an error naming
the dotted key instead of a silently ignored setting.

Example::

    cfg = load_config("configs/default.yaml", ["train.epochs=2", "model.backbone=mmoe"])
    cfg.train.epochs  # 2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from mtl_torchrec.core import config as _loader
from mtl_torchrec.core.config import save_config, to_dict
from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.config import DataConfig, MovieLensConfig, SyntheticConfig
from mtl_torchrec.model.config import (
    BalanceConfig,
    MMoEConfig,
    ModelConfig,
    PLEConfig,
    SharedBottomConfig,
    SingleTaskConfig,
    TaskConfig,
)
from mtl_torchrec.text.config import TextConfig, TextEncoderConfig


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




def load_config(
    path: Optional[Union[str, Path]] = None,
    overrides: Sequence[str] = (),
    cls: Any = Config,
) -> Any:
    """Reads a YAML file (optional) and applies ``a.b=c`` overrides, then checks everything."""
    return _loader.load_config(cls, path, overrides)


__all__ = [
    "BalanceConfig", "Config", "ConfigError", "DataConfig", "MMoEConfig", "ModelConfig", "MovieLensConfig",
    "PLEConfig", "SharedBottomConfig", "SingleTaskConfig", "SyntheticConfig", "TaskConfig", "TextConfig",
    "TextEncoderConfig", "TrainConfig", "load_config", "save_config", "to_dict",
]
