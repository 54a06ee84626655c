"""ESMM: pCTCVR = pCTR * pCVR trained over impressions, and metrics that name their space."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtl_torchrec.config import SyntheticConfig, load_config
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.synthetic import generate_synthetic
from mtl_torchrec.eval.metrics import TaskMetrics
from mtl_torchrec.model.balancing import FixedWeights
from mtl_torchrec.model.builder import build_model, task_specs
from mtl_torchrec.model.losses import build_loss
from mtl_torchrec.model.tasks import (
    TrainModule,
    metric_tasks,
    predictions,
    task_losses,
    with_conditional_labels,
)
from tests.mtl_helpers import SMALL, esmm_tasks


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(None, SMALL + esmm_tasks())
    data = generate_synthetic(cfg.data.synthetic)
    torch.manual_seed(0)
    tasks = task_specs(cfg.model, data.schema)
    model = build_model(cfg.model, data.schema)
    batch = Batch.from_table(data.splits["train"].take(np.arange(512)), data.schema)
    return tasks, model, batch


def test_synthetic_conversion_implies_click(setup):
    _, _, batch = setup
    assert bool((batch.labels["conversion"] <= batch.labels["click"]).all())
    assert float(batch.labels["conversion"].sum()) > 0


def test_probabilities_and_ordering(setup):
    tasks, model, batch = setup
    out = model(batch)
    p = predictions(out.logits, tasks)
    for key in ("click", "conversion", "conversion_given_click"):
        assert bool(((p[key] >= 0) & (p[key] <= 1)).all())
    assert bool((p["conversion"] <= p["click"] + 1e-7).all())
    torch.testing.assert_close(p["conversion"], p["click"] * p["conversion_given_click"])


def test_loss_is_bce_of_the_product_over_all_impressions(setup):
    tasks, model, batch = setup
    out = model(batch)
    loss = task_losses(out, batch, tasks)["conversion"]
    pctcvr = torch.sigmoid(out.logits["click"]) * torch.sigmoid(out.logits["conversion"])
    expected = F.binary_cross_entropy(pctcvr, batch.labels["conversion"])
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_gradients_reach_both_towers_even_from_unclicked_rows(setup):
    tasks, model, batch = setup
    model.zero_grad()
    out = model(batch)
    unclicked = (batch.labels["click"] == 0).float()
    masks = dict(batch.masks, conversion=unclicked)
    only_unclicked = Batch(batch.sparse, batch.dense, batch.labels, masks, batch.group)
    task_losses(out, only_unclicked, tasks)["conversion"].backward()
    for name in ("click", "conversion"):
        grad = model.towers.towers[name].head.weight.grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    assert model.towers.towers["rating"].head.weight.grad is None


def test_metrics_report_both_spaces(setup):
    tasks, model, batch = setup
    train = TrainModule(model, tasks, FixedWeights({t.name: 1.0 for t in tasks}))
    with torch.no_grad():
        _, out = train(batch)
    entries = metric_tasks(tasks)
    assert [t.name for t in entries] == ["click", "conversion", "rating", "conversion_given_click"]
    b = with_conditional_labels(batch, tasks)
    torch.testing.assert_close(b.masks["conversion_given_click"], batch.labels["click"])
    metrics = TaskMetrics(entries, world_size=1, rank=0, batch_size=512)
    metrics.update(out.predictions, b)
    m = metrics.compute()
    clicks = float(batch.labels["click"].sum())
    assert m["conversion"]["count"] == 512.0
    assert m["conversion_given_click"]["count"] == clicks
    # CVR among clicks is higher than CTCVR over impressions.
    assert m["conversion_given_click"]["positive_rate"] > m["conversion"]["positive_rate"]
    assert m["conversion_given_click"]["positive_rate"] == pytest.approx(
        float(batch.labels["conversion"].sum()) / clicks, rel=1e-5
    )


def test_without_esmm_nothing_is_added():
    cfg = load_config(None, SMALL)
    data = generate_synthetic(SyntheticConfig(num_impressions=500, num_users=50, num_items=40, num_brands=40))
    tasks = task_specs(cfg.model, data.schema)
    assert metric_tasks(tasks) == tasks
    batch = Batch.from_table(data.splits["train"], data.schema)
    assert with_conditional_labels(batch, tasks) is batch


def test_all_ones_weights_give_the_unweighted_loss_bitwise(setup):
    tasks, model, batch = setup
    with torch.no_grad():
        out = model(batch)
    plain = task_losses(out, batch, tasks)
    ones = dataclasses.replace(batch, weights={t.name: torch.ones(batch.batch_size) for t in tasks})
    weighted = task_losses(out, ones, tasks)
    for t in tasks:
        # The masked mean as it was before row weights existed.
        per_row = build_loss(t)(out.logits, batch.labels[t.name], t)
        m = batch.masks[t.name]
        before = (per_row * m).sum() / m.sum().clamp_min(1.0)
        assert torch.equal(plain[t.name], before), t.name
        assert torch.equal(weighted[t.name], before), t.name


def test_row_weight_two_equals_the_row_twice(setup):
    tasks, model, _ = setup
    cfg = load_config(None, SMALL + esmm_tasks())
    data = generate_synthetic(cfg.data.synthetic)
    rows = np.arange(256)
    full = Batch.from_table(data.splits["train"].take(rows), data.schema)
    # A row labelled for every task (rating is labelled on converted rows only).
    r = int(torch.nonzero(full.masks["rating"] * full.masks["click"]).flatten()[0])
    weights = torch.ones(len(rows))
    weights[r] = 2.0
    weighted = dataclasses.replace(full, weights={t.name: weights for t in tasks})
    twice = Batch.from_table(data.splits["train"].take(np.concatenate([rows, [r]])), data.schema)
    with torch.no_grad():
        a = task_losses(model(weighted), weighted, tasks)
        b = task_losses(model(twice), twice, tasks)
        plain = task_losses(model(full), full, tasks)
    for t in tasks:
        torch.testing.assert_close(a[t.name], b[t.name], rtol=1e-6, atol=1e-7)
        assert not torch.equal(a[t.name], plain[t.name]), t.name
    # Fractional weights are weights, not counts: halving every row changes nothing.
    halves = dataclasses.replace(full, weights={t.name: torch.full((len(rows),), 0.5) for t in tasks})
    with torch.no_grad():
        c = task_losses(model(halves), halves, tasks)
    for t in tasks:
        torch.testing.assert_close(c[t.name], plain[t.name])


def test_weights_travel_with_the_batch(setup):
    tasks, _, batch = setup
    w = {"click": torch.rand(batch.batch_size)}
    moved = dataclasses.replace(batch, weights=w).to(torch.device("cpu"))
    assert torch.equal(moved.weights["click"], w["click"])
    assert batch.to(torch.device("cpu")).weights is None
    cond = with_conditional_labels(dataclasses.replace(batch, weights={"conversion": w["click"]}), tasks)
    assert torch.equal(cond.weights["conversion_given_click"], w["click"])
