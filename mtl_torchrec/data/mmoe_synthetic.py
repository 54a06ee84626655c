"""Two regression tasks with a controlled correlation (MMoE paper, Ma et al. KDD 2018, section 3.2).

Orthogonal unit vectors ``u1, u2`` in ``R^d``; ``w1 = c * u1`` and
``w2 = c * (p * u1 + sqrt(1 - p^2) * u2)``, so ``cos(w1, w2) = p``. With ``x ~ N(0, I)``::

    y_k = w_k^T x + sum_{i=1..m} sin(alpha_i * w_k^T x + beta_i) + eps_k,   eps_k ~ N(0, noise_std^2)

``alpha_i, beta_i ~ N(0, 1)`` are drawn once per data set and shared by both tasks, so the only
difference between the tasks is the angle between ``w1`` and ``w2``.

For paired comparisons the random draws depend on ``seed`` alone, never on ``correlation``: with
one seed, the data sets at every ``p`` share ``x``, ``u1, u2``, ``alpha, beta`` and the noise, so
task 1 (``w1 = c * u1``) has identical labels and only task 2 turns with ``p``. A benchmark that
gives each model the same seed's data at each ``p`` therefore compares models, and correlations,
on the same task pair (see ``benchmarks/mmoe_synthetic.py``). The paper leaves ``d, c, m``
and the noise open apart from ``N(0, 0.01)``; the defaults are the usual reading (``d = 100``,
``c = 1``, ``m = 10``, noise variance 0.01).

Example::

    data = make_correlated_tasks(1000, correlation=0.9, seed=0)
    data.x.shape, data.y.shape      # (1000, 100), (1000, 2)
    data.weight_cosine()            # 0.9 (up to float error)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CorrelatedTasks:
    """One generated data set and the parameters that made it."""

    x: np.ndarray  # [n, d] float32
    y: np.ndarray  # [n, 2] float32, one column per task
    w: np.ndarray  # [2, d] the task weight vectors
    alpha: np.ndarray  # [m]
    beta: np.ndarray  # [m]

    def weight_cosine(self) -> float:
        """``cos(w1, w2)``: the correlation the data was generated with."""
        a, b = self.w
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    def label_correlation(self) -> float:
        """Pearson correlation of the two labels (it falls with ``p`` but is not ``p``)."""
        return float(np.corrcoef(self.y[:, 0], self.y[:, 1])[0, 1])


def make_correlated_tasks(
    n: int,
    correlation: float,
    dim: int = 100,
    scale: float = 1.0,
    num_sin: int = 10,
    noise_std: float = 0.1,
    seed: int = 0,
) -> CorrelatedTasks:
    """``n`` samples of the two-task regression problem with ``cos(w1, w2) = correlation``."""
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [-1, 1], got {correlation}")
    if dim < 2 or n <= 0:
        raise ValueError("need dim >= 2 and n > 0")
    rng = np.random.default_rng(seed)
    # Two orthonormal directions from a QR of a random Gaussian matrix.
    q, _ = np.linalg.qr(rng.normal(size=(dim, 2)))
    u1, u2 = q[:, 0], q[:, 1]
    w1 = scale * u1
    w2 = scale * (correlation * u1 + np.sqrt(1.0 - correlation**2) * u2)
    w = np.stack([w1, w2])
    alpha = rng.normal(size=num_sin)
    beta = rng.normal(size=num_sin)
    x = rng.normal(size=(n, dim))
    z = x @ w.T  # [n, 2]
    y = z + np.sin(z[:, :, None] * alpha + beta).sum(-1) + rng.normal(0.0, noise_std, size=z.shape)
    return CorrelatedTasks(x.astype(np.float32), y.astype(np.float32), w, alpha, beta)
