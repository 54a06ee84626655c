"""``huber``: the Huber loss of a regression task (Huber, "Robust Estimation of a Location
Parameter", 1964): ``0.5 r^2`` for a residual ``|r| <= delta``, ``delta (|r| - 0.5 delta)`` beyond, so
outlying labels pull linearly instead of quadratically.

Config::

    model:
      tasks:
        - {name: rating, type: regression, loss: huber, loss_options: {delta: 1.0}}
"""

from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F

from mtl_torchrec.core.config.fields import PositiveFloat, config_dataclass
from mtl_torchrec.model.losses.base import LOSSES, TaskLoss


@config_dataclass
class HuberOptions:
    """``model.tasks[i].loss_options`` of ``huber``."""

    # Residual (in label units) where the loss turns from quadratic to linear.
    delta: PositiveFloat = 1.0


@LOSSES.register("huber")
class HuberLoss(TaskLoss):
    """Huber loss per row (see the module doc), ``[B]``.

    Example::

        HuberLoss(HuberOptions(delta=0.5))({"rating": v}, y, TaskSpec("rating", "regression"))
    """

    label_kinds = ("regression",)
    Options = HuberOptions

    def __call__(self, logits: Dict[str, torch.Tensor], label: torch.Tensor, task: Any) -> torch.Tensor:
        """Per-row Huber loss ``[B]``."""
        return F.huber_loss(logits[task.name], label, reduction="none", delta=self.options.delta)
