"""The MMoE paper's synthetic task pair: the requested correlation, and a paired design across p."""

import numpy as np
import pytest

from mtl_torchrec.data.mmoe_synthetic import make_correlated_tasks


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9, 1.0])
def test_weight_cosine_is_the_requested_correlation(p):
    data = make_correlated_tasks(200, p, seed=3)
    assert data.weight_cosine() == pytest.approx(p, abs=1e-12)
    assert data.x.shape == (200, 100) and data.y.shape == (200, 2)


def test_one_seed_gives_the_same_task_pair_at_every_correlation():
    a, b = make_correlated_tasks(500, 0.5, seed=7), make_correlated_tasks(500, 1.0, seed=7)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.alpha, b.alpha)
    np.testing.assert_array_equal(a.beta, b.beta)
    np.testing.assert_array_equal(a.w[0], b.w[0])
    # Task 1 does not depend on p at all; only task 2 turns with it.
    np.testing.assert_array_equal(a.y[:, 0], b.y[:, 0])
    assert not np.array_equal(a.y[:, 1], b.y[:, 1])
    assert a.label_correlation() < b.label_correlation()
    # Another seed is another task pair.
    c = make_correlated_tasks(500, 0.5, seed=8)
    assert not np.array_equal(a.x, c.x) and not np.array_equal(a.alpha, c.alpha)
