"""``mse``: squared error of a regression task's value (MSE once averaged)."""

from __future__ import annotations

from typing import Any, Dict

import torch

from mtl_torchrec.model.losses.base import LOSSES, TaskLoss


@LOSSES.register("mse")
class MSELoss(TaskLoss):
    """Squared error ``(value - label)^2`` per row (the ``regression`` default).

    Example::

        MSELoss()({"rating": v}, y, TaskSpec("rating", "regression"))   # [B]
    """

    label_kinds = ("regression",)

    def __call__(self, logits: Dict[str, torch.Tensor], label: torch.Tensor, task: Any) -> torch.Tensor:
        """Per-row squared error ``[B]``."""
        return (logits[task.name] - label) ** 2
