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
from mtl_torchrec.eval.metrics import TaskMetrics
from mtl_torchrec.model.builder import build_balancer, build_model, task_specs
from mtl_torchrec.model.tasks import TaskSpec, TrainModule, metric_tasks, with_conditional_labels
from mtl_torchrec.train.checkpoint import save_checkpoint
from mtl_torchrec.train.sharding import DistContext, make_optimizer, shard_module
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


def build_train_module(cfg: Config, data: DataBundle, feature_modules: Optional[Dict[str, nn.Module]] = None) -> TrainModule:
    tasks = task_specs(cfg.model, data.schema)
    model = build_model(cfg.model, data.schema, feature_modules=feature_modules)
    return TrainModule(model, tasks, build_balancer(cfg.train.loss_balance, tasks, cfg.train.balance))


def evaluate_module(
    module: nn.Module,
    tasks: List[TaskSpec],
    loader: Any,
    ctx: DistContext,
    batch_size: int,
    progress: bool = False,
    desc: str = "eval",
) -> Dict[str, Dict[str, float]]:
    """Runs ``module`` (a train module, sharded or not) over ``loader`` and returns task metrics."""
    metrics = TaskMetrics(metric_tasks(tasks), ctx.world_size, ctx.rank, batch_size)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, disable=not (progress and ctx.is_main), leave=False):
            batch = batch.to(ctx.device)
            _, out = module(batch)
            metrics.update(out.predictions, with_conditional_labels(batch, tasks))
    module.train(was_training)
    return metrics.compute()


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
        self.optimizer = make_optimizer(self.dmp, cfg.train.dense_optimizer, cfg.train.dense_lr)
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

    # ------------------------------------------------------------------ helpers

    def _pipeline(self) -> Any:
        if self.cfg.train.pipeline == "sparse_dist":
            return TrainPipelineSparseDist(self.dmp, self.optimizer, self.ctx.device, execute_all_batches=True)
        return TrainPipelineBase(self.dmp, self.optimizer, self.ctx.device)

    def eval_loader(self, split: str) -> Any:
        ds = BatchDataset(
            self.data.splits[split],
            self.data.schema,
            self.cfg.data.eval_batch_size,
            shuffle=False,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        )
        return make_loader(ds, num_workers=self.cfg.data.num_workers)

    def evaluate(self, split: str) -> Dict[str, Dict[str, float]]:
        return evaluate_module(
            self.dmp,
            self.tasks,
            self.eval_loader(split),
            self.ctx,
            self.cfg.data.eval_batch_size,
            progress=self.cfg.train.progress,
            desc=f"eval {split}",
        )

    def _log_scalars(self, prefix: str, values: Dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for task, v in values.items():
            if isinstance(v, dict):
                for k, x in v.items():
                    self.writer.add_scalar(f"{prefix}/{task}/{k}", x, step)
            else:
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

    def save(self, name: str = "checkpoint") -> Path:
        path = self.run_dir / name
        meta = {
            "epoch": self.state.epoch,
            "batch_in_epoch": self.state.batch_in_epoch,
            "global_step": self.state.global_step,
            "world_size": self.ctx.world_size,
            "config": to_dict(self.cfg),
        }
        save_checkpoint(path, self.dmp, self.optimizer, meta)
        return path

    # ------------------------------------------------------------------ training

    def _batches(self) -> Iterator[Batch]:
        self.train_ds.set_epoch(self.state.epoch, skip_batches=self.state.batch_in_epoch)
        return iter(make_loader(self.train_ds, num_workers=self.cfg.data.num_workers))

    def fit(self) -> Dict[str, Any]:
        cfg = self.cfg.train
        max_steps = cfg.max_steps or None
        self.dmp.train()
        samples = 0
        t0 = time.perf_counter()
        done = False
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
            while True:
                try:
                    out = pipeline.progress(it)
                except StopIteration:
                    break
                self.state.batch_in_epoch += 1
                self.state.global_step += 1
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
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    pipeline.detach()
                    self.save()
                    pipeline.attach(self.dmp)
                if cfg.eval_every and step % cfg.eval_every == 0:
                    pipeline.detach()
                    self._log_scalars("val", self.evaluate("val"), step)
                    pipeline.attach(self.dmp)
                if cfg.diagnostics_every and step % cfg.diagnostics_every == 0:
                    pipelined = isinstance(pipeline, TrainPipelineSparseDist)
                    if pipelined:
                        pipeline.detach()
                    self._run_diagnostics()
                    if pipelined:
                        pipeline.attach(self.dmp)
                if max_steps is not None and step >= max_steps:
                    done = True
                    break
            bar.close()
            if isinstance(pipeline, TrainPipelineSparseDist):
                pipeline.detach()
            if not done:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                val = self.evaluate("val")
                self._log_scalars("val", val, self.state.global_step)
        elapsed = time.perf_counter() - t0
        if not self.diagnostics_history or self.diagnostics_history[-1]["step"] != self.state.global_step:
            self._run_diagnostics()
        self.write_diagnostics()
        return {"steps": self.state.global_step, "samples": samples, "seconds": elapsed,
                "samples_per_s": samples / max(elapsed, 1e-9)}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
