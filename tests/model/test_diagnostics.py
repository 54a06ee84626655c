"""Diagnostics: gate entropy/usage, dead and collapsed experts, task-gradient conflict."""

import numpy as np
import pytest
import torch

from mtl_torchrec.config import load_config
from mtl_torchrec.core.stats import mean_interval, t_quantile
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.synthetic import generate_synthetic
from mtl_torchrec.model.builder import build_model, task_specs
from mtl_torchrec.model.diagnostics import (
    CONFLICT_COSINE,
    conflict_over_batches,
    diagnose,
    expert_health,
    flatten_scalars,
    gate_statistics,
    gradient_conflict,
    summarize_findings,
)
from mtl_torchrec.modules import PLE, MMoE
from tests.mtl_helpers import SMALL


def test_healthy_mmoe_has_no_findings():
    torch.manual_seed(0)
    mmoe = MMoE(8, num_tasks=2, num_experts=4, expert_layers=[16])
    trace = mmoe.forward_with_experts(torch.randn(256, 8))
    health = expert_health(trace, ["a", "b"])
    assert health["dead"] == [] and health["collapsed"] == [] and health["constant"] == []


def test_planted_collapsed_and_dead_experts_are_flagged():
    torch.manual_seed(0)
    mmoe = MMoE(8, num_tasks=2, num_experts=4, expert_layers=[16, 8])
    with torch.no_grad():
        # Expert 1 becomes a copy of expert 0: collapsed.
        for w in list(mmoe.experts.weights) + list(mmoe.experts.biases):
            w[1].copy_(w[0])
        # No gate ever picks expert 3: dead.
        for gate in mmoe.gates:
            gate[1].bias[3] = -30.0
    trace = mmoe.forward_with_experts(torch.randn(256, 8))
    health = expert_health(trace, ["a", "b"])
    assert health["dead"] == ["expert3"]
    assert [p["experts"] for p in health["collapsed"]] == [["expert0", "expert1"]]
    assert health["collapsed"][0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    notes = summarize_findings({"experts": health, "gradients": {"cosine": {}, "conflicting": []}})
    assert any("dead" in n for n in notes) and any("collapsed" in n for n in notes)


def test_constant_expert_is_flagged_not_paired():
    torch.manual_seed(0)
    mmoe = MMoE(8, num_tasks=2, num_experts=3, expert_layers=[16])
    with torch.no_grad():
        mmoe.experts.weights[0][2].zero_()
        mmoe.experts.biases[0][2].fill_(-1.0)  # ReLU of a negative constant: always 0
    trace = mmoe.forward_with_experts(torch.randn(64, 8))
    health = expert_health(trace, ["a", "b"])
    assert health["constant"] == ["expert2"] and health["collapsed"] == []


def test_gate_statistics_entropy_bounds_and_names():
    ple = PLE(8, num_tasks=2, num_levels=2, num_task_experts=1, num_shared_experts=2, expert_layers=[4])
    trace = ple.forward_with_experts(torch.randn(32, 8))
    stats = gate_statistics(trace.gates, trace.gate_info, ["click", "rating"])
    assert set(stats) == {"level0/click", "level0/rating", "level0/shared", "level1/click", "level1/rating"}
    for s in stats.values():
        assert 0.0 <= s["entropy"] <= 1.0 + 1e-6 and 0.0 <= s["usage_entropy"] <= 1.0 + 1e-6
        assert sum(s["share"].values()) == pytest.approx(1.0, rel=1e-5)
    assert "level1/rating/expert0" in stats["level1/rating"]["share"]
    # A one-hot gate has zero entropy; a uniform one has entropy 1.
    one_hot = torch.nn.functional.one_hot(torch.zeros(5, dtype=torch.long), 3).float()
    uniform = torch.full((5, 3), 1 / 3)
    info = trace.gate_info[:2]
    s = gate_statistics([one_hot, uniform], [i._replace(experts=["x", "y", "z"], level=0) for i in info], ["a", "b"])
    assert s["a"]["entropy"] == pytest.approx(0.0, abs=1e-6)
    assert s["b"]["entropy"] == pytest.approx(1.0, abs=1e-6)
    assert s["a"]["share"] == pytest.approx({"x": 1.0, "y": 0.0, "z": 0.0})


def test_gradient_conflict_signs():
    shared = torch.randn(4, 3, requires_grad=True)
    target = torch.randn(4, 3)
    losses = {
        "a": ((shared - target) ** 2).mean(),
        "same": 2 * ((shared - target) ** 2).mean(),
        "opposite": -((shared - target) ** 2).mean(),
    }
    g = gradient_conflict(losses, shared)
    assert g["cosine"]["a|same"] == pytest.approx(1.0, abs=1e-6)
    assert g["cosine"]["a|opposite"] == pytest.approx(-1.0, abs=1e-6)
    assert g["cosine"]["same|opposite"] == pytest.approx(-1.0, abs=1e-6)
    assert g["norm"]["same"] == pytest.approx(2 * g["norm"]["a"], rel=1e-6)
    # One batch is no evidence: its interval is unbounded, so even a cosine of -1 is not flagged ...
    one = conflict_over_batches([g])
    assert one["conflicting"] == [] and one["cosine_interval"]["a|opposite"]["high"] == float("inf")
    # ... while the same opposition on several batches is.
    shared2 = torch.randn(4, 3, requires_grad=True)
    sq = ((shared2 - target) ** 2).mean()
    g2 = gradient_conflict({"a": sq, "same": 2 * sq, "opposite": -sq}, shared2)
    both = conflict_over_batches([g, g2])
    assert set(both["conflicting"]) == {"a|opposite", "same|opposite"}
    assert both["batches"] == 2 and both["threshold"] == CONFLICT_COSINE


def test_t_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 7, 9, 30, 200):
        exact = stats.t.ppf(0.975, df)
        assert t_quantile(0.975, df) == pytest.approx(exact, rel=1.3e-3 if df >= 3 else 1e-12)
    x = np.array([-0.31, -0.27, -0.35, -0.22, -0.30, -0.28, -0.33, -0.25])
    ci = mean_interval(x)
    low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert (ci.mean, ci.n) == (pytest.approx(x.mean()), 8)
    assert ci.low == pytest.approx(low, rel=1e-4) and ci.high == pytest.approx(high, rel=1e-4)
    assert np.isnan(mean_interval([]).mean) and mean_interval([float("nan"), 0.5]).n == 1


def _cosines_over_batches(conflict: float, batches: int = 8, dim: int = 64, seed: int = 0):
    """Per-batch gradient_conflict results of two tasks whose gradients on a shared [16, dim] layer
    are ``b = conflict * a + noise`` (fresh noise each batch; cosine about ``conflict / sqrt(1 + conflict^2)``)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        shared = torch.randn(16, dim, generator=gen, requires_grad=True)
        ga = torch.randn(16, dim, generator=gen)
        gb = conflict * ga + torch.randn(16, dim, generator=gen)
        out.append(gradient_conflict({"a": (shared * ga).sum(), "b": (shared * gb).sum()}, shared))
    return out


def test_noise_around_zero_is_not_flagged():
    negative = 0
    for seed in range(20):
        # Unrelated task gradients: single-batch cosines scatter around 0.
        per_batch = _cosines_over_batches(0.0, seed=seed)
        negative += sum(b["cosine"]["a|b"] < 0 for b in per_batch)
        summary = conflict_over_batches(per_batch)
        assert summary["conflicting"] == [], (seed, summary["cosine_interval"])
    # Flagging any negative single-batch cosine would have raised many false alarms.
    assert negative > 40
    # The census case: cosines of about -0.003 on every batch are no clear conflict either.
    rng = np.random.default_rng(0)
    census = [{"norm": {"a": 1.0, "b": 1.0}, "cosine": {"a|b": float(c)}} for c in rng.normal(-0.003, 0.002, 8)]
    summary = conflict_over_batches(census)
    assert summary["cosine"]["a|b"] < 0 and summary["conflicting"] == []
    assert summary["cosine_interval"]["a|b"]["high"] > CONFLICT_COSINE


def test_clearly_conflicting_pair_is_flagged():
    per_batch = _cosines_over_batches(-0.5)
    summary = conflict_over_batches(per_batch)
    ci = summary["cosine_interval"]["a|b"]
    assert summary["conflicting"] == ["a|b"] and ci["n"] == 8 and ci["high"] < CONFLICT_COSINE
    assert ci["low"] < summary["cosine"]["a|b"] < ci["high"] < -0.3
    notes = summarize_findings({"gradients": summary})
    assert len(notes) == 1 and "95% CI" in notes[0] and "over 8 batches" in notes[0]


@pytest.mark.parametrize("backbone", ["mmoe", "ple", "shared_bottom"])
def test_diagnose_a_plain_model(backbone):
    cfg = load_config(None, SMALL + [f"model.backbone={backbone}"])
    data = generate_synthetic(cfg.data.synthetic)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.schema)
    tasks = task_specs(cfg.model, data.schema)
    batch = Batch.from_table(data.splits["val"].take(np.arange(128)), data.schema)
    report = diagnose(model, batch, tasks)
    assert set(report["gradients"]["cosine"]) == {"click|conversion", "click|rating", "conversion|rating"}
    assert report["gradients"]["batches"] == 1 and report["gradients"]["conflicting"] == []
    batches = [Batch.from_table(data.splits["val"].take(np.arange(i, i + 64)), data.schema) for i in (0, 64, 128)]
    several = diagnose(model, batches, tasks)
    assert several["gradients"]["batches"] == 3
    ci = several["gradients"]["cosine_interval"]["click|rating"]
    assert ci["n"] == 3 and ci["low"] <= several["gradients"]["cosine"]["click|rating"] <= ci["high"]
    assert all(p.grad is None for p in model.parameters())
    flat = flatten_scalars(report)
    assert "grad_cosine/click|rating" in flat
    if backbone == "shared_bottom":
        assert "gates" not in report
    else:
        assert "gate/click/entropy" in flat or "gate/level0/click/entropy" in flat
        # A freshly initialised model: every expert is alive.
        assert flat["experts/dead"] == 0
