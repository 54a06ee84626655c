"""Per-task offline metrics through ``torchrec.metrics``, aggregated across ranks.

Binary tasks: AUC, NE, calibration (mean prediction / observed rate), positive rate, logloss.
Regression tasks: RMSE, MAE. Rows are weighted by the task's label mask, so masked rows (no
label) and padding rows never count, times the task's sample weight (``Batch.weights``) where the
data has one: every metric here, the exact AUC and GAUC included, treats a row of weight 2 exactly
as two copies of the row.

Example::

    metrics = TaskMetrics(tasks, world_size=1, rank=0, batch_size=1024)
    metrics.update(predictions, batch)
    metrics.compute()   # {"click": {"auc": ..., "ne": ..., ...}, "rating": {"rmse": ..., ...}}
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torchrec.metrics.auc import AUCMetric
from torchrec.metrics.calibration import CalibrationMetric
from torchrec.metrics.ctr import CTRMetric
from torchrec.metrics.mae import MAEMetric
from torchrec.metrics.metrics_config import RecComputeMode, RecTaskInfo
from torchrec.metrics.mse import MSEMetric
from torchrec.metrics.ne import NEMetric

from mtl_torchrec.data.batch import Batch
from mtl_torchrec.model.tasks import TaskSpec, is_probability

# The torchrec metrics of tasks whose label kind predicts probabilities (binary), and of the others.
_PROBABILITY = {"auc": AUCMetric, "ne": NEMetric, "calibration": CalibrationMetric, "positive_rate": CTRMetric}
_VALUE = {"mse": MSEMetric, "mae": MAEMetric}


class TaskMetrics:
    """The torchrec metrics of each task, updated batch by batch and reduced across ranks.

    Args:
        tasks: the tasks to measure (binary: AUC, NE, calibration, positive rate, logloss;
            regression: MSE, MAE).
        world_size: number of ranks.
        rank: this rank.
        batch_size: rows per update (passed to the torchrec metrics).
        include: limits the torchrec metrics kept (e.g. without ``auc`` when ranking metrics
            are computed exactly elsewhere, see :func:`binary_auc`); default all.
        reduce: reduce across ranks in :meth:`compute` (a collective); False: this process's
            updates only, no collective (one rank holding every row, as evaluation's rank 0 does).
    """

    def __init__(
        self,
        tasks: List[TaskSpec],
        world_size: int,
        rank: int,
        batch_size: int,
        include: Optional[Sequence[str]] = None,
        reduce: bool = True,
    ) -> None:
        self.tasks = tasks
        self.reduce = reduce
        if not reduce:
            world_size, rank = 1, 0
        self._metrics: Dict[str, Dict[str, object]] = {}
        # Sum of weighted logloss / count per binary task, kept here since torchrec reports NE only.
        self._logloss: Dict[str, torch.Tensor] = {}
        for t in tasks:
            info = RecTaskInfo(name=t.name, label_name=t.name, prediction_name=t.name, weight_name=t.name)
            kinds = _PROBABILITY if is_probability(t) else _VALUE
            self._metrics[t.name] = {
                key: cls(
                    world_size=world_size,
                    my_rank=rank,
                    batch_size=batch_size,
                    tasks=[info],
                    compute_mode=RecComputeMode.UNFUSED_TASKS_COMPUTATION,
                    window_size=10**9,
                    compute_on_all_ranks=True,
                    # torchmetrics' own switch: without it compute() all-gathers every state.
                    sync_on_compute=reduce,
                )
                for key, cls in kinds.items()
                if include is None or key in include
            }
            if is_probability(t):
                self._logloss[t.name] = torch.zeros(2, dtype=torch.float64)

    def update(
        self, predictions: Dict[str, torch.Tensor], batch: Batch, row_weight: Optional[torch.Tensor] = None
    ) -> None:
        """Adds a batch: each row weighs its task's label mask times its sample weight
        (``batch.weights[task]``, when given); ``row_weight`` (0/1 per row) restricts the update to
        a slice of the batch. ``predictions[task]`` and every per-row tensor are ``[B]``."""
        self.update_rows(predictions, batch.labels, batch.masks, batch.weights, row_weight)

    def update_rows(
        self,
        predictions: Dict[str, torch.Tensor],
        labels: Dict[str, torch.Tensor],
        masks: Dict[str, torch.Tensor],
        weights: Optional[Dict[str, torch.Tensor]] = None,
        row_weight: Optional[torch.Tensor] = None,
    ) -> None:
        """:meth:`update` over plain per-task ``[N]`` tensors of any number of rows (e.g. a whole
        rank's scored rows at once, which is how evaluation updates them: one update instead of one
        per batch and slice). ``weights`` may lack tasks (weight 1); ``row_weight`` as in :meth:`update`."""
        for t in self.tasks:
            p = predictions[t.name].detach().float()
            y = labels[t.name].float()
            w = masks[t.name].float()
            if weights is not None and t.name in weights:
                w = w * weights[t.name].float()
            if row_weight is not None:
                w = w * row_weight.float()
            for m in self._metrics[t.name].values():
                m.update(predictions={t.name: p}, labels={t.name: y}, weights={t.name: w})
            if t.name in self._logloss:
                pc = p.clamp(1e-7, 1 - 1e-7)
                ll = -(y * pc.log() + (1 - y) * (1 - pc).log())
                self._logloss[t.name] += torch.stack([(ll * w).sum(), w.sum()]).double()

    def compute(self) -> Dict[str, Dict[str, float]]:
        """Every task's metrics over all updates so far, ``{task: {metric: value}}``, reduced across ranks.

        A collective under a process group (unless built with ``reduce=False``): every rank calls
        it. Binary tasks add ``logloss`` and
        ``count`` (weighted labelled rows); regression tasks with ``mse`` add ``rmse``.
        """
        import torch.distributed as dist

        out: Dict[str, Dict[str, float]] = {}
        for t in self.tasks:
            res: Dict[str, float] = {}
            for key, m in self._metrics[t.name].items():
                values = m.compute()
                # AUC keeps only a window (sized to hold the whole evaluation); others have lifetime.
                chosen = [v for k, v in values.items() if "lifetime" in k] or [
                    v for k, v in values.items() if "window" in k
                ]
                res[key] = float(chosen[0].reshape(-1)[0]) if chosen else float("nan")
            if t.name in self._logloss:
                ll = self._logloss[t.name].clone()
                if self.reduce and dist.is_initialized() and dist.get_world_size() > 1:
                    dist.all_reduce(ll)
                # The mean over the weight sum, whatever its size (weights below 1 are fractions of a
                # row, not a reason to divide by 1); undefined without weight.
                res["logloss"] = float(ll[0] / ll[1]) if float(ll[1]) > 0 else float("nan")
                res["count"] = float(ll[1])
            elif "mse" in res:
                res["rmse"] = res["mse"] ** 0.5
            out[t.name] = res
        return out


def binary_auc(pred: np.ndarray, label: np.ndarray, weight: Optional[np.ndarray] = None) -> float:
    """Exact ROC AUC with tied scores counted as half (as sklearn's ``roc_auc_score``), optionally
    weighted; NaN when only one class is present.

    torchrec's AUC ranks tied scores in sort order instead, which matters for saturated or
    quantised scores, so evaluation reports use this one.

    Example::

        binary_auc(np.array([0.1, 0.5, 0.5]), np.array([0, 1, 0]))   # 0.75
    """
    label = np.asarray(label, dtype=np.float64)
    w = np.ones(len(label)) if weight is None else np.asarray(weight, dtype=np.float64)
    # Rank buckets from the scores as given: float32 scores sort and tie exactly as their float64
    # values do, without a float64 copy of every score.
    _, inv = np.unique(_scores(pred), return_inverse=True)
    pos = np.bincount(inv, weights=w * label)
    neg = np.bincount(inv, weights=w * (1.0 - label))
    del inv, label, w
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (total_pos * total_neg))


def _scores(pred: Any) -> np.ndarray:
    """``pred`` as a float array for sorting and comparing: float32 and float64 as they are (their
    order and ties are those of the float64 values), anything else as float64."""
    pred = np.asarray(pred)
    return pred if pred.dtype in (np.float32, np.float64) else pred.astype(np.float64)


def binary_logloss(pred: np.ndarray, label: np.ndarray) -> float:
    """Mean binary cross-entropy (natural log) of probabilities ``pred`` clipped into
    ``[1e-7, 1 - 1e-7]`` (as :class:`TaskMetrics`' ``logloss``); NaN without rows."""
    if len(pred) == 0:
        return float("nan")
    p = np.clip(np.asarray(pred, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(label, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


# Bins of expected_calibration_error.
ECE_BINS = 20


def expected_calibration_error(
    pred: np.ndarray, label: np.ndarray, bins: int = ECE_BINS, weight: Optional[np.ndarray] = None
) -> float:
    """Expected calibration error over ``bins`` bins of (about) equal row count: rows sorted by
    prediction, cut into ``bins`` consecutive groups, and ``sum over groups of (rows / N) x |mean
    prediction - positive rate|``. Tied predictions always share a bin (a bin starts where its first
    row's score starts in the sorted order), so bins of tied rows can be larger. Equal-count bins
    (Nixon et al., "Measuring Calibration in Deep Learning", 2019) rather than equal-width ones, which
    put nearly all rows of a rare event (a 2 % conversion) into the first bin. 0 is perfectly
    calibrated; NaN without rows. With sample ``weight`` the bins stay row-count bins and each
    row counts ``weight`` times in the sums (a weight of 2 is the row twice, up to the bin edges).

    Example::

        expected_calibration_error(np.array([0.1, 0.1, 0.9, 0.9]), np.array([0, 0, 1, 1]), bins=2)  # 0.1
    """
    p = _scores(pred)
    n = len(p)
    if n == 0:
        return float("nan")
    # Position of each row's score among the sorted scores (its first occurrence: ties share it).
    bin_of = np.searchsorted(np.sort(p), p, side="left")
    bin_of *= bins
    bin_of //= n
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    count = np.bincount(bin_of, minlength=bins)
    # w * p in float64 whatever the scores' dtype (a float32 score widens exactly).
    gap = np.bincount(bin_of, weights=w * p.astype(np.float64, copy=False), minlength=bins)
    gap -= np.bincount(bin_of, weights=w * np.asarray(label, dtype=np.float64), minlength=bins)
    # sum over bins of (weight / total) x |mean p - mean y| = sum |sum w p - sum w y| / total weight.
    total = float(w.sum())
    return float(np.abs(gap[count > 0]).sum() / total) if total > 0 else float("nan")


def grouped_auc(
    pred: np.ndarray, label: np.ndarray, group: np.ndarray, weight: Optional[np.ndarray] = None
) -> Dict[str, float]:
    """GAUC: the AUC within each group (e.g. user), averaged over groups.

    ``gauc`` weights each group by its number of rows, ``gauc_unweighted`` is the plain mean.
    Groups whose rows are all one class have no AUC; they are skipped and counted in
    ``groups_one_class``. Ties count half, as in :func:`binary_auc`.

    With ``weight`` (per row, ``>= 0``), each group's AUC is the weighted AUC (a pair of rows counts
    ``w_pos * w_neg``, as sklearn's ``sample_weight``) and a group's size is its weight sum, so a row
    of weight 2 counts exactly as two copies of it. A group whose positives or negatives all weigh
    0 counts as one-class.

    Example::

        grouped_auc(pred, click, user_id)["gauc"]
    """
    pred = _scores(pred)
    group = np.asarray(group)
    empty = {"gauc": float("nan"), "gauc_unweighted": float("nan"), "groups": 0, "groups_used": 0,
             "groups_one_class": 0}
    if len(pred) == 0:
        return empty
    # Rows by (group, score); float32 scores order exactly as their float64 values. Each large
    # array is dropped once used: this runs on every evaluated row at once.
    order = np.lexsort((pred, group))
    g = group[order]
    p = pred[order]
    # Runs of equal (group, score): ties share one rank bucket.
    new_pair = np.ones(len(p), dtype=bool)
    new_pair[1:] = (g[1:] != g[:-1]) | (p[1:] != p[:-1])
    del p
    pair = np.cumsum(new_pair)
    pair -= 1
    y = np.asarray(label, dtype=np.float64)[order]
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)[order]
    del order
    pos = np.bincount(pair, weights=w * y)
    neg = np.bincount(pair, weights=w * (1.0 - y))
    del pair, y, w
    pair_group_start = np.ones(len(pos), dtype=bool)
    first_rows = np.flatnonzero(new_pair)
    del new_pair
    pair_group_start[1:] = g[first_rows[1:]] != g[first_rows[:-1]]
    del g, first_rows
    gid = np.cumsum(pair_group_start) - 1
    cum_neg = np.cumsum(neg) - neg
    # Negatives ranked below a pair inside its own group: global running sum minus the group's start.
    neg_below = cum_neg - cum_neg[np.flatnonzero(pair_group_start)][gid]
    contrib = np.bincount(gid, weights=pos * (neg_below + 0.5 * neg))
    gpos = np.bincount(gid, weights=pos)
    gneg = np.bincount(gid, weights=neg)
    ok = (gpos > 0) & (gneg > 0)
    n_groups = len(gpos)
    if not ok.any():
        return {**empty, "groups": n_groups, "groups_one_class": n_groups}
    auc = contrib[ok] / (gpos[ok] * gneg[ok])
    size = gpos[ok] + gneg[ok]
    return {
        "gauc": float((auc * size).sum() / size.sum()),
        "gauc_unweighted": float(auc.mean()),
        "groups": n_groups,
        "groups_used": int(ok.sum()),
        "groups_one_class": int((~ok).sum()),
    }


# The columns a console summary shows, in order (reports and eval.json hold everything).
SUMMARY_COLUMNS = ("auc", "gauc", "logloss", "ne", "calibration", "positive_rate", "rmse", "mae")


def _cell(value: Any, width: int) -> str:
    if not isinstance(value, (int, float)):
        return f"{'-':>{width}}"
    # NaN marks a metric that is undefined on these rows (e.g. calibration without positives).
    return f"{'n/a':>{width}}" if math.isnan(value) else f"{value:>{width}.4f}"


def format_table(metrics: Dict[str, Dict[str, Any]], columns: Sequence[str] = SUMMARY_COLUMNS) -> str:
    """A fixed-width per-task table of ``columns`` (those present for some task)."""
    cols = [c for c in columns if any(isinstance(v.get(c), (int, float)) for v in metrics.values())]
    first = max([len("task")] + [len(t) for t in metrics]) + 2
    width = max([12] + [len(c) + 2 for c in cols])
    lines = [f"{'task':<{first}}" + "".join(f"{c:>{width}}" for c in cols)]
    for task, values in metrics.items():
        cells = [_cell(values.get(c), width) for c in cols]
        lines.append(f"{task:<{first}}" + "".join(cells))
    return "\n".join(lines)
