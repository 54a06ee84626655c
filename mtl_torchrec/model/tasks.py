"""Tasks, their predictions and masked losses, and the train module the pipeline runs.

ESMM (Ma et al., SIGIR 2018): a binary task with ``esmm_parent`` (conversion, parent click) has a
tower that predicts ``pCVR = p(task | parent)``. Its impression-space prediction is
``pCTCVR = pCTR * pCVR`` and that product is what is trained, against ``parent AND task`` over
all rows, so ``pCVR`` is never trained on the clicked rows alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mtl_torchrec.data.batch import Batch
from mtl_torchrec.model.multitask import ModelOutput


@dataclass
class TaskSpec:
    name: str
    type: str  # "binary" | "regression"
    weight: float = 1.0
    esmm_parent: Optional[str] = None


def check_tasks(tasks: List[TaskSpec]) -> None:
    names = [t.name for t in tasks]
    for t in tasks:
        if t.type not in ("binary", "regression"):
            raise ValueError(f"model.tasks: task '{t.name}' has unknown type '{t.type}'")
        if t.esmm_parent is not None:
            if t.esmm_parent not in names:
                raise ValueError(f"model.tasks: task '{t.name}' has esmm_parent '{t.esmm_parent}', not a task")
            parent = next(p for p in tasks if p.name == t.esmm_parent)
            if t.type != "binary" or parent.type != "binary" or parent.esmm_parent is not None:
                raise ValueError(f"model.tasks: ESMM task '{t.name}' and its parent must be plain binary tasks")


def predictions(logits: Dict[str, torch.Tensor], tasks: List[TaskSpec]) -> Dict[str, torch.Tensor]:
    """Impression-space predictions: probabilities for binary tasks, values for regression.

    For an ESMM task the value is pCTCVR; its conditional pCVR is under ``"<task>_given_<parent>"``.
    """
    out: Dict[str, torch.Tensor] = {}
    for t in tasks:
        if t.type == "regression":
            out[t.name] = logits[t.name]
        elif t.esmm_parent is None:
            out[t.name] = torch.sigmoid(logits[t.name])
    for t in tasks:
        if t.esmm_parent is not None:
            cond = torch.sigmoid(logits[t.name])
            out[conditional_name(t)] = cond
            out[t.name] = out[t.esmm_parent] * cond
    return out


def conditional_name(task: TaskSpec) -> str:
    """Name of an ESMM task's conditional prediction and metrics, e.g. ``conversion_given_click``."""
    return f"{task.name}_given_{task.esmm_parent}"


def metric_tasks(tasks: List[TaskSpec]) -> List[TaskSpec]:
    """The entries evaluation reports: every task in impression space (an ESMM task's value is
    pCTCVR against ``parent AND task``), plus ``<task>_given_<parent>`` for each ESMM task,
    scored on the parent's positive rows only (e.g. CVR over clicks)."""
    extra = [TaskSpec(name=conditional_name(t), type="binary") for t in tasks if t.esmm_parent is not None]
    return list(tasks) + extra


def with_conditional_labels(batch: Batch, tasks: List[TaskSpec]) -> Batch:
    """Adds the labels and masks of :func:`metric_tasks`' conditional entries to ``batch``:
    the task's label, present where the task has a label and the parent is a labelled positive."""
    if all(t.esmm_parent is None for t in tasks):
        return batch
    labels = dict(batch.labels)
    masks = dict(batch.masks)
    for t in tasks:
        if t.esmm_parent is not None:
            parent = t.esmm_parent
            labels[conditional_name(t)] = batch.labels[t.name]
            masks[conditional_name(t)] = batch.masks[t.name] * batch.masks[parent] * (batch.labels[parent] > 0.5).float()
    return Batch(sparse=batch.sparse, dense=batch.dense, labels=labels, masks=masks, group=batch.group)


def _masked_mean(per_row: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Empty masks give 0 with a gradient path, instead of NaN.
    return (per_row * mask).sum() / mask.sum().clamp_min(1.0)


def task_losses(out: ModelOutput, batch: Batch, tasks: List[TaskSpec]) -> Dict[str, torch.Tensor]:
    """Masked per-task losses: BCE for binary (ESMM on the product), MSE for regression."""
    losses: Dict[str, torch.Tensor] = {}
    for t in tasks:
        y = batch.labels[t.name]
        m = batch.masks[t.name]
        logit = out.logits[t.name]
        if t.type == "regression":
            per_row = (logit - y) ** 2
        elif t.esmm_parent is None:
            per_row = F.binary_cross_entropy_with_logits(logit, y, reduction="none")
        else:
            # log(pCTR * pCVR) stays finite via logsigmoid; BCE on the product in log space.
            log_p = F.logsigmoid(out.logits[t.esmm_parent]) + F.logsigmoid(logit)
            p = log_p.exp().clamp(max=1.0 - 1e-7)
            per_row = -(y * log_p + (1.0 - y) * torch.log1p(-p))
        losses[t.name] = _masked_mean(per_row, m)
    return losses


class FixedWeights(nn.Module):
    """Total loss as a fixed weighted sum of task losses."""

    def __init__(self, weights: Dict[str, float]) -> None:
        super().__init__()
        self.task_names = list(weights)
        self.register_buffer("weight", torch.tensor([weights[t] for t in self.task_names]), persistent=False)

    def forward(self, losses: Dict[str, torch.Tensor], shared: torch.Tensor) -> torch.Tensor:
        return sum(self.weight[i] * losses[t] for i, t in enumerate(self.task_names))

    def weights(self) -> Dict[str, float]:
        return {t: float(self.weight[i]) for i, t in enumerate(self.task_names)}


class TrainOutput(NamedTuple):
    """What a train module returns beside the loss (and what pipelines' ``progress`` return)."""

    loss: torch.Tensor
    task_losses: Dict[str, torch.Tensor]
    predictions: Dict[str, torch.Tensor]
    model_output: ModelOutput


class TrainModule(nn.Module):
    """Model + losses + balancer, in the form TorchRec's train pipelines call.

    ``forward(batch)`` returns ``(loss, TrainOutput)``: the TrainOutput holds the detached total
    and per-task losses and impression-space predictions.

    Example::

        train = TrainModule(model, tasks, FixedWeights({"click": 1.0}))
        loss, out = train(batch)
        out.task_losses["click"], out.predictions["click"]
    """

    def __init__(self, model: nn.Module, tasks: List[TaskSpec], balancer: nn.Module) -> None:
        super().__init__()
        check_tasks(tasks)
        self.model = model
        self.tasks = tasks
        self.balancer = balancer

    def forward(
        self, batch: Batch
    ) -> Tuple[torch.Tensor, TrainOutput]:
        out: ModelOutput = self.model(batch)
        losses = task_losses(out, batch, self.tasks)
        total = self.balancer(losses, out.shared)
        preds = predictions({t.name: out.logits[t.name].detach() for t in self.tasks}, self.tasks)
        detached = {k: v.detach() for k, v in losses.items()}
        return total, TrainOutput(total.detach(), detached, preds, out)
