"""Settings of the multi-task model: tasks, backbones, towers, text features and loss balancing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional

from mtl_torchrec.text.config import TextConfig


@dataclass
class TaskConfig:
    """One prediction task.

    ``type`` is ``binary`` (logit, BCE) or ``regression`` (MSE). ``esmm_parent`` makes a binary
    task ESMM-style: its tower predicts p(task | parent), trained through
    p(parent) * p(task | parent) over all rows, against the label parent AND task. Data whose
    task label is 1 where the parent's is 0 is refused unless ``esmm_derive_and_label`` sets those
    labels to 0 (see :mod:`mtl_torchrec.model.esmm`).
    """

    name: str = ""
    type: Literal["binary", "regression"] = "binary"
    weight: float = 1.0
    tower_layers: Optional[List[int]] = None
    esmm_parent: Optional[str] = None
    esmm_derive_and_label: bool = False


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
class SingleTaskConfig:
    """Backbone ``single_task``: one separate bottom MLP per task (no sharing above the features)."""

    layers: List[int] = field(default_factory=lambda: [256, 128])


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
