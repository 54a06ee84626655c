"""PLE / CGC, SharedBottom, separate bottoms and OMoE as plain modules."""

import pytest
import torch

from mtl_torchrec.config import ConfigError, load_config
from mtl_torchrec.model.builder import build_backbone
from mtl_torchrec.modules import PLE, MMoE, SeparateBottoms, SharedBottom


def test_ple_shapes_and_gates_sum_to_one():
    torch.manual_seed(0)
    ple = PLE(12, num_tasks=3, num_levels=3, num_task_experts=2, num_shared_experts=1, expert_layers=[10, 6])
    trace = ple.forward_with_experts(torch.randn(5, 12))
    assert len(trace.outputs) == 3 and all(o.shape == (5, 6) for o in trace.outputs)
    # 3 task gates per level + a shared gate on all but the last level.
    assert len(trace.gates) == 3 * 3 + 2
    for g, info in zip(trace.gates, trace.gate_info):
        assert g.shape == (5, len(info.experts))
        torch.testing.assert_close(g.sum(-1), torch.ones(5))
        if info.task is None:
            assert len(info.experts) == 3 * 2 + 1 and info.level < 2
        else:
            # own experts + shared ones, never another task's
            assert len(info.experts) == 2 + 1
            assert all(f"task{info.task}/" in e or "/shared/" in e for e in info.experts)
    assert len(trace.experts) == 3 * (3 * 2 + 1)
    outs, gates = ple.forward_with_gates(torch.randn(5, 12))
    assert len(outs) == 3 and len(gates) == 11


def test_ple_task_paths_are_separate():
    """Level 2 task experts read their own task's level-1 output: a change that only reaches
    task 0's level-1 path must leave task 1's gate input untouched."""
    torch.manual_seed(0)
    ple = PLE(8, num_tasks=2, num_levels=2, num_task_experts=1, num_shared_experts=0, expert_layers=[4])
    x = torch.randn(3, 8)
    base = ple.forward_with_experts(x)
    with torch.no_grad():
        # Scale expert 0 of level 0 (task 0's own expert); no shared experts exist.
        ple.levels[0].experts.weights[0][0].mul_(3.0)
        ple.levels[0].experts.biases[0][0].mul_(3.0)
    moved = ple.forward_with_experts(x)
    assert not torch.allclose(base.outputs[0], moved.outputs[0])
    torch.testing.assert_close(base.experts["level1/task1/expert0"], moved.experts["level1/task1/expert0"])
    torch.testing.assert_close(base.outputs[1], moved.outputs[1])


def test_one_level_without_task_experts_is_mmoe():
    torch.manual_seed(0)
    ple = PLE(10, num_tasks=2, num_levels=1, num_task_experts=0, num_shared_experts=4, expert_layers=[8, 5])
    mmoe = MMoE(10, num_tasks=2, num_experts=4, expert_layers=[8, 5])
    with torch.no_grad():
        for dst, src in zip(mmoe.experts.parameters(), ple.levels[0].experts.parameters()):
            dst.copy_(src)
        for k in range(2):
            mmoe.gates[k][1].weight.copy_(ple.levels[0].gates[k].weight)
            mmoe.gates[k][1].bias.copy_(ple.levels[0].gates[k].bias)
    x = torch.randn(7, 10)
    p_out, p_gates = ple.forward_with_gates(x)
    m_out, m_gates = mmoe.forward_with_gates(x)
    for a, b in zip(p_out + p_gates, m_out + m_gates):
        torch.testing.assert_close(a, b)


def test_ple_gradients_reach_every_expert_and_gate():
    torch.manual_seed(0)
    ple = PLE(6, num_tasks=2, num_levels=2, num_task_experts=1, num_shared_experts=1, expert_layers=[4])
    sum(o.sum() for o in ple(torch.randn(4, 6))).backward()
    for name, p in ple.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_ple_rejects_gates_without_experts():
    with pytest.raises(ValueError):
        PLE(6, num_tasks=2, num_levels=1, num_task_experts=0, num_shared_experts=0, expert_layers=[4])
    with pytest.raises(ValueError):
        PLE(6, num_tasks=2, num_levels=0, num_task_experts=1, num_shared_experts=1, expert_layers=[4])


def test_shared_bottom_and_separate_bottoms():
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    sb = SharedBottom(6, num_tasks=3, layers=[8, 5])
    outs, gates = sb.forward_with_gates(x)
    assert gates == [] and len(outs) == 3 and outs[0].shape == (4, 5)
    assert outs[0] is outs[2]
    sep = SeparateBottoms(6, num_tasks=2, layers=[8, 5])
    outs, gates = sep.forward_with_gates(x)
    assert gates == [] and len(outs) == 2 and not torch.allclose(outs[0], outs[1])
    # Task 1's loss never reaches task 0's bottom.
    outs[1].sum().backward()
    assert sep.bottoms.weights[0].grad[0].abs().sum() == 0
    assert sep.bottoms.weights[0].grad[1].abs().sum() > 0


@pytest.mark.parametrize("backbone", ["mmoe", "omoe", "ple", "shared_bottom", "single_task"])
def test_build_backbone_from_config(backbone):
    cfg = load_config(None, [f"model.backbone={backbone}", "model.ple.expert_layers=[8]"])
    module = build_backbone(cfg.model, 20, 3)
    outs, gates = module.forward_with_gates(torch.randn(2, 20))
    assert len(outs) == 3 and outs[0].shape == (2, module.out_features)


def test_bad_backbone_config_names_the_key():
    # Refused when the config is loaded ...
    with pytest.raises(ConfigError, match=r"model\.ple\.num_task_experts: .*every gate needs an expert"):
        load_config(None, ["model.backbone=ple", "model.ple.num_task_experts=0", "model.ple.num_shared_experts=0"])
    # ... and, for options changed after loading, when the module is built.
    cfg = load_config(None, ["model.backbone=ple"])
    cfg.model.ple.num_task_experts = cfg.model.ple.num_shared_experts = 0
    with pytest.raises(ConfigError, match="model.ple"):
        build_backbone(cfg.model, 20, 3)
    with pytest.raises(ConfigError, match="model.backbone"):
        load_config(None, ["model.backbone=transformer"])
