"""The one scoring and metrics path of evaluation: :func:`score_rows` runs the model over a split's
rows given as any sequence of tables (a whole in-memory split, or a data spec's files chunk by
chunk), :func:`split_metrics` computes every metric from the scored rows.

Rows are batched with :class:`~mtl_torchrec.data.loader.BatchDataset`'s interleaved evaluation
layout: rank ``r`` scores the ``r``-th ``batch_size`` rows of every ``batch_size * world_size``
rows, so a rank's batches hold the same rows however the split is cut into tables (on one rank,
the batches are the split's consecutive ``batch_size`` rows). Per row only what the metrics need
is kept: predictions, labels, label masks and sample weights per task, and the group id.

The metrics are then computed as on the whole split at once: rank 0 gathers every rank's rows and
puts them back in row order, and computes every metric from them: the ``torchrec.metrics`` (NE,
logloss, calibration, positive rate, MSE, MAE; one update per slice, no cross-rank reduction, so
any rank count gives one rank's numbers to the last bit), the exact AUC (ties count half), GAUC,
ECE and the calibration block.

Example::

    scored = score_rows(dmp, module.tasks, [bundle.splits["test"]], bundle.schema, ctx, 4096)
    result = split_metrics(scored, module.tasks, "test", ctx, 4096, slices={}, group=bundle.schema.group)
    result.summary["tasks"]["click"]["auc"]      # rank 0
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Set

import numpy as np
import torch
import torch.distributed as dist

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.core.memory import trim_heap
from mtl_torchrec.core.progress import progress_bar
from mtl_torchrec.data.loader import BatchDataset, interleaved_rows, make_loader
from mtl_torchrec.data.schema import ColumnTable, Schema
from mtl_torchrec.distributed.context import DistContext
from mtl_torchrec.eval.calibration import Calibration, before_after
from mtl_torchrec.eval.metrics import TaskMetrics, binary_auc, expected_calibration_error, grouped_auc
from mtl_torchrec.model.tasks import TaskSpec, conditional_name, is_probability, metric_tasks, with_conditional_labels

# torchrec metrics kept per slice; AUC is computed exactly on rank 0 instead (ties count half).
_SUMMED = ("ne", "calibration", "positive_rate", "mse", "mae")
# Row columns the torchrec metrics read (predictions, labels, masks, weights).
_METRIC_COLUMNS = ("p:", "y:", "m:", "w:")
# From this many rows on, the heap is trimmed after each metric that sorts or sums every row (tens
# of MiB of temporaries each, which glibc would otherwise keep); below, it is not worth a heap walk.
TRIM_ROWS = 1 << 20


@dataclass
class ScoredRows:
    """Every evaluated row on rank 0: predictions (calibrated when evaluation applies a
    calibration), labels, label masks and sample weights per task (``weights[task]``: float64, 1 on
    every row of an unweighted task), group ids; ``raw_predictions`` are the model's own when a
    calibration was applied (else None)."""

    predictions: Dict[str, np.ndarray]
    labels: Dict[str, np.ndarray]
    masks: Dict[str, np.ndarray]
    group: Optional[np.ndarray]
    weights: Dict[str, np.ndarray] = field(default_factory=dict)
    raw_predictions: Optional[Dict[str, np.ndarray]] = None


@dataclass
class EvalResult:
    """One evaluation: the ``eval.json`` summary, the evaluated tasks
    (:func:`~mtl_torchrec.model.tasks.metric_tasks`), and on rank 0 the scored rows and the slices
    (row masks).
    """

    # The eval.json content (rank 0; other ranks get the torchrec metrics only).
    summary: Dict[str, Any]
    rows: Optional[ScoredRows] = None
    slices: Dict[str, np.ndarray] = field(default_factory=dict)
    tasks: List[TaskSpec] = field(default_factory=list)


@dataclass
class RankRows:
    """This rank's scored rows of a split, in the order it scored them (see the module docstring).

    ``columns``: ``p:<task>`` predictions (calibrated under a calibration), ``r:<task>`` the model's
    own then, ``y:<task>`` labels, ``m:<task>`` label masks (float32 0/1), ``w:<task>`` sample
    weights of weighted tasks, ``group`` group ids (only with a group column); one entry per
    :func:`~mtl_torchrec.model.tasks.metric_tasks` task. ``total``: the split's rows on all ranks.
    ``batch_size``: the rows per rank per step they were scored in (their layout).
    """

    columns: Dict[str, np.ndarray]
    total: int
    batch_size: int


def score_rows(
    module: torch.nn.Module,
    tasks: List[TaskSpec],
    tables: Iterable[ColumnTable],
    schema: Schema,
    ctx: DistContext,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = False,
    calibration: Optional[Calibration] = None,
    total_rows: Optional[int] = None,
    desc: str = "scoring",
) -> RankRows:
    """Runs the model over the rows of ``tables`` (consecutive pieces of one split, in row order;
    every rank gets the same ones) in batches of ``batch_size`` per rank, in evaluation mode
    without gradients; returns this rank's rows.

    ``module`` is the (sharded or plain) train module, ``tasks`` its tasks; rows are kept for
    :func:`~mtl_torchrec.model.tasks.metric_tasks` of them. Tables are batched as they come, so
    only the rows of one table and fewer than ``batch_size * world_size`` rows carried over from
    the previous ones are held besides the kept columns. With ``progress``, rank 0 shows a progress
    bar over its batches (``total_rows``, when known, sizes it; ``desc`` labels it, e.g. with the
    split). With ``calibration`` the
    predictions are calibrated and the raw ones kept as ``r:<task>``.
    """
    train_tasks, tasks = tasks, metric_tasks(tasks)
    names = [t.name for t in tasks]
    step_rows = batch_size * ctx.world_size
    parts: Dict[str, List[np.ndarray]] = {}
    total = 0
    bar = progress_bar(total=None if total_rows is None else math.ceil(total_rows / step_rows), desc=desc,
                       unit="batch", enabled=progress and ctx.is_main)

    def run(segment: ColumnTable) -> None:
        ds = BatchDataset(segment, schema, batch_size, shuffle=False, rank=ctx.rank, world_size=ctx.world_size,
                          interleave=True)
        reals = ds.real_rows()
        # One array per kept column and segment, filled batch by batch: a few large blocks rather than
        # many small ones between the blocks of each chunk read (which would fragment the heap).
        kept: Dict[str, np.ndarray] = {}
        pos = 0

        def keep(key: str, value: torch.Tensor, real: int) -> None:
            rows = value[:real].cpu().numpy()
            if key not in kept:
                kept[key] = np.empty(sum(reals), dtype=rows.dtype)
            kept[key][pos:pos + real] = rows

        for batch, real in zip(make_loader(ds, num_workers=num_workers), reals):
            bar.update(1)
            batch = with_conditional_labels(batch.to(ctx.device), train_tasks)
            _, out = module(batch)
            preds = calibration.apply(out.predictions) if calibration is not None else out.predictions
            for t in names:
                keep(f"p:{t}", preds[t].float(), real)
                if calibration is not None:
                    keep(f"r:{t}", out.predictions[t].float(), real)
                keep(f"y:{t}", batch.labels[t], real)
                keep(f"m:{t}", batch.masks[t], real)
                if batch.weights is not None and t in batch.weights:
                    keep(f"w:{t}", batch.weights[t], real)
            if schema.group:
                keep("group", batch.group, real)
            pos += real
        for key, rows in kept.items():
            parts.setdefault(key, []).append(rows)

    was_training = module.training
    module.eval()
    # Rows waiting for a whole step of every rank, and the latest table: held back one table, so
    # that a split given as one table is batched as one (one loader) and the last rows are padded.
    carried: List[ColumnTable] = []
    held: Optional[ColumnTable] = None
    with torch.no_grad():
        for table in tables:
            # Whatever reading the table (or scoring the last one) freed goes back to the system before
            # more is allocated, so that memory follows the live rows (see mtl_torchrec.core.memory).
            trim_heap()
            if len(table) == 0:
                continue
            total += len(table)
            if held is not None:
                carried.append(held)
                rows = sum(len(t) for t in carried)
                whole = rows - rows % step_rows
                if whole:
                    joined = ColumnTable.concat(carried)
                    run(joined.take(np.arange(whole)) if whole < rows else joined)
                    carried = [joined.take(np.arange(whole, rows))] if whole < rows else []
            held = table
        if held is not None:
            run(ColumnTable.concat(carried + [held]))
    bar.close()
    module.train(was_training)
    columns = {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in parts.items()}
    parts.clear()
    trim_heap()
    return RankRows(columns, total, batch_size)


def _gather(obj: Any, ctx: DistContext) -> List[Any]:
    if not dist.is_initialized() or ctx.world_size == 1:
        return [obj]
    out: List[Any] = [None] * ctx.world_size if ctx.is_main else None  # type: ignore[assignment]
    dist.gather_object(obj, out, dst=0)
    return out if ctx.is_main else []


def rows_in_order(scored: RankRows, ctx: DistContext) -> Optional[Dict[str, np.ndarray]]:
    """Every rank's rows gathered on rank 0 and put back in the split's row order (None on the
    other ranks). Collective."""
    gathered = _gather(scored.columns, ctx)
    if not ctx.is_main:
        return None
    if len(gathered) == 1:
        return gathered[0]
    n, world = scored.total, len(gathered)
    out: Dict[str, np.ndarray] = {}
    for key in list(gathered[0]):
        column = np.empty(n, dtype=gathered[0][key].dtype)
        for rank, rows in enumerate(gathered):
            column[interleaved_rows(n, scored.batch_size, rank, world)] = rows.pop(key)
        out[key] = column
    return out


def _no_trim() -> bool:
    return False


def _probability_metrics(p: np.ndarray, y: np.ndarray, g: Optional[np.ndarray], w: np.ndarray,
                         summed: Dict[str, float]) -> Dict[str, Any]:
    """The metrics of a task whose label kind predicts probabilities (binary), on its selected rows:
    exact AUC and GAUC (with a group column), logloss/NE/positive rate from the ``summed`` torchrec
    metrics, calibration, mean prediction and ECE from the rows."""
    out: Dict[str, Any] = {"auc": binary_auc(p, y, w)}
    if g is not None:
        out.update(grouped_auc(p, y, g, w))
    out["logloss"] = summed["logloss"]
    # NE divides by the label entropy, which is 0 when only one class is present.
    out["ne"] = summed["ne"] if 0.0 < summed["positive_rate"] < 1.0 else float("nan")
    # From the rows, not torchrec's calibration: that reports 0 when there is no positive,
    # and mean prediction = calibration x positive rate would then be 0 as well.
    positives = float((w * y).sum(dtype=np.float64))
    predicted = float((w * p).sum(dtype=np.float64))
    out["calibration"] = predicted / positives if positives > 0 else float("nan")
    out["positive_rate"] = summed["positive_rate"]
    out["mean_prediction"] = predicted / float(w.sum()) if len(p) else float("nan")
    out["ece"] = expected_calibration_error(p, y, weight=w)
    return out


def _value_metrics(p: np.ndarray, y: np.ndarray, w: Optional[np.ndarray], summed: Dict[str, float]) -> Dict[str, Any]:
    """The metrics of a task whose label kind predicts values (regression): RMSE, MSE and MAE from
    the ``summed`` torchrec metrics, mean label and mean prediction from the selected rows
    (weighted by ``w`` when the task has sample weights)."""
    return {"rmse": summed["mse"] ** 0.5, "mse": summed["mse"], "mae": summed["mae"],
            "mean_label": _mean(y, w), "mean_prediction": _mean(p, w)}


def _space(t: TaskSpec, conditional: Dict[str, TaskSpec]) -> Optional[str]:
    """Which space an ESMM entry is evaluated in (impression, or the parent's positives); None otherwise."""
    if t.name in conditional:
        c = conditional[t.name]
        return f"{c.esmm_parent} positives only (p({c.name} | {c.esmm_parent}))"
    if t.esmm_parent:
        return f"impression (p({t.esmm_parent}) x p({t.name} | {t.esmm_parent}))"
    return None


def _task_entry(rows: ScoredRows, t: TaskSpec, sel: Optional[np.ndarray], summed: Dict[str, float],
                weighted: bool, space: Optional[str]) -> Dict[str, Any]:
    """One task's block of ``eval.json`` over the rows ``sel`` (None: all): its label kind, the
    count of labelled rows of weight > 0, the weight sum of a weighted task, and the metrics of its
    label kind (nothing more without rows)."""
    # A row of weight 0 counts as no row (so weight k is k copies for every k, 0 included).
    m = rows.masks[t.name] & (rows.weights[t.name] > 0)
    m = m if sel is None else m & sel
    res: Dict[str, Any] = {"type": t.type, "count": int(m.sum())}
    if res["count"] == 0:
        return res
    # Every row selected (the whole split of a fully labelled task): the columns themselves, the
    # same values without a copy of each.
    every = res["count"] == len(m)

    def pick(column: np.ndarray) -> np.ndarray:
        return column if every else column[m]

    w = pick(rows.weights[t.name])
    if weighted:
        res["weight_sum"] = float(w.sum())
    p, y = pick(rows.predictions[t.name]), pick(rows.labels[t.name])
    if is_probability(t):
        res.update(_probability_metrics(p, y, pick(rows.group) if rows.group is not None else None, w, summed))
        if space is not None:
            res["space"] = space
    else:
        res.update(_value_metrics(p, y, w if weighted else None, summed))
    return res


def _task_block(rows: ScoredRows, tasks: List[TaskSpec], conditional: Dict[str, TaskSpec], weighted: Set[str],
                sel: Optional[np.ndarray], summed: Dict[str, Dict[str, float]], trim: Any) -> Dict[str, Dict[str, Any]]:
    """``{task: entry}`` (:func:`_task_entry`) of every evaluated task over the rows ``sel``."""
    block: Dict[str, Dict[str, Any]] = {}
    for t in tasks:
        block[t.name] = _task_entry(rows, t, sel, summed[t.name], t.name in weighted, _space(t, conditional))
        # Each entry sorts every selected row; its temporaries go back before the next one's.
        trim()
    return block


def _summed_metrics(ordered: Dict[str, np.ndarray], tasks: List[TaskSpec], slices: Dict[str, np.ndarray],
                    batch_size: int, trim: Any) -> Dict[str, Dict[str, Dict[str, float]]]:
    """The summed torchrec metrics (:data:`_SUMMED`) of every task over all rows (``"all"``) and
    over each slice: ``{slice: {task: {metric: value}}}``.

    Computed here on rank 0, which holds every row in row order: one update per slice and no
    collective, so any rank count gives the numbers of one rank to the last bit (reducing shares
    across ranks cost ~90 all-gathers, one per metric state).
    """
    names = [t.name for t in tasks]
    rows_t = {k: torch.from_numpy(v) for k, v in ordered.items() if k[:2] in _METRIC_COLUMNS}
    preds = {t: rows_t[f"p:{t}"] for t in names}
    labels = {t: rows_t[f"y:{t}"] for t in names}
    masks = {t: rows_t[f"m:{t}"] for t in names}
    weights = {t: rows_t[f"w:{t}"] for t in names if f"w:{t}" in rows_t}
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name in ["all", *slices]:
        m = TaskMetrics(tasks, 1, 0, batch_size, include=_SUMMED, reduce=False)
        row_weight = None if name == "all" else torch.from_numpy(slices[name].astype(np.float32))
        m.update_rows(preds, labels, masks, weights, row_weight)
        trim()
        out[name] = m.compute()
    return out


def _scored_rows(ordered: Dict[str, np.ndarray], names: List[str], n: int, group: Optional[str],
                 calibrated: bool) -> ScoredRows:
    """The :class:`ScoredRows` of the rows gathered in order (``ordered``, see :func:`rows_in_order`)."""
    return ScoredRows(
        predictions={t: ordered[f"p:{t}"] for t in names},
        labels={t: ordered[f"y:{t}"] for t in names},
        masks={t: ordered[f"m:{t}"] > 0 for t in names},
        group=ordered["group"] if group else None,
        # An unweighted task's weights: a read-only view of 1.0 repeated (no memory per row).
        weights={t: ordered[f"w:{t}"].astype(np.float64) if f"w:{t}" in ordered else np.broadcast_to(np.float64(1.0), (n,))
                 for t in names},
        raw_predictions={t: ordered[f"r:{t}"] for t in names} if calibrated else None,
    )


def _mean(x: np.ndarray, w: Optional[np.ndarray]) -> float:
    """The mean of ``x``, weighted by ``w`` when given; NaN without rows."""
    if len(x) == 0:
        return float("nan")
    return float(x.mean()) if w is None else float(np.average(x, weights=w))


def split_metrics(
    scored: RankRows,
    tasks: List[TaskSpec],
    split: str,
    ctx: DistContext,
    slices: Dict[str, np.ndarray],
    group: Optional[str],
    calibration: Optional[Calibration] = None,
    started: Optional[float] = None,
) -> EvalResult:
    """Every metric of the scored rows of ``split`` (from :func:`score_rows` on every rank; all
    ranks call it).

    ``tasks`` are the train module's tasks, ``slices`` named row masks over the split's rows (every
    rank), ``group`` the schema's group column. Rank 0 gets ``summary`` with ``tasks`` and ``slices``
    blocks and the scored rows, the other ranks an empty ``tasks`` block. Each task's metrics are
    those of its label kind (binary: AUC, GAUC, NE, logloss, calibration, ECE; regression: RMSE,
    MSE, MAE). With ``calibration`` (the one the rows were scored with) ``summary["calibration"]``
    adds each binary entry's calibration, ECE, logloss and AUC before and after it. ``started`` (a
    ``time.perf_counter()`` value) is when scoring began, for ``summary["timing"]``. Raises
    DataError for a split without rows (there is nothing to measure).
    """
    n = scored.total
    if n == 0:
        raise DataError(f"split '{split}' has no rows: nothing to evaluate")
    t1 = time.perf_counter() if started is None else started
    # Every task in impression space, plus <task>_given_<parent> on the parent's positives for ESMM tasks.
    conditional = {conditional_name(t): t for t in tasks if t.esmm_parent}
    tasks = metric_tasks(tasks)
    names = [t.name for t in tasks]
    ordered = rows_in_order(scored, ctx)
    if not ctx.is_main:
        return EvalResult(summary={"tasks": {}}, tasks=tasks)

    assert ordered is not None
    trim = trim_heap if n >= TRIM_ROWS else _no_trim
    computed = _summed_metrics(ordered, tasks, slices, scored.batch_size, trim)
    score_s = time.perf_counter() - t1
    rows = _scored_rows(ordered, names, n, group, calibration is not None)
    weighted = {t for t in names if f"w:{t}" in ordered}
    blocks = {name: _task_block(rows, tasks, conditional, weighted, None if name == "all" else slices[name],
                                summed, trim) for name, summed in computed.items()}
    summary: Dict[str, Any] = {
        "split": split,
        "rows": int(n),
        "world_size": ctx.world_size,
        "group": group,
        "tasks": blocks["all"],
        "slices": {name: {"rows": int(mask.sum()), "tasks": blocks[name]} for name, mask in slices.items()},
    }
    if calibration is not None and rows.raw_predictions is not None:
        summary["calibration"] = {
            "method": calibration.method,
            "fitted_on": calibration.fitted_on,
            "checkpoint_step": calibration.checkpoint_step,
            "tasks": before_after(tasks, rows.raw_predictions, rows.predictions, rows.labels, rows.masks),
        }
    rank0_s = time.perf_counter() - t1 - score_s
    # rows_per_s: scoring (with reading the rows, when they are streamed), the gather to rank 0 and
    # the summed torchrec metrics there; exact ranking metrics and slices on rank 0 are timed separately.
    summary["timing"] = {"score_s": score_s, "rank0_metrics_s": rank0_s, "rows_per_s": n / max(score_s, 1e-9)}
    return EvalResult(summary=summary, rows=rows, slices=slices, tasks=tasks)
