"""The training loop: DMP-sharded model, fused sparse + dense optimizers, TorchRec's pipeline.

The trainer depends only on the train-module interface (``forward(batch) -> (loss, TrainOutput)``,
see :class:`mtl_torchrec.model.tasks.TrainModule`), so any model that
returns per-task logits in a :class:`~mtl_torchrec.model.multitask.ModelOutput` can be trained.

Everything besides training steps (loss logging, validation, checkpoints, diagnostics) is a
:class:`~mtl_torchrec.train.callbacks.Callback`, which sees the trainer as a
:class:`~mtl_torchrec.train.view.TrainerView`; evaluation is injected as an ``evaluator``
callable, so this package never imports ``eval/`` (``mtl-torchrec train`` wires both). The
pipeline is driven by :mod:`~mtl_torchrec.train.pipeline`, the position a checkpoint records is
read and written by :mod:`~mtl_torchrec.train.resume`.

Example::

    ctx = init_distributed()
    trainer = Trainer(cfg, data_bundle, ctx, run_dir=Path("runs/example"),
                      evaluator=SplitEvaluator(data_bundle, ctx, cfg.data.eval_batch_size))
    summary = trainer.fit()
    test = trainer.evaluate("test")
"""

from __future__ import annotations

import numbers
import random
from pathlib import Path
from typing import Any, ContextManager, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mtl_torchrec.config import Config, parse_select_by, to_dict
from mtl_torchrec.core.errors import DataError
from mtl_torchrec.core.io import write_json
from mtl_torchrec.core.progress import progress_bar
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.loader import make_loader
from mtl_torchrec.distributed.checkpoint.dcp_io import load_checkpoint, save_checkpoint, save_run_checkpoint
from mtl_torchrec.distributed.checkpoint.rng import read_rng_state, set_rng_state
from mtl_torchrec.distributed.checkpoint.run_dir import latest_checkpoint, list_checkpoints, resolve_checkpoint
from mtl_torchrec.distributed.collective import broadcast_from_main, peak_rss_mb
from mtl_torchrec.distributed.context import DistContext
from mtl_torchrec.distributed.optim import make_optimizer, sparse_parts
from mtl_torchrec.distributed.sharding import shard_module
from mtl_torchrec.distributed.state import load_text_tables
from mtl_torchrec.distributed.warm_start import resolve_init_from, warm_start
from mtl_torchrec.model.builder import build_train_module
from mtl_torchrec.model.tasks import TaskSpec
from mtl_torchrec.model.text import text_cache_root
from mtl_torchrec.train.callbacks import Callback, default_callbacks
from mtl_torchrec.train.pipeline import PipelineDriver
from mtl_torchrec.train.resume import checkpoint_meta, read_position, restore_selection, scheduler_steps
from mtl_torchrec.train.schedule import group_rates, make_scheduler
from mtl_torchrec.train.selection import ModelSelection
from mtl_torchrec.train.tensorboard import ScalarLog
from mtl_torchrec.train.view import Evaluator, TrainState

# What a warm start loaded, grew, re-initialised and ignored (Trainer.warm_start).
WARM_START_REPORT = "warm_start.json"


def check_splits(data: DataBundle, batch_size: int, world_size: int) -> List[str]:
    """Checks at start-up that training can run; returns notes for evaluation splits without rows
    (their evaluation is skipped rather than failing after training).

    Raises DataError when the train split is missing or has fewer rows than one global batch
    (``data.batch_size`` x ranks): training would run 0 steps and report an untrained model.
    """
    if data.splits.get("train") is None:
        raise DataError(f"the data has no 'train' split (splits: {sorted(data.splits)})")
    global_batch = batch_size * world_size
    if data.train_rows < global_batch:
        raise DataError(
            f"train split has {data.train_rows} rows, fewer than one global batch of {global_batch} "
            f"(data.batch_size={batch_size} x {world_size} rank(s)): no step would train; lower data.batch_size"
        )
    return [
        f"the '{name}' split has no rows: its evaluation is skipped"
        for name in ("val", "test")
        if name in data.splits and len(data.splits[name]) == 0
    ]


def seed_everything(seed: int) -> None:
    """Seeds python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Trainer:
    """Trains a multi-task model sharded by DMP through TorchRec's train pipeline.

    Args:
        cfg: the run config (``model.*`` builds the model unless ``train_module`` is given;
            ``train.*`` sets sharding, optimizers, pipeline and the default callbacks).
        data: the loaded data; its training split (``splits["train"]``, or streamed) is trained on.
        ctx: the process group (:func:`mtl_torchrec.distributed.context.init_distributed`).
        run_dir: where checkpoints, TensorBoard logs and diagnostics go.
        feature_modules: extra feature modules for the built model (e.g. text features).
        train_module: a ready train module (``forward(batch) -> (loss, TrainOutput)``) instead.
        evaluator: ``(model, tasks, split) -> metrics``; without one :meth:`evaluate` raises and
            validation is skipped.
        callbacks: replaces the default ones (:func:`~mtl_torchrec.train.callbacks.default_callbacks`).

    Every rank constructs it (sharding is collective). Raises DataError when the train split is
    smaller than one global batch (:func:`check_splits`), ConfigError naming the ``model.*`` or
    ``train.*`` key the model or balancer cannot be built from, and ValueError naming the
    ``train.*`` key of an unknown sharding strategy or optimizer.
    """

    def __init__(
        self,
        cfg: Config,
        data: DataBundle,
        ctx: DistContext,
        run_dir: Path,
        feature_modules: Optional[Dict[str, nn.Module]] = None,
        train_module: Optional[nn.Module] = None,
        evaluator: Optional[Evaluator] = None,
        callbacks: Optional[Sequence[Callback]] = None,
    ) -> None:
        self.cfg = cfg
        # A model without text modules reads no text ids: keep them out of every batch.
        data = data if cfg.model.text.enabled else data.without_text()
        self.data = data
        self.ctx = ctx
        self.run_dir = Path(run_dir)
        self.evaluator = evaluator
        check_splits(data, cfg.data.batch_size, ctx.world_size)
        seed_everything(cfg.train.seed)
        module = train_module or build_train_module(
            cfg.model,
            data,
            cfg.train.loss_balance,
            cfg.train.balance,
            feature_modules,
            text_cache=text_cache_root(cfg.model.text, cfg.output_dir),
            progress=cfg.train.progress,
        )
        self.tasks: List[TaskSpec] = module.tasks
        self.dmp = shard_module(
            module,
            ctx,
            strategy=cfg.train.sharding,
            sparse_optimizer=cfg.train.sparse_optimizer,
            sparse_lr=cfg.train.sparse_lr,
        )
        # Sharding allocates fresh tables; text tables get their vectors back here.
        load_text_tables(self.dmp)
        self.optimizer = make_optimizer(
            self.dmp, cfg.train.dense_optimizer, cfg.train.dense_lr, balance_lr=cfg.train.balance.lr,
            adapter_lr=cfg.model.text.adapter_lr if cfg.model.text.enabled else None,
            adapter_weight_decay=cfg.model.text.adapter_weight_decay if cfg.model.text.enabled else 0.0,
            sparse_optimizer=cfg.train.sparse_optimizer,
            sparse_lr=cfg.train.sparse_lr,
        )
        # The optimizers that train the tables (fused, and replicated under data_parallel plans).
        self.sparse_optimizers = sparse_parts(self.dmp, self.optimizer)
        self.state = TrainState()
        self.train_ds = data.train_batches(cfg.data.batch_size, cfg.train.seed, ctx.rank, ctx.world_size)
        # train.lr_schedule over every parameter group (fused sparse and dense); stepped after
        # each optimizer step, rebuilt at the checkpoint's position by restore().
        self.scheduler = make_scheduler(
            self.optimizer, self.sparse_optimizers, cfg.train.lr_schedule, self.total_steps()
        )
        # The rates the latest step trained with ({"dense": ..., "sparse": ...}).
        self.last_lr: Dict[str, float] = self.learning_rates()
        self.callbacks: List[Callback] = list(callbacks if callbacks is not None else default_callbacks(cfg))
        # train.select_by: the validation curve, the best step and early stopping (train/selection.py),
        # updated by the Validation callback and saved in every checkpoint.
        self.selection: Optional[ModelSelection] = (
            ModelSelection(parse_select_by(cfg.train.select_by, cfg.model.tasks), cfg.train.patience)
            if cfg.train.select_by is not None
            else None
        )
        self._stop = False
        # TensorBoard on rank 0, opened on the first scalar (building a trainer writes nothing).
        self.scalars = ScalarLog(self.run_dir, ctx.is_main)
        self.history: List[Dict[str, Any]] = []
        # Mean training loss of each completed epoch (LossLogging): {"epoch" (1-based), "step", "steps",
        # "total", <task>...}.
        self.epoch_losses: List[Dict[str, Any]] = []
        # RNG states read from a checkpoint; applied once the next epoch's DataLoader iterator
        # exists, because creating that iterator draws from torch's global generator.
        self._pending_rng: Optional[Dict[str, Any]] = None
        self._saved_step = -1
        # TorchRec's train pipeline (one per epoch) and the clock of the training steps.
        self._pipe = PipelineDriver(self.dmp, self.optimizer, ctx.device, cfg.train.pipeline)
        # The batch iterator of run_steps() (fit keeps its own per epoch).
        self._loose_batches: Optional[Iterator[Batch]] = None
        self._bar: Optional[tqdm] = None

    # ------------------------------------------------------------------ what callbacks use

    def evaluate(self, split: str) -> Dict[str, Any]:
        """Metrics of ``split`` from the evaluator: ``{"tasks": ..., "slices": ...}``."""
        if self.evaluator is None:
            raise RuntimeError("Trainer.evaluate needs an evaluator (Trainer(..., evaluator=SplitEvaluator(...)))")
        return self.evaluator(self.dmp, self.tasks, split)

    def paused(self) -> ContextManager[None]:
        """Detaches the pipeline and stops the training clock for work outside a training step."""
        return self._pipe.paused()

    def log_scalars(self, prefix: str, values: Dict[str, Any], step: int) -> None:
        """Numbers (nested one level: ``{task: {metric: x}}``) to TensorBoard on rank 0
        (:meth:`~mtl_torchrec.train.tensorboard.ScalarLog.log`)."""
        self.scalars.log(prefix, values, step)

    def request_stop(self) -> None:
        """Ends :meth:`fit` after the current step (or epoch end), e.g. for early stopping; the
        final state is checkpointed as usual."""
        self._stop = True

    @property
    def saved_step(self) -> int:
        """The step of the last run checkpoint this trainer saved or resumed from (-1: none)."""
        return self._saved_step

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (itself without a process group): for decisions that
        every rank must take alike from what only rank 0 computed (e.g. exact AUC)."""
        return broadcast_from_main(obj)

    def set_progress_postfix(self, values: Dict[str, str]) -> None:
        """Shows ``values`` beside the running epoch's progress bar (nothing outside an epoch), from
        its next redraw (a log's bar writes a line per redraw, not per call)."""
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def total_steps(self) -> int:
        """The step training ends at: ``train.max_steps`` if set and reached before the last
        epoch ends, else ``train.epochs`` x batches per epoch (on this world size)."""
        full = self.cfg.train.epochs * self.train_ds.num_batches()
        return min(self.cfg.train.max_steps, full) if self.cfg.train.max_steps else full

    def learning_rates(self) -> Dict[str, float]:
        """The rates the next step trains with: ``{"dense": ..., "sparse": ...}`` (first dense and
        first fused parameter group)."""
        return group_rates(self.optimizer, self.sparse_optimizers)

    def loss_weights(self) -> Dict[str, float]:
        """The balancer's current task weights (empty for a train module without a balancer)."""
        balancer = getattr(self.dmp.module, "balancer", None)
        return balancer.weights() if balancer is not None and hasattr(balancer, "weights") else {}

    # ------------------------------------------------------------------ checkpoints

    def save(self, name: Optional[str] = None, best: bool = False) -> Path:
        """Checkpoints everything needed to resume: with no ``name``, atomically as
        ``run_dir/checkpoints/step_<global_step>`` (keeping ``train.keep_checkpoints``, and moving
        ``checkpoints/best`` to it when ``best``); with a ``name``, as the plain folder
        ``run_dir/<name>``. Collective: every rank calls it."""
        meta = checkpoint_meta(self.state, self.cfg.data.batch_size, to_dict(self.cfg), self.scheduler, self.selection)
        if name is not None:
            path = self.run_dir / name
            save_checkpoint(path, self.dmp, self.optimizer, meta)
            return path

        def after_shards(p: Path) -> None:
            for cb in self.callbacks:
                cb.on_checkpoint_shards_written(self, p)

        path = save_run_checkpoint(
            self.run_dir,
            self.state.global_step,
            self.dmp,
            self.optimizer,
            meta,
            keep=self.cfg.train.keep_checkpoints,
            after_shards=after_shards,
            best=best,
        )
        self._saved_step = self.state.global_step
        return path

    def restore(self, path: Path) -> Dict[str, Any]:
        """Loads a checkpoint (any rank count / sharding plan) and continues from its position.

        The saved tables, tasks and shapes must match this model (else CheckpointError). With the
        same world size the position and RNG states are exact; with another one the position is
        converted through the number of samples seen (global batches are slices of the same
        seeded permutation) and RNG streams restart from the seed.
        """
        path = resolve_checkpoint(path)
        meta = load_checkpoint(path, self.dmp, self.optimizer)
        self.state, same_layout = read_position(meta, path, self.ctx.world_size, self.cfg.data.batch_size)
        if same_layout:
            self._pending_rng = read_rng_state(path, self.ctx.rank)
        self._saved_step = self.state.global_step
        # The schedule continues where it was; its base rates come from this run's config.
        steps = scheduler_steps(meta, path, self.state.global_step)
        self.scheduler = make_scheduler(
            self.optimizer, self.sparse_optimizers, self.cfg.train.lr_schedule, self.total_steps(), steps
        )
        restore_selection(self.selection, meta, path, self.run_dir, self.ctx.is_main)
        return meta

    def load_model(self, path: Path) -> Dict[str, Any]:
        """Loads only the model state of a checkpoint (e.g. the best one, to test it after
        :meth:`fit`); the optimizer and the training position stay as they are, so the trainer
        should not train on afterwards. Collective. Returns the checkpoint's ``meta.json``."""
        return load_checkpoint(resolve_checkpoint(path), self.dmp)

    def resume(self, mode: str = "auto") -> Optional[Path]:
        """``auto``: continue from the run's latest checkpoint if it has one; ``required``: the
        same but a run without one is an error; ``never``: start fresh (an error if the run
        directory already holds checkpoints, which a fresh run would mix with its own).

        Returns the checkpoint resumed from, or None. Raises FileNotFoundError for ``required``
        without a checkpoint and ``never`` with one; CheckpointError as :meth:`restore`.
        """
        found = latest_checkpoint(self.run_dir)
        if mode == "never":
            if list_checkpoints(self.run_dir):
                raise FileNotFoundError(
                    f"{self.run_dir}: already holds checkpoints; use train.resume=auto to continue it or another run_dir"
                )
            return None
        if found is None:
            if mode == "required":
                raise FileNotFoundError(f"{self.run_dir}: no checkpoint to resume from (train.resume=required)")
            return None
        self.restore(found)
        return found

    def warm_start(self, init_from: Any) -> Dict[str, Any]:
        """Starts this (fresh) model from another run's checkpoint where names and shapes match
        (``train.init_from``: a run directory, ``RUN_DIR/step_N`` or a checkpoint folder), see
        :mod:`mtl_torchrec.distributed.warm_start`; writes the report to
        ``run_dir/warm_start.json`` on rank 0 and returns it. Collective: every rank calls it.

        Raises ConfigError naming ``train.init_from`` for a path without a checkpoint,
        CheckpointError for a damaged one.
        """
        report = warm_start(resolve_init_from(init_from), self.dmp)
        if self.ctx.is_main:
            write_json(self.run_dir / WARM_START_REPORT, report)
        return report

    # ------------------------------------------------------------------ training

    def _batches(self) -> Iterator[Batch]:
        self.train_ds.set_epoch(self.state.epoch, skip_batches=self.state.batch_in_epoch)
        it = iter(make_loader(self.train_ds, num_workers=self.cfg.data.num_workers))
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None
        return it

    def _finish_step(self, out: Any) -> None:
        """The bookkeeping after each optimizer step, in :meth:`fit` and :meth:`run_steps` alike."""
        # The pipeline has fetched batches ahead, but progress() returns only after this
        # batch's optimizer step: the position counts completed steps only.
        self.state.batch_in_epoch += 1
        self.state.global_step += 1
        # The fused optimizers pass the new rate to their kernels on the next zero_grad().
        self.last_lr = self.learning_rates()
        self.scheduler.step()
        if self._bar is not None:
            self._bar.update(1)
        for cb in self.callbacks:
            cb.on_step_end(self, out)

    def run_steps(self, steps: int) -> int:
        """Runs exactly ``steps`` training steps outside :meth:`fit`, for benchmarks and notebooks: the
        same pipeline, data, per-step bookkeeping and ``on_step_end`` callbacks as :meth:`fit`,
        continuing where the previous call stopped; an epoch that runs out starts the next one (no
        ``on_epoch_end`` callbacks, no validation, no final checkpoint). Returns the steps run.

        ``train.epochs`` and ``train.max_steps`` do not bound it: ``state.epoch`` counts on past
        ``train.epochs`` when ``steps`` asks for more batches than the configured epochs hold (each
        further epoch is a fresh pass over the training split, as fit's next epoch would be). A later
        :meth:`fit` trains only what is left of ``train.epochs`` / ``train.max_steps`` from the position
        reached (nothing when run_steps went past them), then saves the final state.

        Raises TypeError when ``steps`` is not an integer (a bool, ``2.5`` or ``"3"`` included) and
        ValueError when it is negative; 0 runs nothing. Collective: every rank calls it with the same
        ``steps``."""
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
            raise TypeError(f"run_steps: steps must be an int (a number of training steps), got {steps!r} "
                            f"({type(steps).__name__})")
        if steps < 0:
            raise ValueError(f"run_steps: steps must be >= 0, got {steps}")
        steps = int(steps)
        if not self._pipe.running:
            self.dmp.train()
            self._pipe.start()
            self._loose_batches = self._batches()
        for _ in range(steps):
            try:
                out = self._pipe.progress(self._loose_batches)
            except StopIteration:
                # As fit() does at an epoch's end: a fresh pipeline over the next epoch's batches.
                self._pipe.end()
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                self._pipe.start()
                self._loose_batches = self._batches()
                out = self._pipe.progress(self._loose_batches)
            self._finish_step(out)
        return steps

    def fit(self) -> Dict[str, Any]:
        """Trains until ``train.epochs`` or ``train.max_steps``, or until a callback calls
        :meth:`request_stop` (early stopping by ``train.patience``); saves the final state; returns
        ``{"steps", "samples", "train_seconds", "samples_per_s", "peak_rss_mb"}``: samples in rows, over all ranks;
        ``train_seconds`` in seconds of training steps only (without evaluation and checkpointing);
        ``samples_per_s`` in rows/s; ``peak_rss_mb`` the largest rank's peak resident memory (MiB) of
        the rank processes themselves: DataLoader worker processes (``data.num_workers`` > 0) are not
        counted (each holds its own memory, partly shared with its rank through copy-on-write).
        Collective: every rank calls it."""
        cfg = self.cfg.train
        max_steps = cfg.max_steps or None
        if self._loose_batches is not None:
            # After run_steps(): its pipeline holds batches fetched ahead; fit starts afresh at the position.
            self._pipe.end()
            self._loose_batches = None
        self.dmp.train()
        samples = 0
        self._pipe.seconds = 0.0
        self.scalars.writer  # noqa: B018 - opens run_dir/tensorboard now that training starts
        self._stop = False
        for cb in self.callbacks:
            cb.on_fit_start(self)
        if self.selection is not None and self.selection.should_stop:
            self._stop = True  # resumed from a run that had already stopped early
        # A resumed run may already be at max_steps.
        done = (max_steps is not None and self.state.global_step >= max_steps) or self._stop
        while self.state.epoch < cfg.epochs and not done:
            self._pipe.start()
            it = self._batches()
            self._bar = progress_bar(
                total=len(self.train_ds),
                desc=f"epoch {self.state.epoch + 1}/{cfg.epochs}",
                enabled=cfg.progress and self.ctx.is_main,
            )
            self._pipe.start_clock()
            while True:
                try:
                    out = self._pipe.progress(it)
                except StopIteration:
                    break
                self._finish_step(out)
                samples += self.cfg.data.batch_size * self.ctx.world_size
                if self._stop or (max_steps is not None and self.state.global_step >= max_steps):
                    done = True
                    break
            self._pipe.stop_clock()
            self._bar.close()
            self._bar = None
            self._pipe.end()
            # An epoch whose every batch ran has ended, also when max_steps (or a stop) falls on its last
            # batch: its end-of-epoch work (validation, epoch losses) is due as in a longer run.
            if not done or self.state.batch_in_epoch >= self.train_ds.num_batches():
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                for cb in self.callbacks:
                    cb.on_epoch_end(self)
                done = done or self._stop
        for cb in self.callbacks:
            cb.on_fit_end(self)
        # The final state is always checkpointed (also what evaluation loads).
        if self._saved_step != self.state.global_step:
            self.save()
        return {
            "steps": self.state.global_step,
            "samples": samples,
            "train_seconds": self._pipe.seconds,
            "samples_per_s": samples / max(self._pipe.seconds, 1e-9),
            "peak_rss_mb": peak_rss_mb(),
        }

    def close(self) -> None:
        """Closes the TensorBoard writer (if one was opened)."""
        self.scalars.close()
