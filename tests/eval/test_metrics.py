"""Evaluation metrics against exact computations (sklearn) on random data with ties and groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mtl_torchrec.data.batch import Batch
from mtl_torchrec.eval.metrics import TaskMetrics, binary_auc, grouped_auc
from mtl_torchrec.model.tasks import TaskSpec


def _tied_scores(rng: np.random.Generator, n: int) -> np.ndarray:
    # Scores on a coarse grid so that many rows tie, across both classes.
    return np.round(rng.random(n) * 20) / 20


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_auc_matches_sklearn_with_ties_and_weights(seed):
    rng = np.random.default_rng(seed)
    p = _tied_scores(rng, 500)
    y = (rng.random(500) < 0.3 + 0.4 * p).astype(float)
    assert len(np.unique(p)) < 30
    assert binary_auc(p, y) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    w = rng.random(500)
    assert binary_auc(p, y, w) == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-12)


def test_binary_auc_all_tied_is_half_and_one_class_is_nan():
    assert binary_auc(np.full(4, 0.5), np.array([1, 0, 1, 0])) == 0.5
    assert np.isnan(binary_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def _gauc_reference(p, y, g):
    aucs, sizes, skipped = [], [], 0
    for key in np.unique(g):
        sel = g == key
        if len(np.unique(y[sel])) < 2:
            skipped += 1
            continue
        aucs.append(roc_auc_score(y[sel], p[sel]))
        sizes.append(sel.sum())
    aucs, sizes = np.array(aucs), np.array(sizes)
    return (aucs * sizes).sum() / sizes.sum(), aucs.mean(), len(aucs), skipped


@pytest.mark.parametrize("seed", [0, 1])
def test_grouped_auc_matches_per_group_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    g = rng.integers(0, 120, n) * 7919  # sparse, unsorted group ids
    p = _tied_scores(rng, n)
    y = (rng.random(n) < 0.2 + 0.5 * p).astype(float)
    # Force some one-class groups: all-negative and all-positive.
    y[g == g[0]] = 0
    y[g == g[1]] = 1 if g[1] != g[0] else 0
    ref_w, ref_u, used, skipped = _gauc_reference(p, y, g)
    got = grouped_auc(p, y, g)
    assert got["gauc"] == pytest.approx(ref_w, abs=1e-12)
    assert got["gauc_unweighted"] == pytest.approx(ref_u, abs=1e-12)
    assert got["groups_used"] == used
    assert got["groups_one_class"] == skipped >= 1
    assert got["groups"] == len(np.unique(g))


def test_grouped_auc_only_one_class_groups():
    got = grouped_auc(np.array([0.1, 0.2, 0.3]), np.array([1.0, 0.0, 0.0]), np.array([1, 2, 2]))
    assert np.isnan(got["gauc"]) and got["groups_one_class"] == 2 and got["groups_used"] == 0


def _batch(labels, masks) -> Batch:
    n = len(next(iter(labels.values())))
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=torch.zeros(n, dtype=torch.int64),
                                              lengths=torch.ones(n, dtype=torch.int32))
    return Batch(sparse=kjt, dense=torch.zeros(n, 0),
                 labels={k: torch.tensor(v, dtype=torch.float32) for k, v in labels.items()},
                 masks={k: torch.tensor(v, dtype=torch.float32) for k, v in masks.items()},
                 group=torch.zeros(n, dtype=torch.int64))


def test_task_metrics_match_sklearn_with_masks_and_row_weights():
    rng = np.random.default_rng(3)
    n, bs = 3000, 500
    tasks = [TaskSpec("click", "binary"), TaskSpec("rating", "regression")]
    p = rng.uniform(0.01, 0.99, n).astype(np.float32)
    y = (rng.random(n) < p).astype(np.float32)
    r_pred = rng.normal(3, 1, n).astype(np.float32)
    r = rng.normal(3, 1.2, n).astype(np.float32)
    mask_c = (rng.random(n) < 0.9).astype(np.float32)
    mask_r = (rng.random(n) < 0.5).astype(np.float32)
    slice_rows = (rng.random(n) < 0.3).astype(np.float32)
    full = TaskMetrics(tasks, world_size=1, rank=0, batch_size=bs)
    sliced = TaskMetrics(tasks, world_size=1, rank=0, batch_size=bs, include=("ne", "calibration", "positive_rate", "mse", "mae"))
    for s in range(0, n, bs):
        sl = slice(s, s + bs)
        batch = _batch({"click": y[sl], "rating": r[sl]}, {"click": mask_c[sl], "rating": mask_r[sl]})
        preds = {"click": torch.from_numpy(p[sl]), "rating": torch.from_numpy(r_pred[sl])}
        full.update(preds, batch)
        sliced.update(preds, batch, row_weight=torch.from_numpy(slice_rows[sl]))
    for metrics, weight in ((full.compute(), np.ones(n)), (sliced.compute(), slice_rows)):
        c = (mask_c * weight) > 0
        base = np.full(c.sum(), y[c].mean())
        assert metrics["click"]["logloss"] == pytest.approx(log_loss(y[c], p[c]), rel=1e-5)
        assert metrics["click"]["ne"] == pytest.approx(log_loss(y[c], p[c]) / log_loss(y[c], base), rel=1e-5)
        assert metrics["click"]["calibration"] == pytest.approx(p[c].sum() / y[c].sum(), rel=1e-5)
        assert metrics["click"]["positive_rate"] == pytest.approx(y[c].mean(), rel=1e-6)
        m = (mask_r * weight) > 0
        assert metrics["rating"]["mse"] == pytest.approx(mean_squared_error(r[m], r_pred[m]), rel=1e-5)
        assert metrics["rating"]["rmse"] == pytest.approx(mean_squared_error(r[m], r_pred[m]) ** 0.5, rel=1e-5)
        assert metrics["rating"]["mae"] == pytest.approx(mean_absolute_error(r[m], r_pred[m]), rel=1e-5)
    # The full instance still carries torchrec's AUC; on untied scores it equals the exact one.
    c = mask_c > 0
    assert full.compute()["click"]["auc"] == pytest.approx(roc_auc_score(y[c], p[c]), abs=1e-5)
    assert "auc" not in sliced.compute()["click"]


def test_weighted_logloss_does_not_depend_on_the_weights_scale():
    # A weight sum below 1 once made the logloss shrink by that factor (the sum was clamped at 1).
    p = torch.tensor([0.2, 0.7, 0.9, 0.4])
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    w = torch.tensor([0.5, 1.0, 2.0, 0.25])
    expected = float(-(w * (y * p.log() + (1 - y) * (1 - p).log())).sum() / w.sum())
    for scale in (1.0, 0.001):
        m = TaskMetrics([TaskSpec(name="click", type="binary")], world_size=1, rank=0, batch_size=4)
        m.update_rows({"click": p}, {"click": y}, {"click": torch.ones(4)}, {"click": w * scale})
        assert abs(m.compute()["click"]["logloss"] - expected) < 1e-6
