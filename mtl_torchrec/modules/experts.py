"""A bank of same-shaped MLP experts evaluated as batched matmuls.

All experts' weights are stacked, so ``E`` experts cost one ``bmm`` per layer instead of ``E``
small Linear calls.
"""

from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Optional

import torch
from torch import nn

from mtl_torchrec.modules.mlp import PLAIN, MLPOptions, activation, dropout, expert_norm


class BatchedExperts(nn.Module):
    """``num_experts`` MLPs with the same layer sizes, reading one shared input or one input each.

    Args:
        in_features: input width.
        num_experts: number of experts ``E``.
        layer_sizes: output width of each layer.
        options: how each layer is finished (:class:`~mtl_torchrec.modules.mlp.MLPOptions`:
            per-expert norm, then activation, then dropout); default ReLU only.

    ValueError when ``num_experts < 1`` or ``layer_sizes`` is empty, or for bad ``options``.

    Example::

        experts = BatchedExperts(32, num_experts=4, layer_sizes=[64, 16])
        out = experts(torch.randn(8, 32))   # [E=4, B=8, 16]
        out = experts.forward_each(torch.randn(4, 8, 32))   # one input per expert: [4, 8, 16]
    """

    def __init__(
        self, in_features: int, num_experts: int, layer_sizes: List[int], options: Optional[MLPOptions] = None
    ) -> None:
        super().__init__()
        options = (options or PLAIN).check()
        if num_experts <= 0 or not layer_sizes:
            raise ValueError("BatchedExperts needs num_experts > 0 and at least one layer")
        self.in_features = in_features
        self.num_experts = num_experts
        self.out_features = layer_sizes[-1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        prev = in_features
        for size in layer_sizes:
            self.weights.append(nn.Parameter(torch.empty(num_experts, prev, size)))
            self.biases.append(nn.Parameter(torch.empty(num_experts, 1, size)))
            prev = size
        # No parameters with the default options, so the state and initialisation stay as they were.
        self.norms = nn.ModuleList(expert_norm(options, num_experts, size) for size in layer_sizes)
        # In place (for ReLU): every pre-activation is a fresh tensor that only the norm or the
        # activation reads (matmul backward keeps its inputs, not its output).
        self.activation = activation(options, inplace=True)
        self.dropout = dropout(options)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draws every expert's weights and biases from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
        # Same distribution as nn.Linear's default, per expert.
        for w, b in zip(self.weights, self.biases):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, in]``, read by every expert; returns ``[E, B, out]``."""
        # The first layer reads x through a stride-0 expand: one batched matmul whose output is a
        # contiguous [E, B, out]. One [B, in] x [in, E*out] matmul read as [E, B, out] instead gives a
        # strided view: the activation cannot run in place on it in training (autograd would copy the
        # base) and every elementwise pass over it, forward and backward, walks the strides. Measured
        # on 2 CPU threads (benchmarks/speed.py reference config): 4-6% of forward + backward.
        # Indexed as a matrix first: a vector or forward_each's [E, B, in] must not pass as a shared input.
        shared = x[None, :, :].expand(self.num_experts, -1, -1)
        return self._layers(torch.baddbmm(self.biases[0], shared, self.weights[0]))

    def forward_each(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[E, B, in]``, one input per expert; returns ``[E, B, out]``."""
        return self._layers(torch.baddbmm(self.biases[0], x, self.weights[0]))

    def _layers(self, h: torch.Tensor) -> torch.Tensor:
        """Finishes the first layer's pre-activation ``h`` (norm, activation, dropout) and runs the
        other layers. A counter instead of slicing the lists: TorchScript iterates a ParameterList
        whole (zipped with the others) but cannot slice one, and plain ``torch.jit.script`` must work."""
        layer = 0
        for w, b, norm in zip(self.weights, self.biases, self.norms):
            if layer > 0:
                h = torch.baddbmm(b, h, w)
            h = self.activation(norm(h))
            h = self.dropout(h)
            layer += 1
        return h


def mix_experts(gates: torch.Tensor, expert_out: torch.Tensor) -> torch.Tensor:
    """Each gate's weighted sum of the experts: ``out[b, t] = sum_e gates[b, t, e] * expert_out[e, b]``.

    Args:
        gates: ``[B, T, E]`` weights of ``T`` gates over ``E`` experts (softmax rows).
        expert_out: ``[E, B, D]`` expert outputs (:class:`BatchedExperts`' layout).

    Returns:
        ``[B, T, D]``. One batched matmul over rows that reads ``expert_out`` in place; an einsum
        per gate copies it to ``[B, E, D]`` for every gate, which made the mix of 3 gates over 8
        experts cost about a fifth of an MMoE training step on CPU (benchmarks/speed.py).

    Example::

        out = mix_experts(torch.softmax(torch.randn(8, 3, 4), -1), torch.randn(4, 8, 16))   # [8, 3, 16]
    """
    return torch.bmm(gates, expert_out.transpose(0, 1))


class GateInfo(NamedTuple):
    """One softmax gate of a mixture backbone: where it sits and which experts it mixes."""

    level: int
    # Index of the task the gate feeds; None for a shared gate (PLE's path to the next level).
    task: Optional[int]
    # Names of the mixed experts, in the order of the gate's columns.
    experts: List[str]


class ExpertTrace(NamedTuple):
    """Everything a mixture backbone computed for one input, for diagnostics.

    ``gates[i]`` is ``[B, len(gate_info[i].experts)]``; ``experts[name]`` is ``[B, D]``.
    """

    outputs: List[torch.Tensor]
    gates: List[torch.Tensor]
    gate_info: List[GateInfo]
    experts: Dict[str, torch.Tensor]
