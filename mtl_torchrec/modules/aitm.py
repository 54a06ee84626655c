"""AITM: adaptive information transfer between the towers of sequentially dependent tasks.

Xi et al., "Modeling the Sequential Dependence among Audience Multi-step Conversions with
Multi-task Learning in Targeted Display Advertising", KDD 2021. For a chain of binary tasks
(impression -> click -> conversion) each task's tower representation ``q_t`` is mixed with what
the previous task transferred, ``p_{t-1} = g(z_{t-1})`` (an MLP of the previous task's AIT
output), by the **AIT unit**: three projections ``h1, h2, h3``, one attention weight per input

    w_u = softmax_u(<h2(u), h3(u)> / sqrt(k)),   u in {p_{t-1}, q_t}

and the output ``z_t = sum_u w_u h1(u)``, read by the task's head. The first task of a chain keeps
``z = q``. The paper's behavioural-expectation calibrator (a loss term, conversion should not be
predicted above click) is in :mod:`mtl_torchrec.model.tasks`.

Example::

    unit = AITUnit(32)
    z = unit(p, q)                            # [B, 32]
    z, w = unit.forward_with_weights(p, q)    # w: [B, 2], weights of (p, q), rows sum to 1
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from mtl_torchrec.modules.mlp import MLPOptions, make_mlp
from mtl_torchrec.modules.towers import TaskTowers


class AITUnit(nn.Module):
    """The AIT unit of Xi et al. (KDD 2021): attention over the transferred and the own representation.

    Args:
        dim: width of ``p`` and ``q`` and of the output (``h1`` keeps the width, so the task's
            head reads the output as it would read ``q``).
        attention_dim: width ``k`` of ``h2``/``h3``, which only score (default: ``dim``).

    Raises ValueError for a width below 1. Traceable by ``torch.fx`` and scriptable by
    ``torch.jit.script``.
    """

    def __init__(self, dim: int, attention_dim: Optional[int] = None) -> None:
        super().__init__()
        k = dim if attention_dim is None else attention_dim
        if dim < 1 or k < 1:
            raise ValueError(f"AIT widths must be >= 1, got dim {dim}, attention_dim {k}")
        self.h1 = nn.Linear(dim, dim)
        self.h2 = nn.Linear(dim, k)
        self.h3 = nn.Linear(dim, k)
        self.scale = 1.0 / math.sqrt(k)

    def forward_with_weights(self, p: torch.Tensor, q: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The mixed representation and its attention weights.

        Args:
            p (torch.Tensor): the previous task's transferred representation ``[B, dim]``.
            q (torch.Tensor): this task's tower representation ``[B, dim]``.

        Returns:
            ``(z [B, dim], weights [B, 2])``: weights of ``p`` then ``q``, each row summing to 1.
        """
        u = torch.stack([p, q], dim=1)  # [B, 2, dim]
        scores = (self.h2(u) * self.h3(u)).sum(dim=-1) * self.scale
        weights = torch.softmax(scores, dim=-1)
        z = (weights.unsqueeze(-1) * self.h1(u)).sum(dim=1)
        return z, weights

    def forward(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``z = sum_u w_u h1(u)`` over ``u in {p, q}`` (``[B, dim]`` each): ``[B, dim]``."""
        return self.forward_with_weights(p, q)[0]


def chain_order(tasks: List[str], parents: Dict[str, str]) -> List[str]:
    """``tasks`` ordered so that every task comes after its AITM parent (stable otherwise).

    Raises ValueError for a parent that is not a task, or parents forming a cycle.
    """
    for child, parent in parents.items():
        if parent not in tasks or child not in tasks:
            raise ValueError(f"AITM link {parent} -> {child} names a task not in {tasks}")
    order: List[str] = []
    placed = set()
    while len(order) < len(tasks):
        ready = [t for t in tasks if t not in placed and (t not in parents or parents[t] in placed)]
        if not ready:
            cycle = sorted(t for t in tasks if t not in placed)
            raise ValueError(f"AITM parents form a cycle among {cycle}")
        order.append(ready[0])
        placed.add(ready[0])
    return order


class AITMTowers(TaskTowers):
    """Per-task towers with AIT units between chained tasks (Xi et al., KDD 2021).

    Every task has its :class:`~mtl_torchrec.modules.towers.TaskTower` (the same parameters,
    under the same names, as :class:`TaskTowers`); a task with a parent in ``parents`` mixes its
    tower MLP's output ``q`` with ``p = transfer(z_parent)`` through an :class:`AITUnit` before
    its head. A task without a parent reads its head as in :class:`TaskTowers` (bitwise the same
    value). A parent may have several children (a tree); cycles are refused.

    Args:
        tasks, in_features, layer_sizes, options: as :class:`TaskTowers`.
        parents: child task -> parent task.
        attention_dim: ``h2``/``h3`` width of every AIT unit (default: the child's tower width).

    Raises ValueError for a parent or child that is not a task, or a cycle.

    Example::

        towers = AITMTowers(["click", "conversion"], 16, {"click": [32], "conversion": [32]},
                            parents={"conversion": "click"})
        towers([x, x])["conversion"].shape   # [B]
    """

    def __init__(
        self,
        tasks: List[str],
        in_features: int,
        layer_sizes: Dict[str, List[int]],
        options: Optional[MLPOptions] = None,
        parents: Optional[Dict[str, str]] = None,
        attention_dim: Optional[int] = None,
    ) -> None:
        super().__init__(tasks, in_features, layer_sizes, options)
        self.parents: Dict[str, str] = dict(parents or {})
        self.order = chain_order(self.tasks, self.parents)
        width = {t: (layer_sizes[t][-1] if layer_sizes[t] else in_features) for t in self.tasks}
        # Built in task order after the towers, so the towers draw the same initial weights as
        # TaskTowers' would.
        children = [t for t in self.tasks if t in self.parents]
        # The transfer function g of the paper: one ReLU layer into the child's width.
        self.transfer = nn.ModuleDict({c: make_mlp(width[self.parents[c]], [width[c]]) for c in children})
        self.ait = nn.ModuleDict({c: AITUnit(width[c], attention_dim) for c in children})

    def forward_with_weights(
        self, inputs: List[torch.Tensor]
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """Each task's output, and each chained task's AIT weights.

        Args:
            inputs (List[torch.Tensor]): one ``[B, in_features]`` tensor per task, in the order of ``tasks``.

        Returns:
            ``(outputs, weights)``: ``[B]`` per task (in ``tasks`` order), and ``[B, 2]`` per task
            with a parent (weights of the transferred and the own representation).
        """
        index = {t: i for i, t in enumerate(self.tasks)}
        z: Dict[str, torch.Tensor] = {}
        raw: Dict[str, torch.Tensor] = {}
        weights: Dict[str, torch.Tensor] = {}
        # Modules are found by looping over their ModuleDicts and matching names: TorchScript only
        # indexes a ModuleDict with string literals, and the chain order is known at run time.
        for name in self.order:
            q = inputs[index[name]]
            for n, tower in self.towers.items():
                if n == name:
                    q = tower.mlp(q)
            if name in self.parents:
                p = z[self.parents[name]]
                for c, transfer in self.transfer.items():
                    if c == name:
                        p = transfer(p)
                for c, unit in self.ait.items():
                    if c == name:
                        q, w = unit.forward_with_weights(p, q)
                        weights[name] = w
            z[name] = q
            for n, tower in self.towers.items():
                if n == name:
                    raw[name] = tower.head(q).squeeze(-1)
        return {t: raw[t] for t in self.tasks}, weights

    def forward(self, inputs: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Each task's ``[B]`` output, by task name (see :meth:`forward_with_weights`)."""
        return self.forward_with_weights(inputs)[0]
