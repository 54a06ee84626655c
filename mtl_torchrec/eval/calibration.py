"""Post-hoc calibration of binary tasks (``train.calibration``), fitted on the validation split.

Methods, each a monotone map of a task's probability ``p`` (so AUC stays the same, up to the ties
isotonic regression makes), fitted on the labelled rows of the validation split:

* ``temperature`` (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017):
  ``sigmoid(z / T)`` with ``z = logit(p)``; one parameter, fixes over- and under-confidence but not a
  shifted base rate.
* ``platt`` (Platt, 1999): ``sigmoid(a * z + b)`` with ``a > 0``; also moves the mean, and at its
  optimum the mean prediction equals the observed rate on the fitted rows.
* ``isotonic`` (Zadrozny & Elkan, KDD 2002): the non-decreasing step function of ``p`` that fits the
  labels best (scikit-learn's ``IsotonicRegression``), applied by linear interpolation between its
  thresholds, clipped at the ends; its flat steps tie scores, which can move AUC slightly.

Temperature and Platt are maximum-likelihood fits on float64 logits by ``torch.optim.LBFGS``.

ESMM: a task with ``esmm_parent`` predicts pCTCVR = pCTR x pCVR in impression space. Both
impression-space probabilities are calibrated on their own labels (click; click and conversion), the
calibrated pCTCVR is capped at the calibrated pCTR (a conversion needs a click) and the conditional
``<task>_given_<parent>`` is derived from the two: pCVR = pCTCVR / pCTR. So the three stay one
consistent model; pCVR is not fitted on the clicked rows separately.

Stored with the run as ``calibration.json`` (plain JSON, never pickle)::

    {"format": "mtl_torchrec calibration", "version": 1, "method": "platt", "fitted_on": "val",
     "checkpoint_step": 1170, "esmm": {"conversion": "click"},
     "tasks": {"click": {"method": "platt", "a": 1.02, "b": -0.05, "rows": 50000}, ...}}

Example::

    cal = Calibration.load(run_dir / CALIBRATION_FILE)
    calibrated = cal.apply(predictions)            # {task: [B] tensor}, as TrainOutput.predictions
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.core.io import write_json
from mtl_torchrec.eval.metrics import binary_auc, binary_logloss, expected_calibration_error
from mtl_torchrec.model.tasks import TaskSpec, conditional_name, is_probability

CALIBRATION_FILE = "calibration.json"
FORMAT = "mtl_torchrec calibration"
VERSION = 1
METHODS = ("temperature", "platt", "isotonic")
# Probabilities are clipped into [EPS, 1 - EPS] before taking logits.
EPS = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _fit_logistic(z: np.ndarray, y: np.ndarray, w: np.ndarray, with_bias: bool) -> Dict[str, float]:
    """Maximum-likelihood ``sigmoid(exp(s) * z + b)`` (``b = 0`` unless ``with_bias``) by LBFGS in
    float64; ``exp(s)`` keeps the slope positive so the ranking is kept."""
    zt, yt, wt = (torch.as_tensor(a, dtype=torch.float64) for a in (z, y, w))
    s = torch.zeros((), dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=with_bias)
    params = [s, b] if with_bias else [s]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")
    total = wt.sum()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(s.exp() * zt + b, yt, reduction="none")
                * wt).sum() / total
        loss.backward()
        return loss

    opt.step(closure)
    return {"a": float(s.detach().exp()), "b": float(b.detach())}


@dataclass
class TaskCalibrator:
    """One binary task's fitted map: ``method`` and its parameters (``temperature``: ``temperature``;
    ``platt``: ``a``, ``b``; ``isotonic``: ``x``, ``y`` thresholds), ``rows`` it was fitted on."""

    method: str
    params: Dict[str, Any]
    rows: int = 0

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (float64) of probabilities ``p`` (any shape)."""
        if self.method == "temperature":
            return _sigmoid(_logit(p) / self.params["temperature"])
        if self.method == "platt":
            return _sigmoid(self.params["a"] * _logit(p) + self.params["b"])
        return np.interp(np.asarray(p, dtype=np.float64), self.params["x"], self.params["y"])

    def to_json(self) -> Dict[str, Any]:
        """``{"method", <params>, "rows"}``."""
        return {"method": self.method, **self.params, "rows": self.rows}


def fit_task(method: str, p: np.ndarray, y: np.ndarray, weight: Optional[np.ndarray] = None) -> TaskCalibrator:
    """Fits ``method`` (``temperature``, ``platt``, ``isotonic``) on probabilities ``p`` [N] and
    labels ``y`` [N] in {0, 1}, rows weighted by ``weight`` (default 1).

    Raises ValueError for an unknown method and DataError when the rows do not hold both classes
    (nothing to fit).
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(p) if weight is None else np.asarray(weight, dtype=np.float64)
    if method not in METHODS:
        raise ValueError(f"calibration method '{method}' is not one of {list(METHODS)}")
    positives, total = float((w * y).sum()), float(w.sum())
    if not 0 < positives < total:
        raise DataError(f"{len(p)} rows with {positives:g} positives: calibration needs both classes")
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression  # scikit-learn: imported only to fit

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y, sample_weight=w)
        params: Dict[str, Any] = {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    elif method == "temperature":
        fitted = _fit_logistic(_logit(p), y, w, with_bias=False)
        params = {"temperature": 1.0 / fitted["a"]}
    else:
        params = _fit_logistic(_logit(p), y, w, with_bias=True)
    return TaskCalibrator(method, params, rows=len(p))


@dataclass
class Calibration:
    """Fitted calibrators of a run's binary tasks and how to apply them (see the module doc).

    ``tasks``: calibrator per binary task (impression space); ``esmm``: ESMM task -> parent;
    ``checkpoint_step``: the step of the model it was fitted for (evaluation of another checkpoint
    does not apply it).
    """

    method: str
    tasks: Dict[str, TaskCalibrator]
    esmm: Dict[str, str] = field(default_factory=dict)
    checkpoint_step: Optional[int] = None
    fitted_on: str = "val"

    def apply_numpy(self, predictions: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Calibrated copies of ``predictions`` (numpy, ``{task: [N]}``): plain binary tasks mapped,
        ESMM tasks mapped and capped at their calibrated parent, ``<task>_given_<parent>`` derived;
        every other entry (regression) as it was."""
        out = dict(predictions)
        for name, cal in self.tasks.items():
            if name in predictions and name not in self.esmm:
                out[name] = cal(predictions[name])
        for name, parent in self.esmm.items():
            if name not in predictions:
                continue
            ctr = out[parent]
            ctcvr = np.minimum(self.tasks[name](predictions[name]), ctr)
            out[name] = ctcvr
            out[conditional_name(TaskSpec(name, "binary", esmm_parent=parent))] = np.divide(ctcvr, ctr, out=np.zeros_like(ctcvr), where=ctr > 0)
        return out

    def apply(self, predictions: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """:meth:`apply_numpy` on tensors (``{task: [B]}``, e.g. ``TrainOutput.predictions``);
        returns tensors of the inputs' dtype and device."""
        arrays = {k: v.detach().double().cpu().numpy() for k, v in predictions.items()}
        mapped = self.apply_numpy(arrays)
        return {k: (torch.from_numpy(mapped[k]).to(v.device, v.dtype) if mapped[k] is not arrays[k] else v)
                for k, v in predictions.items()}

    def to_json(self) -> Dict[str, Any]:
        """The ``calibration.json`` content."""
        return {"format": FORMAT, "version": VERSION, "method": self.method, "fitted_on": self.fitted_on,
                "checkpoint_step": self.checkpoint_step, "esmm": dict(self.esmm),
                "tasks": {k: v.to_json() for k, v in self.tasks.items()}}

    def save(self, path: Union[str, Path]) -> None:
        """Writes :meth:`to_json` atomically."""
        write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data: Any, where: str = CALIBRATION_FILE) -> "Calibration":
        """Reads :meth:`to_json`'s content; DataError naming ``where`` and the entry when it is not
        such content (wrong format, unknown method, missing or non-finite parameters)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("tasks"), dict):
            raise DataError(f"{where}: not a calibration file (no '{FORMAT}' format and tasks)")
        if data.get("version") != VERSION:
            raise DataError(f"{where}: version {data.get('version')} is not supported (this version reads {VERSION})")
        needs = {"temperature": ("temperature",), "platt": ("a", "b"), "isotonic": ("x", "y")}
        tasks: Dict[str, TaskCalibrator] = {}
        for name, entry in data["tasks"].items():
            method = entry.get("method") if isinstance(entry, dict) else None
            if method not in needs:
                raise DataError(f"{where}: tasks.{name}.method: {method!r} is not one of {list(METHODS)}")
            params = {k: entry.get(k) for k in needs[method]}
            numbers: List[Any] = [x for v in params.values() for x in (v if isinstance(v, list) else [v])]
            if not numbers or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers):
                raise DataError(f"{where}: tasks.{name}: {', '.join(needs[method])} must be finite numbers")
            if method == "isotonic" and (len(params["x"]) != len(params["y"]) or np.any(np.diff(params["x"]) < 0)):
                raise DataError(f"{where}: tasks.{name}: x and y must be lists of one length, x non-decreasing")
            tasks[name] = TaskCalibrator(method, params, rows=int(entry.get("rows", 0)))
        esmm = data.get("esmm") or {}
        if not isinstance(esmm, dict) or any(k not in tasks or v not in tasks for k, v in esmm.items()):
            raise DataError(f"{where}: esmm: every ESMM task and its parent need a calibrator")
        step = data.get("checkpoint_step")
        return cls(str(data.get("method")), tasks, dict(esmm), step if isinstance(step, int) else None,
                   str(data.get("fitted_on", "val")))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Calibration":
        """Reads ``calibration.json`` (JSON only); DataError naming the file when it cannot be read."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: the run's calibration cannot be read: {e}") from None
        return cls.from_json(data, str(path))


def fit_calibration(
    method: str,
    tasks: Sequence[TaskSpec],
    predictions: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    checkpoint_step: Optional[int] = None,
    fitted_on: str = "val",
) -> Calibration:
    """Fits ``method`` for every binary task of ``tasks`` (the train module's, impression space) on
    its labelled rows (``masks[task]`` true); ``predictions``/``labels``/``masks`` as
    :class:`~mtl_torchrec.eval.evaluate.ScoredRows`. DataError naming the task when its rows hold
    one class only."""
    fitted: Dict[str, TaskCalibrator] = {}
    for t in tasks:
        if not is_probability(t):
            continue
        m = np.asarray(masks[t.name], dtype=bool)
        try:
            fitted[t.name] = fit_task(method, predictions[t.name][m], labels[t.name][m])
        except DataError as e:
            raise DataError(f"train.calibration: task '{t.name}' on split '{fitted_on}': {e}") from None
    esmm = {t.name: t.esmm_parent for t in tasks if t.esmm_parent is not None}
    return Calibration(method, fitted, esmm, checkpoint_step, fitted_on)


def calibration_metrics(p: np.ndarray, y: np.ndarray) -> Dict[str, float]:
    """What calibration changes and what it must not, on labelled rows: ``calibration`` (mean
    prediction / observed rate), ``mean_prediction``, ``ece``, ``logloss``, ``auc``."""
    positives = float(np.sum(y, dtype=np.float64))
    predicted = float(np.sum(p, dtype=np.float64))
    return {
        "calibration": predicted / positives if positives > 0 else float("nan"),
        "mean_prediction": predicted / len(p) if len(p) else float("nan"),
        "ece": expected_calibration_error(p, y),
        "logloss": binary_logloss(p, y),
        "auc": binary_auc(p, y),
    }


def before_after(
    tasks: Sequence[TaskSpec],
    raw: Mapping[str, np.ndarray],
    calibrated: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{task: {"before": metrics, "after": metrics}}`` (:func:`calibration_metrics`) for every binary
    entry of ``tasks`` (those evaluation reports, ESMM conditionals included)."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for t in tasks:
        if not is_probability(t):
            continue
        m = np.asarray(masks[t.name], dtype=bool)
        y = labels[t.name][m]
        out[t.name] = {"before": calibration_metrics(raw[t.name][m], y),
                       "after": calibration_metrics(calibrated[t.name][m], y)}
    return out


__all__ = [
    "CALIBRATION_FILE", "METHODS", "Calibration", "TaskCalibrator", "before_after", "calibration_metrics",
    "fit_calibration", "fit_task",
]
