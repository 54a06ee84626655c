"""Gate-free baselines: one bottom MLP shared by all tasks, or one separate bottom per task."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from mtl_torchrec.modules.experts import BatchedExperts
from mtl_torchrec.modules.mlp import MLPOptions, make_mlp


class SharedBottom(nn.Module):
    """One MLP on the shared input; every task's tower reads its output (hard parameter sharing).

    Args:
        in_features: width of the shared input.
        num_tasks: number of tasks (outputs).
        layers: layer sizes of the MLP; ValueError when empty.
        options: activation, norm and dropout of its layers (default ReLU).

    Example::

        bottom = SharedBottom(32, num_tasks=3, layers=[64, 16])
        outs, gates = bottom.forward_with_gates(torch.randn(8, 32))   # 3 x [8, 16], []
    """

    def __init__(
        self, in_features: int, num_tasks: int, layers: List[int], options: Optional[MLPOptions] = None
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError("SharedBottom needs at least one layer")
        self.num_tasks = num_tasks
        self.out_features = layers[-1]
        self.mlp = make_mlp(in_features, layers, options)

    def forward_with_gates(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """The shared MLP's output for every task, and no gates.

        Args:
            x (torch.Tensor): shared input ``[B, in_features]``.

        Returns:
            the same ``[B, layers[-1]]`` tensor once per task, and an empty gate list (no gates).
        """
        h = self.mlp(x)
        return [h] * self.num_tasks, []

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``x``: ``[B, in_features]``; returns the bottom's ``[B, layers[-1]]`` output once per task."""
        return self.forward_with_gates(x)[0]


class SeparateBottoms(nn.Module):
    """One independent MLP per task on the shared input: no sharing above the features.

    With one task this is the bottom of a single-task model, which is how the single-task
    baselines are built. The per-task MLPs are a :class:`BatchedExperts` bank with one expert
    per task, so they cost one matmul per layer.

    Args:
        in_features: width of the shared input.
        num_tasks: number of tasks (MLPs).
        layers: layer sizes of each MLP; ValueError when empty.
        options: activation, norm and dropout of their layers (default ReLU).

    Example::

        bottoms = SeparateBottoms(32, num_tasks=2, layers=[64, 16])
        outs = bottoms(torch.randn(8, 32))   # 2 x [8, 16], each from its own MLP
    """

    def __init__(
        self, in_features: int, num_tasks: int, layers: List[int], options: Optional[MLPOptions] = None
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError("SeparateBottoms needs at least one layer")
        self.num_tasks = num_tasks
        self.out_features = layers[-1]
        self.bottoms = BatchedExperts(in_features, num_tasks, layers, options)

    def forward_with_gates(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Each task's own MLP output, and no gates.

        Args:
            x (torch.Tensor): shared input ``[B, in_features]``.

        Returns:
            one ``[B, layers[-1]]`` output per task (each from its own MLP), and an empty gate list.
        """
        h = self.bottoms(x)
        # Indexing (not unbind) keeps this traceable by TorchRec's pipeline tracer.
        return [h[k] for k in range(self.num_tasks)], []

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``x``: ``[B, in_features]``; returns one ``[B, layers[-1]]`` output per task."""
        return self.forward_with_gates(x)[0]
