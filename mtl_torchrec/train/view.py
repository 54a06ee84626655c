"""What a callback sees of the trainer: the training position and the few things it may read or ask for.

Callback hooks (:mod:`mtl_torchrec.train.callbacks`) receive a :class:`TrainerView`, a Protocol
that :class:`~mtl_torchrec.train.trainer.Trainer` satisfies. Callbacks therefore never import the
trainer module (which imports them), and anything of this shape can drive them.

Example::

    class EveryTenSteps(Callback):
        def on_step_end(self, trainer: TrainerView, out: TrainOutput) -> None:
            if trainer.state.global_step % 10 == 0:
                with trainer.paused():
                    trainer.save()
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Protocol

from torch import nn

from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.distributed.context import DistContext
from mtl_torchrec.model.tasks import TaskSpec
from mtl_torchrec.train.selection import ModelSelection

# ``evaluator(model, tasks, split)`` returns ``{"tasks": {task: metrics}, "slices": {...}}`` (rank 0
# gets everything; other ranks what they computed), e.g. :class:`mtl_torchrec.eval.evaluate.SplitEvaluator`.
Evaluator = Callable[[nn.Module, List[TaskSpec], str], Dict[str, Any]]


@dataclass
class TrainState:
    """Everything about progress that a checkpoint must capture besides module/optimizer state."""

    epoch: int = 0
    # Batches of ``epoch`` already trained on (the data position to resume from).
    batch_in_epoch: int = 0
    global_step: int = 0


class TrainerView(Protocol):
    """The part of the trainer that callbacks use.

    Read: ``state`` (the position; after a step it already counts that step), ``ctx`` (ranks,
    device), ``data`` (the splits), ``dmp`` (the sharded train module), ``tasks``, ``run_dir``,
    ``evaluator`` (None without one), ``selection`` (``train.select_by``'s state, None without it),
    ``last_lr`` (the rates of the latest step) and :attr:`saved_step`. Appended to: ``history``
    (logged steps, written to ``train_summary.json``) and ``epoch_losses``. Asked for: a paused
    pipeline, a checkpoint, an evaluation, TensorBoard scalars, a progress-bar postfix, the loss
    weights, a broadcast from rank 0 and a stop.
    """

    state: TrainState
    ctx: DistContext
    data: DataBundle
    dmp: nn.Module
    tasks: List[TaskSpec]
    run_dir: Path
    evaluator: Optional[Evaluator]
    selection: Optional[ModelSelection]
    history: List[Dict[str, Any]]
    epoch_losses: List[Dict[str, Any]]
    last_lr: Dict[str, float]

    @property
    def saved_step(self) -> int:
        """The step of the last run checkpoint saved or resumed from (-1: none)."""
        ...

    def paused(self) -> ContextManager[None]:
        """A context in which the model may be used outside a training step (saving, evaluating):
        the pipeline is detached and the training clock stopped."""
        ...

    def save(self, name: Optional[str] = None, best: bool = False) -> Path:
        """Checkpoints everything needed to resume (collective); see ``Trainer.save``."""
        ...

    def evaluate(self, split: str) -> Dict[str, Any]:
        """Metrics of ``split`` from the evaluator: ``{"tasks": ..., "slices": ...}``."""
        ...

    def log_scalars(self, prefix: str, values: Dict[str, Any], step: int) -> None:
        """Numbers (nested one level: ``{task: {metric: x}}``) to TensorBoard on rank 0."""
        ...

    def set_progress_postfix(self, values: Dict[str, str]) -> None:
        """Shows ``values`` beside the running epoch's progress bar."""
        ...

    def loss_weights(self) -> Dict[str, float]:
        """The balancer's current task weights (empty without a balancer)."""
        ...

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (collective)."""
        ...

    def request_stop(self) -> None:
        """Ends training after the current step (or epoch end); the final state is checkpointed."""
        ...
