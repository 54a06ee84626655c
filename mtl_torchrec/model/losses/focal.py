"""``focal``: the focal loss of a binary task (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

``FL = alpha_t * (1 - p_t)^gamma * BCE`` per row, where ``p_t`` is the predicted probability of the
row's true class (``exp(-BCE)``) and ``alpha_t`` is ``alpha`` for positives and ``1 - alpha`` for
negatives. ``gamma`` > 0 down-weights rows the model already gets right; ``gamma = 0`` without
``alpha`` is BCE. An ESMM task's ``p`` is the impression-space product, as for ``bce``, and an AITM
task keeps its calibrator term.

Config::

    model:
      tasks:
        - {name: click, loss: focal, loss_options: {gamma: 2.0, alpha: 0.25}}
"""

from __future__ import annotations

from typing import Annotated, Any, Dict, Optional

import torch
from pydantic import Field

from mtl_torchrec.core.config.fields import NonNegativeFloat, config_dataclass
from mtl_torchrec.model.losses.base import LOSSES, TaskLoss
from mtl_torchrec.model.losses.bce import impression_bce, with_aitm_calibrator

# 1 - p_t is floored here before the power: for 0 < gamma < 1 its gradient at exactly 0 is infinite.
_MIN_MISS = 1e-12


@config_dataclass
class FocalOptions:
    """``model.tasks[i].loss_options`` of ``focal``."""

    # Focusing parameter (>= 0); the paper's best is 2.
    gamma: NonNegativeFloat = 2.0
    # Weight of the positive class in [0, 1] (negatives get 1 - alpha); none: no class weighting.
    # The paper pairs gamma 2 with alpha 0.25.
    alpha: Optional[Annotated[float, Field(ge=0, le=1)]] = None


@LOSSES.register("focal")
class FocalLoss(TaskLoss):
    """Focal loss per row (see the module doc), ``[B]``.

    Example::

        FocalLoss(FocalOptions(gamma=2.0))({"click": z}, y, TaskSpec("click", "binary"))
    """

    label_kinds = ("binary",)
    Options = FocalOptions

    def __call__(self, logits: Dict[str, torch.Tensor], label: torch.Tensor, task: Any) -> torch.Tensor:
        """Per-row focal loss ``[B]``."""
        ce = impression_bce(logits, label, task)
        p_t = torch.exp(-ce)
        loss = (1.0 - p_t).clamp_min(_MIN_MISS).pow(self.options.gamma) * ce
        if self.options.alpha is not None:
            a = self.options.alpha
            loss = (a * label + (1.0 - a) * (1.0 - label)) * loss
        return with_aitm_calibrator(loss, logits, task)
