"""What the training loop does besides training: logging, validation, checkpoints, diagnostics.

Each is a :class:`Callback` the :class:`~mtl_torchrec.train.trainer.Trainer` calls at fixed points
of its loop, handing itself over as a :class:`~mtl_torchrec.train.view.TrainerView` (what a
callback may read and ask for; this module never imports the trainer). A callback that needs the
model outside a training step (saving, evaluating) wraps that work in ``with trainer.paused():``,
which detaches TorchRec's pipeline and stops the training clock. Callbacks keep the RNG streams as
they found them, so a run with any of them resumes bitwise.

Example::

    trainer = Trainer(cfg, data, ctx, run_dir, callbacks=[PeriodicCheckpoint(every=100)])

Write your own by overriding the hooks you need::

    class LogLoss(Callback):
        def on_step_end(self, trainer, out):
            if trainer.state.global_step % 10 == 0:
                logging.getLogger("my_run").info("step %d: loss %.4f", trainer.state.global_step, float(out.loss))
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from mtl_torchrec.config import Config
from mtl_torchrec.core.io import write_json
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.loader import BatchDataset, make_loader
from mtl_torchrec.model.diagnostics import diagnose, flatten_scalars, summarize_findings
from mtl_torchrec.model.tasks import TrainOutput
from mtl_torchrec.train.view import TrainerView


class Callback:
    """Hooks of the training loop; every default does nothing.

    All ranks call every hook at the same point, so a hook may run collectives (checkpointing,
    evaluation) as long as it does so on every rank.
    """

    def on_fit_start(self, trainer: TrainerView) -> None:
        """Before the first step of ``fit`` (also after a resume)."""

    def on_step_end(self, trainer: TrainerView, out: TrainOutput) -> None:
        """After each optimizer step; ``trainer.state`` already counts the step."""

    def on_epoch_end(self, trainer: TrainerView) -> None:
        """After an epoch's last batch; ``trainer.state.epoch`` already names the next epoch."""

    def on_fit_end(self, trainer: TrainerView) -> None:
        """After the last step, before the final checkpoint."""

    def on_checkpoint_shards_written(self, trainer: TrainerView, path: Path) -> None:
        """On every rank once its shards of a run checkpoint are on disk, before the checkpoint is
        marked complete."""


def due(every: int, step: int) -> bool:
    """True on every ``every``-th step (never when ``every`` is 0)."""
    return bool(every) and step % every == 0


class LossLogging(Callback):
    """The training loss curve.

    At step 1, every ``every`` steps and at the last step (none of these when ``every`` is 0):
    total and per-task loss of the step's batch, the balancer's task weights and the learning
    rates the step used, to TensorBoard (``train/loss/*``, ``train/loss_weight/*``,
    ``train/lr/{dense,sparse}``), the progress bar and ``trainer.history`` (written to
    ``train_summary.json``). At the end of each epoch: the mean loss over the epoch's steps
    (rank 0's batches; after a resume, the steps since it) to ``train/epoch_loss/*`` at that
    epoch's last step and ``trainer.epoch_losses``.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self._last: Optional[TrainOutput] = None
        self._logged_step = -1
        # Detached running sums of the epoch's losses: no host sync per step.
        self._sums: Dict[str, torch.Tensor] = {}
        self._steps = 0

    def _log_step(self, trainer: TrainerView, out: TrainOutput) -> None:
        step = trainer.state.global_step
        running = {k: float(v) for k, v in out.task_losses.items()}
        running["total"] = float(out.loss)
        # Named by its step: the bar's last line may come many steps later (every > the epoch's steps).
        trainer.set_progress_postfix({"loss@step": str(step), **{k: f"{v:.4f}" for k, v in running.items()}})
        trainer.log_scalars("train/loss", running, step)
        weights = trainer.loss_weights()
        trainer.log_scalars("train/loss_weight", weights, step)
        trainer.log_scalars("train/lr", trainer.last_lr, step)
        trainer.history.append({"step": step, **running, "loss_weights": weights, "lr": dict(trainer.last_lr)})
        self._logged_step = step

    def on_fit_start(self, trainer: TrainerView) -> None:
        """Starts the epoch sums afresh."""
        self._sums, self._steps, self._last = {}, 0, None

    def on_step_end(self, trainer: TrainerView, out: TrainOutput) -> None:
        """Adds the step's losses to the epoch sums; logs them when the step is due (or step 1)."""
        losses = {"total": out.loss, **out.task_losses}
        for k, v in losses.items():
            v = v.detach()
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
        self._steps += 1
        self._last = out
        step = trainer.state.global_step
        if self.every and (step == 1 or due(self.every, step)):
            self._log_step(trainer, out)

    def on_epoch_end(self, trainer: TrainerView) -> None:
        """Logs the mean loss of the epoch's steps and starts the next epoch's sums."""
        if self._steps:
            means = {k: float(v) / self._steps for k, v in self._sums.items()}
            step = trainer.state.global_step
            trainer.log_scalars("train/epoch_loss", means, step)
            trainer.epoch_losses.append({"epoch": trainer.state.epoch, "step": step, "steps": self._steps, **means})
        self._sums, self._steps = {}, 0

    def on_fit_end(self, trainer: TrainerView) -> None:
        """Logs the last step unless it was logged already."""
        if self.every and self._last is not None and self._logged_step != trainer.state.global_step:
            self._log_step(trainer, self._last)


class PeriodicCheckpoint(Callback):
    """Saves a run checkpoint every ``every`` steps (the final one is always saved by the trainer),
    unless this step is already saved (e.g. as the new best by :class:`Validation`)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, trainer: TrainerView, out: TrainOutput) -> None:
        """Saves a run checkpoint (collective) when the step is due."""
        if due(self.every, trainer.state.global_step) and trainer.saved_step != trainer.state.global_step:
            with trainer.paused():
                trainer.save()


class Validation(Callback):
    """Validation metrics to TensorBoard (``val/<task>/<metric>``) every ``every`` steps and at the
    end of each epoch (once per step when both fall on it). Needs a trainer with an evaluator.

    With ``train.select_by`` (``trainer.selection``) each validation is also a candidate: rank 0
    measures the selection value and every rank gets it; a new best is checkpointed at once and
    ``checkpoints/best`` moved to it; after ``train.patience`` validations without improvement
    training stops (:meth:`~mtl_torchrec.train.view.TrainerView.request_stop`). TensorBoard: ``val/select_by``.
    """

    def __init__(self, every: int, split: str = "val") -> None:
        self.every = every
        self.split = split
        self._last_step = -1

    def _validate(self, trainer: TrainerView) -> None:
        table = trainer.data.splits.get(self.split)
        step = trainer.state.global_step
        if trainer.evaluator is None or table is None or len(table) == 0 or step == self._last_step:
            return
        self._last_step = step
        with trainer.paused():
            tasks = trainer.evaluate(self.split)["tasks"]
            trainer.log_scalars("val", tasks, step)
            selection = trainer.selection
            if selection is None:
                return
            # Exact AUC/GAUC exist on rank 0 only; every rank must take the same decision.
            value, per_task = trainer.broadcast(selection.measure(tasks) if trainer.ctx.is_main else None)
            trainer.log_scalars("val", {"select_by": value}, step)
            if selection.record(step, trainer.state.epoch, value, per_task):
                trainer.save(best=True)
            if selection.should_stop:
                trainer.request_stop()

    def on_step_end(self, trainer: TrainerView, out: TrainOutput) -> None:
        """Validates when the step is due."""
        if due(self.every, trainer.state.global_step):
            self._validate(trainer)

    def on_epoch_end(self, trainer: TrainerView) -> None:
        """Validates after every epoch."""
        self._validate(trainer)


# Validation batches the task-gradient cosines are averaged over (fewer when the split is smaller).
DIAGNOSTIC_BATCHES = 8


class Diagnostics(Callback):
    """Gate, expert and task-gradient diagnostics (:mod:`mtl_torchrec.model.diagnostics`) on fixed
    batches of the validation split every ``every`` steps and at the end, to TensorBoard
    (``diagnostics/*``) and ``run_dir/diagnostics.json`` (last report, findings, history).

    Task-gradient cosines are averaged over the first ``batches`` batches, and a pair is reported
    as conflicting only when its confidence interval lies below
    :data:`~mtl_torchrec.model.diagnostics.CONFLICT_COSINE`; gates and experts are read on the
    first batch."""

    def __init__(self, every: int, batch_size: int, batches: int = DIAGNOSTIC_BATCHES) -> None:
        self.every = every
        self.batch_size = batch_size
        self.batches = batches
        self.history: List[Dict[str, Any]] = []
        self._batches: Optional[List[Batch]] = None

    def report(self, trainer: TrainerView) -> Dict[str, Any]:
        """One diagnostics report of the current model (all ranks take part); ``{}`` for a model
        without a fusion stage (not a MultiTaskModel)."""
        model = getattr(trainer.dmp.module, "model", None)
        if model is None or not hasattr(model, "fuse"):
            return {}
        if self._batches is None:
            val = trainer.data.splits.get("val")
            split = "val" if val is not None and len(val) > 0 else "train"
            ds = BatchDataset(
                trainer.data.splits[split],
                trainer.data.schema,
                self.batch_size,
                shuffle=False,
                rank=trainer.ctx.rank,
                world_size=trainer.ctx.world_size,
            )
            # Every rank has the same number of evaluation batches, so all take part in each step.
            self._batches = list(itertools.islice(make_loader(ds, num_workers=0), self.batches))
        report = diagnose(model, [b.to(trainer.ctx.device) for b in self._batches], trainer.tasks)
        report["step"] = trainer.state.global_step
        report["loss_weights"] = trainer.loss_weights()
        return report

    def _run(self, trainer: TrainerView) -> None:
        # Leaves the RNG streams as they were, so a run with diagnostics resumes exactly.
        with trainer.paused(), torch.random.fork_rng(devices=[]):
            report = self.report(trainer)
        if report:
            self.history.append(report)
            trainer.log_scalars("diagnostics", flatten_scalars(report), trainer.state.global_step)

    def on_step_end(self, trainer: TrainerView, out: TrainOutput) -> None:
        """Records a diagnostics report when the step is due."""
        if due(self.every, trainer.state.global_step):
            self._run(trainer)

    def on_fit_end(self, trainer: TrainerView) -> None:
        """Records a final report (unless this step has one) and writes ``diagnostics.json`` on rank 0."""
        if not self.history or self.history[-1]["step"] != trainer.state.global_step:
            self._run(trainer)
        if trainer.ctx.is_main and self.history:
            final = self.history[-1]
            write_json(
                trainer.run_dir / "diagnostics.json",
                {"final": final, "findings": summarize_findings(final), "history": self.history},
            )


def default_callbacks(cfg: Config) -> List[Callback]:
    """The callbacks ``mtl-torchrec train`` runs, in the order they run after a step: loss
    logging, validation, checkpoint, diagnostics (``train.log_every``, ``train.eval_every``,
    ``train.checkpoint_every``, ``train.diagnostics_every``). Validation comes before the
    checkpoint so that a checkpoint of step N holds the selection state after N's validation
    (a run resumed from it does not validate N again)."""
    t = cfg.train
    return [
        LossLogging(t.log_every),
        Validation(t.eval_every),
        PeriodicCheckpoint(t.checkpoint_every),
        Diagnostics(t.diagnostics_every, cfg.data.batch_size),
    ]

