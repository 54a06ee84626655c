"""Label kinds: what a task's label is, and everything that follows from it but not from the loss.

A label kind (``labels[i].type`` of a data spec, ``LabelSpec.type``, ``model.tasks[i].type``) owns
how a raw label is read, which values are valid, how a prediction is made from the tower's output,
the default loss, and which metrics, calibration, plots and report columns apply. Code elsewhere
asks the kind (``LABEL_KINDS.get(task.type).probability`` ...) instead of comparing type names, so
a new label kind is one class here (or in its own module) and one registration.

Built-ins:

- ``binary``: a 0/1 label; the prediction is ``sigmoid(logit)``, a probability; default loss
  ``bce``; AUC, GAUC, NE, logloss, ECE and calibration apply, and post-hoc calibration
  (``train.calibration``) fits it. A data spec may map raw values with ``positive``/``negative``
  or ``threshold``.
- ``regression``: a real-valued label; the prediction is the tower's value itself; default loss
  ``mse``; RMSE, MSE and MAE apply.

Example::

    kind = LABEL_KINDS.get("binary")
    kind.predict(torch.tensor([0.0]))      # tensor([0.5])  (a tensor method: no torch import here)
    kind.default_loss                      # 'bce'
    LABEL_KINDS.get("count")               # ConfigError: model.tasks[*].type: 'count' is not one of [...]
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Dict, Optional, Tuple

import numpy as np

from mtl_torchrec.core.registry import Registry


class LabelKind:
    """What one kind of label implies; subclasses set the class attributes and override the methods.

    Attributes:
        name: the registered name (``binary``).
        default_loss: the ``model.tasks[i].loss`` used when a task names none.
        probability: predictions are probabilities of a 0/1 label: the probability metrics (AUC,
            GAUC, NE, logloss, ECE, calibration), post-hoc calibration, ESMM/AITM chains, ROC and
            reliability plots apply; otherwise the value metrics (RMSE, MSE, MAE) and value plots.
        mapped: a data spec may map raw values to labels (``positive``/``negative``/``threshold``).
        report_columns: per-task columns of ``report.md`` and ``compare`` tables, in order.
        slice_columns: the per-slice columns of ``report.md``.
        compared_metrics: what ``compare-single-task`` compares per task.
        selection_metrics: the ``train.select_by`` metrics of this kind -> True when higher is better.
        value_rule: the values :meth:`valid` allows, for messages (``binary label must be 0 or 1``).
    """

    name: ClassVar[str] = ""
    default_loss: ClassVar[str] = ""
    probability: ClassVar[bool] = False
    mapped: ClassVar[bool] = False
    report_columns: ClassVar[Tuple[str, ...]] = ()
    slice_columns: ClassVar[Tuple[str, ...]] = ()
    compared_metrics: ClassVar[Tuple[str, ...]] = ()
    selection_metrics: ClassVar[Dict[str, bool]] = {}
    value_rule: ClassVar[str] = ""

    def predict(self, logit: Any) -> Any:
        """The prediction ``[B]`` from the tower's output ``[B]``."""
        raise NotImplementedError

    def valid(self, y: Any) -> Any:
        """Which of the present (non-NaN) label values ``y`` (a numpy array or a tensor) are allowed:
        a bool array or tensor shaped like ``y``."""
        return np.ones(tuple(y.shape), dtype=bool)

    def from_numbers(self, num: np.ndarray, threshold: Optional[float]) -> Tuple[np.ndarray, np.ndarray]:
        """Labels (float32) from a data spec's numeric cells ``num`` (float64, NaN when missing),
        and which present cells break :attr:`value_rule` (bool); ``threshold`` only for ``mapped`` kinds."""
        y = num.astype(np.float32)
        return y, ~np.isnan(num) & ~self.valid(np.nan_to_num(num))

    def describe(self, y: np.ndarray) -> str:
        """A short summary of the present labels ``y`` (float64, non-empty) for the console."""
        raise NotImplementedError

    def initial_bias(self, y: Any) -> float:
        """The tower's output bias that predicts the labels ``y`` (a float64 tensor or array,
        non-empty) on average."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"LabelKind({self.name!r})"


# Label kinds by name (``labels[i].type``, ``model.tasks[i].type``).
LABEL_KINDS: Registry[LabelKind] = Registry("model.tasks[*].type")

# A base rate of exactly 0 or 1 would put a binary bias at -inf / +inf: clipped into [floor, 1 - floor].
_RATE_FLOOR = 1e-6


class BinaryLabel(LabelKind):
    """A 0/1 label; the prediction is ``sigmoid(logit)``; BCE by default (see the module doc)."""

    name = "binary"
    default_loss = "bce"
    probability = True
    mapped = True
    report_columns = ("count", "auc", "gauc", "gauc_unweighted", "logloss", "ne", "calibration", "ece",
                      "mean_prediction", "positive_rate")
    slice_columns = ("count", "auc", "gauc", "logloss", "ne", "calibration", "positive_rate")
    compared_metrics = ("auc", "gauc", "logloss")
    selection_metrics = {"auc": True, "gauc": True, "gauc_unweighted": True, "logloss": False, "ne": False,
                         "ece": False}
    value_rule = "0 or 1"

    def predict(self, logit: Any) -> Any:
        """``sigmoid(logit)``: the probability of label 1."""
        return logit.sigmoid()

    def valid(self, y: Any) -> Any:
        """0 and 1 only."""
        return (y == 0) | (y == 1)

    def from_numbers(self, num: np.ndarray, threshold: Optional[float]) -> Tuple[np.ndarray, np.ndarray]:
        """``num >= threshold`` when a threshold is given (nothing is refused), else the 0/1 values."""
        if threshold is not None:
            return (num >= threshold).astype(np.float32), np.zeros(num.shape, dtype=bool)
        return super().from_numbers(num, threshold)

    def describe(self, y: np.ndarray) -> str:
        """``rate 0.123``."""
        return f"rate {y.mean():.3f}"

    def initial_bias(self, y: Any) -> float:
        """``logit(base rate)``, the rate clipped away from 0 and 1, so the first loss is the label entropy."""
        rate = min(max(float(y.mean()), _RATE_FLOOR), 1.0 - _RATE_FLOOR)
        return math.log(rate / (1.0 - rate))


class RegressionLabel(LabelKind):
    """A real-valued label; the prediction is the tower's value; MSE by default (see the module doc)."""

    name = "regression"
    default_loss = "mse"
    report_columns = ("count", "rmse", "mae", "mean_prediction", "mean_label")
    slice_columns = ("count", "rmse", "mae", "mean_prediction", "mean_label")
    compared_metrics = ("rmse", "mae")
    selection_metrics = {"rmse": False, "mse": False, "mae": False}
    value_rule = "a number"

    def predict(self, logit: Any) -> Any:
        """The tower's value as it is."""
        return logit

    def describe(self, y: np.ndarray) -> str:
        """``mean 3.58 std 1.12``."""
        return f"mean {y.mean():.2f} std {y.std():.2f}"

    def initial_bias(self, y: Any) -> float:
        """The mean label: started at 0, a rating's squared error (~mean^2) would dwarf the binary
        losses and its gradient swamp the shared layers early on."""
        return float(y.mean())


# One instance per kind: its methods need no state, so the entries are ready to use.
LABEL_KINDS.register("binary")(BinaryLabel())
LABEL_KINDS.register("regression")(RegressionLabel())
