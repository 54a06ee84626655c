"""The backbone registry: every ``model.backbone`` value, its options section and its builder.

A backbone is a module over the fused ``[B, d]`` representation with ``out_features`` and
``forward_with_gates(x) -> (per-task outputs [B, out_features], gate weights)``; mixtures may
add ``forward_with_experts(x) -> ExpertTrace`` for diagnostics (see ``modules/``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Dict, List, Literal, Type

from torch import nn

from mtl_torchrec.core.config.fields import Fraction, config_dataclass, one_of
from mtl_torchrec.core.registry import Registry
from mtl_torchrec.modules.mlp import ACTIVATIONS, NORMS, MLPOptions


class _Names:
    """``one_of`` source for a fixed set of names."""

    def __init__(self, names: Any) -> None:
        self._names = sorted(names)

    def names(self) -> List[str]:
        """The allowed names."""
        return self._names


@config_dataclass
class MLPConfig:
    """How each hidden layer of an MLP (experts, gates, bottoms, towers) is finished:
    ``Linear -> norm -> activation -> dropout``. The defaults (ReLU, no norm, no dropout) build
    exactly the model of earlier versions."""

    activation: Annotated[str, one_of(_Names(ACTIVATIONS))] = "relu"
    # Probability of zeroing a unit during training (0: no dropout layer).
    dropout: Fraction = 0.0
    # none | batch (BatchNorm1d) | layer (LayerNorm); per expert in expert banks.
    norm: Literal[NORMS] = "none"

    def options(self) -> MLPOptions:
        """These settings as the modules' :class:`~mtl_torchrec.modules.mlp.MLPOptions`."""
        return MLPOptions(self.activation, self.dropout, self.norm)


class Backbone:
    """How one ``model.backbone`` value is configured and built. Subclass, set the class
    attributes, implement :meth:`build` and :meth:`template_layers` (static or class methods)
    and register the class under its name.

    Attributes:
        section: the options section under ``model.`` (e.g. ``mmoe`` for ``model.mmoe.*``).
            Backbones may share one (``omoe`` reads ``model.mmoe``), with the same ``options``.
        options: the section's config dataclass (:func:`~mtl_torchrec.core.config.fields.config_dataclass`);
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
