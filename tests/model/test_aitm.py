"""AITM: the AIT unit, chained towers, the calibrator, config refusals and a 2-rank training run."""

import json
import re
from typing import Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtl_torchrec.config import load_config
from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.model.builder import build_model, task_specs
from mtl_torchrec.model.esmm import check_esmm_labels
from mtl_torchrec.model.losses import LOSSES
from mtl_torchrec.model.tasks import TaskSpec, aitm_calibrator, predictions, task_losses
from mtl_torchrec.modules.aitm import AITMTowers, AITUnit, chain_order
from mtl_torchrec.modules.towers import TaskTowers
from tests.mtl_helpers import SMALL, small_config
from tests.ranks import run_ranks

AITM_TASKS = "model.tasks=[{name: click}, {name: conversion, aitm_parent: click}, {name: rating, type: regression}]"


def test_ait_unit_shapes_and_weights():
    torch.manual_seed(0)
    unit = AITUnit(8, attention_dim=4)
    p, q = torch.randn(5, 8), torch.randn(5, 8)
    z, w = unit.forward_with_weights(p, q)
    assert z.shape == (5, 8) and w.shape == (5, 2)
    assert torch.allclose(w.sum(-1), torch.ones(5))
    # The output is the weighted sum of the h1 projections.
    expected = w[:, :1] * unit.h1(p) + w[:, 1:] * unit.h1(q)
    assert torch.allclose(z, expected, atol=1e-6)
    assert torch.equal(unit(p, q), z)


def test_ait_unit_traces_and_scripts():
    torch.manual_seed(0)
    unit = AITUnit(8)
    p, q = torch.randn(4, 8), torch.randn(4, 8)
    traced = torch.fx.symbolic_trace(unit)
    scripted = torch.jit.script(unit)
    assert torch.allclose(traced(p, q), unit(p, q))
    assert torch.allclose(scripted(p, q), unit(p, q))
    z, w = scripted.forward_with_weights(p, q)
    assert torch.allclose(w.sum(-1), torch.ones(4))


def test_root_task_equals_plain_towers_bitwise():
    x = torch.randn(6, 16)
    torch.manual_seed(1)
    plain = TaskTowers(["click", "conversion"], 16, {"click": [8], "conversion": [8]})
    torch.manual_seed(1)
    aitm = AITMTowers(["click", "conversion"], 16, {"click": [8], "conversion": [8]}, parents={"conversion": "click"})
    # The towers draw the same weights; the AIT parts come after them.
    for k, v in plain.state_dict().items():
        assert torch.equal(aitm.state_dict()[k], v)
    assert {k.split(".")[0] for k in aitm.state_dict()} == {"towers", "transfer", "ait"}
    out, weights = aitm.forward_with_weights([x, x])
    assert torch.equal(out["click"], plain([x, x])["click"])
    assert out["conversion"].shape == (6,) and set(weights) == {"conversion"}
    # Different tower widths: the transfer maps the parent's width to the child's.
    wide = AITMTowers(["a", "b"], 16, {"a": [12], "b": []}, parents={"b": "a"})
    assert wide([x, x])["b"].shape == (6,)


def test_chain_order_and_cycles():
    assert chain_order(["conversion", "click", "buy"], {"conversion": "click", "buy": "conversion"}) == [
        "click", "conversion", "buy"]
    with pytest.raises(ValueError, match="cycle"):
        chain_order(["a", "b"], {"a": "b", "b": "a"})


def test_calibrator_term_in_the_binary_loss():
    logits = {"click": torch.tensor([0.0, 2.0, -1.0]), "conversion": torch.tensor([1.0, 0.0, -1.0])}
    label = torch.tensor([1.0, 0.0, 0.0])
    bce = F.binary_cross_entropy_with_logits(logits["conversion"], label, reduction="none")
    task = TaskSpec("conversion", "binary", aitm_parent="click", aitm_calibration=0.6)
    penalty = torch.relu(torch.sigmoid(logits["conversion"]) - torch.sigmoid(logits["click"]))
    assert torch.equal(aitm_calibrator(logits["conversion"], logits["click"]), penalty)
    assert penalty[0] > 0 and penalty[1] == 0 and penalty[2] == 0
    assert torch.allclose(LOSSES.get("bce")()(logits, label, task), bce + 0.6 * penalty)
    # Weight 0: plain BCE, bitwise; the prediction is the task's own probability.
    task0 = TaskSpec("conversion", "binary", aitm_parent="click", aitm_calibration=0.0)
    assert torch.equal(LOSSES.get("bce")()(logits, label, task0), bce)
    preds = predictions(logits, [TaskSpec("click", "binary"), task])
    assert torch.equal(preds["conversion"], torch.sigmoid(logits["conversion"]))


def _violation(weight: float) -> Tuple[float, float]:
    """Trains click -> conversion AITM towers on a toy problem where conversion almost equals click
    (so an unconstrained model predicts it above click on about half of the rows) and returns the
    share of held-out rows with p(conversion) > p(click) + 0.01 and the mean excess
    max(p(conversion) - p(click), 0) over them."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 8, generator=gen)
    click = (torch.rand(4096, generator=gen) < torch.sigmoid(x[:, 0] * 2)).float()
    conversion = click * (torch.rand(4096, generator=gen) < 0.9).float()
    torch.manual_seed(0)
    towers = AITMTowers(["click", "conversion"], 8, {"click": [16], "conversion": [16]},
                        parents={"conversion": "click"})
    tasks = [TaskSpec("click", "binary"),
             TaskSpec("conversion", "binary", aitm_parent="click", aitm_calibration=weight)]
    opt = torch.optim.Adam(towers.parameters(), lr=0.01)
    ones = torch.ones(512)
    for step in range(150):
        rows = torch.arange(step * 512, step * 512 + 512) % 3072
        logits = towers([x[rows], x[rows]])
        batch = Batch(sparse=None, dense=x[rows], labels={"click": click[rows], "conversion": conversion[rows]},
                      masks={"click": ones, "conversion": ones}, group=torch.zeros(512, dtype=torch.long))
        losses = task_losses(_Out(logits), batch, tasks)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    with torch.no_grad():
        held = towers([x[3072:], x[3072:]])
    p_click, p_conv = torch.sigmoid(held["click"]), torch.sigmoid(held["conversion"])
    return float((p_conv > p_click + 0.01).float().mean()), float(torch.relu(p_conv - p_click).mean())


class _Out:
    def __init__(self, logits):
        self.logits = logits


def test_calibrator_keeps_conversion_below_click():
    (free, free_excess), (calibrated, calibrated_excess) = _violation(0.0), _violation(0.6)
    assert free > 0.1, free
    assert calibrated < free / 2, (free, calibrated)
    assert calibrated_excess < free_excess / 2 and calibrated_excess < 0.01, (free_excess, calibrated_excess)
    # A heavier calibrator all but removes violations (measured: 1% of rows, mean excess 0.0004).
    strong, strong_excess = _violation(2.0)
    assert strong < 0.03 and strong_excess < 0.002, (strong, strong_excess)


@pytest.mark.parametrize("tasks, message", [
    ("[{name: click}, {name: conversion, aitm_parent: buy}]", "'buy' is not another task"),
    ("[{name: click}, {name: conversion, aitm_parent: conversion}]", "is not another task"),
    ("[{name: click}, {name: conversion, aitm_parent: click, esmm_parent: click}]", "choose ESMM or AITM"),
    ("[{name: rating, type: regression}, {name: conversion, aitm_parent: rating}]", "plain binary tasks"),
    ("[{name: click}, {name: conversion, esmm_parent: click}, {name: buy, aitm_parent: conversion}]",
     "plain binary tasks"),
    ("[{name: click, aitm_parent: conversion}, {name: conversion, aitm_parent: click}]", "form a cycle"),
])
def test_config_refusals_name_the_key(tasks, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"model.tasks={tasks}"])
    assert "aitm_parent" in str(e.value) and message in str(e.value)
    assert re.search(r"model\.tasks\[\d\]\.aitm_parent", str(e.value)), str(e.value)


def test_bad_aitm_options_are_refused():
    with pytest.raises(ConfigError, match="model.aitm.calibration_weight"):
        load_config(None, ["model.aitm.calibration_weight=-1"])
    with pytest.raises(ConfigError, match="model.aitm.attention_dim"):
        load_config(None, ["model.aitm.attention_dim=0"])


def test_model_builds_with_aitm_and_labels_are_checked():
    cfg = load_config(None, SMALL + [AITM_TASKS, "model.aitm.calibration_weight=0.3"])
    data = load_data(cfg.data)
    tasks = task_specs(cfg.model, data.schema)
    assert tasks[1].aitm_parent == "click" and tasks[1].aitm_calibration == 0.3 and tasks[0].aitm_calibration == 0
    torch.manual_seed(0)
    model = build_model(cfg.model, data.schema)
    assert isinstance(model.towers, AITMTowers)
    batch = Batch.from_table(data.splits["train"].take(np.arange(64)), data.schema)
    out = model(batch)
    assert {k: v.shape for k, v in out.logits.items()} == {t: (64,) for t in ("click", "conversion", "rating")}
    assert check_esmm_labels(data, cfg.model.tasks) == []
    # A conversion without a click contradicts the impression-space label: refused, naming the task.
    table = data.splits["train"]
    row = int(np.flatnonzero(table["click"] == 0)[0])
    table["conversion"][row] = 1.0
    with pytest.raises(DataError, match=r"model.tasks\[1\] 'conversion' \(aitm_parent 'click'\): 1 row"):
        check_esmm_labels(data, cfg.model.tasks)


def _two_rank_worker(rank: int, world_size: int, run_dir: str) -> dict:
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.workflows import train

    ctx = init_distributed("gloo")
    try:
        cfg = small_config(run_dir, [AITM_TASKS, "model.feature_attention.enabled=true", "train.max_steps=6",
                                     "train.sharding=row_wise"])
        result = train(cfg, ctx)
    finally:
        close_distributed(ctx)
    return {"metrics": result.metrics}


@pytest.mark.slow
def test_two_ranks_train_aitm_with_feature_attention(tmp_path):
    results = run_ranks(_two_rank_worker, 2, str(tmp_path / "run"))
    metrics = results[0]["metrics"]
    assert {"click", "conversion", "rating"} <= set(metrics)
    assert all(np.isfinite(metrics[t]["auc"]) for t in ("click", "conversion"))
    diag = json.loads((tmp_path / "run" / "diagnostics.json").read_text())["final"]
    transfer = diag["aitm"]["conversion"]
    assert transfer["transferred"] + transfer["own"] == pytest.approx(1.0, abs=1e-5)
    attention = diag["feature_attention"]
    assert set(attention) == {"click", "conversion", "rating"}
    for shares in attention.values():
        assert "dense" in shares and "user_id" in shares
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
