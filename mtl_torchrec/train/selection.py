"""Best-checkpoint selection and early stopping by a validation metric (``train.select_by``,
``train.patience``).

Every validation (see :class:`~mtl_torchrec.train.callbacks.Validation`) gives one value: the mean of
the chosen metric over the chosen tasks (:func:`~mtl_torchrec.config.parse_select_by`). A value
strictly better than every earlier one is an improvement: the trainer then checkpoints that step
and points ``checkpoints/best`` at it. After ``patience`` validations in a row without an
improvement training stops (0: never early). The state is plain JSON, saved in every checkpoint's
``meta.json``, so a resumed run continues with exactly the same best value, count and curve.

Example::

    sel = ModelSelection(parse_select_by("auc:click", cfg.model.tasks), patience=2)
    value, per_task = sel.measure(val_metrics["tasks"])       # on rank 0
    improved = sel.record(step=100, epoch=0, value=value, per_task=per_task)
    sel.should_stop                                            # True after 2 records without improvement
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

from mtl_torchrec.config import SelectBy


class ModelSelection:
    """Tracks the validation curve of ``select_by`` and decides improvement and stopping.

    Args:
        select_by: the parsed ``train.select_by``.
        patience: validations in a row without improvement before :attr:`should_stop` (0: never).
    """

    def __init__(self, select_by: SelectBy, patience: int = 0) -> None:
        self.select_by = select_by
        self.patience = patience
        self.best_step: Optional[int] = None
        self.best_value: Optional[float] = None
        # Validations since the best one (or since the start, before any finite value).
        self.since_best = 0
        # One entry per validation: {"step", "epoch", "value", "tasks": {task: value}}; NaN as None.
        self.curve: List[Dict[str, Any]] = []
        self.stopped_at: Optional[int] = None

    def measure(self, tasks: Dict[str, Dict[str, Any]]) -> Tuple[float, Dict[str, float]]:
        """``(mean, {task: value})`` of the metric over the chosen tasks from an evaluator's
        ``{"tasks": ...}`` block; NaN where a task lacks the metric or it is undefined (e.g. AUC of a
        split with one class)."""
        per_task: Dict[str, float] = {}
        for name in self.select_by.tasks:
            value = tasks.get(name, {}).get(self.select_by.metric)
            per_task[name] = float(value) if isinstance(value, (int, float)) else float("nan")
        values = list(per_task.values())
        return (sum(values) / len(values) if values else float("nan")), per_task

    def better(self, value: float) -> bool:
        """Whether ``value`` improves on the best so far (a NaN never does)."""
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.select_by.higher_is_better else value < self.best_value

    def record(self, step: int, epoch: int, value: float, per_task: Dict[str, float]) -> bool:
        """Adds one validation to the curve; returns True when it is the new best."""
        improved = self.better(value)
        self.curve.append({
            "step": step,
            "epoch": epoch,
            "value": _json_number(value),
            "tasks": {k: _json_number(v) for k, v in per_task.items()},
        })
        if improved:
            self.best_step, self.best_value, self.since_best = step, value, 0
        else:
            self.since_best += 1
        if self.should_stop and self.stopped_at is None:
            self.stopped_at = step
        return improved

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` (> 0) validations in a row brought no improvement."""
        return self.patience > 0 and self.since_best >= self.patience

    def state_dict(self) -> Dict[str, Any]:
        """The JSON state a checkpoint keeps (``meta.json["selection"]``)."""
        return {
            "select_by": str(self.select_by),
            "best_step": self.best_step,
            "best_value": self.best_value,
            "since_best": self.since_best,
            "stopped_at": self.stopped_at,
            "curve": [dict(c) for c in self.curve],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> bool:
        """Restores :meth:`state_dict`'s JSON; returns False (and keeps a fresh state) when it was
        recorded for another ``select_by``, whose values do not compare with this one's. Raises
        ValueError for a state that is not such JSON."""
        if not isinstance(state, dict) or not isinstance(state.get("curve"), list):
            raise ValueError("not a model selection state (needs 'select_by', 'best_step', ..., 'curve')")
        if state.get("select_by") != str(self.select_by):
            return False
        self.best_step = state.get("best_step")
        self.best_value = state.get("best_value")
        self.since_best = int(state.get("since_best", 0))
        self.stopped_at = state.get("stopped_at")
        self.curve = [dict(c) for c in state["curve"]]
        return True

    def summary(self) -> Dict[str, Any]:
        """What ``train_summary.json["selection"]`` holds: the rule, the winner, whether training
        stopped early, and the validation curve."""
        return {
            "select_by": str(self.select_by),
            "metric": self.select_by.metric,
            "tasks": list(self.select_by.tasks),
            "higher_is_better": self.select_by.higher_is_better,
            "patience": self.patience,
            "best_step": self.best_step,
            "best_value": self.best_value,
            "stopped_early": self.stopped_at is not None,
            "stopped_at_step": self.stopped_at,
            "curve": [dict(c) for c in self.curve],
        }


def _json_number(value: float) -> Optional[float]:
    """JSON has no NaN: an undefined value is stored as None."""
    return None if math.isnan(value) else float(value)
