import pytest
import torch
from torch import nn

from mtl_torchrec.config import ConfigError, load_config
from mtl_torchrec.modules import (
    PLE,
    BatchedExperts,
    MLPOptions,
    MMoE,
    SeparateBottoms,
    SharedBottom,
    TaskTowers,
    make_mlp,
)
from mtl_torchrec.modules.mlp import ExpertBatchNorm, ExpertLayerNorm


def test_batched_experts_match_separate_mlps():
    torch.manual_seed(0)
    experts = BatchedExperts(12, num_experts=3, layer_sizes=[16, 8])
    x = torch.randn(5, 12)
    out = experts(x)
    assert out.shape == (3, 5, 8)
    for e in range(3):
        h = x
        for w, b in zip(experts.weights, experts.biases):
            h = torch.relu(h @ w[e] + b[e, 0])
        torch.testing.assert_close(out[e], h)


@pytest.mark.parametrize("shape", [(3, 5, 12), (1, 5, 12), (12,)])
def test_batched_experts_forward_refuses_inputs_that_are_not_one_shared_matrix(shape):
    # forward takes one [B, in] input for every expert; [E, B, in] is forward_each's and must not pass.
    experts = BatchedExperts(12, num_experts=3, layer_sizes=[8])
    with pytest.raises((RuntimeError, IndexError)):
        experts(torch.randn(*shape))


@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_batched_experts_in_place_activations_keep_values_and_gradients(norm):
    # ReLU overwrites every layer's pre-activation (after the norm), in training too: values and
    # every gradient must equal the out-of-place per-expert reference.
    torch.manual_seed(0)
    experts = BatchedExperts(12, num_experts=3, layer_sizes=[16, 8, 4], options=MLPOptions(norm=norm))
    x = torch.randn(5, 12, requires_grad=True)
    out = experts(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in experts.parameters()]
    x_grad = x.grad.clone()
    experts.zero_grad()
    x.grad = None
    if norm != "batch":  # batch norm in training normalises by the batch and moves its running stats
        with torch.no_grad():
            torch.testing.assert_close(experts(x), out.detach(), rtol=0, atol=0)
    ref = []
    for e in range(3):
        h = x
        for w, b, n in zip(experts.weights, experts.biases, experts.norms):
            pre = h @ w[e] + b[e, 0]
            if norm == "layer":
                pre = torch.nn.functional.layer_norm(pre, pre.shape[-1:], n.weight[e, 0], n.bias[e, 0])
            elif norm == "batch":
                d = pre.shape[-1]
                pre = torch.nn.functional.batch_norm(pre, None, None, n.norm.weight[e * d:(e + 1) * d],
                                                     n.norm.bias[e * d:(e + 1) * d], training=True)
            h = torch.relu(pre)
        ref.append(h)
    torch.testing.assert_close(torch.stack(ref), out)
    torch.stack(ref).square().sum().backward()
    for got, p in zip(grads, experts.parameters()):
        torch.testing.assert_close(got, p.grad)
    torch.testing.assert_close(x_grad, x.grad)


def test_mmoe_gates_sum_to_one_and_differ_per_task():
    torch.manual_seed(0)
    mmoe = MMoE(10, num_tasks=3, num_experts=4, expert_layers=[8], gate_layers=[6])
    outs, gates = mmoe.forward_with_gates(torch.randn(7, 10))
    assert len(outs) == 3 and all(o.shape == (7, 8) for o in outs)
    assert len(gates) == 3
    for g in gates:
        assert g.shape == (7, 4)
        torch.testing.assert_close(g.sum(-1), torch.ones(7))
        assert (g >= 0).all()
    assert not torch.allclose(gates[0], gates[1])


def test_mmoe_with_one_expert_is_a_shared_bottom_mlp():
    torch.manual_seed(0)
    mmoe = MMoE(10, num_tasks=2, num_experts=1, expert_layers=[16, 8])
    bottom = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
    with torch.no_grad():
        bottom[0].weight.copy_(mmoe.experts.weights[0][0].T)
        bottom[0].bias.copy_(mmoe.experts.biases[0][0, 0])
        bottom[2].weight.copy_(mmoe.experts.weights[1][0].T)
        bottom[2].bias.copy_(mmoe.experts.biases[1][0, 0])
    x = torch.randn(9, 10)
    expected = bottom(x)
    for out in mmoe(x):
        torch.testing.assert_close(out, expected)


def test_omoe_shares_one_gate():
    torch.manual_seed(0)
    omoe = MMoE(10, num_tasks=3, num_experts=4, expert_layers=[8], single_gate=True)
    outs, gates = omoe.forward_with_gates(torch.randn(4, 10))
    assert len(omoe.gates) == 1
    assert len(outs) == 3 and len(gates) == 3
    assert all(torch.equal(outs[0], o) for o in outs)
    assert all(torch.equal(gates[0], g) for g in gates)
    torch.testing.assert_close(gates[1].sum(-1), torch.ones(4))


def test_mmoe_gradients_reach_experts_and_gates():
    mmoe = MMoE(6, num_tasks=2, num_experts=3, expert_layers=[4])
    sum(o.sum() for o in mmoe(torch.randn(5, 6))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mmoe.parameters())


def test_towers_one_scalar_per_task():
    towers = TaskTowers(["click", "rating"], 8, {"click": [4], "rating": []})
    out = towers([torch.randn(3, 8), torch.randn(3, 8)])
    assert set(out) == {"click", "rating"}
    assert out["click"].shape == (3,) and out["rating"].shape == (3,)


# ----------------------------------------------------------------------------- MLP options

FANCY = MLPOptions(activation="gelu", dropout=0.2, norm="layer")


def test_default_options_keep_torchrec_mlp_and_relu_experts():
    from torchrec.modules.mlp import MLP

    assert type(make_mlp(4, [8])) is MLP
    experts = BatchedExperts(4, 2, [8], MLPOptions())
    assert not list(experts.norms.parameters()) and isinstance(experts.activation, nn.ReLU)
    assert isinstance(experts.dropout, nn.Identity)


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "tanh"])
def test_every_module_takes_the_options_with_unchanged_shapes(norm, activation):
    torch.manual_seed(0)
    opts = MLPOptions(activation=activation, dropout=0.1, norm=norm)
    x = torch.randn(6, 10)
    assert BatchedExperts(10, 3, [16, 8], opts)(x).shape == (3, 6, 8)
    outs, gates = MMoE(10, 2, 3, [8], [5], expert_options=opts, gate_options=opts).forward_with_gates(x)
    assert [o.shape for o in outs] == [(6, 8)] * 2 and [g.shape for g in gates] == [(6, 3)] * 2
    assert [o.shape for o in PLE(10, 2, 2, 1, 1, [8], opts)(x)] == [(6, 8)] * 2
    assert [o.shape for o in SharedBottom(10, 2, [8], opts)(x)] == [(6, 8)] * 2
    assert [o.shape for o in SeparateBottoms(10, 2, [8], opts)(x)] == [(6, 8)] * 2
    assert TaskTowers(["a"], 10, {"a": [4]}, opts)([x])["a"].shape == (6,)


def test_options_take_effect():
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    relu = BatchedExperts(10, 2, [8])
    gelu = BatchedExperts(10, 2, [8], MLPOptions(activation="gelu"))
    gelu.load_state_dict(relu.state_dict())
    assert (relu(x) >= 0).all() and (gelu(x) < 0).any()
    # Dropout: random zeros in training, none (and deterministic) in evaluation.
    drop = BatchedExperts(10, 2, [8], MLPOptions(activation="tanh", dropout=0.5))
    assert (drop(x) == 0).float().mean() > 0.3
    drop.eval()
    assert torch.equal(drop(x), drop(x)) and (drop(x) != 0).all()
    # Norms are per expert: batch norm over each expert's batch, layer norm over its features.
    h = torch.randn(3, 64, 8) * torch.tensor([1.0, 5.0, 20.0]).view(3, 1, 1) + 7
    bn = ExpertBatchNorm(3, 8)(h)
    torch.testing.assert_close(bn.mean(1), torch.zeros(3, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(bn.var(1, unbiased=False), torch.ones(3, 8), atol=1e-3, rtol=0)
    ln = ExpertLayerNorm(3, 8)(h)
    torch.testing.assert_close(ln.mean(-1), torch.zeros(3, 64), atol=1e-5, rtol=0)
    tower = TaskTowers(["a"], 10, {"a": [16]}, MLPOptions(norm="batch"))
    assert isinstance(tower.towers["a"].mlp[1], nn.BatchNorm1d)


def test_mlp_options_in_the_config():
    cfg = load_config(None, ["model.tower_mlp.dropout=0.1", "model.mmoe.expert_mlp.norm=layer",
                             "model.mmoe.gate_mlp.activation=silu", "model.ple.expert_mlp.activation=gelu",
                             "model.shared_bottom.mlp.norm=batch", "model.single_task.mlp.dropout=0.3"])
    assert cfg.model.tower_mlp.options() == MLPOptions("relu", 0.1, "none")
    assert cfg.model.mmoe.expert_mlp.norm == "layer" and cfg.model.mmoe.gate_mlp.activation == "silu"
    for override, key in (("model.tower_mlp.activation=swish", "model.tower_mlp.activation"),
                          ("model.mmoe.expert_mlp.dropout=1.0", "model.mmoe.expert_mlp.dropout"),
                          ("model.ple.expert_mlp.norm=group", "model.ple.expert_mlp.norm")):
        with pytest.raises(ConfigError) as e:
            load_config(None, [override])
        assert str(e.value).startswith(key), str(e.value)


def test_mix_experts_is_each_gates_weighted_sum():
    from mtl_torchrec.modules.experts import mix_experts

    torch.manual_seed(0)
    gates = torch.softmax(torch.randn(6, 3, 4), -1)
    experts = torch.randn(4, 6, 5)
    want = torch.stack([sum(gates[:, t, e, None] * experts[e] for e in range(4)) for t in range(3)], 1)
    torch.testing.assert_close(mix_experts(gates, experts), want)
