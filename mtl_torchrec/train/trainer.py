"""The training loop: DMP-sharded model, fused sparse + dense optimizers, TorchRec's pipeline.

The trainer depends only on the train-module interface (``forward(batch) -> (loss, (task_losses,
predictions, output))``, see :class:`mtl_torchrec.model.tasks.TrainModule`), so any model that
returns per-task logits in a :class:`~mtl_torchrec.model.multitask.ModelOutput` can be trained.

Example::

    ctx = init_distributed()
    trainer = Trainer(cfg, data_bundle, ctx, run_dir=Path("runs/example"))
    metrics = trainer.fit()
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineBase, TrainPipelineSparseDist
from tqdm import tqdm

from mtl_torchrec.config import Config, to_dict
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.loader import BatchDataset, make_loader
from mtl_torchrec.data.sources import DataBundle
from mtl_torchrec.eval.diagnostics import diagnose, flatten_scalars, summarize_findings
from mtl_torchrec.eval.evaluate import evaluate_split, split_slices
from mtl_torchrec.model.builder import build_train_module
from mtl_torchrec.model.tasks import TaskSpec
from mtl_torchrec.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    maybe_inject_fault,
    resolve_checkpoint,
    save_checkpoint,
    save_run_checkpoint,
    set_rng_state,
)
from mtl_torchrec.train.sharding import DistContext, make_optimizer, shard_module
from mtl_torchrec.text.features import load_text_tables
from mtl_torchrec.utils import write_json


@dataclass
class TrainState:
    """Everything about progress that a checkpoint must capture besides module/optimizer state."""

    epoch: int = 0
    # Batches of ``epoch`` already trained on (the data position to resume from).
    batch_in_epoch: int = 0
    global_step: int = 0


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Trainer:
    def __init__(
        self,
        cfg: Config,
        data: DataBundle,
        ctx: DistContext,
        run_dir: Path,
        feature_modules: Optional[Dict[str, nn.Module]] = None,
        train_module: Optional[nn.Module] = None,
    ) -> None:
        self.cfg = cfg
        self.data = data
        self.ctx = ctx
        self.run_dir = Path(run_dir)
        seed_everything(cfg.train.seed)
        module = train_module or build_train_module(cfg, data, feature_modules)
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
            self.dmp, cfg.train.dense_optimizer, cfg.train.dense_lr, balance_lr=cfg.train.balance.lr
        )
        self.state = TrainState()
        self.train_ds = BatchDataset(
            data.splits["train"],
            data.schema,
            cfg.data.batch_size,
            shuffle=True,
            seed=cfg.train.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        self.writer = None
        if ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.history: List[Dict[str, Any]] = []
        self.diagnostics_history: List[Dict[str, Any]] = []
        self._diagnostics_batch: Optional[Batch] = None
        # RNG states read from a checkpoint; applied once the next epoch's DataLoader iterator
        # exists, because creating that iterator draws from torch's global generator.
        self._pending_rng: Optional[Dict[str, Any]] = None
        self._saved_step = -1

    # ------------------------------------------------------------------ helpers

    def _pipeline(self) -> Any:
        if self.cfg.train.pipeline == "sparse_dist":
            return TrainPipelineSparseDist(self.dmp, self.optimizer, self.ctx.device, execute_all_batches=True)
        return TrainPipelineBase(self.dmp, self.optimizer, self.ctx.device)

    def evaluate(self, split: str) -> Dict[str, Any]:
        """Metrics of ``split`` as ``mtl-torchrec evaluate`` computes them: ``{"tasks": ..., "slices": ...}``
        on rank 0 (exact AUC/GAUC on the gathered rows); other ranks get the cross-rank metrics only."""
        result = evaluate_split(
            self.dmp,
            self.tasks,
            self.data,
            split,
            self.ctx,
            self.cfg.data.eval_batch_size,
            split_slices(self.data, split),
            self.cfg.data.num_workers,
        )
        return result.summary

    def _log_scalars(self, prefix: str, values: Dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for task, v in values.items():
            if isinstance(v, dict):
                for k, x in v.items():
                    if isinstance(x, (int, float)):
                        self.writer.add_scalar(f"{prefix}/{task}/{k}", x, step)
            elif isinstance(v, (int, float)):
                self.writer.add_scalar(f"{prefix}/{task}", v, step)

    def loss_weights(self) -> Dict[str, float]:
        """The balancer's current task weights (empty for a train module without a balancer)."""
        balancer = getattr(self.dmp.module, "balancer", None)
        return balancer.weights() if balancer is not None and hasattr(balancer, "weights") else {}

    def diagnose(self) -> Dict[str, Any]:
        """Gate/expert/task-gradient diagnostics on a fixed batch of the validation split (the
        first batch of each rank's share). Run with the pipeline detached; all ranks take part."""
        model = getattr(self.dmp.module, "model", None)
        if model is None or not hasattr(model, "fuse"):
            return {}
        if self._diagnostics_batch is None:
            split = "val" if "val" in self.data.splits else "train"
            ds = BatchDataset(
                self.data.splits[split],
                self.data.schema,
                self.cfg.data.batch_size,
                shuffle=False,
                rank=self.ctx.rank,
                world_size=self.ctx.world_size,
            )
            self._diagnostics_batch = next(iter(make_loader(ds, num_workers=0)))
        report = diagnose(model, self._diagnostics_batch.to(self.ctx.device), self.tasks)
        report["step"] = self.state.global_step
        report["loss_weights"] = self.loss_weights()
        return report

    def _run_diagnostics(self) -> Dict[str, Any]:
        # Leaves the RNG streams as they were, so a run with diagnostics resumes exactly.
        with torch.random.fork_rng(devices=[]):
            report = self.diagnose()
        if report:
            self.diagnostics_history.append(report)
            self._log_scalars("diagnostics", flatten_scalars(report), self.state.global_step)
        return report

    def write_diagnostics(self, path: Optional[Path] = None) -> Optional[Path]:
        """Writes ``diagnostics.json`` (the last report, its findings and the history) on rank 0."""
        if not self.ctx.is_main or not self.diagnostics_history:
            return None
        path = Path(path) if path is not None else self.run_dir / "diagnostics.json"
        final = self.diagnostics_history[-1]
        write_json(path, {"final": final, "findings": summarize_findings(final), "history": self.diagnostics_history})
        return path

    def save(self, name: Optional[str] = None) -> Path:
        """Checkpoints everything needed to resume: with no ``name``, atomically as
        ``run_dir/checkpoints/step_<global_step>`` (keeping ``train.keep_checkpoints``); with a
        ``name``, as the plain folder ``run_dir/<name>``. Collective: every rank calls it."""
        meta = {
            "epoch": self.state.epoch,
            "batch_in_epoch": self.state.batch_in_epoch,
            "global_step": self.state.global_step,
            "batch_size": self.cfg.data.batch_size,
            "config": to_dict(self.cfg),
        }
        if name is not None:
            path = self.run_dir / name
            save_checkpoint(path, self.dmp, self.optimizer, meta)
            return path
        path = save_run_checkpoint(
            self.run_dir, self.state.global_step, self.dmp, self.optimizer, meta, keep=self.cfg.train.keep_checkpoints
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
        epoch, in_epoch = int(meta["epoch"]), int(meta["batch_in_epoch"])
        saved_world = int(meta.get("world_size", self.ctx.world_size))
        saved_bs = int(meta.get("batch_size", self.cfg.data.batch_size))
        if (saved_world, saved_bs) != (self.ctx.world_size, self.cfg.data.batch_size):
            in_epoch = in_epoch * saved_bs * saved_world // (self.cfg.data.batch_size * self.ctx.world_size)
        else:
            rng_file = Path(path) / "rng" / f"rank_{self.ctx.rank:05d}.json"
            if rng_file.is_file():
                self._pending_rng = json.loads(rng_file.read_text(encoding="utf-8"))
        self.state = TrainState(epoch=epoch, batch_in_epoch=in_epoch, global_step=int(meta["global_step"]))
        self._saved_step = self.state.global_step
        return meta

    def resume(self, mode: str = "auto") -> Optional[Path]:
        """``auto``: continue from the run's latest checkpoint if it has one; ``required``: the
        same but a run without one is an error; ``never``: start fresh (an error if the run
        directory already holds checkpoints, which a fresh run would mix with its own)."""
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

    # ------------------------------------------------------------------ training

    def _batches(self) -> Iterator[Batch]:
        self.train_ds.set_epoch(self.state.epoch, skip_batches=self.state.batch_in_epoch)
        it = iter(make_loader(self.train_ds, num_workers=self.cfg.data.num_workers))
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None
        return it

    def fit(self) -> Dict[str, Any]:
        cfg = self.cfg.train
        max_steps = cfg.max_steps or None
        self.dmp.train()
        samples = 0
        # Wall time of training steps only: evaluation and checkpointing are excluded.
        train_seconds = 0.0
        # A resumed run may already be at max_steps.
        done = max_steps is not None and self.state.global_step >= max_steps
        while self.state.epoch < cfg.epochs and not done:
            pipeline = self._pipeline()
            it = self._batches()
            total = len(self.train_ds)
            bar = tqdm(
                total=total,
                desc=f"epoch {self.state.epoch + 1}/{cfg.epochs}",
                disable=not (cfg.progress and self.ctx.is_main),
                leave=False,
            )
            running: Dict[str, float] = {}
            t0 = time.perf_counter()
            while True:
                try:
                    out = pipeline.progress(it)
                except StopIteration:
                    train_seconds += time.perf_counter() - t0
                    break
                # The pipeline has fetched batches ahead, but progress() returns only after this
                # batch's optimizer step: the position counts completed steps only.
                self.state.batch_in_epoch += 1
                self.state.global_step += 1
                maybe_inject_fault(self.ctx.rank, self.state.global_step, "step")
                samples += self.cfg.data.batch_size * self.ctx.world_size
                bar.update(1)
                step = self.state.global_step
                if cfg.log_every and step % cfg.log_every == 0:
                    running = {k: float(v) for k, v in out.task_losses.items()}
                    running["total"] = float(out.loss)
                    bar.set_postfix({k: f"{v:.4f}" for k, v in running.items()})
                    self._log_scalars("train/loss", running, step)
                    weights = self.loss_weights()
                    self._log_scalars("train/loss_weight", weights, step)
                    self.history.append({"step": step, **running, "loss_weights": weights})
                pause = (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or (
                    cfg.eval_every and step % cfg.eval_every == 0
                )
                if pause:
                    train_seconds += time.perf_counter() - t0
                    pipeline.detach()
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                        self.save()
                    if cfg.eval_every and step % cfg.eval_every == 0:
                        self._log_scalars("val", self.evaluate("val")["tasks"], step)
                    pipeline.attach(self.dmp)
                    t0 = time.perf_counter()
                if cfg.diagnostics_every and step % cfg.diagnostics_every == 0:
                    train_seconds += time.perf_counter() - t0
                    pipelined = isinstance(pipeline, TrainPipelineSparseDist)
                    if pipelined:
                        pipeline.detach()
                    self._run_diagnostics()
                    if pipelined:
                        pipeline.attach(self.dmp)
                    t0 = time.perf_counter()
                if max_steps is not None and step >= max_steps:
                    train_seconds += time.perf_counter() - t0
                    done = True
                    break
            bar.close()
            if isinstance(pipeline, TrainPipelineSparseDist):
                pipeline.detach()
            if not done:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                self._log_scalars("val", self.evaluate("val")["tasks"], self.state.global_step)
        if not self.diagnostics_history or self.diagnostics_history[-1]["step"] != self.state.global_step:
            self._run_diagnostics()
        self.write_diagnostics()
        # The final state is always checkpointed (also what evaluation loads).
        if self._saved_step != self.state.global_step:
            self.save()
        return {
            "steps": self.state.global_step,
            "samples": samples,
            "train_seconds": train_seconds,
            "samples_per_s": samples / max(train_seconds, 1e-9),
        }

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
