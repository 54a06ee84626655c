"""MLP layer options shared by experts, gates, bottoms and towers: activation, normalisation, dropout.

Each hidden layer is ``Linear -> norm -> activation -> dropout``. With the default options
(:data:`PLAIN`: ReLU, no norm, no dropout) :func:`make_mlp` returns TorchRec's ``MLP`` exactly as
before the options existed (same parameters, names, initialisation order and results).

Example::

    mlp = make_mlp(32, [64, 16], MLPOptions(activation="gelu", dropout=0.1, norm="layer"))
    mlp(torch.randn(8, 32)).shape   # torch.Size([8, 16])
"""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.mlp import MLP

# Activation modules by config name (model.*.activation).
ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}
# none | batch (BatchNorm1d over the batch) | layer (LayerNorm over the features).
NORMS = ("none", "batch", "layer")


class MLPOptions(NamedTuple):
    """How every hidden layer of an MLP is finished: ``activation`` (a key of
    :data:`ACTIVATIONS`), ``norm`` (one of :data:`NORMS`, applied before the activation) and
    ``dropout`` (probability in [0, 1), after the activation; 0: none)."""

    activation: str = "relu"
    dropout: float = 0.0
    norm: str = "none"

    def check(self) -> "MLPOptions":
        """Returns self; ValueError naming the field for an unknown activation or norm or a
        dropout outside [0, 1)."""
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: unknown '{self.activation}' (known: {sorted(ACTIVATIONS)})")
        if self.norm not in NORMS:
            raise ValueError(f"norm: unknown '{self.norm}' (known: {list(NORMS)})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        return self


PLAIN = MLPOptions()


def activation(options: MLPOptions, inplace: bool = False) -> nn.Module:
    """The activation module of ``options``; with ``inplace`` a ReLU overwrites its input (only for
    inputs that no other op reads afterwards: it saves a [B, width] allocation and pass per layer)."""
    name = options.check().activation
    return nn.ReLU(inplace=True) if inplace and name == "relu" else ACTIVATIONS[name]()


def dropout(options: MLPOptions) -> nn.Module:
    """``nn.Dropout`` of ``options.dropout``, or ``nn.Identity`` when it is 0 (no RNG use)."""
    return nn.Dropout(options.dropout) if options.check().dropout > 0 else nn.Identity()


def make_mlp(in_features: int, layer_sizes: List[int], options: Optional[MLPOptions] = None) -> nn.Module:
    """An MLP ``[B, in_features] -> [B, layer_sizes[-1]]`` finishing every layer as ``options`` say.

    The default options give TorchRec's ``MLP`` (ReLU after every layer); other options an
    ``nn.Sequential`` of ``Linear``, ``BatchNorm1d``/``LayerNorm``, activation and ``Dropout``.
    ValueError as :meth:`MLPOptions.check`.
    """
    options = (options or PLAIN).check()
    if options == PLAIN:
        return MLP(in_features, layer_sizes)
    layers: List[nn.Module] = []
    prev = in_features
    for size in layer_sizes:
        layers.append(nn.Linear(prev, size))
        if options.norm == "batch":
            layers.append(nn.BatchNorm1d(size))
        elif options.norm == "layer":
            layers.append(nn.LayerNorm(size))
        layers += [activation(options), dropout(options)]
        prev = size
    return nn.Sequential(*layers)


class ExpertBatchNorm(nn.Module):
    """Batch normalisation of each expert's features separately: ``[E, B, D] -> [E, B, D]``
    (one ``BatchNorm1d`` over the ``E * D`` features, so running statistics are per expert)."""

    def __init__(self, num_experts: int, width: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.width = width
        self.norm = nn.BatchNorm1d(num_experts * width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h``: ``[E, B, D]``; returns the normalised ``[E, B, D]``."""
        flat = self.norm(h.transpose(0, 1).flatten(1))  # [B, E*D]
        return flat.unflatten(1, (self.num_experts, self.width)).transpose(0, 1)


class ExpertLayerNorm(nn.Module):
    """Layer normalisation over each expert's features, with a gain and bias per expert:
    ``[E, B, D] -> [E, B, D]``."""

    def __init__(self, num_experts: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.ones(num_experts, 1, width))
        self.bias = nn.Parameter(torch.zeros(num_experts, 1, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h``: ``[E, B, D]``; returns the normalised ``[E, B, D]``."""
        return F.layer_norm(h, [self.width]) * self.weight + self.bias


def expert_norm(options: MLPOptions, num_experts: int, width: int) -> nn.Module:
    """The per-expert normalisation ``options.norm`` asks for (``nn.Identity`` for ``none``)."""
    kind = options.check().norm
    if kind == "batch":
        return ExpertBatchNorm(num_experts, width)
    if kind == "layer":
        return ExpertLayerNorm(num_experts, width)
    return nn.Identity()
