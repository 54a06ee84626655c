"""Offline evaluation of a trained run on any split or data spec, in one process or under torchrun.

The model is rebuilt from the run's ``config.yaml`` and loaded from its DCP checkpoint (under any
rank count and sharding); data is mapped with the run's saved preprocessing, never refitted.
Each rank scores a contiguous shard of the rows. Metrics that add up over rows (NE, logloss,
calibration, positive rate, MSE, MAE) go through ``torchrec.metrics`` across ranks; the scored
rows are gathered on rank 0 for the ranking metrics (exact AUC with ties, GAUC per group),
slices and plots. A task with sample weights (``labels[i].weight_column`` of a data spec) is
weighted in every metric: a row of weight 2 counts as two copies of it, one of weight 0 as none
(``count`` is then the labelled rows of positive weight and ``weight_sum`` their total weight).

Example::

    ctx = init_distributed()
    result = evaluate_run(Path("runs/census"), ctx, split="test")
    if ctx.is_main:
        result.summary["tasks"]["income"]["auc"]
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from mtl_torchrec.config import Config, ConfigError, load_config, to_dict
from mtl_torchrec.core.errors import DataError
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.loader import BatchDataset, make_loader
from mtl_torchrec.data.preprocessing import Preprocessing, far_above
from mtl_torchrec.data.schema import ColumnTable
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.data.spec import ALL_SPLIT
from mtl_torchrec.distributed.checkpoint import (
    BEST,
    LATEST,
    best_checkpoint,
    choose_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
)
from mtl_torchrec.distributed.context import DistContext
from mtl_torchrec.distributed.sharding import shard_module
from mtl_torchrec.eval.calibration import CALIBRATION_FILE, Calibration, before_after, fit_calibration
from mtl_torchrec.eval.metrics import TaskMetrics, binary_auc, expected_calibration_error, grouped_auc
from mtl_torchrec.model.builder import build_train_module
from mtl_torchrec.model.esmm import check_esmm_labels
from mtl_torchrec.model.tasks import (
    TaskSpec,
    conditional_name,
    metric_tasks,
    with_conditional_labels,
)
from mtl_torchrec.model.text import text_cache_root

# torchrec metrics kept per slice; AUC is computed exactly on rank 0 instead (ties count half).
_SUMMED = ("ne", "calibration", "positive_rate", "mse", "mae")


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


def load_run_config(run_dir: Path) -> Config:
    """The run's ``config.yaml``; FileNotFoundError when ``run_dir`` is not a run directory,
    :class:`ConfigError` naming the file when it cannot be read."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    return load_config(path)


def load_eval_data(cfg: Config, run_dir: Path, data_spec: Optional[str]) -> DataBundle:
    """The run's data (or ``data_spec``) mapped with the run's fitted preprocessing."""
    pre_dir = Path(run_dir) / "preprocessing"
    try:
        pre = Preprocessing.load(pre_dir) if (pre_dir / "preprocessing.json").is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{pre_dir / 'preprocessing.json'}: the run's saved preprocessing cannot be read: {e}") from None
    if data_spec is not None:
        if pre is None:
            raise ConfigError(
                f"--data: the run {run_dir} has no fitted preprocessing (trained on data.source="
                f"'{cfg.data.source}'), so a data spec cannot be mapped the way training did"
            )
        cfg.data.source = "spec"
        cfg.data.spec = str(data_spec)
    elif cfg.data.source == "spec" and pre is None:
        raise FileNotFoundError(f"{pre_dir}: the run was trained on a data spec but has no saved preprocessing")
    if cfg.data.source == "spec" and cfg.data.spec and not Path(cfg.data.spec).is_file():
        raise ConfigError(f"data.spec: '{cfg.data.spec}' not found (relative paths are from the working "
                          f"directory; pass --data to point at the spec)")
    return load_data(cfg.data, pre)


def oov_warnings(stats: Dict[str, Any], split: str, text_features: Sequence[str] = ()) -> List[str]:
    """One warning per sparse feature whose share of unknown ids (``stats["oov"][split]``) is far
    above the training split's (``stats["train_oov"]``): above ``max(2 x train, train + 0.2)``. Ids in
    another form than in training (``"u12"`` vs ``"12"``) all fall in the out-of-vocabulary row
    without a word otherwise. Features without a reference rate (runs saved before it) are skipped.
    For ``text_features`` any unknown key or text is a warning: such rows read the "no text" vector
    (the run's text table was encoded from the training run's data)."""
    reference = stats.get("train_oov") or {}
    out: List[str] = []
    for feature, c in (stats.get("oov") or {}).get(split, {}).items():
        if feature in text_features:
            if c.get("unknown"):
                out.append(f"text feature '{feature}': {c['unknown']} of {c['tokens']} rows in split '{split}' have a "
                           f"text or key the run did not encode in training; they read the \"no text\" vector")
            continue
        base, rate = reference.get(feature), c.get("rate")
        if base is None or rate is None or not far_above(rate, base):
            continue
        out.append(f"sparse feature '{feature}': {rate:.1%} of its ids in split '{split}' ({c['unknown']} of "
                   f"{c['tokens']}) are unknown to the run's vocabulary, against {base:.1%} in training; check that "
                   f"the ids have the same form as in the training data")
    return out


def resolve_split(bundle: DataBundle, split: str) -> str:
    """``split`` if the data has it, else ``all`` when that is the data's only split (a spec without a
    split rule); ConfigError naming ``--split`` otherwise.
    """
    if split in bundle.splits:
        return split
    if set(bundle.splits) == {ALL_SPLIT}:
        # A spec without a split rule: every row is evaluation data.
        return ALL_SPLIT
    raise ConfigError(f"--split: '{split}' not in the data (splits: {sorted(bundle.splits)})")


def column_slices(bundle: DataBundle, table: ColumnTable, column: str, top: int = 10) -> Dict[str, np.ndarray]:
    """One row mask per most frequent id of a single-valued sparse column (``"column=value"``),
    named by the raw token where the run's vocabulary has one. Raises ConfigError naming ``--slice``
    and the columns it takes (the single-valued sparse features) for any other column, a multi-valued
    one (tags, a behaviour sequence: several ids per row) included."""
    choices = [f.name for f in bundle.schema.sparse if not f.multi_valued]
    multi = [f.name for f in bundle.schema.sparse if f.multi_valued]
    if column in multi:
        raise ConfigError(f"--slice: '{column}' is multi-valued (several ids per row) and cannot be sliced; slices "
                          f"need one value per row: choose from {choices}")
    if column not in choices:
        raise ConfigError(f"--slice: '{column}' is not a categorical (sparse) column; choose from {choices}")
    ids = table[column]
    vocab = bundle.preprocessing.vocabs.get(column) if bundle.preprocessing is not None else None
    values, counts = np.unique(ids, return_counts=True)
    out: Dict[str, np.ndarray] = {}
    for v in values[np.argsort(-counts, kind="stable")][:top]:
        if vocab is not None and vocab.mode in ("build", "file"):
            name = vocab.tokens[v - 1] if v > 0 else "<out of vocabulary>"
        else:
            name = str(int(v))
        out[f"{column}={name}"] = ids == v
    return out


def _gather(obj: Any, ctx: DistContext) -> List[Any]:
    if not dist.is_initialized() or ctx.world_size == 1:
        return [obj]
    out: List[Any] = [None] * ctx.world_size if ctx.is_main else None  # type: ignore[assignment]
    dist.gather_object(obj, out, dst=0)
    return out if ctx.is_main else []


def score(
    module: torch.nn.Module,
    tasks: List[TaskSpec],
    table: ColumnTable,
    schema: Any,
    ctx: DistContext,
    batch_size: int,
    slices: Dict[str, np.ndarray],
    num_workers: int = 0,
    progress: bool = False,
    calibration: Optional[Calibration] = None,
) -> tuple:
    """Runs the model over this rank's shard; returns (per-slice TaskMetrics, this rank's rows).

    ``tasks`` are the train module's tasks; metrics cover :func:`metric_tasks` of them. With
    ``progress``, rank 0 shows a progress bar over its batches (on stderr). With ``calibration``
    the metrics and rows hold calibrated predictions, and the rows also the raw ones (``r:<task>``).
    """
    train_tasks, tasks = tasks, metric_tasks(tasks)
    ds = BatchDataset(table, schema, batch_size, shuffle=False, rank=ctx.rank, world_size=ctx.world_size)
    start, stop = ds.eval_row_range()
    metrics = {name: TaskMetrics(tasks, ctx.world_size, ctx.rank, batch_size, include=_SUMMED)
               for name in ["all", *slices]}
    names = [t.name for t in tasks]
    parts: Dict[str, List[np.ndarray]] = {}
    pos = start
    was_training = module.training
    module.eval()
    bar = tqdm(total=len(ds), desc="scoring", unit="batch", disable=not (progress and ctx.is_main), leave=False)
    with torch.no_grad():
        for batch in make_loader(ds, num_workers=num_workers):
            bar.update(1)
            batch = with_conditional_labels(batch.to(ctx.device), train_tasks)
            _, out = module(batch)
            preds = calibration.apply(out.predictions) if calibration is not None else out.predictions
            real = max(0, min(batch.batch_size, stop - pos))
            for t in names:
                parts.setdefault(f"p:{t}", []).append(preds[t][:real].float().cpu().numpy())
                if calibration is not None:
                    parts.setdefault(f"r:{t}", []).append(out.predictions[t][:real].float().cpu().numpy())
                parts.setdefault(f"y:{t}", []).append(batch.labels[t][:real].cpu().numpy())
                parts.setdefault(f"m:{t}", []).append(batch.masks[t][:real].cpu().numpy())
                if batch.weights is not None and t in batch.weights:
                    parts.setdefault(f"w:{t}", []).append(batch.weights[t][:real].cpu().numpy())
            parts.setdefault("group", []).append(batch.group[:real].cpu().numpy())
            pos += real
    bar.close()
    module.train(was_training)
    if pos != stop:
        raise RuntimeError(f"rank {ctx.rank} scored {pos - start} rows, expected {stop - start}")
    local = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    # The torchrec metrics take this rank's rows in one update per slice, not one per batch: the
    # same sums, without their per-call cost inside the scoring loop.
    rows = {k: torch.from_numpy(v).to(ctx.device) for k, v in local.items() if k[:2] in ("p:", "y:", "m:", "w:")}
    preds = {t: rows[f"p:{t}"] for t in names}
    labels = {t: rows[f"y:{t}"] for t in names}
    masks = {t: rows[f"m:{t}"] for t in names}
    weights = {t: rows[f"w:{t}"] for t in names if f"w:{t}" in rows}
    for name, m in metrics.items():
        row_weight = None if name == "all" else torch.from_numpy(slices[name][start:stop].astype(np.float32))
        m.update_rows(preds, labels, masks, weights, row_weight.to(ctx.device) if row_weight is not None else None)
    return metrics, local


def _binary_row_metrics(p: np.ndarray, y: np.ndarray, g: Optional[np.ndarray], w: np.ndarray) -> Dict[str, Any]:
    out: Dict[str, Any] = {"auc": binary_auc(p, y, w)}
    if g is not None:
        out.update(grouped_auc(p, y, g, w))
    return out


def _mean(x: np.ndarray, w: Optional[np.ndarray]) -> float:
    """The mean of ``x``, weighted by ``w`` when given; NaN without rows."""
    if len(x) == 0:
        return float("nan")
    return float(x.mean()) if w is None else float(np.average(x, weights=w))


def split_slices(
    bundle: DataBundle, split: str, slice_columns: Sequence[str] = (), slice_top: int = 10
) -> Dict[str, np.ndarray]:
    """The data's own slices of ``split`` plus the ``slice_top`` most frequent values of each column."""
    table = bundle.splits[split]
    slices = {k: np.asarray(v, dtype=bool) for k, v in bundle.slices.get(split, {}).items()}
    for column in slice_columns:
        slices.update(column_slices(bundle, table, column, slice_top))
    for name, mask in slices.items():
        if len(mask) != len(table):
            raise DataError(f"slice '{name}' has {len(mask)} rows but split '{split}' has {len(table)}")
    return slices


def evaluate_split(
    module: torch.nn.Module,
    tasks: List[TaskSpec],
    bundle: DataBundle,
    split: str,
    ctx: DistContext,
    batch_size: int,
    slices: Dict[str, np.ndarray],
    num_workers: int = 0,
    progress: bool = False,
    calibration: Optional[Calibration] = None,
) -> EvalResult:
    """Scores ``split`` with a (sharded or plain) train module and computes every metric.

    All ranks call it; rank 0 gets ``summary`` with ``tasks`` and ``slices`` blocks and the scored
    rows, the other ranks the cross-rank torchrec metrics only. With ``calibration`` every metric is
    of the calibrated predictions and ``summary["calibration"]`` adds each binary entry's
    calibration, ECE, logloss and AUC before and after it. Raises DataError for a split without
    rows (there is nothing to measure).
    """
    table = bundle.splits[split]
    if len(table) == 0:
        raise DataError(f"split '{split}' has no rows: nothing to evaluate")
    t1 = time.perf_counter()
    metrics, local = score(module, tasks, table, bundle.schema, ctx, batch_size, slices, num_workers, progress,
                           calibration)
    # Every task in impression space, plus <task>_given_<parent> on the parent's positives for ESMM tasks.
    conditional = {conditional_name(t): t for t in tasks if t.esmm_parent}
    tasks = metric_tasks(tasks)
    computed = {name: m.compute() for name, m in metrics.items()}
    gathered = _gather(local, ctx)
    score_s = time.perf_counter() - t1
    if not ctx.is_main:
        return EvalResult(summary={"tasks": computed["all"]}, tasks=tasks)

    cat = {k: np.concatenate([g[k] for g in gathered]) for k in gathered[0]}
    names = [t.name for t in tasks]
    rows = ScoredRows(
        predictions={t: cat[f"p:{t}"] for t in names},
        labels={t: cat[f"y:{t}"] for t in names},
        masks={t: cat[f"m:{t}"] > 0 for t in names},
        group=cat["group"] if bundle.schema.group else None,
        weights={t: cat[f"w:{t}"].astype(np.float64) if f"w:{t}" in cat else np.ones(len(cat[f"p:{t}"]))
                 for t in names},
        raw_predictions={t: cat[f"r:{t}"] for t in names} if calibration is not None else None,
    )
    weighted = {t for t in names if f"w:{t}" in cat}

    def task_block(sel: Optional[np.ndarray], summed: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, Any]]:
        block: Dict[str, Dict[str, Any]] = {}
        for t in tasks:
            # A row of weight 0 counts as no row (so weight k is k copies for every k, 0 included).
            m = rows.masks[t.name] & (rows.weights[t.name] > 0)
            m = m if sel is None else m & sel
            res: Dict[str, Any] = {"type": t.type, "count": int(m.sum())}
            w = rows.weights[t.name][m]
            if t.name in weighted:
                res["weight_sum"] = float(w.sum())
            s = summed[t.name]
            if t.type == "binary":
                p, y = rows.predictions[t.name][m], rows.labels[t.name][m]
                res.update(_binary_row_metrics(p, y, rows.group[m] if rows.group is not None else None, w))
                res["logloss"] = s["logloss"]
                # NE divides by the label entropy, which is 0 when only one class is present.
                res["ne"] = s["ne"] if 0.0 < s["positive_rate"] < 1.0 else float("nan")
                # From the rows, not torchrec's calibration: that reports 0 when there is no positive,
                # and mean prediction = calibration x positive rate would then be 0 as well.
                positives = float((w * y).sum(dtype=np.float64))
                predicted = float((w * p).sum(dtype=np.float64))
                res["calibration"] = predicted / positives if positives > 0 else float("nan")
                res["positive_rate"] = s["positive_rate"]
                res["mean_prediction"] = predicted / float(w.sum()) if len(p) else float("nan")
                res["ece"] = expected_calibration_error(p, y, weight=w)
                if t.esmm_parent:
                    res["space"] = f"impression (p({t.esmm_parent}) x p({t.name} | {t.esmm_parent}))"
                if t.name in conditional:
                    c = conditional[t.name]
                    res["space"] = f"{c.esmm_parent} positives only (p({c.name} | {c.esmm_parent}))"
            else:
                res["rmse"] = s["mse"] ** 0.5
                res["mse"] = s["mse"]
                res["mae"] = s["mae"]
                wt = w if t.name in weighted else None
                res["mean_label"] = _mean(rows.labels[t.name][m], wt)
                res["mean_prediction"] = _mean(rows.predictions[t.name][m], wt)
            if res["count"] == 0:
                res = {"type": t.type, "count": 0}
            block[t.name] = res
        return block

    summary: Dict[str, Any] = {
        "split": split,
        "rows": int(len(table)),
        "world_size": ctx.world_size,
        "group": bundle.schema.group,
        "tasks": task_block(None, computed["all"]),
        "slices": {
            name: {"rows": int(mask.sum()), "tasks": task_block(mask, computed[name])}
            for name, mask in slices.items()
        },
    }
    if calibration is not None and rows.raw_predictions is not None:
        summary["calibration"] = {
            "method": calibration.method,
            "fitted_on": calibration.fitted_on,
            "checkpoint_step": calibration.checkpoint_step,
            "tasks": before_after(tasks, rows.raw_predictions, rows.predictions, rows.labels, rows.masks),
        }
    rank0_s = time.perf_counter() - t1 - score_s
    # rows_per_s: scoring plus the cross-rank metric reduction and gather; exact ranking metrics
    # and slices on rank 0 are timed separately.
    summary["timing"] = {"score_s": score_s, "rank0_metrics_s": rank0_s,
                         "rows_per_s": len(table) / max(score_s, 1e-9)}
    return EvalResult(summary=summary, rows=rows, slices=slices, tasks=tasks)


class SplitEvaluator:
    """Evaluates a model on any split of ``data`` with its slices, for the trainer's validation
    and final test metrics (the same code as ``mtl-torchrec evaluate``).

    Example::

        trainer = Trainer(cfg, data, ctx, run_dir, evaluator=SplitEvaluator(data, ctx, 4096))
        trainer.evaluate("test")["tasks"]["click"]["auc"]
    """

    def __init__(
        self, data: DataBundle, ctx: DistContext, batch_size: int, num_workers: int = 0, progress: bool = False
    ) -> None:
        self.data = data
        self.ctx = ctx
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        # Applied to every evaluation once set (after training, by `mtl-torchrec train`).
        self.calibration: Optional[Calibration] = None

    def __call__(self, model: torch.nn.Module, tasks: List[TaskSpec], split: str) -> Dict[str, Any]:
        """``{"tasks": ..., "slices": ...}`` of ``split`` on rank 0 (exact AUC/GAUC on the gathered
        rows; ``"calibration"`` too when :attr:`calibration` is set); other ranks get the cross-rank
        metrics only. All ranks call it."""
        result = evaluate_split(
            model, tasks, self.data, split, self.ctx, self.batch_size, split_slices(self.data, split), self.num_workers,
            self.progress, self.calibration,
        )
        return result.summary


def calibrate_on_split(
    module: torch.nn.Module,
    tasks: List[TaskSpec],
    bundle: DataBundle,
    split: str,
    ctx: DistContext,
    batch_size: int,
    method: str,
    checkpoint_step: Optional[int] = None,
    num_workers: int = 0,
) -> Calibration:
    """Scores ``split`` (normally ``val``) with the model and fits ``method`` for every binary task
    on rank 0 (:func:`~mtl_torchrec.eval.calibration.fit_calibration`); every rank gets the same
    fitted calibration. Collective. DataError when a task's labelled rows hold one class only."""
    result = evaluate_split(module, tasks, bundle, split, ctx, batch_size, {}, num_workers)
    fitted: List[Any] = [None]
    if ctx.is_main:
        rows = result.rows
        assert rows is not None
        try:
            fitted[0] = fit_calibration(method, tasks, rows.predictions, rows.labels, rows.masks, checkpoint_step,
                                        split).to_json()
        except DataError as e:  # every rank raises it, none waits for a broadcast that never comes
            fitted[0] = {"error": str(e)}
    if dist.is_initialized() and ctx.world_size > 1:
        dist.broadcast_object_list(fitted, src=0)
    if "error" in fitted[0]:
        raise DataError(fitted[0]["error"])
    return Calibration.from_json(fitted[0])


def default_checkpoint(cfg: Config, run_dir: Path) -> str:
    """``best`` for a run trained with ``train.select_by`` that has a best checkpoint, else ``latest``."""
    return BEST if cfg.train.select_by is not None and best_checkpoint(run_dir) is not None else LATEST


def run_checkpoint(cfg: Config, run_dir: Path, checkpoint: Optional[str] = None) -> Path:
    """The checkpoint folder of ``run_dir`` to load: ``checkpoint`` (``latest``, ``best`` or
    ``step_N``), or by default :func:`default_checkpoint`'s. Raises FileNotFoundError naming
    ``--checkpoint`` when the named one does not exist, and what ``resolve_checkpoint`` raises."""
    if checkpoint is None:
        # The run's latest as before, or its best one when it was trained with train.select_by.
        return choose_checkpoint(run_dir, BEST) if default_checkpoint(cfg, run_dir) == BEST else resolve_checkpoint(run_dir)
    try:
        return choose_checkpoint(run_dir, checkpoint)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--checkpoint: {e}") from None


def evaluate_run(
    run_dir: Path,
    ctx: DistContext,
    data_spec: Optional[str] = None,
    split: str = "test",
    batch_size: Optional[int] = None,
    slice_columns: Sequence[str] = (),
    slice_top: int = 10,
    progress: bool = False,
    checkpoint: Optional[str] = None,
    calibrate: bool = True,
) -> EvalResult:
    """Loads the run's model and data, scores ``split`` and computes all metrics (see module doc).

    Slices: the data's own (``DataBundle.slices``) plus the ``slice_top`` most frequent values of
    each of ``slice_columns``. With ``progress``, rank 0 reports each stage and a scoring bar on
    stderr. All ranks call it; only rank 0's result has the full summary and the scored rows.

    ``checkpoint``: ``latest``, ``best`` or ``step_N`` (default :func:`default_checkpoint`: the best
    one of a run trained with ``train.select_by``). With ``calibrate`` the run's ``calibration.json``
    is applied when it was fitted for the evaluated checkpoint (a note says when it is not), and
    ``summary["calibration"]`` reports before and after.

    Raises FileNotFoundError when ``run_dir`` has no ``config.yaml`` or no such checkpoint, ConfigError
    for a bad config, ``--split``, ``--slice`` or ``--data``, DataError for bad data, an empty
    split or an unreadable ``calibration.json``, and CheckpointError when the checkpoint is damaged
    or does not match the model.
    """

    def note(message: str) -> None:
        if progress and ctx.is_main:
            print(message, file=sys.stderr, flush=True)

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    ckpt = run_checkpoint(cfg, run_dir, checkpoint)
    calibration: Optional[Calibration] = None
    if calibrate and (run_dir / CALIBRATION_FILE).is_file():
        calibration = Calibration.load(run_dir / CALIBRATION_FILE)
    t0 = time.perf_counter()
    note(f"loading data ({cfg.data.source if data_spec is None else data_spec}) ...")
    bundle = load_eval_data(cfg, run_dir, data_spec)
    bundle = bundle if cfg.model.text.enabled else bundle.without_text()
    split = resolve_split(bundle, split)
    notes = check_esmm_labels(bundle, cfg.model.tasks, [split])
    stats = bundle.preprocessing.stats if bundle.preprocessing is not None else {}
    warnings = oov_warnings(stats, split, [f.name for f in bundle.schema.text_features])
    warnings += [f"text feature '{name}': {n} item texts differ from those the run encoded in training; the run's "
                 f"vectors (the checkpoint) are used, not the new texts" for name, n in
                 (stats.get("text_changed") or {}).items() if n]
    note(f"loaded {sum(len(t) for t in bundle.splits.values())} rows in {time.perf_counter() - t0:.1f} s; "
         f"'{split}' has {len(bundle.splits[split])}")
    if ctx.is_main:
        for message in notes:
            print(f"note: {message}", file=sys.stderr, flush=True)
        for message in warnings:
            print(f"warning: {message}", file=sys.stderr, flush=True)
    slices = split_slices(bundle, split, slice_columns, slice_top)
    empty = [name for name, mask in slices.items() if not mask.any()]
    warnings += [f"slice '{name}' has no rows in split '{split}'" for name in empty]
    if ctx.is_main:
        for name in empty:
            print(f"warning: slice '{name}' has no rows in split '{split}'", file=sys.stderr, flush=True)
    load_s = time.perf_counter() - t0

    module = build_train_module(
        cfg.model,
        bundle,
        cfg.train.loss_balance,
        cfg.train.balance,
        text_cache=text_cache_root(cfg.model.text, cfg.output_dir),
        progress=cfg.train.progress,
    )
    dmp = shard_module(module, ctx, strategy=cfg.train.sharding, sparse_optimizer=cfg.train.sparse_optimizer,
                       sparse_lr=cfg.train.sparse_lr)
    note(f"loading checkpoint {ckpt} ...")
    meta = load_checkpoint(ckpt, dmp)
    if calibration is not None and calibration.checkpoint_step != meta.get("global_step"):
        notes.append(f"{CALIBRATION_FILE} was fitted for step {calibration.checkpoint_step}, not for the evaluated "
                     f"{ckpt.name}: predictions are not calibrated")
        if ctx.is_main:
            print(f"note: {notes[-1]}", file=sys.stderr, flush=True)
        calibration = None
    result = evaluate_split(
        dmp, module.tasks, bundle, split, ctx, batch_size or cfg.data.eval_batch_size, slices, cfg.data.num_workers,
        progress, calibration,
    )
    if not ctx.is_main:
        return result
    summary = {
        "run": str(run_dir),
        "checkpoint": str(ckpt),
        "checkpoint_name": ckpt.name,
        "checkpoint_step": meta.get("global_step"),
        "data": {"source": cfg.data.source, "spec": cfg.data.spec},
        **result.summary,
    }
    summary["timing"]["load_data_s"] = load_s
    if bundle.preprocessing is not None:
        summary["data"]["stats"] = stats
        summary["data"]["oov_rate"] = {f: c["rate"] for f, c in (stats.get("oov") or {}).get(split, {}).items()}
        summary["data"]["train_oov_rate"] = stats.get("train_oov")
    summary["warnings"] = warnings
    summary["notes"] = notes
    summary["config"] = {"model": to_dict(cfg.model)}
    result.summary = summary
    return result
