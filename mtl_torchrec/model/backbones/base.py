"""The backbone registry: every ``model.backbone`` value, its options section and its builder.

A backbone is a module over the fused ``[B, d]`` representation with ``out_features`` and
``forward_with_gates(x) -> (per-task outputs [B, out_features], gate weights)``; mixtures may
add ``forward_with_experts(x) -> ExpertTrace`` for diagnostics (see ``modules/``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Type

from torch import nn

from mtl_torchrec.core.registry import Registry


class Backbone:
    """How one ``model.backbone`` value is configured and built. Subclass, set the class
    attributes, implement :meth:`build` and :meth:`template_layers` (static or class methods)
    and register the class under its name.

    Attributes:
        section: the options section under ``model.`` (e.g. ``mmoe`` for ``model.mmoe.*``).
            Backbones may share one (``omoe`` reads ``model.mmoe``), with the same ``options``.
        options: the section's config dataclass (:func:`~mtl_torchrec.core.config.config_dataclass`);
            every field needs a default, so configs of other backbones need not mention it.

    Example::

        @BACKBONES.register("mmoe")
        class MMoEBackbone(Backbone):
            section = "mmoe"
            options = MMoEConfig

            @staticmethod
            def build(options, in_features, num_tasks): return MMoE(in_features, num_tasks, ...)

            @staticmethod
            def template_layers(options): return list(options.expert_layers)
    """

    section: ClassVar[str]
    options: ClassVar[type]

    @staticmethod
    def build(options: Any, in_features: int, num_tasks: int) -> nn.Module:
        """The backbone module for ``num_tasks`` tasks over ``[B, in_features]`` inputs.

        A ValueError is reported as a ConfigError naming ``model.<section>``.
        """
        raise NotImplementedError

    @staticmethod
    def template_layers(options: Any) -> List[int]:
        """Layer widths of one expert (or bottom) MLP: ``compare-single-task`` scales them to size
        single-task models with a matched parameter budget."""
        raise NotImplementedError

    @classmethod
    def options_of(cls, model_config: Any) -> Any:
        """This backbone's options in a ``ModelConfig`` (its ``model.<section>``)."""
        return getattr(model_config, cls.section)


BACKBONES: Registry[Type[Backbone]] = Registry("model.backbone")


def option_sections() -> Dict[str, type]:
    """``{section: options class}`` of the registered backbones, in registration order.

    Raises ValueError when two backbones give one section different options classes.
    """
    sections: Dict[str, type] = {}
    for name, backbone in BACKBONES.items():
        known = sections.setdefault(backbone.section, backbone.options)
        if known is not backbone.options:
            raise ValueError(
                f"backbone '{name}': section model.{backbone.section} already has options {known.__name__}, "
                f"not {backbone.options.__name__}"
            )
    return sections
