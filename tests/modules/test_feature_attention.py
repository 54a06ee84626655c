"""Per-task feature attention: weights, tracing, the model off (unchanged) and on, diagnostics."""

import numpy as np
import pytest
import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mtl_torchrec.config import load_config
from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.synthetic import generate_synthetic
from mtl_torchrec.model.builder import build_backbone, build_model, embedding_configs, task_specs
from mtl_torchrec.model.diagnostics import diagnose, flatten_scalars
from mtl_torchrec.model.multitask import MultiTaskModel
from mtl_torchrec.modules.feature_attention import FeatureGroupAttention
from mtl_torchrec.modules.towers import TaskTowers
from tests.mtl_helpers import SMALL


def test_weights_sum_to_one_and_start_uniform():
    torch.manual_seed(0)
    att = FeatureGroupAttention([4, 8, 3], num_tasks=2, dim=6)
    x = torch.randn(5, 15)
    a, w = att.forward_with_weights(x)
    assert a.shape == (5, 2, 6) and w.shape == (5, 2, 3)
    assert torch.allclose(w.sum(-1), torch.ones(5, 2))
    # Zero queries: a uniform mix, the mean of the projected groups.
    assert torch.allclose(w, torch.full_like(w, 1 / 3))
    projected = [att.proj[0](x[:, :4]), att.proj[1](x[:, 4:12]), att.proj[2](x[:, 12:])]
    assert torch.allclose(a[:, 0], sum(projected) / 3, atol=1e-6)
    with torch.no_grad():
        att.query.copy_(torch.randn(2, 6))
    _, w = att.forward_with_weights(x)
    assert torch.allclose(w.sum(-1), torch.ones(5, 2)) and not torch.allclose(w[:, 0], w[:, 1])


def test_traces_and_scripts():
    torch.manual_seed(0)
    att = FeatureGroupAttention([4, 8], num_tasks=3, dim=5)
    with torch.no_grad():
        att.query.normal_()
    x = torch.randn(7, 12)
    # forward in every form: tests/modules/test_module_forms.py; here the method that also returns the weights.
    scripted = torch.jit.script(att)
    assert torch.allclose(scripted.forward_with_weights(x)[1], att.forward_with_weights(x)[1])


def test_bad_widths_are_refused():
    with pytest.raises(ValueError, match="feature attention"):
        FeatureGroupAttention([], 2, 4)
    with pytest.raises(ConfigError, match="model.feature_attention.dim"):
        load_config(None, ["model.feature_attention.dim=0"])


@pytest.fixture(scope="module")
def data():
    cfg = load_config(None, SMALL)
    return generate_synthetic(cfg.data.synthetic)


def test_off_is_the_model_as_before(data):
    """Disabled (the default), the model is built exactly as before the option existed."""
    cfg = load_config(None, SMALL)
    assert cfg.model.feature_attention.enabled is False
    torch.manual_seed(0)
    model = build_model(cfg.model, data.schema)
    # The model as built before feature attention existed.
    torch.manual_seed(0)
    m = cfg.model
    ebc = EmbeddingBagCollection(tables=embedding_configs(data.schema, m.embedding_dim))
    width = MultiTaskModel.fused_width(ebc, len(data.schema.dense), m.dense_layers)
    backbone = build_backbone(m, width, len(m.tasks))
    towers = TaskTowers([t.name for t in m.tasks], backbone.out_features, {t.name: m.tower_layers for t in m.tasks},
                        m.tower_mlp.options())
    before = MultiTaskModel(ebc, len(data.schema.dense), m.dense_layers, backbone, towers)
    assert model.feature_attention is None
    assert list(model.state_dict()) == list(before.state_dict())
    for k, v in before.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    batch = Batch.from_table(data.splits["train"].take(np.arange(32)), data.schema)
    out, ref = model(batch), before(batch)
    for t in ref.logits:
        assert torch.equal(out.logits[t], ref.logits[t])


def test_on_feeds_towers_and_diagnostics(data):
    cfg = load_config(None, SMALL + ["model.feature_attention.enabled=true", "model.feature_attention.dim=6"])
    torch.manual_seed(0)
    model = build_model(cfg.model, data.schema)
    groups = MultiTaskModel.feature_groups(model.embedding, len(data.schema.dense), cfg.model.dense_layers)
    assert [n for n, _ in groups] == model.feature_group_names
    assert model.feature_group_names[-1] == "dense" and "user_id" in model.feature_group_names
    assert sum(w for _, w in groups) == MultiTaskModel.fused_width(model.embedding, len(data.schema.dense),
                                                                   cfg.model.dense_layers)
    # Each tower reads the backbone output and its task's 6-wide attended vector.
    assert model.towers.towers["click"].mlp._mlp[0]._linear.in_features == model.backbone.out_features + 6
    batch = Batch.from_table(data.splits["train"].take(np.arange(64)), data.schema)
    out = model(batch)
    assert all(v.shape == (64,) for v in out.logits.values())
    # Gradients reach the queries.
    sum(v.sum() for v in out.logits.values()).backward()
    assert model.feature_attention.query.grad is not None and model.feature_attention.query.grad.abs().sum() > 0
    report = diagnose(model, [batch, batch], task_specs(cfg.model, data.schema))
    shares = report["feature_attention"]
    assert set(shares) == {"click", "conversion", "rating"}
    for by_group in shares.values():
        assert list(by_group) == model.feature_group_names
        assert sum(by_group.values()) == pytest.approx(1.0, abs=1e-5)
    assert "gates" in report  # next to the gate diagnostics
    flat = flatten_scalars(report)
    assert flat["feature_attention/click/dense"] == pytest.approx(shares["click"]["dense"])
