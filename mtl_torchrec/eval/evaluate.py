"""Offline evaluation of a trained run on any split or data spec, in one process or under torchrun.

The model is rebuilt from the run's ``config.yaml`` and loaded from its DCP checkpoint (under any
rank count and sharding); data is mapped with the run's saved preprocessing, never refitted. The
files of a data-spec run (or of ``--data``: a spec, or CSV/Parquet files read with the run's spec)
are streamed chunk by chunk (:mod:`mtl_torchrec.eval.sources`): each chunk is converted, the
evaluated split's rows are scored, and per row only what the metrics need is kept, so memory
does not grow with the rows' features. Built-in sources are loaded whole. Either way the rows go
through one scoring and metrics path (:mod:`mtl_torchrec.eval.scoring`): every rank scores its
share of each step's rows; the scored rows are gathered on rank 0, which computes every metric
from them: those that add up over rows (NE, logloss, calibration, positive rate, MSE, MAE) through
``torchrec.metrics``, the ranking metrics (exact AUC with ties, GAUC per group), slices and plots;
so any rank count gives one rank's numbers. A task with
sample weights (``labels[i].weight_column`` of a data spec) is weighted in every metric: a row of
weight 2 counts as two copies of it, one of weight 0 as none (``count`` is then the labelled rows
of positive weight and ``weight_sum`` their total weight).

Example::

    ctx = init_distributed()
    result = evaluate_run(Path("runs/census"), ctx, split="test")
    if ctx.is_main:
        result.summary["tasks"]["income"]["auc"]
"""

from __future__ import annotations

import glob
import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from mtl_torchrec.config import Config, ConfigError, load_config, to_dict
from mtl_torchrec.core.errors import DataError
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.preprocessing import Preprocessing, oov_warnings, skipped_rows_suffix, skipped_rows_warnings
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.data.spec import DataSpec, load_spec, spec_files
from mtl_torchrec.data.spec.build import check_feature_layout
from mtl_torchrec.data.spec.features import file_columns, files_spec
from mtl_torchrec.data.spec.sections import LabelColumn
from mtl_torchrec.distributed.checkpoint.dcp_io import load_checkpoint
from mtl_torchrec.distributed.checkpoint.run_dir import (
    BEST,
    LATEST,
    best_checkpoint,
    choose_checkpoint,
    resolve_checkpoint,
)
from mtl_torchrec.distributed.context import DistContext
from mtl_torchrec.distributed.sharding import shard_module
from mtl_torchrec.eval.calibration import CALIBRATION_FILE, Calibration, fit_calibration
from mtl_torchrec.eval.scoring import EvalResult, ScoredRows, score_rows, split_metrics
from mtl_torchrec.eval.sources import (
    BundleSource,
    EvalSource,
    StreamSource,
    column_slices,
    resolve_split,
    split_slices,
)
from mtl_torchrec.model.builder import build_train_module
from mtl_torchrec.model.tasks import TaskSpec
from mtl_torchrec.model.text import text_cache_root

logger = logging.getLogger(__name__)

__all__ = [
    "EvalResult",
    "ScoredRows",
    "SplitEvaluator",
    "calibrate_on_split",
    "column_slices",
    "evaluate_run",
    "evaluate_split",
    "load_eval_data",
    "load_run_config",
    "oov_warnings",
    "resolve_split",
    "run_checkpoint",
    "split_slices",
]


def load_run_config(run_dir: Path) -> Config:
    """The run's ``config.yaml``; FileNotFoundError when ``run_dir`` is not a run directory,
    :class:`ConfigError` naming the file when it cannot be read."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    return load_config(path)


def run_preprocessing(cfg: Config, run_dir: Path, data: Optional[str]) -> Optional[Preprocessing]:
    """The run's saved preprocessing (None for a run of a built-in source). DataError when it cannot
    be read, ConfigError when ``data`` (``--data``) is given for a run without one,
    FileNotFoundError for a data-spec run that lacks it."""
    pre_dir = Path(run_dir) / "preprocessing"
    try:
        pre = Preprocessing.load(pre_dir) if (pre_dir / "preprocessing.json").is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{pre_dir / 'preprocessing.json'}: the run's saved preprocessing cannot be read: {e}") from None
    if data is not None:
        if pre is None:
            raise ConfigError(
                f"--data: the run {run_dir} has no fitted preprocessing (trained on data.source="
                f"'{cfg.data.source}'), so a data spec cannot be mapped the way training did"
            )
    elif cfg.data.source == "spec" and pre is None:
        raise FileNotFoundError(f"{pre_dir}: the run was trained on a data spec but has no saved preprocessing")
    return pre


def _point_at_spec(cfg: Config, data_spec: Optional[str]) -> None:
    """Sets ``cfg.data`` to read ``data_spec`` (when given); ConfigError naming ``data.spec`` when the
    spec to read is not a file."""
    if data_spec is not None:
        cfg.data.source = "spec"
        cfg.data.spec = str(data_spec)
    if cfg.data.source == "spec" and cfg.data.spec and not Path(cfg.data.spec).is_file():
        raise ConfigError(f"data.spec: '{cfg.data.spec}' not found (relative paths are from the working "
                          f"directory; pass --data to point at the spec)")


def load_eval_data(cfg: Config, run_dir: Path, data_spec: Optional[str]) -> DataBundle:
    """The run's data (or ``data_spec``) loaded whole and mapped with the run's fitted preprocessing
    (for scoring benchmarks; :func:`evaluate_run` streams data specs instead)."""
    pre = run_preprocessing(cfg, run_dir, data_spec)
    _point_at_spec(cfg, data_spec)
    return load_data(cfg.data, pre)


def is_spec_path(data: str) -> bool:
    """Whether ``--data`` names a YAML data spec (else CSV/Parquet files or a glob of them)."""
    return data.endswith((".yaml", ".yml"))


def eval_source(cfg: Config, run_dir: Path, data: Optional[str], split: str, slice_columns: Sequence[str] = (),
                slice_top: int = 10, stream: bool = True) -> EvalSource:
    """Where the evaluated rows come from: the run's data spec or ``data`` (a spec, or CSV/Parquet
    files read with the run's spec's column options), streamed chunk by chunk; a built-in source's
    bundle, loaded whole (a data spec too with ``stream=False``). ``cfg.data`` is pointed at ``data``.

    Raises, before any row is scored: what :func:`run_preprocessing` raises; ConfigError naming
    ``data.spec``, ``--split`` or ``--slice``; FileNotFoundError when ``data`` matches no file;
    DataError for files without the feature columns or without the label column of a task of the
    run (naming them), for a spec whose features differ from the run's, and what loading a
    built-in source raises.
    """
    pre = run_preprocessing(cfg, run_dir, data)
    text = cfg.model.text.enabled
    if data is not None and not is_spec_path(data):
        assert pre is not None
        return _files_source(cfg, pre, data, split, slice_columns, slice_top)
    _point_at_spec(cfg, data)
    if stream and cfg.data.source == "spec" and cfg.data.spec:
        assert pre is not None
        return StreamSource(load_spec(cfg.data.spec), pre, split, cfg.model.tasks, text, slice_columns, slice_top)
    bundle = load_data(cfg.data, pre)
    bundle = bundle if text else bundle.without_text()
    return BundleSource(bundle, split, cfg.model.tasks, slice_columns, slice_top)


def _files_source(cfg: Config, pre: Preprocessing, data: str, split: str, slice_columns: Sequence[str],
                  slice_top: int) -> EvalSource:
    """CSV/Parquet files ``data`` (a path or glob) read with the run's spec (its column options and
    slices; no split rule, so every row is in split ``all``)."""
    if not cfg.data.spec or not Path(cfg.data.spec).is_file():
        raise ConfigError(f"data.spec: '{cfg.data.spec}' not found (relative paths are from the working directory); "
                          f"--data files are read with the run's spec")
    run_spec = load_spec(cfg.data.spec)
    check_feature_layout(run_spec, pre)
    found = sorted(glob.glob(data))
    if not found:
        raise FileNotFoundError(f"--data: nothing matches '{data}'")
    spec = files_spec(run_spec, found, text=cfg.model.text.enabled, slices=True)
    have = {lab.task for lab in spec.labels}
    tasks = {t.name for t in cfg.model.tasks}
    missing = [lab for lab in run_spec.labels if lab.task in tasks and lab.task not in have]
    if missing:
        raise DataError(f"--data: {_lacking_labels(run_spec, spec, missing)}; evaluation needs every task's labels "
                        f"(mtl-torchrec predict scores rows without them)")
    cfg.data.source, cfg.data.spec = "spec", data
    return StreamSource(spec, pre, split, cfg.model.tasks, cfg.model.text.enabled, slice_columns, slice_top,
                        check_layout=False)


def _lacking_labels(run_spec: DataSpec, spec: DataSpec, missing: Sequence[LabelColumn]) -> str:
    """``"<file> lacks the label column(s) 'w' (task 'click': labels[0].weight_column), ..."``: the first
    of ``spec``'s files lacking a column of each ``missing`` label (its label, mask or weight column)."""
    parts: Dict[str, List[str]] = {}
    for lab in missing:
        i = run_spec.labels.index(lab)
        keys = [(c, k) for c, k in ((lab.column, "column"), (lab.mask_column, "mask_column"),
                                    (lab.weight_column, "weight_column")) if c]
        for path, _ in spec_files(spec):
            have = set(file_columns(spec, path))
            gone = [f"'{c}' (task '{lab.task}': labels[{i}].{k})" for c, k in keys if c not in have]
            if gone:
                parts.setdefault(path, []).extend(gone)
                break
    return "; ".join(f"{path} lacks the label column(s) {', '.join(named)}" for path, named in parts.items())


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
    """Scores ``split`` of a loaded bundle with a (sharded or plain) train module and computes every
    metric: :func:`~mtl_torchrec.eval.scoring.score_rows` over the split's table, then
    :func:`~mtl_torchrec.eval.scoring.split_metrics` (see there for what each rank gets). All ranks
    call it. Raises DataError for a split without rows (there is nothing to measure).
    """
    table = bundle.splits[split]
    started = time.perf_counter()
    scored = score_rows(module, tasks, [table], bundle.schema, ctx, batch_size, num_workers, progress, calibration,
                        total_rows=len(table), desc=f"scoring {split}")
    return split_metrics(scored, tasks, split, ctx, slices, bundle.schema.group, calibration, started)


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
    stream: bool = True,
) -> EvalResult:
    """Loads the run's model and data, scores ``split`` and computes all metrics (see module doc).

    ``data_spec`` (``--data``): another YAML data spec, or CSV/Parquet files (a path or glob) read
    with the run's spec (no split rule: every row is in split ``all``; each task's label column
    is required). A data spec (the run's or ``data_spec``) is streamed chunk by chunk, so memory
    stays bounded by the spec's ``chunk_rows`` plus a few dozen bytes per evaluated row; its
    notes and warnings (ESMM labels, unknown ids) come once the rows are read. ``stream=False``
    loads a data spec whole instead (a :class:`DataBundle` of every split, as before streaming; the
    same numbers, for comparisons).

    Slices: the data's own (``DataBundle.slices``, the spec's ``slices``) plus the ``slice_top`` most frequent values of
    each of ``slice_columns``. With ``progress``, rank 0 logs each stage (INFO) and shows a scoring bar
    on stderr; notes and warnings are logged on rank 0 (INFO ``note: ...``, WARNING ``warning: ...``).
    All ranks call it; only rank 0's result has the full summary and the scored rows.

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
            logger.info(message)

    def say(kind: str, messages: Sequence[str]) -> None:
        if ctx.is_main:
            for message in messages:
                logger.log(logging.WARNING if kind == "warning" else logging.INFO, "%s: %s", kind, message)

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    ckpt = run_checkpoint(cfg, run_dir, checkpoint)
    calibration: Optional[Calibration] = None
    if calibrate and (run_dir / CALIBRATION_FILE).is_file():
        calibration = Calibration.load(run_dir / CALIBRATION_FILE)
    t0 = time.perf_counter()
    note(f"loading data ({cfg.data.source if data_spec is None else data_spec}) ...")
    source = eval_source(cfg, run_dir, data_spec, split, slice_columns, slice_top, stream)
    split, data = source.split, source.model_data
    streamed = isinstance(source, StreamSource)
    if streamed:
        note(f"reading '{split}' in chunks of {source.stream.spec.chunk_rows} rows while scoring")
    else:
        note(f"loaded {sum(len(t) for t in data.splits.values())} rows in {time.perf_counter() - t0:.1f} s; "
             f"'{split}' has {len(data.splits[split])}")
    load_s = time.perf_counter() - t0

    module = build_train_module(
        cfg.model,
        data,
        cfg.train.loss_balance,
        cfg.train.balance,
        text_cache=text_cache_root(cfg.model.text, cfg.output_dir),
        progress=cfg.train.progress,
    )
    dmp = shard_module(module, ctx, strategy=cfg.train.sharding, sparse_optimizer=cfg.train.sparse_optimizer,
                       sparse_lr=cfg.train.sparse_lr)
    note(f"loading checkpoint {ckpt} ...")
    meta = load_checkpoint(ckpt, dmp)
    late_notes: List[str] = []
    if calibration is not None and calibration.checkpoint_step != meta.get("global_step"):
        late_notes.append(f"{CALIBRATION_FILE} was fitted for step {calibration.checkpoint_step}, not for the "
                          f"evaluated {ckpt.name}: predictions are not calibrated")
        say("note", late_notes)
        calibration = None
    started = time.perf_counter()
    scored = score_rows(dmp, module.tasks, source.tables(), data.schema, ctx, batch_size or cfg.data.eval_batch_size,
                        cfg.data.num_workers, progress, calibration, total_rows=source.total_rows,
                        desc=f"scoring {split}")
    report = source.finish()
    stats = report.stats
    if streamed:
        note(f"read {stats.get('rows_read')} rows in {time.perf_counter() - t0:.1f} s; '{split}' has {scored.total}")
    # Rows dropped under on_bad_rows: skip (reason -> rows; none for built-in sources).
    skipped = stats.get("skipped_by_reason") or {}
    if scored.total == 0:
        # Before any note, warning or file: a split the split rule leaves empty has nothing to measure.
        per_split = stats.get("rows_per_split")
        read = f" (of the {stats.get('rows_read')} rows read, per split: {per_split})" if per_split else ""
        raise DataError(f"split '{split}' has no rows{read}: nothing to evaluate; check the data's split rule or "
                        f"choose another --split" + skipped_rows_suffix(skipped))
    notes = report.notes + late_notes
    warnings = skipped_rows_warnings(skipped) + oov_warnings(stats, split, [f.name for f in data.schema.text_features])
    warnings += [f"text feature '{name}': {n} item texts differ from those the run encoded in training; the run's "
                 f"vectors (the checkpoint) are used, not the new texts" for name, n in
                 (stats.get("text_changed") or {}).items() if n]
    say("note", report.notes)
    say("warning", warnings)
    empty = [f"slice '{name}' has no rows in split '{split}'" for name, mask in report.slices.items() if not mask.any()]
    warnings += empty
    say("warning", empty)
    result = split_metrics(scored, module.tasks, split, ctx, report.slices, data.schema.group, calibration, started)
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
    if data.preprocessing is not None:
        summary["data"]["stats"] = stats
        summary["data"]["oov_rate"] = {f: c["rate"] for f, c in (stats.get("oov") or {}).get(split, {}).items()}
        summary["data"]["train_oov_rate"] = stats.get("train_oov")
    summary["warnings"] = warnings
    summary["notes"] = notes
    summary["config"] = {"model": to_dict(cfg.model)}
    result.summary = summary
    return result
