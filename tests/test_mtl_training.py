"""Every backbone and balancer trains through the real Trainer (1 process, TorchRec pipeline)."""

import json
import math

import pytest
import torch

from mtl_torchrec.data.sources import load_data
from mtl_torchrec.launch.train_cmd import train
from mtl_torchrec.train.checkpoint import load_checkpoint
from mtl_torchrec.train.sharding import init_distributed
from mtl_torchrec.train.trainer import Trainer

from tests.mtl_helpers import esmm_tasks, small_config


@pytest.fixture(scope="module")
def ctx():
    return init_distributed()


@pytest.mark.parametrize("backbone", ["mmoe", "omoe", "ple", "shared_bottom", "single_task"])
def test_backbone_trains_through_trainer(backbone, ctx, tmp_path):
    cfg = small_config(str(tmp_path), [f"model.backbone={backbone}"] + esmm_tasks())
    result = train(cfg, ctx)
    m = result["metrics"]
    assert set(m) == {"click", "conversion", "rating", "conversion_given_click"}
    for key in ("click", "conversion", "conversion_given_click"):
        assert 0.0 <= m[key]["auc"] <= 1.0
    # The conditional entry is scored on clicked rows only.
    assert m["conversion_given_click"]["count"] == pytest.approx(m["click"]["positive_rate"] * m["click"]["count"])
    assert math.isfinite(m["rating"]["rmse"])
    diag = json.loads((tmp_path / "diagnostics.json").read_text())
    assert diag["final"]["gradients"]["cosine"]
    assert ("gates" in diag["final"]) == (backbone in ("mmoe", "omoe", "ple"))
    assert len(diag["history"]) >= 2


@pytest.mark.parametrize("balancer", ["fixed", "uncertainty", "gradnorm", "mgda_ub"])
def test_balancer_trains_and_checkpoints(balancer, ctx, tmp_path):
    cfg = small_config(str(tmp_path), [f"train.loss_balance={balancer}", "model.backbone=ple"] + esmm_tasks())
    data = load_data(cfg.data)
    trainer = Trainer(cfg, data, ctx, tmp_path)
    trainer.fit()
    logged = [h["loss_weights"] for h in trainer.history]
    assert logged and all(set(w) == {"click", "conversion", "rating"} for w in logged)
    # MGDA's min-norm point may sit on a face of the simplex (a zero weight); the others stay positive.
    lowest = 0.0 if balancer == "mgda_ub" else 1e-12
    assert all(v >= lowest and math.isfinite(v) for w in logged for v in w.values())
    if balancer in ("gradnorm", "mgda_ub"):
        assert sum(logged[-1].values()) == pytest.approx(3.0, rel=1e-4)
    if balancer != "fixed":
        # The weights moved away from their start (1, 1, 1).
        assert any(abs(v - 1.0) > 1e-4 for v in logged[-1].values())
    diag = json.loads((tmp_path / "diagnostics.json").read_text())
    assert set(diag["final"]["loss_weights"]) == set(logged[-1])
    final_weights = trainer.loss_weights()
    path = trainer.save("balancer_checkpoint")
    trainer.close()
    # The balancer's state is part of the checkpoint.
    fresh = Trainer(cfg, data, ctx, tmp_path / "reload")
    before = {k: v.clone() for k, v in fresh.dmp.module.balancer.state_dict().items()}
    load_checkpoint(path, fresh.dmp)
    after = fresh.dmp.module.balancer.state_dict()
    fresh.close()
    if balancer != "fixed":
        assert before and any(not torch.equal(before[k], after[k]) for k in before)
        assert fresh.loss_weights() == pytest.approx(final_weights, rel=1e-6)


def test_base_pipeline_with_diagnostics(ctx, tmp_path):
    cfg = small_config(str(tmp_path), ["train.pipeline=base", "train.loss_balance=gradnorm", "model.backbone=ple"])
    train(cfg, ctx)
    diag = json.loads((tmp_path / "diagnostics.json").read_text())
    assert len(diag["history"]) >= 2 and "gates" in diag["final"]
