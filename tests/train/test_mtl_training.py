"""Every backbone and balancer trains through the real Trainer (1 process, TorchRec pipeline)."""

import json
import math

import numpy as np
import pytest
import torch

from mtl_torchrec.data.sources import load_data
from mtl_torchrec.distributed.checkpoint.dcp_io import load_checkpoint
from mtl_torchrec.distributed.context import init_distributed
from mtl_torchrec.workflows.training import make_trainer, train
from tests.mtl_helpers import esmm_tasks, small_config

# Parameter names of the embedding tables in the train module.
TABLES = "model.embedding."


@pytest.fixture(scope="module")
def ctx():
    return init_distributed()


def _constant_rating_rmse(cfg) -> float:
    """Test RMSE of predicting the training ratings' mean (the constant predictor)."""
    splits = load_data(cfg.data).splits
    train_r, test_r = splits["train"]["rating"], splits["test"]["rating"]
    return float(np.sqrt(np.nanmean((test_r - np.nanmean(train_r)) ** 2)))


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mmoe", "omoe", "ple", "shared_bottom", "single_task"])
def test_backbone_trains_through_trainer(backbone, ctx, tmp_path):
    # Enough steps (~30) and a dense rate high enough for every backbone to learn something.
    cfg = small_config(str(tmp_path), [f"model.backbone={backbone}", "data.synthetic.num_impressions=10000",
                                       "train.dense_lr=0.01"] + esmm_tasks())
    result = train(cfg, ctx)
    m = result.metrics
    assert set(m) == {"click", "conversion", "rating", "conversion_given_click"}
    # A constant predictor has AUC 0.5; every backbone reached 0.68 or more (planner and table_wise).
    for key in ("click", "conversion"):
        assert m[key]["auc"] > 0.6, (key, m[key])
    # Scored on the ~230 clicked test rows only: too few to ask for more than "better than constant".
    assert m["conversion_given_click"]["auc"] > 0.5
    # The conditional entry is scored on clicked rows only.
    assert m["conversion_given_click"]["count"] == pytest.approx(m["click"]["positive_rate"] * m["click"]["count"])
    assert m["rating"]["rmse"] < _constant_rating_rmse(cfg)
    diag = json.loads((tmp_path / "diagnostics.json").read_text())
    assert diag["final"]["gradients"]["cosine"]
    assert ("gates" in diag["final"]) == (backbone in ("mmoe", "omoe", "ple"))
    assert len(diag["history"]) >= 2


@pytest.mark.parametrize("balancer", ["fixed", "uncertainty", "gradnorm", "mgda_ub"])
def test_balancer_trains_and_checkpoints(balancer, ctx, tmp_path):
    cfg = small_config(str(tmp_path), [f"train.loss_balance={balancer}", "model.backbone=ple"] + esmm_tasks())
    data = load_data(cfg.data)
    trainer = make_trainer(cfg, data, ctx, tmp_path)
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
    fresh = make_trainer(cfg, data, ctx, tmp_path / "reload")
    before = {k: v.clone() for k, v in fresh.dmp.module.balancer.state_dict().items()}
    load_checkpoint(path, fresh.dmp)
    after = fresh.dmp.module.balancer.state_dict()
    fresh.close()
    if balancer != "fixed":
        assert before and any(not torch.equal(before[k], after[k]) for k in before)
        assert fresh.loss_weights() == pytest.approx(final_weights, rel=1e-6)


@pytest.mark.parametrize("balance_lr", [0.01, 0.2])
def test_balancer_learns_at_its_own_rate(balance_lr, ctx, tmp_path):
    """The balancer's parameters have their own optimizer at ``train.balance.lr``; the dense
    optimizer (at ``train.dense_lr``) leaves them out. Adam's first step moves every parameter
    by about its learning rate, so one step shows which rate each parameter got."""
    from mtl_torchrec.distributed.optim import make_optimizer

    cfg = small_config(str(tmp_path), ["train.loss_balance=uncertainty", "train.max_steps=1",
                                       "train.dense_lr=0.001", f"train.balance.lr={balance_lr}"])
    data = load_data(cfg.data)
    trainer = make_trainer(cfg, data, ctx, tmp_path)
    module = trainer.dmp.module
    # Tables are left out: the fused sparse optimizer moves them at train.sparse_lr.
    before = {k: v.detach().clone() for k, v in module.named_parameters() if not k.startswith(TABLES)}
    assert before and not any("embedding_bags" in k for k in before)
    owners = [set(o.params) for _, o in trainer.optimizer.optimizers]
    trainer.fit()
    after = dict(module.named_parameters())
    trainer.close()
    assert trainer.state.global_step == 1
    step = (after["balancer.log_var"].detach() - before["balancer.log_var"]).abs()
    assert step.tolist() == pytest.approx([balance_lr] * len(step), rel=0.02)
    dense_steps = [float((after[k].detach() - v).abs().max()) for k, v in before.items() if not k.startswith("balancer.")]
    assert 0 < max(dense_steps) <= 0.001 * 1.02
    # Exactly one optimizer owns the balancer parameter, and it owns nothing else.
    balancer_owner = [o for o in owners if any(k.endswith("balancer.log_var") for k in o)]
    assert len(balancer_owner) == 1 and len(balancer_owner[0]) == 1
    with pytest.raises(ValueError, match="train.balance.lr"):
        make_optimizer(trainer.dmp, "adam", 0.001, sparse_optimizer="rowwise_adagrad", sparse_lr=0.05, balance_lr=0.0)


# The sequence table (model.sequence): an EmbeddingCollection in the history feature module.
SEQUENCE_TABLE = "model.feature_modules.item_history.embedding."


def _table_name(key: str) -> str:
    """``t_<table>.weight`` of a table parameter's name (EBC or sequence EC)."""
    return key.split("embedding_bags.")[1] if "embedding_bags." in key else key.split("embeddings.")[1]


@pytest.mark.parametrize("sharding, sequence", [("table_wise", False), ("planner", False), ("data_parallel", False),
                                                ("row_wise", False), ("planner", True), ("data_parallel", True)])
def test_tables_are_updated_by_the_sparse_optimizer_only(sharding, sequence, ctx, tmp_path):
    """Every table belongs to an optimizer of train.sparse_optimizer (DMP's fused one, or for tables
    the plan replicates the ReplicatedTableOptimizer) and to no other, and one step moves each row
    it touches by train.sparse_lr in root-mean-square (row-wise Adagrad's first step is
    lr * g / rms(g) over the row). On one rank the planner replicates most tables (data_parallel),
    so ``planner`` covers the mixed case. With ``sequence``, the item table is the sequence table
    (an EmbeddingCollection shared by the candidate and the history), held to the same rule."""
    from mtl_torchrec.distributed.optim import ReplicatedTableOptimizer

    extra = ["data.synthetic.history_length=6", "model.sequence.enabled=true", "model.sequence.max_length=6",
             "model.sequence.attention_layers=[8]"] if sequence else []
    cfg = small_config(str(tmp_path), [f"train.sharding={sharding}", "train.max_steps=1",
                                       "train.sparse_lr=0.05", "train.dense_lr=0.001", *extra])
    data = load_data(cfg.data)
    trainer = make_trainer(cfg, data, ctx, tmp_path)
    tables = {k: v.detach().clone() for k, v in trainer.dmp.module.named_parameters()
              if k.startswith(TABLES) or k.startswith(SEQUENCE_TABLE)}
    sparse = [o for o in trainer.sparse_optimizers]
    dense = [o for _, o in trainer.optimizer.optimizers if all(o is not s for s in sparse)]
    replicated = [o for o in sparse if isinstance(o, ReplicatedTableOptimizer)]
    trainer.fit()
    after = dict(trainer.dmp.module.named_parameters())
    trainer.close()
    assert len(tables) == 9 and len(dense) == 1
    assert any(k.startswith(SEQUENCE_TABLE) for k in tables) == sequence
    assert bool(replicated) == (sharding in ("planner", "data_parallel"))
    owned = [_table_name(k) for o in sparse for k in o.params]
    assert sorted(owned) == sorted(_table_name(k) for k in tables)
    assert not any("embedding_bags" in k or "embedding.embeddings" in k for o in dense for k in o.params)
    row_steps = torch.cat([(after[k].detach() - v).pow(2).mean(dim=1).sqrt() for k, v in tables.items()])
    moved = row_steps[row_steps > 0]
    assert len(moved) > 50
    torch.testing.assert_close(moved, torch.full_like(moved, 0.05), rtol=1e-2, atol=0)


def test_base_pipeline_with_diagnostics(ctx, tmp_path):
    cfg = small_config(str(tmp_path), ["train.pipeline=base", "train.loss_balance=gradnorm", "model.backbone=ple"])
    train(cfg, ctx)
    diag = json.loads((tmp_path / "diagnostics.json").read_text())
    assert len(diag["history"]) >= 2 and "gates" in diag["final"]


def test_row_weights_pass_through_the_pipeline(ctx, tmp_path, monkeypatch):
    """Batches carrying ``weights`` go through TorchRec's sparse-dist pipeline (copy to device,
    fx tracing of the train module) and weight the losses: rating rows of weight 0 give a 0 loss."""
    import dataclasses

    from mtl_torchrec.train import trainer as trainer_module
    from mtl_torchrec.train.callbacks import Callback

    plain_loader = trainer_module.make_loader

    def weighted_loader(dataset, num_workers=0):
        for batch in plain_loader(dataset, num_workers=num_workers):
            n = batch.batch_size
            yield dataclasses.replace(batch, weights={"click": torch.full((n,), 2.0), "rating": torch.zeros(n)})

    class Record(Callback):
        def __init__(self):
            self.losses = []

        def on_step_end(self, trainer, out):
            self.losses.append({k: float(v) for k, v in out.task_losses.items()})

    monkeypatch.setattr(trainer_module, "make_loader", weighted_loader)
    cfg = small_config(str(tmp_path), ["train.max_steps=3", "train.pipeline=sparse_dist"])
    record = Record()
    trainer = make_trainer(cfg, load_data(cfg.data), ctx, tmp_path, callbacks=[record])
    trainer.fit()
    trainer.close()
    assert len(record.losses) == 3
    assert all(step["rating"] == 0.0 and step["click"] > 0.0 for step in record.losses)
