"""Dense normalisers fitted in one streaming pass over the training split (``standard``,
``log_standard``, ``minmax``, ``none``), saved as JSON with the run.

Example::

    norm = Normalizer("standard"); norm.update(np.array([1.0, 3.0])); norm.transform(np.array([2.0]))  # [0.]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import numpy as np

from mtl_torchrec.core.errors import DataError


@dataclass
class Normalizer:
    """Streaming-fitted dense normalisation.

    ``standard``: (x - mean) / std; ``log_standard``: the same on log1p(max(x, 0)) for heavy-tailed
    counts (a data spec refuses negative values there unless ``clip_negative: true``); ``minmax``: (x - min) / (max - min); ``none``: unchanged. Missing values are filled
    with the fitted mean (``fill_missing: mean``) or 0 after normalisation (``zero``), or are an
    error.
    """

    method: str = "standard"
    fill_missing: str = "error"
    count: int = 0
    # Running mean and sum of squared deviations (Chan et al.'s parallel update): a sum of squares
    # loses the spread of large values (timestamps near 1.7e9 with spread 30 gave std 22.6).
    running_mean: float = 0.0
    m2: float = 0.0
    minimum: float = float("inf")
    maximum: float = float("-inf")

    def _pre(self, x: np.ndarray) -> np.ndarray:
        return np.log1p(np.maximum(x, 0.0)) if self.method == "log_standard" else x

    def update(self, x: np.ndarray) -> None:
        """Adds a chunk of values (NaN/inf skipped). Raises DataError when the values are too large
        for their spread to be represented in float64."""
        x = np.asarray(x, dtype=np.float64)
        x = self._pre(x[np.isfinite(x)])
        if len(x) == 0:
            return
        n = int(len(x))
        with np.errstate(over="ignore", invalid="ignore"):
            chunk_mean = float(x.mean())
            chunk_m2 = float(((x - chunk_mean) ** 2).sum())
            total = self.count + n
            delta = chunk_mean - self.running_mean
            mean = self.running_mean + delta * n / total
            m2 = self.m2 + chunk_m2 + delta * delta * self.count * n / total
        if not (np.isfinite(mean) and np.isfinite(m2)):
            raise DataError(
                f"values up to {float(np.abs(x).max()):.3g} are too large to normalise (their spread overflows "
                f"float64); scale the column or use normalize: log_standard"
            )
        self.count, self.running_mean, self.m2 = total, mean, m2
        self.minimum = min(self.minimum, float(x.min()))
        self.maximum = max(self.maximum, float(x.max()))

    @property
    def mean(self) -> float:
        """The fitted mean (of ``log1p`` values for ``log_standard``); 0.0 before any value."""
        return self.running_mean if self.count else 0.0

    @property
    def std(self) -> float:
        """Population standard deviation; 1.0 when undefined or zero (a constant column stays put)."""
        if self.count < 2:
            return 1.0
        var = self.m2 / self.count
        return var**0.5 if var > 0 else 1.0

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Normalised ``x`` as float32; NaN filled as ``fill_missing`` says (kept with ``error``)."""
        x = self._pre(np.asarray(x, dtype=np.float64))
        if self.method in ("standard", "log_standard"):
            y = (x - self.mean) / self.std
        elif self.method == "minmax":
            span = self.maximum - self.minimum
            y = (x - self.minimum) / (span if span > 0 else 1.0)
        else:
            y = x
        if self.fill_missing in ("mean", "zero"):
            # The mean maps to 0 under standardisation; for minmax/none fill with the mapped mean.
            fill = 0.0 if self.fill_missing == "zero" else float(self.transform_value(self.mean))
            y = np.where(np.isnan(y), fill, y)
        return y.astype(np.float32)

    def transform_value(self, v: float) -> float:
        """One value normalised as :meth:`transform` does, without ``log1p`` or filling."""
        if self.method in ("standard", "log_standard"):
            return (v - self.mean) / self.std
        if self.method == "minmax":
            span = self.maximum - self.minimum
            return (v - self.minimum) / (span if span > 0 else 1.0)
        return v

    def to_json(self) -> Dict[str, Any]:
        """The JSON form saved in ``preprocessing.json``."""
        return {
            "method": self.method, "fill_missing": self.fill_missing, "count": self.count,
            "mean": self.mean, "std": self.std, "m2": self.m2,
            "min": self.minimum if self.count else None, "max": self.maximum if self.count else None,
        }

    @staticmethod
    def from_json(d: Dict[str, Any]) -> "Normalizer":
        """The normaliser saved by :meth:`to_json` (also the older ``total``/``total_sq`` form)."""
        count = int(d["count"])
        if "m2" in d:
            mean, m2 = float(d["mean"]), float(d["m2"])
        else:
            # Saved before the stable update: the same mean and spread from the old sums.
            mean = float(d["total"]) / count if count else 0.0
            m2 = max(float(d["total_sq"]) - count * mean * mean, 0.0)
        return Normalizer(
            method=d["method"], fill_missing=d["fill_missing"], count=count, running_mean=mean, m2=m2,
            minimum=float("inf") if d["min"] is None else float(d["min"]),
            maximum=float("-inf") if d["max"] is None else float(d["max"]),
        )
