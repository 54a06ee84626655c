"""Backbone ``single_task``: one separate bottom MLP per task, no sharing above the features
(with one task, the bottom of a single-task model); options ``model.single_task``."""

from __future__ import annotations

from dataclasses import field
from typing import List

from torch import nn

from mtl_torchrec.core.config.fields import Layers, config_dataclass
from mtl_torchrec.model.backbones.base import BACKBONES, Backbone, MLPConfig
from mtl_torchrec.modules.shared_bottom import SeparateBottoms


@config_dataclass
class SingleTaskConfig:
    """``model.single_task``: the widths of each task's own bottom MLP (at least one layer)."""

    layers: Layers = field(default_factory=lambda: [256, 128])
    # Activation, norm and dropout of its layers.
    mlp: MLPConfig = field(default_factory=MLPConfig)


@BACKBONES.register("single_task")
class SingleTaskBackbone(Backbone):
    """:class:`~mtl_torchrec.modules.shared_bottom.SeparateBottoms`."""

    section = "single_task"
    options = SingleTaskConfig

    @staticmethod
    def build(options: SingleTaskConfig, in_features: int, num_tasks: int) -> nn.Module:
        """A :class:`~mtl_torchrec.modules.shared_bottom.SeparateBottoms` with ``model.single_task.layers``."""
        return SeparateBottoms(in_features, num_tasks, options.layers, options.mlp.options())

    @staticmethod
    def template_layers(options: SingleTaskConfig) -> List[int]:
        """Each task's MLP widths (``model.single_task.layers``)."""
        return list(options.layers)
