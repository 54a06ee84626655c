"""Per-task towers: a small MLP and a scalar output head for each task."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from mtl_torchrec.modules.mlp import MLPOptions, make_mlp


class TaskTower(nn.Module):
    """MLP followed by a linear head with one output (a logit or a regression value).

    Args:
        in_features: input width.
        layer_sizes: hidden widths of the MLP; empty: the head reads the input.
        options: activation, norm and dropout of the MLP's layers (default ReLU).

    Example::

        tower = TaskTower(16, [32])
        tower(torch.randn(8, 16)).shape   # torch.Size([8])
    """

    def __init__(self, in_features: int, layer_sizes: List[int], options: Optional[MLPOptions] = None) -> None:
        super().__init__()
        self.mlp = make_mlp(in_features, layer_sizes, options) if layer_sizes else nn.Identity()
        self.head = nn.Linear(layer_sizes[-1] if layer_sizes else in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP, then the one-output head.

        Args:
            x (torch.Tensor): the task's input ``[B, in_features]``.

        Returns:
            torch.Tensor: one value per row ``[B]`` (a logit or a regression value).
        """
        return self.head(self.mlp(x)).squeeze(-1)


class TaskTowers(nn.Module):
    """One :class:`TaskTower` per task, applied to that task's input.

    Args:
        tasks: task names, in the order of the inputs.
        in_features: width of every task's input.
        layer_sizes: hidden widths of each task's tower MLP, by task name.
        options: activation, norm and dropout of every tower's MLP layers (default ReLU).

    Example::

        towers = TaskTowers(["click", "rating"], 16, {"click": [32], "rating": [32]})
        towers([torch.randn(8, 16), torch.randn(8, 16)])["rating"].shape   # torch.Size([8])
    """

    def __init__(
        self,
        tasks: List[str],
        in_features: int,
        layer_sizes: Dict[str, List[int]],
        options: Optional[MLPOptions] = None,
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.towers = nn.ModuleDict({t: TaskTower(in_features, layer_sizes[t], options) for t in self.tasks})

    def forward(self, inputs: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Each task's tower on that task's input.

        Args:
            inputs (List[torch.Tensor]): one ``[B, in_features]`` tensor per task, in the order of ``tasks``.

        Returns:
            Dict[str, torch.Tensor]: ``[B]`` output of each task's tower, by task name.
        """
        out: Dict[str, torch.Tensor] = {}
        for i, (name, tower) in enumerate(self.towers.items()):
            out[name] = tower(inputs[i])
        return out
