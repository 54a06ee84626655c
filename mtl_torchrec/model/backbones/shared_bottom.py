"""Backbone ``shared_bottom``: one MLP shared by all tasks (hard parameter sharing), options
``model.shared_bottom``."""

from __future__ import annotations

from dataclasses import field
from typing import List

from torch import nn

from mtl_torchrec.core.config.fields import Layers, config_dataclass
from mtl_torchrec.model.backbones.base import BACKBONES, Backbone, MLPConfig
from mtl_torchrec.modules.shared_bottom import SharedBottom


@config_dataclass
class SharedBottomConfig:
    """``model.shared_bottom``: the widths of the shared MLP (at least one layer)."""

    layers: Layers = field(default_factory=lambda: [256, 128])
    # Activation, norm and dropout of its layers.
    mlp: MLPConfig = field(default_factory=MLPConfig)


@BACKBONES.register("shared_bottom")
class SharedBottomBackbone(Backbone):
    """:class:`~mtl_torchrec.modules.shared_bottom.SharedBottom`."""

    section = "shared_bottom"
    options = SharedBottomConfig

    @staticmethod
    def build(options: SharedBottomConfig, in_features: int, num_tasks: int) -> nn.Module:
        """A :class:`~mtl_torchrec.modules.shared_bottom.SharedBottom` with ``model.shared_bottom.layers``."""
        return SharedBottom(in_features, num_tasks, options.layers, options.mlp.options())

    @staticmethod
    def template_layers(options: SharedBottomConfig) -> List[int]:
        """The shared MLP's widths (``model.shared_bottom.layers``)."""
        return list(options.layers)
