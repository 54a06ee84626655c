"""MultiTaskHead, multitask_loss, init_from_labels and param_groups: the public pieces for users'
own TorchRec models, and the same paths the trainer takes."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from mtl_torchrec.data.batch import Batch
from mtl_torchrec.model.balancing import GradNorm, UncertaintyWeights
from mtl_torchrec.model.head import MultiTaskHead, make_backbone, param_groups
from mtl_torchrec.model.multitask import ModelOutput
from mtl_torchrec.model.tasks import TaskSpec, multitask_loss, predictions, task_losses

ROOT = Path(__file__).resolve().parents[2]
TASKS = [TaskSpec("click", "binary"), TaskSpec("buy", "binary", esmm_parent="click"), TaskSpec("rating", "regression")]
BACKBONES = {
    "mmoe": {"num_experts": 3, "expert_layers": [16]},
    "omoe": {"num_experts": 2, "expert_layers": [16]},
    "ple": {"num_levels": 2, "expert_layers": [16]},
    "shared_bottom": None,
    "single_task": {"layers": [8]},
}


def _labels(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    click = torch.bernoulli(torch.full((n,), 0.3), generator=g)
    buy = click * torch.bernoulli(torch.full((n,), 0.5), generator=g)
    rating = 3.0 + torch.randn(n, generator=g)
    return {"click": click, "buy": buy, "rating": rating}


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_gives_one_output_per_task_and_traces(backbone: str) -> None:
    torch.manual_seed(0)
    head = MultiTaskHead(12, TASKS, backbone, BACKBONES[backbone], tower_layers=[8]).eval()
    x = torch.randn(5, 12)
    out = head(x)
    assert head.task_names == ["click", "buy", "rating"] and list(out) == head.task_names
    assert all(v.shape == (5,) for v in out.values())
    traced = torch.fx.symbolic_trace(head)
    for k, v in traced(x).items():
        torch.testing.assert_close(v, out[k])


def test_a_keyed_tensor_input_is_its_concatenated_values() -> None:
    torch.manual_seed(0)
    head = MultiTaskHead(12, TASKS, "mmoe", BACKBONES["mmoe"], tower_layers=[8])
    a, b = torch.randn(4, 8), torch.randn(4, 4)
    kt = KeyedTensor(keys=["a", "b"], length_per_key=[8, 4], values=torch.cat([a, b], dim=1))
    for k, v in head(kt).items():
        torch.testing.assert_close(v, head(torch.cat([a, b], dim=1))[k])


def test_a_ready_backbone_module_is_accepted() -> None:
    backbone = make_backbone("ple", {"num_levels": 1, "expert_layers": [16]}, 12, 3)
    head = MultiTaskHead(12, TASKS, backbone, tower_layers={"click": [4], "buy": [], "rating": [8]})
    assert head.backbone is backbone
    assert head(torch.randn(3, 12))["buy"].shape == (3,)


@pytest.mark.parametrize("backbone,options", [
    ("shared_bottom", {"layers": [16]}),
    ("mmoe", {"num_experts": 3, "expert_layers": [16]}),
    ("ple", {"num_levels": 2, "expert_layers": [16]}),
    ("single_task", {"layers": [16]}),
])
def test_scripts_with_every_backbone(backbone, options) -> None:
    torch.manual_seed(0)
    head = MultiTaskHead(12, TASKS, backbone, options, tower_layers=[8]).eval()
    scripted = torch.jit.script(head)
    x = torch.randn(6, 12)
    for k, v in scripted(x).items():
        torch.testing.assert_close(v, head(x)[k])
    with pytest.raises(Exception, match=r"input must be \[B, 12\]"):
        scripted(torch.randn(6, 11))


class _UserModel(nn.Module):
    """A model whose head is a leaf under TorchRec's pipeline tracer: its output is one proxy."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(4, 12)
        self.head = MultiTaskHead(12, TASKS, "mmoe", BACKBONES["mmoe"], tower_layers=[8])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.dense(x))
        labels = {t.name: y[:, i] for i, t in enumerate(TASKS)}
        losses = multitask_loss(logits, labels, None, TASKS)
        return torch.stack([losses[t.name] for t in TASKS]).sum()


class _HeadIsLeaf(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, MultiTaskHead) or super().is_leaf_module(m, qualname)


def test_losses_trace_over_a_proxy_output() -> None:
    model = _UserModel()
    graph = _HeadIsLeaf().trace(model)
    traced = torch.fx.GraphModule(model, graph)
    x, y = torch.randn(8, 4), torch.stack(list(_labels(8).values()), dim=1)
    torch.testing.assert_close(traced(x, y), model(x, y))


def test_bad_input_is_one_value_error_naming_it() -> None:
    head = MultiTaskHead(12, TASKS, "shared_bottom", tower_layers=[8])
    with pytest.raises(ValueError, match=r"input must be \[B, 12\], got \[3, 10\]"):
        head(torch.randn(3, 10))
    labels = _labels(8)
    logits = head(torch.randn(8, 12))
    with pytest.raises(ValueError, match=r"labels: no entry for task 'rating'"):
        multitask_loss(logits, {k: v for k, v in labels.items() if k != "rating"}, None, TASKS)
    with pytest.raises(ValueError, match=r"labels: unknown task 'ratng'"):
        multitask_loss(logits, {**labels, "ratng": labels["rating"]}, None, TASKS)
    with pytest.raises(ValueError, match=r"masks: no entry for task 'buy'"):
        multitask_loss(logits, labels, {"click": labels["click"], "rating": labels["click"]}, TASKS)
    with pytest.raises(ValueError, match=r"labels: no entry for task 'click'"):
        head.init_from_labels({"buy": labels["buy"], "rating": labels["rating"]})
    with pytest.raises(ValueError, match=r"esmm_parent"):
        MultiTaskHead(12, [TaskSpec("buy", "binary", esmm_parent="click")], "shared_bottom")
    with pytest.raises(ValueError, match=r"backbone_options of 'mmoe'.*num_experts"):
        MultiTaskHead(12, TASKS, "mmoe", {"num_experts": 0})
    with pytest.raises(ValueError, match=r"tower_layers: task 'rating'"):
        MultiTaskHead(12, TASKS, "shared_bottom", tower_layers={"click": [4], "buy": [4]})
    with pytest.raises(ValueError, match=r"backbone: .*'mmeo'"):
        MultiTaskHead(12, TASKS, "mmeo")


def test_init_from_labels_sets_mean_and_base_rate_ignoring_nan_and_masked_rows() -> None:
    head = MultiTaskHead(12, TASKS, "shared_bottom", tower_layers=[8])
    click = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    buy = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    rating = torch.tensor([4.0, float("nan"), 2.0, 100.0, 3.0, 3.0])
    masks = {"click": torch.ones(6), "buy": torch.ones(6), "rating": torch.tensor([1.0, 1, 1, 0, 1, 1])}
    got = head.init_from_labels({"click": click, "buy": buy, "rating": rating}, masks)
    assert got["rating"] == pytest.approx(3.0)
    assert got["click"] == pytest.approx(0.0)  # rate 1/2
    assert got["buy"] == pytest.approx(math.log(0.5))  # 1 of 3 clicks: logit(1/3)
    assert float(head.towers.towers["rating"].head.bias.detach()) == pytest.approx(3.0)
    assert float(head.towers.towers["buy"].head.bias.detach()) == pytest.approx(math.log(0.5))


def test_multitask_loss_is_the_trainers_loss() -> None:
    torch.manual_seed(0)
    logits = {t.name: torch.randn(16) for t in TASKS}
    labels = _labels(16)
    masks = {"click": torch.ones(16), "buy": torch.ones(16), "rating": labels["click"]}
    weights = {"rating": torch.rand(16)}
    plain = multitask_loss(logits, labels, masks, TASKS, weights)
    batch = Batch(sparse=None, dense=torch.zeros(16, 0), labels={**labels, "other": labels["click"]},
                  masks={**masks, "other": masks["click"]}, group=None, weights=weights)
    trainer = task_losses(ModelOutput(logits, torch.zeros(16, 1), []), batch, TASKS)
    assert plain.keys() == trainer.keys()
    for k in plain:
        assert torch.equal(plain[k], trainer[k])
    # ESMM: BCE of pCTR * pCVR against click AND buy.
    p = torch.sigmoid(logits["click"]) * torch.sigmoid(logits["buy"])
    bce = torch.nn.functional.binary_cross_entropy(p, labels["buy"])
    torch.testing.assert_close(plain["buy"], bce)
    m = labels["click"] * weights["rating"]
    torch.testing.assert_close(plain["rating"], ((logits["rating"] - labels["rating"]) ** 2 * m).sum() / m.sum())
    assert torch.equal(predictions(logits, TASKS)["buy"], p)


def test_param_groups_give_the_balancer_its_own_rate() -> None:
    head = MultiTaskHead(12, TASKS, "shared_bottom", tower_layers=[8])
    balancer = UncertaintyWeights({t.name: 1.0 for t in TASKS})
    model = nn.ModuleDict({"head": head, "balancer": balancer})
    groups = param_groups(model, 1e-3, balancer)
    assert [g["lr"] for g in groups] == [1e-3, 0.025]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in head.parameters()}
    assert groups[1]["params"] == [balancer.log_var]
    assert param_groups(head, 1e-3) == [{"params": list(head.parameters()), "lr": 1e-3}]


def _gradnorm_rating_weight(documented: bool, steps: int = 75) -> float:
    """A hand-built head under GradNorm on click + rating (mean ~3.6)."""
    torch.manual_seed(0)
    n = 4096
    raw = torch.randn(n, 8)
    click = torch.bernoulli(torch.sigmoid(raw @ torch.randn(8) - 1.0))
    rating = (3.6 + raw @ (0.3 * torch.randn(8)) + 0.5 * torch.randn(n)).clamp(1, 5)
    tasks = [TaskSpec("click", "binary"), TaskSpec("rating", "regression")]
    dense = nn.Linear(8, 16)
    head = MultiTaskHead(16, tasks, "mmoe", {"num_experts": 4, "expert_layers": [32]}, tower_layers=[16])
    model = nn.ModuleDict({"dense": dense, "head": head})
    balancer = GradNorm({"click": 1.0, "rating": 1.0})
    if documented:
        head.init_from_labels({"click": click, "rating": rating})
        opt = torch.optim.Adam(param_groups(model, 1e-3, balancer))
    else:  # one optimizer at the balancer's rate, heads at their default start
        opt = torch.optim.Adam([*model.parameters(), *balancer.parameters()], lr=0.025)
    for _ in range(steps):
        rows = torch.randint(0, n, (256,))
        x = dense(raw[rows])
        losses = multitask_loss(head(x), {"click": click[rows], "rating": rating[rows]}, None, tasks)
        opt.zero_grad()
        balancer(losses, x).backward()
        opt.step()
    return balancer.weights()["rating"]


def test_gradnorm_keeps_the_rating_task_with_the_documented_setup() -> None:
    # The failure: GradNorm drives the rating weight to ~0 within 75 steps.
    assert _gradnorm_rating_weight(documented=False) < 0.05
    assert _gradnorm_rating_weight(documented=True) > 0.2


@pytest.mark.slow
def test_the_dlrm_example_trains_on_two_ranks() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples/dlrm_multitask/train.py"), "--steps", "20"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = dict(re.findall(r"^(auc click|auc purchase|rmse rating) (\S+)$", run.stdout, re.M))
    assert set(found) == {"auc click", "auc purchase", "rmse rating"}, run.stdout
    values = {k: float(v) for k, v in found.items()}
    assert all(np.isfinite(v) for v in values.values())
    assert values["auc click"] > 0.5 and values["auc purchase"] > 0.5


def _loss_inputs():
    torch.manual_seed(0)
    logits = {t.name: torch.randn(6, requires_grad=True) for t in TASKS}
    labels = {"click": torch.tensor([1.0, 0, 1, 0, 1, 0]), "buy": torch.tensor([1.0, 0, 0, 0, 1, 0]),
              "rating": torch.tensor([4.0, 3, 5, 2, 1, 3])}
    masks = {"click": torch.ones(6), "buy": torch.ones(6), "rating": torch.tensor([1.0, 0, 1, 0, 1, 0])}
    return logits, labels, masks


def test_unlabelled_rows_may_hold_nan_labels_and_weights() -> None:
    """NaN is the natural value of a missing rating: under mask 0 it changes neither the loss nor
    the gradients (NaN * 0 is NaN, so the rows are zeroed before the loss)."""
    logits, labels, masks = _loss_inputs()
    clean = multitask_loss(logits, labels, masks, TASKS)
    nan_labels = dict(labels, rating=torch.where(masks["rating"] > 0, labels["rating"], torch.tensor(float("nan"))))
    weights = {"rating": torch.tensor([2.0, float("nan"), 1, float("nan"), 1, float("nan")])}
    got = multitask_loss(logits, nan_labels, masks, TASKS)
    torch.testing.assert_close(got["rating"], clean["rating"], rtol=0, atol=0)
    weighted = multitask_loss(logits, nan_labels, masks, TASKS, weights)["rating"]
    assert torch.isfinite(weighted)
    weighted.backward()
    assert torch.isfinite(logits["rating"].grad).all()
    assert logits["rating"].grad[1] == 0 and logits["rating"].grad[3] == 0


@pytest.mark.parametrize("change,message", [
    (lambda lab, m, w: m.update(rating=m["rating"].view(6, 1)), r"masks\['rating'\]: must be \[B\] = \[6\]"),
    (lambda lab, m, w: lab.update(rating=lab["rating"].view(6, 1)), r"labels\['rating'\]: must be \[B\]"),
    (lambda lab, m, w: lab.update(rating=lab["rating"][:1]), r"labels\['rating'\]: must be \[B\]"),
    (lambda lab, m, w: lab.update(click=lab["click"] * 2), r"labels\['click'\]: binary labels must be 0 or 1"),
    (lambda lab, m, w: lab.update(buy=torch.tensor([1.0, 1, 0, 0, 1, 0])), r"labels\['buy'\]: 1 where its ESMM parent"),
    (lambda lab, m, w: m.update(click=m["click"] * 0.5), r"masks\['click'\]: must be 0 or 1"),
    (lambda lab, m, w: lab.update(rating=torch.tensor([float("nan"), 3, 5, 2, 1, 3])), r"a NaN or infinite label"),
    (lambda lab, m, w: w.update(click=-torch.ones(6)), r"weights\['click'\]: row weights must be finite and >= 0"),
])
def test_loss_inputs_that_would_give_a_wrong_number_are_refused(change, message) -> None:
    logits, labels, masks = _loss_inputs()
    weights = {}
    change(labels, masks, weights)
    with pytest.raises(ValueError, match=message):
        multitask_loss(logits, labels, masks, TASKS, weights or None)


@pytest.mark.parametrize("kwargs,message", [
    ({"in_features": 0}, r"in_features: must be an integer >= 1, got 0"),
    ({"in_features": -3}, r"in_features: must be an integer >= 1"),
    ({"tasks": []}, r"tasks: at least one task is required"),
    ({"tower_layers": [-4]}, r"tower_layers: task 'click' has layer sizes \[-4\]"),
    ({"backbone": nn.Linear(12, 4)}, r"backbone: a module with forward_with_gates"),
])
def test_head_arguments_are_checked(kwargs, message) -> None:
    args = {"in_features": 12, "tasks": TASKS, "backbone": "shared_bottom", "tower_layers": [8]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        MultiTaskHead(**args)
