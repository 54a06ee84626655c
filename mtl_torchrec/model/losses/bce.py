"""``bce``: binary cross-entropy of a binary task, with ESMM's product and AITM's calibrator.

ESMM (Ma et al., SIGIR 2018): for a task with ``esmm_parent`` the loss is the BCE of the
impression-space product ``pCTR * pCVR`` against ``parent AND task``, in log space so it stays finite.
AITM (Xi et al., KDD 2021): a task with ``aitm_parent`` adds ``aitm_calibration * max(p(task) -
p(parent), 0)`` per row (:func:`aitm_calibrator`).
"""

from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F

from mtl_torchrec.model.losses.base import LOSSES, TaskLoss


def impression_bce(logits: Dict[str, torch.Tensor], label: torch.Tensor, task: Any) -> torch.Tensor:
    """Per-row BCE ``[B]`` of the task's impression-space probability: ``sigmoid(logit)``, or for an
    ESMM task ``sigmoid(parent logit) * sigmoid(logit)``; ``label`` ``[B]`` in {0, 1}."""
    logit = logits[task.name]
    if task.esmm_parent is None:
        return F.binary_cross_entropy_with_logits(logit, label, reduction="none")
    log_p = F.logsigmoid(logits[task.esmm_parent]) + F.logsigmoid(logit)
    p = log_p.exp().clamp(max=1.0 - 1e-7)
    return -(label * log_p + (1.0 - label) * torch.log1p(-p))


def aitm_calibrator(logit: torch.Tensor, parent_logit: torch.Tensor) -> torch.Tensor:
    """AITM's behavioural-expectation calibrator per row (Xi et al., KDD 2021):
    ``max(sigmoid(logit) - sigmoid(parent_logit), 0)`` (``[B]``), the amount by which the later
    step (conversion) is predicted above the earlier one (click). Both predictions get its gradient.
    """
    return torch.relu(torch.sigmoid(logit) - torch.sigmoid(parent_logit))


def with_aitm_calibrator(loss: torch.Tensor, logits: Dict[str, torch.Tensor], task: Any) -> torch.Tensor:
    """``loss`` ``[B]`` plus ``aitm_calibration`` x :func:`aitm_calibrator` for an AITM task with a
    positive calibrator weight; ``loss`` itself otherwise."""
    if task.esmm_parent is None and task.aitm_parent is not None and task.aitm_calibration > 0:
        return loss + task.aitm_calibration * aitm_calibrator(logits[task.name], logits[task.aitm_parent])
    return loss


@LOSSES.register("bce")
class BCELoss(TaskLoss):
    """Binary cross-entropy (the ``binary`` default): :func:`impression_bce`, plus AITM's calibrator.

    Example::

        BCELoss()({"click": z}, y, TaskSpec("click", "binary"))   # [B]
    """

    label_kinds = ("binary",)

    def __call__(self, logits: Dict[str, torch.Tensor], label: torch.Tensor, task: Any) -> torch.Tensor:
        """Per-row loss ``[B]`` (see the module doc)."""
        return with_aitm_calibrator(impression_bce(logits, label, task), logits, task)
