"""Confidence intervals of a mean from a few repeated measurements (batches, seeds).

The interval is Student's t: ``mean ± t(1 - (1 - confidence) / 2, n - 1) * sd / sqrt(n)`` with
the sample standard deviation ``sd`` (``ddof=1``). It is used where one noisy number would
otherwise decide something: the task-gradient conflict flag of the diagnostics (averaged over
batches) and the paired model differences of the MMoE synthetic benchmark (over seeds).

Example::

    ci = mean_interval([-0.31, -0.27, -0.35, -0.22])
    ci.mean, ci.low, ci.high        # -0.2875, about -0.37, about -0.20
    ci.high < -0.05                 # the whole interval is below a threshold
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Dict, Iterable


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t distribution with ``df`` degrees of freedom.

    Exact for ``df`` 1 and 2 (closed forms); otherwise the Cornish-Fisher expansion around the
    normal quantile (Abramowitz & Stegun 26.7.5, four terms), within 0.13 % of the exact value for
    ``q <= 0.975`` and ``df >= 3`` (0.8 % at ``q = 0.995``, ``df = 3``), better as ``df`` grows.
    Raises ValueError unless ``0 < q < 1`` and ``df >= 1``.
    """
    if not 0.0 < q < 1.0 or df < 1:
        raise ValueError(f"t_quantile needs 0 < q < 1 and df >= 1, got q={q}, df={df}")
    if df == 1:
        return math.tan(math.pi * (q - 0.5))
    if df == 2:
        return (2 * q - 1) / math.sqrt(2 * q * (1 - q))
    z = NormalDist().inv_cdf(q)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclass(frozen=True)
class MeanInterval:
    """A mean with its two-sided t confidence interval ``[low, high]`` over ``n`` values.

    ``sd`` is the sample standard deviation. With one value the interval is ``(-inf, inf)`` (one
    measurement says nothing about its spread); with none every number is NaN.
    """

    mean: float
    sd: float
    n: int
    low: float
    high: float
    confidence: float

    def as_dict(self) -> Dict[str, float]:
        """The fields as a JSON-ready dict (infinite bounds stay floats)."""
        return asdict(self)


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> MeanInterval:
    """``mean ± t * sd / sqrt(n)`` of the finite ``values`` (NaN ones are left out).

    Raises ValueError unless ``0 < confidence < 1``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    xs = [float(v) for v in values if math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        nan = float("nan")
        return MeanInterval(nan, nan, 0, nan, nan, confidence)
    mean = math.fsum(xs) / n
    if n == 1:
        return MeanInterval(mean, float("nan"), 1, -math.inf, math.inf, confidence)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(1 - (1 - confidence) / 2, n - 1) * sd / math.sqrt(n)
    return MeanInterval(mean, sd, n, mean - half, mean + half, confidence)
