import torch
from torch import nn

from mtl_torchrec.modules import BatchedExperts, MMoE, TaskTowers


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
