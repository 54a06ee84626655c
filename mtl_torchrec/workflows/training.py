"""The training workflow: train on the configured data, test on the test split, write a run.

A run directory holds ``config.yaml`` (the resolved config), ``checkpoints/`` (DCP, see
:mod:`mtl_torchrec.distributed.checkpoint`), ``metrics.json`` (test metrics per task),
``train_summary.json`` and ``tensorboard/``. With ``train.select_by`` the test metrics are those
of the best validated checkpoint (``checkpoints/best``); with ``train.calibration`` a calibration
is fitted on the validation split for the tested checkpoint, saved as ``calibration.json`` and
applied to the test metrics. Works in one process or under ``torchrun`` (one run directory chosen
by rank 0); ``mtl-torchrec train`` is this function behind a command line.

:func:`train` runs these steps, each a function of its own, in this order:

1. :func:`check_config` — what the config alone can refuse, before any folder is made;
2. :func:`resolve_run_dir` — the run directory, then one training at a time holds its lock;
3. :func:`load_training_data` — the data, with its notes and split sizes printed;
4. :func:`make_trainer` — the sharded model, optimizers and callbacks;
5. :func:`start` — resume or warm start, then ``config.yaml`` and the preprocessing are written;
6. ``trainer.fit()``, then :func:`select_tested_model` and, with ``train.calibration``, :func:`calibrate`;
7. :func:`evaluate_on_test` — the exact test metrics, which :func:`write_results` writes into the run.

Example::

    run = train("default", overrides=["train.epochs=1", "run_dir=runs/demo"])
    run.metrics["click"]["auc"], run.checkpoint
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch.distributed as dist

from mtl_torchrec.config import Config, save_config
from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.core.io import write_json
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.loader import describe
from mtl_torchrec.data.preprocessing import FILE_NAME as PREPROCESSING_FILE
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.data.spec import load_spec
from mtl_torchrec.data.spec.train_stream import check_same_units
from mtl_torchrec.distributed.checkpoint.run_dir import best_checkpoint, step_name
from mtl_torchrec.distributed.context import DistContext
from mtl_torchrec.distributed.run_lock import hold_run_dir
from mtl_torchrec.distributed.warm_start import format_report, resolve_init_from
from mtl_torchrec.eval.calibration import CALIBRATION_FILE
from mtl_torchrec.eval.evaluate import SplitEvaluator, calibrate_on_split
from mtl_torchrec.model.esmm import check_esmm_labels
from mtl_torchrec.model.sequence import check_sequence_spec
from mtl_torchrec.serve.runs import PREPROCESSING_DIR
from mtl_torchrec.train.callbacks import Callback, default_callbacks
from mtl_torchrec.train.trainer import Trainer, check_splits
from mtl_torchrec.workflows.common import ConfigLike, process_group, resolve_config, use_thread_setting
from mtl_torchrec.workflows.run import METRICS_FILE, SLICE_METRICS_FILE, SUMMARY_FILE, Run

logger = logging.getLogger(__name__)


def train(
    config: ConfigLike = None,
    ctx: Optional[DistContext] = None,
    *,
    overrides: Sequence[str] = (),
    resume: Optional[str] = None,
    extra_callbacks: Sequence[Callback] = (),
) -> Run:
    """Trains, tests on the test split and writes the run directory; returns the finished :class:`Run`.

    ``config``: a Config, a YAML file, a packaged config's name or None (defaults), with dotted
    ``overrides`` (:func:`~mtl_torchrec.workflows.common.resolve_config`); ``resume`` sets
    ``train.resume`` (``auto``, ``required``: error without a checkpoint to continue, ``never``).
    ``ctx``: the process group to train in (it stays open); by default torchrun's when started by
    ``torchrun`` (every rank calls this function), else a one-process group of its own, closed at
    the end. ``extra_callbacks`` run after :func:`~mtl_torchrec.train.callbacks.default_callbacks`.

    One training at a time per run directory (:func:`~mtl_torchrec.distributed.run_lock.hold_run_dir`);
    a start that is refused (lock held, ``train.resume``, a damaged or incompatible checkpoint)
    writes nothing into an existing run directory. ``train.init_from`` warm-starts a fresh run; a run
    directory that already has checkpoints resumes instead (resume wins). Notes, split sizes and
    what resumed print on rank 0 (stdout; warnings on stderr).

    Raises ConfigError (the config, or what the data spec alone refuses, before any data is read
    or folder made), DataError (the data), FileNotFoundError (``train.resume``: ``required`` without
    a checkpoint, ``never`` with one), CheckpointError (a damaged or incompatible checkpoint) and
    RunDirError (another training holds the run directory).
    """
    cfg = resolve_config(config, [*overrides, *([f"train.resume={resume}"] if resume is not None else [])])
    check_config(cfg)
    with process_group(ctx) as group:
        use_thread_setting()  # also in a group the caller opened
        fresh = not (cfg.run_dir and Path(cfg.run_dir).exists())
        run_dir = resolve_run_dir(cfg, group)
        try:
            with hold_run_dir(run_dir, group):
                return train_in(cfg, group, run_dir, extra_callbacks)
        except BaseException:
            # A refused start leaves no trace: the folder this call made goes again while still empty.
            if fresh and group.is_main and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
            raise


def check_config(cfg: Config) -> None:
    """What the config alone can refuse, before any folder is made or data read: an unusable
    ``train.init_from`` and, with ``data.source: spec``, what the data spec refuses of the model
    config (``model.sequence``: :func:`~mtl_torchrec.model.sequence.check_sequence_spec`). Raises
    ConfigError naming the key. A missing or invalid spec is left to the data loading, which names it."""
    if cfg.train.init_from is not None:
        resolve_init_from(cfg.train.init_from)
    if cfg.data.source != "spec" or not cfg.data.spec or not cfg.model.sequence.enabled:
        return
    check_sequence_spec(cfg.model, load_spec(cfg.data.spec))


def resolve_run_dir(cfg: Config, ctx: DistContext) -> Path:
    """``cfg.run_dir`` if given, else a new timestamped folder under ``cfg.output_dir`` (rank 0 picks).

    Raises ConfigError naming ``run_dir``/``output_dir`` when the path is (or lies under) a file or
    cannot be created.
    """
    if cfg.run_dir:
        path = Path(cfg.run_dir)
    else:
        # A random suffix: two runs started in the same second by one process must not share a folder
        # (the second would resume the first).
        name = [f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model.backbone}-{secrets.token_hex(3)}"]
        if dist.is_initialized() and ctx.world_size > 1:
            dist.broadcast_object_list(name, src=0)
        path = Path(cfg.output_dir) / name[0]
    key = "run_dir" if cfg.run_dir else "output_dir"
    # Every rank checks (the same answer on a shared filesystem), so none waits for a failed rank 0.
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{key}: '{path}' cannot be a run directory: '{existing}' is a file")
    if ctx.is_main:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{key}: cannot create the run directory '{path}': {e.strerror or e}") from None
    return path


def train_in(cfg: Config, ctx: DistContext, run_dir: Path, extra_callbacks: Sequence[Callback] = ()) -> Run:
    """Steps 3 to 7 of :func:`train` in ``run_dir``, whose lock the caller holds."""
    data = load_training_data(cfg, ctx)
    saved = run_dir / PREPROCESSING_DIR
    if data.train_stream is not None and (saved / PREPROCESSING_FILE).is_file():
        check_same_units(Preprocessing.load(saved), data.train_stream.units)
    trainer = make_trainer(cfg, data, ctx, run_dir, callbacks=[*default_callbacks(cfg), *extra_callbacks])
    try:
        start(trainer, cfg, data, ctx, run_dir)
        summary = trainer.fit()
        summary["tested_checkpoint"] = select_tested_model(trainer, run_dir, ctx)
        if trainer.selection is not None:
            summary["selection"] = trainer.selection.summary()
        if cfg.train.calibration != "none":
            summary["calibration"] = calibrate(trainer, cfg, data, ctx, run_dir, summary["tested_checkpoint"])
        result = evaluate_on_test(trainer, data)
    finally:
        trainer.close()
    return write_results(cfg, ctx, run_dir, trainer, summary, result)


def load_training_data(cfg: Config, ctx: DistContext) -> DataBundle:
    """The configured data (:func:`~mtl_torchrec.data.sources.load_data`); on rank 0 prints its notes
    (splits too small for the batch size and ranks, ESMM labels, unused text features), the data
    spec's warnings and each split's size, and warns about test slices without rows."""
    data = load_data(cfg.data)
    notes = check_splits(data, cfg.data.batch_size, ctx.world_size)
    notes += check_esmm_labels(data, cfg.model.tasks)
    # Only text the user's spec declares (built-in sources always carry item text, used or not).
    if cfg.data.source == "spec" and data.texts and not cfg.model.text.enabled:
        notes.append(f"the data has text features {sorted(data.texts)}, but model.text.enabled is false: they are "
                     f"not used (set model.text.enabled=true to train with them)")
    if ctx.is_main:
        for note in notes:
            logger.info(f"note: {note}")
        # What the data spec's checks found on the training split (e.g. a history holding the candidate).
        for message in (data.preprocessing.stats.get("warnings") or []) if data.preprocessing is not None else []:
            logger.warning(f"warning: {message}")
        # train, val, test first (the order the files list them in varies), then any other split.
        order = {"train": 0, "val": 1, "test": 2}
        for split, table in sorted(data.splits.items(), key=lambda kv: order.get(kv[0], 3)):
            if split == "train" and data.train_stream is not None:
                logger.info(f"train: {data.train_rows} rows, streamed from {len(data.train_stream.units.units)} "
                            f"file(s) / row group(s) in windows of at least {data.train_stream.shuffle_buffer} rows (whole "
                            f"files / row groups)")
                continue
            logger.info(describe(table, data.schema, split))
        for split, masks in data.slices.items():
            for name, mask in masks.items():
                if split == "test" and not mask.any():
                    logger.warning(f"warning: slice '{name}' has no rows in split '{split}'")
    return data


def make_trainer(cfg: Config, data: DataBundle, ctx: DistContext, run_dir: Path, **kwargs: Any) -> Trainer:
    """A :class:`Trainer` whose validation and test metrics come from :class:`SplitEvaluator`
    (``data.eval_batch_size``), as :func:`train` runs it. ``kwargs`` go to the Trainer."""
    data = data if cfg.model.text.enabled else data.without_text()
    evaluator = SplitEvaluator(data, ctx, cfg.data.eval_batch_size, cfg.data.num_workers, cfg.train.progress)
    return Trainer(cfg, data, ctx, run_dir, evaluator=evaluator, **kwargs)


def start(trainer: Trainer, cfg: Config, data: DataBundle, ctx: DistContext, run_dir: Path) -> None:
    """Resumes from the run's latest checkpoint (``train.resume``) or warm-starts a fresh run
    (``train.init_from``), then writes ``config.yaml`` and the fitted preprocessing (rank 0).

    Every check that can refuse this start (``train.resume``, the checkpoint's integrity, the model
    against the checkpoint) runs before anything is written into the run directory.
    """
    resumed = trainer.resume(cfg.train.resume)
    warm = None
    if resumed is None and cfg.train.init_from is not None:
        warm = trainer.warm_start(cfg.train.init_from)
    if ctx.is_main:
        save_config(cfg, run_dir / "config.yaml")
        if data.preprocessing is not None:
            data.preprocessing.save(run_dir / "preprocessing")
    if resumed is not None and ctx.is_main:
        logger.info(f"resuming from {resumed} (step {trainer.state.global_step})")
        if cfg.train.init_from is not None:
            logger.info(f"note: train.init_from={cfg.train.init_from} not used: the run resumes from its own checkpoint")
    if warm is not None and ctx.is_main:
        logger.info(format_report(warm))


def select_tested_model(trainer: Trainer, run_dir: Path, ctx: DistContext) -> str:
    """With ``train.select_by``, loads the best checkpoint into the trainer's model (unless the
    final state is the best); returns the name of the checkpoint the model now holds."""
    final = step_name(trainer.state.global_step)
    if trainer.selection is None:
        return final
    best = best_checkpoint(run_dir) if ctx.is_main else None
    best_name = trainer.broadcast(best.name if best is not None else None)
    if best_name is None:
        if ctx.is_main:
            logger.info(f"note: train.select_by: no validation gave a value, so the final state ({final}) is tested")
        return final
    if best_name != final:
        trainer.load_model(run_dir / "checkpoints" / best_name)
    return best_name


def calibrate(trainer: Trainer, cfg: Config, data: DataBundle, ctx: DistContext, run_dir: Path,
              checkpoint: str) -> Dict[str, Any]:
    """Fits ``train.calibration`` on the validation split for the tested model, writes
    ``calibration.json`` and sets it on the trainer's evaluator; returns what train_summary.json
    records about it."""
    if len(data.splits.get("val", ())) == 0:
        if ctx.is_main:
            logger.info("note: train.calibration: the data has no validation rows, so nothing is calibrated")
        return {"method": cfg.train.calibration, "fitted": False}
    step = int(checkpoint.split("_", 1)[1])
    with trainer.paused():
        calibration = calibrate_on_split(trainer.dmp, trainer.tasks, data, "val", ctx, cfg.data.eval_batch_size,
                                         cfg.train.calibration, step, cfg.data.num_workers)
    if ctx.is_main:
        calibration.save(run_dir / CALIBRATION_FILE)
    trainer.evaluator.calibration = calibration
    return {"method": cfg.train.calibration, "fitted": True, "fitted_on": "val", "checkpoint": checkpoint,
            "file": CALIBRATION_FILE}


def evaluate_on_test(trainer: Trainer, data: DataBundle) -> Dict[str, Any]:
    """The tested model's metrics on the test split: the same exact metrics (AUC, GAUC, ...) and
    slices as ``evaluate`` computes (``{"tasks": {}, "slices": {}}`` when the data has no test rows)."""
    has_test = len(data.splits.get("test", ())) > 0
    return trainer.evaluate("test") if has_test else {"tasks": {}, "slices": {}}


def write_results(cfg: Config, ctx: DistContext, run_dir: Path, trainer: Trainer, summary: Dict[str, Any],
                  result: Dict[str, Any]) -> Run:
    """Writes ``metrics.json``, ``metrics_by_slice.json`` (with slices) and ``train_summary.json``
    (``summary`` with the world size and the loss history: :data:`~mtl_torchrec.workflows.run.HISTORY_KEYS`)
    on rank 0; returns the :class:`Run`."""
    metrics = result["tasks"]
    slices = result.get("slices") or {}
    if ctx.is_main:
        write_json(run_dir / METRICS_FILE, metrics)
        if slices:
            write_json(run_dir / SLICE_METRICS_FILE, slices)
        if "calibration" in result:
            summary["calibration"]["test"] = result["calibration"]["tasks"]
        write_json(run_dir / SUMMARY_FILE, {
            **summary, "world_size": ctx.world_size, "history": trainer.history, "epoch_losses": trainer.epoch_losses,
        })
    return Run(run_dir, cfg, metrics, slices, summary, result.get("calibration"))
