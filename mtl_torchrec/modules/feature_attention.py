"""Per-task attention over feature groups: which task reads which features.

The fused representation is the concatenation of feature groups (each id feature's pooled
embedding, the dense MLP's output, each text feature's adapter output). Each group is projected
to a common width ``d``; each task has a learned query vector ``q_t`` that scores every group,

    w_{t,g} = softmax_g(<q_t, W_g x_g + b_g> / sqrt(d))

and gets ``a_t = sum_g w_{t,g} (W_g x_g + b_g)`` (``[B, d]``). The weights vary per row (the
projected groups do) and are read by diagnostics: a task that weights the text group more than
the ids is visible there. This is the multi-task attention of the "task-specific attention over
shared features" kind (e.g. Liu et al., "End-to-End Multi-Task Learning with Attention",
CVPR 2019, there over feature maps); the queries start at 0, so training starts from a uniform
mix.

Example::

    att = FeatureGroupAttention([8, 8, 16], num_tasks=2, dim=16)
    a, w = att.forward_with_weights(x)   # x [B, 32] -> a [B, 2, 16], w [B, 2, 3] (rows sum to 1)
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import nn


class FeatureGroupAttention(nn.Module):
    """Per-task softmax attention over the groups of a concatenated feature vector.

    Args:
        group_widths: width of each group, in the order they are concatenated (all >= 1).
        num_tasks: number of tasks (one query vector each).
        dim: the common width groups are projected to, and the width of each task's output.

    Raises ValueError for no group, a width below 1, or ``num_tasks``/``dim`` below 1.
    Traceable by ``torch.fx`` and scriptable by ``torch.jit.script``.
    """

    def __init__(self, group_widths: List[int], num_tasks: int, dim: int) -> None:
        super().__init__()
        if not group_widths or min(group_widths) < 1 or num_tasks < 1 or dim < 1:
            raise ValueError(
                f"feature attention needs groups of width >= 1, tasks and dim >= 1 "
                f"(got widths {group_widths}, {num_tasks} tasks, dim {dim})"
            )
        self.group_widths: List[int] = list(group_widths)
        self.num_tasks = num_tasks
        self.dim = dim
        self.proj = nn.ModuleList([nn.Linear(w, dim) for w in group_widths])
        self.query = nn.Parameter(torch.zeros(num_tasks, dim))
        self.scale = 1.0 / math.sqrt(dim)

    def forward_with_weights(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Each task's attended representation and its weights.

        Args:
            x (torch.Tensor): the concatenated groups ``[B, sum(group_widths)]``.

        Returns:
            ``(a [B, num_tasks, dim], weights [B, num_tasks, num_groups])``, each weight row summing to 1.
        """
        parts = torch.split(x, self.group_widths, dim=1)
        projected: List[torch.Tensor] = []
        for i, proj in enumerate(self.proj):
            projected.append(proj(parts[i]))
        keys = torch.stack(projected, dim=1)  # [B, G, dim]
        scores = torch.einsum("td,bgd->btg", self.query, keys) * self.scale
        weights = torch.softmax(scores, dim=-1)
        return torch.einsum("btg,bgd->btd", weights, keys), weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each task's attended representation ``[B, num_tasks, dim]`` of ``x`` ``[B, sum(group_widths)]``."""
        return self.forward_with_weights(x)[0]
