"""Tasks, their predictions and masked losses, and the train module the pipeline runs.

ESMM (Ma et al., SIGIR 2018): a binary task with ``esmm_parent`` (conversion, parent click) has a
tower that predicts ``pCVR = p(task | parent)``. Its impression-space prediction is
``pCTCVR = pCTR * pCVR`` and that product is what is trained, against ``parent AND task`` over
all rows, so ``pCVR`` is never trained on the clicked rows alone.

AITM (Xi et al., KDD 2021): a binary task with ``aitm_parent`` predicts its own probability in
impression space (its tower mixes in the parent's, :mod:`mtl_torchrec.modules.aitm`), trained
against ``parent AND task`` like ESMM's product, plus the behavioural-expectation calibrator
``aitm_calibration * max(p(task) - p(parent), 0)`` per row (conversion should not be predicted
above click).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.label_kinds import LABEL_KINDS

# aitm_calibrator is re-exported: AITM's calibrator belongs to the task model this module describes.
from mtl_torchrec.model.losses import aitm_calibrator as aitm_calibrator
from mtl_torchrec.model.losses import build_loss, loss_problems
from mtl_torchrec.model.multitask import ModelOutput


@dataclass
class TaskSpec:
    """One task as the train module sees it: ``type`` is its label kind
    (:data:`~mtl_torchrec.data.label_kinds.LABEL_KINDS`), ``loss`` its loss
    (:data:`~mtl_torchrec.model.losses.LOSSES`; None: the label kind's default) with ``loss_options``."""

    name: str
    type: str  # a LABEL_KINDS name: "binary" | "regression"
    weight: float = 1.0
    esmm_parent: Optional[str] = None
    # AITM parent and calibrator weight (lambda); 0 adds no calibrator term.
    aitm_parent: Optional[str] = None
    aitm_calibration: float = 0.0
    loss: Optional[str] = None
    loss_options: Dict[str, Any] = field(default_factory=dict)


def is_probability(task: Any) -> bool:
    """Whether ``task``'s label kind predicts probabilities (``binary``); False for an unknown kind."""
    return task.type in LABEL_KINDS and LABEL_KINDS.get(task.type).probability


def task_problems(tasks: Sequence[Any]) -> List[Tuple[int, str, str]]:
    """What is wrong with a task list, as ``(task index, field, message)``: empty or repeated
    names, unknown label kinds (``type``), losses that are unknown or do not fit the label kind
    and their options (:func:`~mtl_torchrec.model.losses.loss_problems`), ESMM parents that
    are not another plain binary task,
    ``esmm_derive_and_label`` on a task without ``esmm_parent``, and the AITM problems of
    :func:`aitm_problems`.

    ``tasks`` are TaskSpecs or anything with ``name``, ``type`` and ``esmm_parent`` (the config's
    TaskConfig), so the config refuses what the train module would. ``field`` may be dotted
    (``loss_options.gamma``).
    """
    names = [t.name for t in tasks]
    out: List[Tuple[int, str, str]] = []
    for i, t in enumerate(tasks):
        if not t.name:
            out.append((i, "name", "must not be empty"))
        elif names.index(t.name) != i:
            out.append((i, "name", f"'{t.name}' is already the name of tasks[{names.index(t.name)}]"))
        if t.type not in LABEL_KINDS:
            out.append((i, "type", LABEL_KINDS.unknown(t.type)))
        out += [(i, key, msg) for key, msg in loss_problems(t)]
        if t.esmm_parent is None:
            if getattr(t, "esmm_derive_and_label", False):
                out.append((i, "esmm_derive_and_label", "only for an ESMM task (set esmm_parent)"))
            continue
        if t.esmm_parent == t.name or t.esmm_parent not in names:
            others = [n for n in names if n != t.name]
            out.append((i, "esmm_parent", f"'{t.esmm_parent}' is not another task (tasks: {others})"))
            continue
        parent = tasks[names.index(t.esmm_parent)]
        if not is_probability(t) or not is_probability(parent) or parent.esmm_parent is not None:
            msg = f"ESMM task '{t.name}' and its parent '{parent.name}' must be plain binary tasks"
            out.append((i, "esmm_parent", msg))
    return out + aitm_problems(tasks)


def aitm_problems(tasks: Sequence[Any]) -> List[Tuple[int, str, str]]:
    """AITM problems of a task list, as ``(task index, "aitm_parent", message)``: a parent that
    is not another task, a task that is also an ESMM task, a task or parent that is not a plain
    binary task (binary, no ``esmm_parent``), parents forming a cycle. Tasks without an
    ``aitm_parent`` attribute have none."""
    names = [t.name for t in tasks]
    parents = {t.name: p for t in tasks if (p := getattr(t, "aitm_parent", None)) is not None}
    out: List[Tuple[int, str, str]] = []
    for i, t in enumerate(tasks):
        parent_name = getattr(t, "aitm_parent", None)
        if parent_name is None:
            continue
        if parent_name == t.name or parent_name not in names:
            others = [n for n in names if n != t.name]
            out.append((i, "aitm_parent", f"'{parent_name}' is not another task (tasks: {others})"))
            continue
        if t.esmm_parent is not None:
            out.append((i, "aitm_parent", f"task '{t.name}' has esmm_parent too: choose ESMM or AITM"))
            continue
        parent = tasks[names.index(parent_name)]
        if not is_probability(t) or not is_probability(parent) or parent.esmm_parent is not None:
            msg = f"AITM task '{t.name}' and its parent '{parent.name}' must be plain binary tasks"
            out.append((i, "aitm_parent", msg))
            continue
        seen = {t.name}
        step = parent_name
        while step in parents and step not in seen:
            seen.add(step)
            step = parents[step]
        if step == t.name:
            out.append((i, "aitm_parent", f"the aitm_parent links through '{t.name}' form a cycle"))
    return out


def check_tasks(tasks: List[TaskSpec]) -> None:
    """Raises ValueError listing :func:`task_problems` (``model.tasks[i].<field>: ...``, one per line)."""
    found = task_problems(tasks)
    if found:
        raise ValueError("\n".join(f"model.tasks[{i}].{key}: {msg}" for i, key, msg in found))


def predictions(logits: Dict[str, torch.Tensor], tasks: List[TaskSpec]) -> Dict[str, torch.Tensor]:
    """Impression-space predictions, each task's label kind's
    (:meth:`~mtl_torchrec.data.label_kinds.LabelKind.predict`): probabilities for binary tasks,
    values for regression.

    For an ESMM task the value is pCTCVR; its conditional pCVR is under ``"<task>_given_<parent>"``.
    ``logits`` and the returned values are ``[B]`` each.
    """
    out: Dict[str, torch.Tensor] = {}
    for t in tasks:
        if t.esmm_parent is None:
            out[t.name] = LABEL_KINDS.get(t.type).predict(logits[t.name])
    for t in tasks:
        if t.esmm_parent is not None:
            cond = LABEL_KINDS.get(t.type).predict(logits[t.name])
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
    extra = [TaskSpec(name=conditional_name(t), type=t.type) for t in tasks if t.esmm_parent is not None]
    return list(tasks) + extra


def with_conditional_labels(batch: Batch, tasks: List[TaskSpec]) -> Batch:
    """Adds the labels and masks of :func:`metric_tasks`' conditional entries to ``batch``:
    the task's label, present where the task has a label and the parent is a labelled positive."""
    if all(t.esmm_parent is None for t in tasks):
        return batch
    labels = dict(batch.labels)
    masks = dict(batch.masks)
    weights = dict(batch.weights) if batch.weights is not None else None
    for t in tasks:
        if t.esmm_parent is not None:
            parent = t.esmm_parent
            labels[conditional_name(t)] = batch.labels[t.name]
            masks[conditional_name(t)] = batch.masks[t.name] * batch.masks[parent] * (batch.labels[parent] > 0.5).float()
            if weights is not None and t.name in weights:
                weights[conditional_name(t)] = weights[t.name]
    return Batch(sparse=batch.sparse, dense=batch.dense, labels=labels, masks=masks, group=batch.group, weights=weights)


# Floor of a task's weight sum: an empty batch gives 0 instead of 0/0. A constant, not
# torch.finfo(dtype): TorchRec's pipeline fx-traces this code, where dtypes are proxies.
_MIN_WEIGHT_SUM = 1e-12


def _masked_mean(per_row: torch.Tensor, mask: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``sum(w * m * loss) / sum(w * m)``; without ``weight``, ``w = 1``.

    An empty (all-zero) ``w * m`` gives 0 with a gradient path instead of NaN. Masks are 0/1, so
    unweighted (or all-ones) the denominator is 0 or >= 1 and the value is bitwise that of
    ``sum(m * loss) / max(sum(m), 1)``.
    """
    w = mask if weight is None else weight * mask
    return (per_row * w).sum() / w.sum().clamp_min(_MIN_WEIGHT_SUM)


def check_label_dicts(
    labels: Dict[str, torch.Tensor],
    masks: Optional[Dict[str, torch.Tensor]],
    tasks: Sequence[TaskSpec],
    allow_extra: bool = False,
) -> None:
    """Checks that ``labels`` (and ``masks``, when given) hold an entry for every task of ``tasks``.

    Raises ValueError naming the first missing task (``labels: no entry for task 'rating' ...``)
    or, unless ``allow_extra``, an entry for a task not in ``tasks`` (``labels: unknown task ...``).
    """
    names = [t.name for t in tasks]
    for what, given in (("labels", labels), ("masks", masks)):
        if given is None:
            continue
        for name in names:
            if name not in given:
                raise ValueError(f"{what}: no entry for task '{name}' (tasks: {names}, given: {sorted(given)})")
        if not allow_extra:
            for key in given:
                if key not in names:
                    raise ValueError(f"{what}: unknown task '{key}' (tasks: {names})")


def check_label_values(
    logits: Dict[str, torch.Tensor],
    labels: Dict[str, torch.Tensor],
    masks: Optional[Dict[str, torch.Tensor]],
    tasks: Sequence[TaskSpec],
    weights: Optional[Dict[str, torch.Tensor]] = None,
) -> None:
    """Checks what a wrong input would otherwise turn into a silently wrong loss: every task's
    logits, labels, masks and weights are ``[B]`` of one ``B`` (a ``[B, 1]`` would broadcast to
    ``[B, B]``); masks are 0/1; labelled rows have finite labels, binary ones in {0, 1}, and finite
    weights >= 0; an ESMM task's label is 0 where its parent's is 0 (``parent AND task``).

    Raises ValueError naming the task and the entry (``labels['rating']: ...``).
    """
    for t in tasks:
        logit = logits[t.name]
        if logit.dim() != 1:
            raise ValueError(f"logits['{t.name}']: must be [B], got shape {list(logit.shape)}")
        entries = [("labels", labels[t.name]), ("masks", masks[t.name] if masks is not None else None),
                   ("weights", weights.get(t.name) if weights is not None else None)]
        for what, value in entries:
            if value is not None and tuple(value.shape) != tuple(logit.shape):
                raise ValueError(f"{what}['{t.name}']: must be [B] = {list(logit.shape)} like its logits, "
                                 f"got shape {list(value.shape)}")
        label = labels[t.name].detach().double()
        mask = masks[t.name].detach().double() if masks is not None else torch.ones_like(label)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"masks['{t.name}']: must be 0 or 1")
        on = mask > 0
        if not bool(torch.isfinite(label[on]).all()):
            raise ValueError(f"labels['{t.name}']: a labelled row (mask 1) has a NaN or infinite label")
        kind = LABEL_KINDS.get(t.type)
        if not bool(kind.valid(label[on]).all()):
            raise ValueError(f"labels['{t.name}']: {t.type} labels must be {kind.value_rule} on labelled rows")
        if t.esmm_parent is not None:
            parent = labels[t.esmm_parent].detach().double()
            both = on & ((masks[t.esmm_parent].detach() > 0) if masks is not None else torch.ones_like(on))
            if bool(((label > 0.5) & (parent < 0.5) & both).any()):
                raise ValueError(f"labels['{t.name}']: 1 where its ESMM parent '{t.esmm_parent}' is 0; an ESMM "
                                 f"label is '{t.esmm_parent} AND {t.name}'")
        w = entries[2][1]
        if w is not None and not bool((torch.isfinite(w.detach()[on]) & (w.detach()[on] >= 0)).all()):
            raise ValueError(f"weights['{t.name}']: row weights must be finite and >= 0 on labelled rows")


def multitask_loss(
    logits: Dict[str, torch.Tensor],
    labels: Dict[str, torch.Tensor],
    masks: Optional[Dict[str, torch.Tensor]],
    tasks: Sequence[TaskSpec],
    weights: Optional[Dict[str, torch.Tensor]] = None,
    allow_extra: bool = False,
    check_values: bool = True,
) -> Dict[str, torch.Tensor]:
    """Masked, optionally row-weighted mean loss per task over plain tensors (no ``Batch``).

    Each task's per-row loss is its ``loss`` (:func:`~mtl_torchrec.model.losses.build_loss`; by
    default its label kind's: BCE on the logit for binary tasks, BCE on ``pCTR * pCVR`` against
    ``parent AND task`` for an ESMM task (``esmm_parent``), squared error for regression).
    The mean is ``sum(w m l) / sum(w m)``.

    Args:
        logits: raw tower outputs ``[B]`` per task (e.g. a :class:`~mtl_torchrec.model.head.MultiTaskHead`'s output).
        labels: ``[B]`` float labels per task (binary in {0, 1}; ESMM: ``parent AND task``).
        masks: ``[B]`` 0/1 per task, 1 where the row has a label; None: every row is labelled.
        tasks: the tasks, in order; the loop runs over this list, never over a dict, so the
            function runs inside code that TorchRec's pipeline fx-traces.
        weights: optional ``[B]`` row weights per task (weight 2 counts a row twice).
        allow_extra: accept label/mask entries for tasks not in ``tasks``.
        check_values: run :func:`check_label_values` (shapes, 0/1 masks, label values, the ESMM
            rule, weights) on real dicts; the trainer, whose data path checked its rows already,
            turns it off.

    Returns:
        Dict[str, torch.Tensor]: a scalar loss per task (0 for a task without a labelled row).

    Raises ValueError (see :func:`check_label_dicts`) when ``labels`` or ``masks`` lacks a task
    or, unless ``allow_extra``, names an unknown one; checked only on real dicts (not on the
    proxies of a traced call).

    Example::

        tasks = [TaskSpec("click", "binary"), TaskSpec("rating", "regression")]
        losses = multitask_loss(head(x), {"click": y1, "rating": y2}, None, tasks)
        total = sum(losses.values())
    """
    if isinstance(labels, dict):
        check_label_dicts(labels, masks if isinstance(masks, dict) else None, tasks, allow_extra)
        if check_values and isinstance(logits, dict) and (masks is None or isinstance(masks, dict)):
            check_label_values(logits, labels, masks, tasks, weights if isinstance(weights, dict) else None)
    losses: Dict[str, torch.Tensor] = {}
    for t in tasks:
        label = labels[t.name]
        mask = masks[t.name] if masks is not None else torch.ones_like(label)
        # Unlabelled rows may hold anything (NaN for a missing rating): zeroed before the loss, since
        # NaN * 0 is NaN, and a NaN in where()'s other branch would still reach the gradient.
        label = torch.where(mask > 0, label, torch.zeros_like(label))
        per_row = build_loss(t)(logits, label, t)
        # No truth test of weights: TorchRec's pipeline fx-traces this with proxies.
        w = weights.get(t.name) if weights is not None else None
        if w is not None:
            w = torch.where(mask > 0, w, torch.zeros_like(w))
        losses[t.name] = _masked_mean(per_row, mask, w)
    return losses


def task_losses(out: ModelOutput, batch: Batch, tasks: List[TaskSpec]) -> Dict[str, torch.Tensor]:
    """:func:`multitask_loss` of a :class:`ModelOutput` and a :class:`Batch` (whose labels may hold
    tasks beyond ``tasks``): a scalar loss per task.

    ``batch.weights[task]`` (``[B]``, when given) weights rows: weight 2 counts a row twice.
    """
    return multitask_loss(out.logits, batch.labels, batch.masks, tasks, batch.weights, allow_extra=True,
                          check_values=False)


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

    Args:
        model: returns a :class:`ModelOutput` for a batch (a
            :class:`~mtl_torchrec.model.multitask.MultiTaskModel`).
        tasks: the tasks; ValueError listing :func:`task_problems` when they are inconsistent.
        balancer: a :class:`~mtl_torchrec.model.balancing.Balancer` over the tasks' losses.

    Example::

        train = TrainModule(model, tasks, FixedWeights({"click": 1.0}))   # model/balancing.py
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
        """The model's output, the masked per-task losses and the balanced total.

        Args:
            batch (Batch): features, and ``labels``/``masks`` (``[B]`` each) for every task.

        Returns:
            ``(loss, TrainOutput)``: the scalar total loss to back-propagate, and the detached total,
            per-task losses, impression-space predictions (``[B]`` each) and the model output.
        """
        out: ModelOutput = self.model(batch)
        losses = task_losses(out, batch, self.tasks)
        # Labelled rows per task: balancers leave tasks without any out of the step's weighting.
        labelled = torch.stack([batch.masks[t.name].sum() for t in self.tasks])
        total = self.balancer(losses, out.shared, labelled)
        preds = predictions({t.name: out.logits[t.name].detach() for t in self.tasks}, self.tasks)
        detached = {k: v.detach() for k, v in losses.items()}
        return total, TrainOutput(total.detach(), detached, preds, out)
