"""What scripting adds beyond each module's forward (tests/modules/test_module_forms.py has every module
eager, traced and scripted): the gated backbones' extra methods, unchanged state keys, and the
scoring form of a whole model, ESMM and AITM included."""

from __future__ import annotations

from typing import List

import pytest
import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mtl_torchrec.model.multitask import MultiTaskModel
from mtl_torchrec.model.tasks import TaskSpec, predictions
from mtl_torchrec.modules import PLE, BatchedExperts, MMoE, TaskTowers
from mtl_torchrec.modules.aitm import AITMTowers
from mtl_torchrec.modules.feature_attention import FeatureGroupAttention
from mtl_torchrec.modules.frozen_ebc import FrozenEmbeddingBagCollection
from mtl_torchrec.modules.id_dropout import UnseenIdDropout
from mtl_torchrec.modules.mlp import MLPOptions
from mtl_torchrec.modules.text_feature import TextFeature, table_width
from mtl_torchrec.serve.scoring import ScoringModel

OPTIONS = [None, MLPOptions("gelu", 0.1, "layer"), MLPOptions("silu", 0.0, "batch")]


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)  # type: ignore[arg-type]
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)  # type: ignore[union-attr,index]
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]


def _check(module: nn.Module, *inputs: object, method: str = "forward") -> None:
    module.eval()
    scripted = torch.jit.script(module)
    with torch.no_grad():
        assert _same(getattr(module, method)(*inputs), getattr(scripted, method)(*inputs))


def test_gated_backbones_script_forward_with_gates() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 12)
    for module in (MMoE(12, 2, 3, [4]), PLE(12, 2, 3, 1, 1, [4])):
        module.eval()
        scripted = torch.jit.script(module)
        assert _same(module.forward_with_gates(x), scripted.forward_with_gates(x))


def test_batched_experts_keep_state_keys() -> None:
    """Scripting needed no change of parameters: checkpoints of earlier runs still load."""
    keys = set(BatchedExperts(4, 2, [3, 2], MLPOptions(norm="layer")).state_dict())
    assert keys == {"weights.0", "weights.1", "biases.0", "biases.1", "norms.0.weight", "norms.0.bias",
                    "norms.1.weight", "norms.1.bias"}


def _kjt(keys: List[str], batch: int, high: int) -> KeyedJaggedTensor:
    lengths = torch.randint(1, 3, (len(keys) * batch,), dtype=torch.int32)
    return KeyedJaggedTensor(keys=keys, values=torch.randint(0, high, (int(lengths.sum()),)), lengths=lengths)


def _model(tasks: List[TaskSpec], variant: str) -> MultiTaskModel:
    ebc = EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name="t_user", embedding_dim=4, num_embeddings=20, feature_names=["user"]),
        EmbeddingBagConfig(name="t_item", embedding_dim=4, num_embeddings=30, feature_names=["item"]),
    ])
    text_cfg = EmbeddingBagConfig(name="t_text", embedding_dim=table_width(6), num_embeddings=30,
                                  feature_names=["text"])
    text = {"text": TextFeature(FrozenEmbeddingBagCollection([text_cfg]), text_dim=6, adapter_layers=[3])}
    width = MultiTaskModel.fused_width(ebc, 2, [4], text)
    backbone = PLE(width, len(tasks), 2, 1, 1, [8, 4])
    names = [t.name for t in tasks]
    attention = None
    tower_in = 4
    if variant == "feature_attention":
        groups = MultiTaskModel.feature_groups(ebc, 2, [4], text)
        attention = FeatureGroupAttention([w for _, w in groups], len(tasks), 5)
        tower_in += 5
    if variant == "aitm":
        parents = {t.name: t.aitm_parent for t in tasks if t.aitm_parent is not None}
        towers: TaskTowers = AITMTowers(names, tower_in, {n: [3] for n in names}, parents=parents)
    else:
        towers = TaskTowers(names, tower_in, {n: [3] for n in names})
    drop = UnseenIdDropout("item", 30, 4, 0.3) if variant == "id_dropout" else None
    return MultiTaskModel(ebc, 2, [4], backbone, towers, text, drop, attention)


@pytest.mark.parametrize("variant", ["plain", "id_dropout", "feature_attention", "aitm"])
def test_scoring_model_scripts_and_equals_the_model(variant: str) -> None:
    """The scripted scoring form equals the eager model's impression-space predictions (ESMM: pCTR,
    pCVR, pCTCVR; AITM: each task's own probability); with id dropout, unseen ids read the learned
    unseen vector as in evaluation; with feature attention, towers read the attended groups too."""
    torch.manual_seed(0)
    if variant == "aitm":
        tasks = [TaskSpec("click", "binary"), TaskSpec("conversion", "binary", aitm_parent="click"),
                 TaskSpec("rating", "regression")]
    else:
        tasks = [TaskSpec("click", "binary"), TaskSpec("conversion", "binary", esmm_parent="click"),
                 TaskSpec("rating", "regression")]
    model = _model(tasks, variant)
    if variant == "feature_attention":
        with torch.no_grad():
            model.feature_attention.query.normal_()  # zero queries would mix the groups uniformly
    if variant == "id_dropout":
        with torch.no_grad():
            model.id_dropout.seen[:15] = True
            model.id_dropout.unseen.normal_()
    model.eval()
    keys = ["user", "item", "text"]
    sparse = KeyedJaggedTensor(keys=keys, values=torch.randint(0, 20, (24,)),
                               lengths=torch.ones(24, dtype=torch.int32))
    dense = torch.randn(8, 2)

    class _Batch:
        pass

    batch = _Batch()
    batch.sparse, batch.dense = sparse, dense  # type: ignore[attr-defined]
    with torch.no_grad():
        expected = predictions(model(batch).logits, tasks)  # type: ignore[arg-type]
        scripted = torch.jit.script(ScoringModel.from_model(model, tasks, keys))
        got = scripted(sparse.values(), sparse.lengths(), dense)
    esmm_extra = set() if variant == "aitm" else {"conversion_given_click"}
    assert set(got) == {"click", "conversion", "rating"} | esmm_extra
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)
