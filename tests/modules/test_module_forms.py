"""Every module of ``mtl_torchrec.modules`` in its three forms, one parametrised test: eager, traced
by FX (TorchRec's tracer for modules that take a KJT) and scripted by TorchScript, each computing
what the eager module computes in evaluation mode (the habit of TorchEasyRec's module tests)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch
import torchrec.fx
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mtl_torchrec.modules import PLE, BatchedExperts, MMoE, SeparateBottoms, SharedBottom, TaskTowers
from mtl_torchrec.modules.aitm import AITMTowers, AITUnit
from mtl_torchrec.modules.feature_attention import FeatureGroupAttention
from mtl_torchrec.modules.mlp import MLPOptions
from mtl_torchrec.modules.target_attention import TargetAttention
from mtl_torchrec.modules.text_feature import TextFeature, table_width

FANCY = MLPOptions("gelu", 0.1, "layer")
BATCH_NORM = MLPOptions("silu", 0.0, "batch")


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def _kjt(keys: List[str], batch: int, high: int) -> KeyedJaggedTensor:
    lengths = torch.randint(1, 3, (len(keys) * batch,), dtype=torch.int32)
    return KeyedJaggedTensor(keys=keys, values=torch.randint(0, high, (int(lengths.sum()),)), lengths=lengths)


def _text_feature() -> Tuple[nn.Module, Tuple[Any, ...]]:
    cfg = EmbeddingBagConfig(name="t_text", embedding_dim=table_width(6), num_embeddings=10, feature_names=["text"])
    return TextFeature(EmbeddingBagCollection([cfg]), text_dim=6, adapter_layers=[5, 3], dropout=0.2), \
        (_kjt(["text"], 4, 10),)


def _feature_attention() -> Tuple[nn.Module, Tuple[Any, ...]]:
    att = FeatureGroupAttention([4, 8], num_tasks=3, dim=5)
    with torch.no_grad():
        att.query.normal_()  # zero queries would mix the groups uniformly
    return att, (_x(7, 12),)


# name -> () -> (module, forward inputs)
CASES: Dict[str, Callable[[], Tuple[nn.Module, Tuple[Any, ...]]]] = {
    "experts": lambda: (BatchedExperts(12, 3, [8, 4, 4]), (_x(7, 12),)),
    "experts_layer_norm": lambda: (BatchedExperts(12, 3, [8, 4], FANCY), (_x(7, 12),)),
    "experts_batch_norm": lambda: (BatchedExperts(12, 3, [8, 4], BATCH_NORM), (_x(7, 12),)),
    "mmoe": lambda: (MMoE(12, 3, 4, [8, 4], [6]), (_x(7, 12),)),
    "mmoe_options": lambda: (MMoE(12, 3, 4, [8, 4], [6], expert_options=FANCY, gate_options=FANCY), (_x(7, 12),)),
    "omoe": lambda: (MMoE(12, 3, 4, [8, 4], single_gate=True, expert_options=BATCH_NORM), (_x(7, 12),)),
    "ple": lambda: (PLE(12, 3, 2, 1, 2, [8, 4]), (_x(7, 12),)),
    "ple_batch_norm": lambda: (PLE(12, 3, 2, 1, 2, [8, 4], BATCH_NORM), (_x(7, 12),)),
    "shared_bottom": lambda: (SharedBottom(12, 3, [8, 4], FANCY), (_x(7, 12),)),
    "separate_bottoms": lambda: (SeparateBottoms(12, 3, [8, 4], FANCY), (_x(7, 12),)),
    "towers": lambda: (TaskTowers(["a", "b"], 4, {"a": [3], "b": []}, FANCY), ([_x(7, 4), _x(7, 4)],)),
    "aitm_towers": lambda: (AITMTowers(["click", "buy"], 4, {"click": [3], "buy": [3]}, parents={"buy": "click"}),
                            ([_x(7, 4), _x(7, 4)],)),
    "ait_unit": lambda: (AITUnit(8), (_x(4, 8), _x(4, 8))),
    "feature_attention": _feature_attention,
    "target_attention": lambda: (TargetAttention(6, [8]),
                                 (_x(2, 3, 6), torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool), _x(2, 6))),
    "text_feature": _text_feature,
}


def _close(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y)
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _form(module: nn.Module, form: str, inputs: Tuple[Any, ...]) -> nn.Module:
    if form == "eager":
        return module
    if form == "fx":
        kjt = any(isinstance(i, KeyedJaggedTensor) for i in inputs)
        # TorchRec's tracer for modules that take a KJT (it knows the KJT's methods), torch.fx's otherwise.
        return torchrec.fx.symbolic_trace(module) if kjt else torch.fx.symbolic_trace(module)
    return torch.jit.script(module)


@pytest.mark.parametrize("form", ["eager", "fx", "script"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_module_forms_compute_the_eager_outputs(case: str, form: str) -> None:
    torch.manual_seed(0)
    module, inputs = CASES[case]()
    module.eval()
    with torch.no_grad():
        expected = module(*inputs)
        got = _form(module, form, inputs)(*inputs)
    _close(got, expected)
