"""Backbone ``ple``: Progressive Layered Extraction (Tang et al., RecSys 2020), options ``model.ple``."""

from __future__ import annotations

from dataclasses import field
from typing import List

from pydantic import model_validator
from torch import nn

from mtl_torchrec.core.config.fields import Layers, NonNegativeInt, PositiveInt, config_dataclass, problem
from mtl_torchrec.model.backbones.base import BACKBONES, Backbone, MLPConfig
from mtl_torchrec.modules.ple import PLE


@config_dataclass
class PLEConfig:
    """``model.ple``: CGC levels, each with ``num_task_experts`` per task and ``num_shared_experts``.

    Either count may be 0 but not both: every gate needs at least one expert to mix.
    """

    num_levels: PositiveInt = 2
    num_task_experts: NonNegativeInt = 2
    num_shared_experts: NonNegativeInt = 2
    expert_layers: Layers = field(default_factory=lambda: [256, 128])
    # Activation, norm and dropout of the expert layers (the gates are linear).
    expert_mlp: MLPConfig = field(default_factory=MLPConfig)

    @model_validator(mode="after")
    def _some_expert_per_gate(self) -> "PLEConfig":
        if self.num_task_experts + self.num_shared_experts < 1:
            raise problem(
                "num_task_experts + num_shared_experts must be >= 1 (every gate needs an expert), "
                f"got {self.num_task_experts} + {self.num_shared_experts}",
                "num_task_experts",
            )
        return self


@BACKBONES.register("ple")
class PLEBackbone(Backbone):
    """:class:`~mtl_torchrec.modules.ple.PLE`: task-specific and shared experts per level."""

    section = "ple"
    options = PLEConfig

    @staticmethod
    def build(options: PLEConfig, in_features: int, num_tasks: int) -> nn.Module:
        """A :class:`~mtl_torchrec.modules.ple.PLE` from ``model.ple``."""
        return PLE(
            in_features,
            num_tasks,
            options.num_levels,
            options.num_task_experts,
            options.num_shared_experts,
            options.expert_layers,
            options.expert_mlp.options(),
        )

    @staticmethod
    def template_layers(options: PLEConfig) -> List[int]:
        """The expert layer widths (``model.ple.expert_layers``)."""
        return list(options.expert_layers)
