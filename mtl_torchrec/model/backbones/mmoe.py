"""Backbones ``mmoe`` (Ma et al., KDD 2018: shared experts, one softmax gate per task) and
``omoe`` (the same experts under one gate shared by all tasks); both read ``model.mmoe``."""

from __future__ import annotations

from dataclasses import field
from typing import List

from torch import nn

from mtl_torchrec.core.config.fields import Layers, PositiveInt, Widths, config_dataclass
from mtl_torchrec.model.backbones.base import BACKBONES, Backbone, MLPConfig
from mtl_torchrec.modules.mmoe import MMoE


@config_dataclass
class MMoEConfig:
    """``model.mmoe``: the experts and gates of ``mmoe`` and ``omoe``."""

    num_experts: PositiveInt = 8
    # Layer widths of every expert MLP (at least one layer).
    expert_layers: Layers = field(default_factory=lambda: [256, 128])
    # Hidden layers of each gate before its softmax; empty: a linear gate, as in the paper.
    gate_layers: Widths = field(default_factory=list)
    # Activation, norm and dropout of the expert layers and of the gates' hidden layers.
    expert_mlp: MLPConfig = field(default_factory=MLPConfig)
    gate_mlp: MLPConfig = field(default_factory=MLPConfig)


@BACKBONES.register("mmoe")
class MMoEBackbone(Backbone):
    """:class:`~mtl_torchrec.modules.mmoe.MMoE` with one gate per task."""

    section = "mmoe"
    options = MMoEConfig
    single_gate = False

    @classmethod
    def build(cls, options: MMoEConfig, in_features: int, num_tasks: int) -> nn.Module:
        """An :class:`~mtl_torchrec.modules.mmoe.MMoE` (one gate shared by all tasks when ``single_gate``)."""
        return MMoE(
            in_features,
            num_tasks,
            options.num_experts,
            options.expert_layers,
            options.gate_layers,
            single_gate=cls.single_gate,
            expert_options=options.expert_mlp.options(),
            gate_options=options.gate_mlp.options(),
        )

    @staticmethod
    def template_layers(options: MMoEConfig) -> List[int]:
        """The expert layer widths (``model.mmoe.expert_layers``)."""
        return list(options.expert_layers)


@BACKBONES.register("omoe")
class OMoEBackbone(MMoEBackbone):
    """The MMoE paper's one-gate baseline: the same experts, one gate shared by all tasks."""

    single_gate = True
