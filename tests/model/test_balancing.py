"""Loss balancers on plain tensors and a small two-task regression model."""

import math

import pytest
import torch
from torch import nn

from mtl_torchrec.config import ConfigError
from mtl_torchrec.model.balancing import MGDAUB, FixedWeights, GradNorm, UncertaintyWeights, min_norm_weights
from mtl_torchrec.model.builder import build_balancer
from mtl_torchrec.model.tasks import TaskSpec


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bottom = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
        self.heads = nn.Linear(16, 2)

    def forward(self, x):
        shared = self.bottom(x)
        return shared, self.heads(shared)


def noisy_tasks(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    signal = x @ torch.tensor([1.0, -1.0, 0.5, 0.0])
    clean = signal + 0.05 * torch.randn(n, generator=g)
    noisy = signal + 2.0 * torch.randn(n, generator=g)
    return x, clean, noisy


def train(balancer, steps=300, lr=0.02):
    torch.manual_seed(0)
    model = TwoHeads()
    x, clean, noisy = noisy_tasks()
    opt = torch.optim.Adam(list(model.parameters()) + list(balancer.parameters()), lr=lr)
    for _ in range(steps):
        shared, out = model(x)
        losses = {"clean": ((out[:, 0] - clean) ** 2).mean(), "noisy": ((out[:, 1] - noisy) ** 2).mean()}
        total = balancer(losses, shared)
        opt.zero_grad()
        total.backward()
        opt.step()
    return balancer.weights(), losses


def test_uncertainty_gives_the_noisy_task_the_lower_weight():
    weights, losses = train(UncertaintyWeights({"clean": 1.0, "noisy": 1.0}))
    assert weights["noisy"] < weights["clean"]
    # At its optimum exp(-s) approaches 1 / L: the noisy loss is ~4 (noise variance).
    assert weights["noisy"] == pytest.approx(1.0 / float(losses["noisy"]), rel=0.3)


def test_uncertainty_starts_from_configured_weights():
    b = UncertaintyWeights({"a": 2.0, "b": 0.5})
    assert b.weights() == pytest.approx({"a": 2.0, "b": 0.5})
    total = b({"a": torch.tensor(1.0), "b": torch.tensor(1.0)}, torch.zeros(1))
    assert float(total) == pytest.approx(2.0 + 0.5 - math.log(2.0) - math.log(0.5))


def test_gradnorm_weights_positive_and_sum_to_task_count():
    balancer = GradNorm({"clean": 1.0, "noisy": 1.0}, alpha=1.5)
    history = []
    torch.manual_seed(0)
    model = TwoHeads()
    x, clean, noisy = noisy_tasks()
    opt = torch.optim.Adam(list(model.parameters()) + list(balancer.parameters()), lr=0.05)
    for _ in range(100):
        shared, out = model(x)
        losses = {"clean": ((out[:, 0] - clean) ** 2).mean(), "noisy": ((out[:, 1] - noisy) ** 2).mean()}
        total = balancer(losses, shared)
        # The reported value is the weighted sum only.
        w = balancer.weights()
        assert float(total) == pytest.approx(sum(w[t] * float(losses[t]) for t in w), rel=1e-5)
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(balancer.weights())
    for w in history:
        assert all(v > 0 for v in w.values())
        assert sum(w.values()) == pytest.approx(2.0, rel=1e-5)
    assert history[-1]["clean"] != pytest.approx(1.0, abs=1e-3)
    assert not torch.isnan(balancer.initial_losses).any()


def test_gradnorm_equalises_gradient_norms_when_rates_match():
    """Two copies of one task whose losses differ by a constant factor: the same training rate,
    so GradNorm must weight the 10x-gradient copy down until the weighted gradient norms match."""
    balancer = GradNorm({"a": 1.0, "b": 1.0}, alpha=1.5)
    opt = torch.optim.SGD(balancer.parameters(), lr=0.002)
    shared = torch.randn(8, 3, requires_grad=True)
    target = torch.randn(8, 3)
    for _ in range(1500):
        base = ((shared - target) ** 2).mean()
        total = balancer({"a": base, "b": 10.0 * base}, shared)
        opt.zero_grad()
        total.backward()
        opt.step()
    w = balancer.weights()
    assert w["a"] / w["b"] == pytest.approx(10.0, rel=0.1)


def test_gradient_balancers_do_nothing_special_without_grad():
    for b in (GradNorm({"a": 1.0, "b": 1.0}), MGDAUB(["a", "b"])):
        with torch.no_grad():
            total = b({"a": torch.tensor(1.0), "b": torch.tensor(3.0)}, torch.zeros(2, 2))
        assert float(total) == pytest.approx(4.0)


def test_min_norm_weights_two_tasks_closed_form():
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([0.0, 2.0], dtype=torch.float64)
    G = torch.stack([g1, g2])
    a = min_norm_weights(G @ G.T)
    # min ||a g1 + (1-a) g2||^2 -> a = 4/5.
    assert a.tolist() == pytest.approx([0.8, 0.2], abs=1e-6)
    # One gradient inside the other's direction: the smaller one alone is the min-norm point.
    G = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    assert min_norm_weights(G @ G.T).tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_mgda_weights_make_a_common_descent_direction():
    torch.manual_seed(0)
    shared = torch.randn(6, 4, requires_grad=True)
    t1, t2, t3 = torch.randn(3, 6, 4)
    losses = {"a": ((shared - t1) ** 2).mean(), "b": ((shared - t2) ** 2).mean(), "c": (shared * t3).mean()}
    b = MGDAUB(list(losses))
    total = b(losses, shared)
    w = b.weights()
    assert sum(w.values()) == pytest.approx(3.0, rel=1e-6) and min(w.values()) >= 0
    (d,) = torch.autograd.grad(total, shared, retain_graph=True)
    # The combined direction does not increase any task's loss (first order).
    for t in losses:
        (g,) = torch.autograd.grad(losses[t], shared, retain_graph=True)
        assert float((g * d).sum()) >= -1e-6


def test_build_balancer_names_the_key():
    tasks = [TaskSpec("a", "binary"), TaskSpec("b", "regression", weight=2.0)]
    assert isinstance(build_balancer("fixed", tasks), FixedWeights)
    assert build_balancer("uncertainty", tasks).weights() == pytest.approx({"a": 1.0, "b": 2.0})
    assert sum(build_balancer("gradnorm", tasks).weights().values()) == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="train.loss_balance"):
        build_balancer("pcgrad", tasks)
    with pytest.raises(ConfigError, match="weight"):
        build_balancer("gradnorm", [TaskSpec("a", "binary", weight=0.0), TaskSpec("b", "binary")])


def test_gradnorm_waits_for_a_task_without_labels():
    balancer = GradNorm({"a": 1.0, "b": 1.0})
    shared = torch.randn(4, 2, requires_grad=True)
    a = (shared ** 2).mean()
    balancer({"a": a, "b": 0.0 * shared.sum()}, shared).backward()
    assert not torch.isnan(balancer.initial_losses[0]) and torch.isnan(balancer.initial_losses[1])
    assert all(torch.isfinite(p.grad).all() for p in balancer.parameters())
    balancer({"a": (shared ** 2).mean(), "b": shared.abs().mean()}, shared)
    assert not torch.isnan(balancer.initial_losses).any()


def _one_task_unlabelled():
    """Task 'b' has no labelled row in the batch: its masked loss is 0 with a zero gradient."""
    torch.manual_seed(0)
    shared = torch.randn(8, 3, requires_grad=True)
    losses = {"a": (shared.sum(dim=1) - 1.0).pow(2).mean(), "b": 0.0 * shared.sum()}
    return losses, shared, torch.tensor([8.0, 0.0])


def test_mgda_leaves_a_task_without_labels_out_of_the_solve():
    losses, shared, labelled = _one_task_unlabelled()
    # Without the counts the zero gradient is the minimum-norm point: all weight on 'b', nothing trains.
    blind = MGDAUB(["a", "b"])
    blind(losses, shared).backward(retain_graph=True)
    assert blind.weights() == pytest.approx({"a": 0.0, "b": 2.0})
    told = MGDAUB(["a", "b"])
    shared.grad = None
    told(losses, shared, labelled).backward()
    assert told.weights() == pytest.approx({"a": 2.0, "b": 0.0})
    assert shared.grad.abs().sum() > 0


def test_uncertainty_does_not_move_the_weight_of_a_task_without_labels():
    losses, shared, labelled = _one_task_unlabelled()
    balancer = UncertaintyWeights({"a": 1.0, "b": 1.0})
    balancer(losses, shared, labelled).backward()
    # Without the counts the regulariser s_b alone would push b's weight (gradient 1).
    assert float(balancer.log_var.grad[1]) == 0.0 and float(balancer.log_var.grad[0]) != 0.0


def test_min_norm_weights_keeps_disallowed_tasks_at_zero():
    gram = torch.tensor([[1.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    a = min_norm_weights(gram, allowed=torch.tensor([True, True, False]))
    assert float(a[2]) == 0.0 and a.sum().item() == pytest.approx(1.0)
    assert a[:2].tolist() == pytest.approx([0.8, 0.2], abs=1e-6)
