"""``mtl-torchrec train``: train on the configured data, evaluate on the test split, write a run.

A run directory holds ``config.yaml`` (the resolved config), ``checkpoints/`` (DCP, see
:mod:`mtl_torchrec.distributed.checkpoint`),
``metrics.json`` (test metrics per task), ``train_summary.json`` and ``tensorboard/``.
With ``train.select_by`` the test metrics are those of the best validated checkpoint
(``checkpoints/best``); with ``train.calibration`` a calibration is fitted on the validation split
for the tested checkpoint, saved as ``calibration.json`` and applied to the test metrics.
Works in one process or under ``torchrun`` (one run directory chosen by rank 0).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Sequence

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.core.io import write_json
from mtl_torchrec.launch.args import config_arg, config_help

# torch and the packages that use it are imported inside the functions below, not here: the command
# line imports this module to build its parser, and `mtl-torchrec --help` must start without torch.
if TYPE_CHECKING:
    from mtl_torchrec.config import Config
    from mtl_torchrec.data.bundle import DataBundle
    from mtl_torchrec.distributed.context import DistContext
    from mtl_torchrec.train.callbacks import Callback
    from mtl_torchrec.train.trainer import Trainer


def add_parser(sub: Any) -> None:
    """Registers ``train`` (``--config``, ``--resume``, overrides) on ``sub`` (argparse only)."""
    p = sub.add_parser("train", help="train a multi-task model and evaluate it on the test split")
    p.add_argument("--config", type=config_arg, default=None, help=config_help())
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.epochs=3 model.backbone=ple")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue run_dir from its latest checkpoint (error if it has none); same as train.resume=required",
    )
    p.set_defaults(run=run)


def resolve_run_dir(cfg: Config, ctx: DistContext) -> Path:
    """``cfg.run_dir`` if given, else a new timestamped folder under ``cfg.output_dir`` (rank 0 picks).

    Raises ConfigError naming ``run_dir``/``output_dir`` when the path is (or lies under) a file or
    cannot be created.
    """
    import torch.distributed as dist

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


def make_trainer(cfg: Config, data: DataBundle, ctx: DistContext, run_dir: Path, **kwargs: Any) -> Trainer:
    """A :class:`Trainer` whose validation and test metrics come from :class:`SplitEvaluator`
    (``data.eval_batch_size``), as ``mtl-torchrec train`` runs it. ``kwargs`` go to the Trainer."""
    from mtl_torchrec.eval.evaluate import SplitEvaluator
    from mtl_torchrec.train.trainer import Trainer

    data = data if cfg.model.text.enabled else data.without_text()
    evaluator = SplitEvaluator(data, ctx, cfg.data.eval_batch_size, cfg.data.num_workers, cfg.train.progress)
    return Trainer(cfg, data, ctx, run_dir, evaluator=evaluator, **kwargs)


def train(cfg: Config, ctx: DistContext, extra_callbacks: Sequence[Callback] = ()) -> Dict[str, Any]:
    """Trains, evaluates on test, writes the run directory; returns a summary dict.

    ``extra_callbacks`` run after the default ones (:func:`~mtl_torchrec.train.callbacks.default_callbacks`).
    One training at a time per run directory (:func:`~mtl_torchrec.distributed.run_lock.hold_run_dir`);
    a start that is refused (lock held, ``train.resume``, a damaged or incompatible checkpoint)
    writes nothing into an existing run directory. ``train.init_from`` warm-starts a fresh run;
    a run directory that already has checkpoints resumes instead (resume wins). Config errors the
    data spec alone shows (:func:`check_config_against_spec`) come before any data is read.
    """
    import torch

    from mtl_torchrec.distributed.run_lock import hold_run_dir
    from mtl_torchrec.distributed.warm_start import resolve_init_from

    if cfg.train.init_from is not None:
        resolve_init_from(cfg.train.init_from)  # a ConfigError before any folder is made
    check_config_against_spec(cfg)

    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    fresh = not (cfg.run_dir and Path(cfg.run_dir).exists())
    run_dir = resolve_run_dir(cfg, ctx)
    try:
        with hold_run_dir(run_dir, ctx):
            return _train(cfg, ctx, run_dir, extra_callbacks)
    except BaseException:
        # A refused start leaves no trace: the folder this call made goes again while still empty.
        if fresh and ctx.is_main and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise


def check_config_against_spec(cfg: Config) -> None:
    """With ``data.source: spec``, checks what of the model config the data spec alone can refuse
    (``model.sequence``: :func:`~mtl_torchrec.model.sequence.check_sequence_spec`) before any data
    row is read or folder made; raises ConfigError naming the key. A missing or invalid spec is left
    to the data loading, which names it."""
    if cfg.data.source != "spec" or not cfg.data.spec or not cfg.model.sequence.enabled:
        return
    from mtl_torchrec.data.spec import load_spec
    from mtl_torchrec.model.sequence import check_sequence_spec

    check_sequence_spec(cfg.model, load_spec(cfg.data.spec))


def _train(cfg: Config, ctx: DistContext, run_dir: Path, extra_callbacks: Sequence[Callback]) -> Dict[str, Any]:
    from mtl_torchrec.config import save_config
    from mtl_torchrec.data.loader import describe
    from mtl_torchrec.data.sources import load_data
    from mtl_torchrec.model.esmm import check_esmm_labels
    from mtl_torchrec.train.callbacks import default_callbacks
    from mtl_torchrec.train.trainer import check_splits

    data = load_data(cfg.data)
    notes = check_splits(data, cfg.data.batch_size, ctx.world_size)
    notes += check_esmm_labels(data, cfg.model.tasks)
    # Only text the user's spec declares (built-in sources always carry item text, used or not).
    if cfg.data.source == "spec" and data.texts and not cfg.model.text.enabled:
        notes.append(f"the data has text features {sorted(data.texts)}, but model.text.enabled is false: they are "
                     f"not used (set model.text.enabled=true to train with them)")
    if ctx.is_main:
        for note in notes:
            print(f"note: {note}")
        # What the data spec's checks found on the training split (e.g. a history holding the candidate).
        for message in (data.preprocessing.stats.get("warnings") or []) if data.preprocessing is not None else []:
            print(f"warning: {message}", file=sys.stderr)
        # train, val, test first (the order the files list them in varies), then any other split.
        order = {"train": 0, "val": 1, "test": 2}
        for split, table in sorted(data.splits.items(), key=lambda kv: order.get(kv[0], 3)):
            print(describe(table, data.schema, split))
        for split, masks in data.slices.items():
            for name, mask in masks.items():
                if split == "test" and not mask.any():
                    print(f"warning: slice '{name}' has no rows in split '{split}'", file=sys.stderr)
    trainer = make_trainer(cfg, data, ctx, run_dir, callbacks=[*default_callbacks(cfg), *extra_callbacks])
    try:
        # Every check that can refuse this start (train.resume, the checkpoint's integrity, the model
        # against the checkpoint) runs in resume(), before config.yaml and preprocessing are written.
        resumed = trainer.resume(cfg.train.resume)
        warm = None
        if resumed is None and cfg.train.init_from is not None:
            warm = trainer.warm_start(cfg.train.init_from)
        if ctx.is_main:
            save_config(cfg, run_dir / "config.yaml")
            if data.preprocessing is not None:
                data.preprocessing.save(run_dir / "preprocessing")
        if resumed is not None and ctx.is_main:
            print(f"resuming from {resumed} (step {trainer.state.global_step})")
            if cfg.train.init_from is not None:
                print(f"note: train.init_from={cfg.train.init_from} not used: the run resumes from its own checkpoint")
        if warm is not None and ctx.is_main:
            from mtl_torchrec.distributed.warm_start import format_report

            print(format_report(warm))
        summary = trainer.fit()
        summary["tested_checkpoint"] = _select_tested_model(trainer, run_dir, ctx)
        if trainer.selection is not None:
            summary["selection"] = trainer.selection.summary()
        if cfg.train.calibration != "none":
            summary["calibration"] = _calibrate(trainer, cfg, data, ctx, run_dir, summary["tested_checkpoint"])
        # The same exact metrics (AUC, GAUC, ...) and slices as `mtl-torchrec evaluate`.
        has_test = len(data.splits.get("test", ())) > 0
        result = trainer.evaluate("test") if has_test else {"tasks": {}, "slices": {}}
    finally:
        trainer.close()
    test = result["tasks"]
    slices = result.get("slices") or {}
    if ctx.is_main:
        write_json(run_dir / "metrics.json", test)
        if slices:
            write_json(run_dir / "metrics_by_slice.json", slices)
        if "calibration" in result:
            summary["calibration"]["test"] = result["calibration"]["tasks"]
        write_json(run_dir / "train_summary.json", {
            **summary, "world_size": ctx.world_size, "history": trainer.history, "epoch_losses": trainer.epoch_losses,
        })
    return {"run_dir": run_dir, "metrics": test, "slices": slices, "summary": summary,
            "calibration": result.get("calibration")}


def _select_tested_model(trainer: Trainer, run_dir: Path, ctx: DistContext) -> str:
    """With ``train.select_by``, loads the best checkpoint into the trainer's model (unless the
    final state is the best); returns the name of the checkpoint the model now holds."""
    from mtl_torchrec.distributed.checkpoint.run_dir import best_checkpoint, step_name

    final = step_name(trainer.state.global_step)
    if trainer.selection is None:
        return final
    best = best_checkpoint(run_dir) if ctx.is_main else None
    best_name = trainer.broadcast(best.name if best is not None else None)
    if best_name is None:
        if ctx.is_main:
            print(f"note: train.select_by: no validation gave a value, so the final state ({final}) is tested")
        return final
    if best_name != final:
        trainer.load_model(run_dir / "checkpoints" / best_name)
    return best_name


def _calibrate(trainer: Trainer, cfg: Config, data: DataBundle, ctx: DistContext, run_dir: Path,
               checkpoint: str) -> Dict[str, Any]:
    """Fits ``train.calibration`` on the validation split for the tested model, writes
    ``calibration.json`` and sets it on the trainer's evaluator; returns what train_summary.json
    records about it."""
    from mtl_torchrec.eval.calibration import CALIBRATION_FILE
    from mtl_torchrec.eval.evaluate import calibrate_on_split

    if len(data.splits.get("val", ())) == 0:
        if ctx.is_main:
            print("note: train.calibration: the data has no validation rows, so nothing is calibrated")
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


def run(args: argparse.Namespace) -> int:
    """Loads the config (``--resume`` adds ``train.resume=required``), trains and tests; prints the test
    metrics and the run directory on rank 0. Returns 0.
    """
    from mtl_torchrec.config import load_config

    overrides = list(args.overrides) + (["train.resume=required"] if getattr(args, "resume", False) else [])
    # A config error is reported before torch is imported (seconds earlier).
    cfg = load_config(args.config, overrides)
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.eval.metrics import format_table

    ctx = init_distributed()
    try:
        result = train(cfg, ctx)
    finally:
        close_distributed(ctx)
    if ctx.is_main:
        s = result["summary"]
        print(f"trained {s['steps']} steps, {s['samples_per_s']:.0f} samples/s on {ctx.world_size} rank(s)")
        if "selection" in s:
            sel = s["selection"]
            stop = f", stopped early at step {sel['stopped_at_step']}" if sel["stopped_early"] else ""
            print(f"best validation {sel['select_by']} = {sel['best_value']} at step {sel['best_step']} of "
                  f"{len(sel['curve'])} validations{stop}")
        print(f"test metrics ({s['tested_checkpoint']}" + (f", calibrated by {cfg.train.calibration}"
                                                          if result.get("calibration") else "") + "):")
        print(format_table(result["metrics"]))
        if result.get("calibration"):
            from mtl_torchrec.eval.report import calibration_table

            print("test calibration before / after:")
            print(calibration_table(result["calibration"]))
        for name, block in result["slices"].items():
            print(f"test metrics on slice '{name}' ({block['rows']} rows):")
            print(format_table(block["tasks"]))
        print(result["run_dir"])
    return 0
