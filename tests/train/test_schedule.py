"""Learning-rate schedules (train.lr_schedule) on the dense and fused sparse optimizers, and the
training loss curve (LossLogging) of a run shorter than train.log_every."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List

import pytest
from torchrec.optim.optimizers import in_backward_optimizer_filter

from mtl_torchrec.config import ConfigError, LRScheduleConfig, load_config
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.train.schedule import lr_multiplier
from mtl_torchrec.workflows.training import make_trainer, train

SMALL = [
    "data.synthetic.num_impressions=4000",
    "data.synthetic.num_users=300",
    "data.synthetic.num_items=200",
    "data.batch_size=128",
    "data.eval_batch_size=1024",
    "model.embedding_dim=8",
    "model.dense_layers=[16]",
    "model.mmoe.num_experts=2",
    "model.mmoe.expert_layers=[16]",
    "model.tower_layers=[8]",
    "train.epochs=1",
    "train.sharding=table_wise",
    "train.diagnostics_every=0",
    "train.progress=false",
]
TABLE = "model.embedding.embedding_bags.t_user_id.weight"


def _values(cfg: LRScheduleConfig, total: int) -> List[float]:
    f = lr_multiplier(cfg, total)
    return [f(s) for s in range(total)]


def test_warmup_then_each_decay() -> None:
    warm = [0.25, 0.5, 0.75, 1.0]
    assert _values(LRScheduleConfig(warmup_steps=4), 6) == warm + [1.0, 1.0]
    # Linear and cosine reach min_lr_ratio on the last step (step index total - 1).
    lin = _values(LRScheduleConfig(warmup_steps=4, decay="linear", min_lr_ratio=0.2), 9)
    assert lin[:4] == warm
    assert lin[4:] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    cos = _values(LRScheduleConfig(warmup_steps=4, decay="cosine", min_lr_ratio=0.0), 9)
    assert cos[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(5)])
    assert cos[-1] == pytest.approx(0.0)
    step = _values(LRScheduleConfig(decay="step", step_size=2, gamma=0.5), 6)
    assert step == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    # No warmup and the default decay: exactly the configured rate.
    assert set(_values(LRScheduleConfig(), 5)) == {1.0}


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr_schedule.warmup_steps=-1", "train.lr_schedule.warmup_steps"),
        ("train.lr_schedule.decay=exponential", "train.lr_schedule.decay"),
        ("train.lr_schedule.min_lr_ratio=1.5", "train.lr_schedule.min_lr_ratio"),
        ("train.lr_schedule.gamma=0", "train.lr_schedule.gamma"),
        ("train.lr_schedule.step_size=0", "train.lr_schedule.step_size"),
    ],
)
def test_bad_schedule_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(key), str(e.value)


def _one_step_change(tmp_path: Path, *extra: str) -> Dict[str, float]:
    """How far one training step moves the user table and the dense parameters."""
    cfg = load_config(None, SMALL + ["train.max_steps=1", "train.log_every=0", *extra])
    ctx = init_distributed("gloo")
    try:
        trainer = make_trainer(cfg, load_data(cfg.data), ctx, tmp_path)
        # The dense parameters (the fused tables are updated in backward, not by the dense optimizer).
        before = {k: v.detach().clone() for k, v in in_backward_optimizer_filter(trainer.dmp.named_parameters())}
        table_before = trainer.dmp.state_dict()[TABLE].local_shards()[0].tensor.clone()
        trainer.fit()
        after = dict(trainer.dmp.named_parameters())
        table_after = trainer.dmp.state_dict()[TABLE].local_shards()[0].tensor
        dense = sum(float((after[k] - v).abs().sum()) for k, v in before.items() if k in after)
        rates = trainer.learning_rates()
        trainer.close()
    finally:
        close_distributed(ctx)
    return {"table": float((table_after - table_before).abs().sum()), "dense": dense,
            **{f"lr_{k}": v for k, v in rates.items()}}


@pytest.mark.slow
def test_warmup_reaches_the_fused_tables_and_the_dense_optimizer(tmp_path: Path) -> None:
    warm = ["train.lr_schedule.warmup_steps=100", "train.dense_optimizer=sgd"]
    plain = _one_step_change(tmp_path / "plain", "train.dense_optimizer=sgd")
    both = _one_step_change(tmp_path / "both", *warm)
    dense_only = _one_step_change(tmp_path / "dense_only", *warm, "train.lr_schedule.sparse=false")
    # SGD's update is proportional to the rate: step 1 of a 100-step warmup moves 1/100 as far
    # (up to float32 rounding of the tiny differences of the weights).
    assert both["dense"] == pytest.approx(plain["dense"] / 100, rel=5e-2)
    assert dense_only["dense"] == pytest.approx(plain["dense"] / 100, rel=5e-2)
    # The fused (row-wise Adagrad) tables: the first step's update is proportional to the rate too.
    assert both["table"] == pytest.approx(plain["table"] / 100, rel=5e-2)
    assert dense_only["table"] == pytest.approx(plain["table"], rel=1e-6)
    # The rates for step 2.
    assert both["dense"] > 0 and both["lr_sparse"] == pytest.approx(0.05 * 2 / 100, rel=1e-6)
    assert both["lr_dense"] == pytest.approx(1e-3 * 2 / 100) and dense_only["lr_sparse"] == pytest.approx(0.05, rel=1e-6)


def _scalars(run_dir: Path) -> Dict[str, List[Any]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_short_run_writes_a_loss_curve(tmp_path: Path) -> None:
    # 3200 training rows / 128: 25 steps per epoch, 2 epochs; log_every 100 is never due.
    cfg = load_config(None, SMALL + ["train.epochs=2", "train.log_every=100", f"run_dir={tmp_path / 'run'}",
                                     "train.lr_schedule.warmup_steps=10", "train.lr_schedule.decay=linear"])
    ctx = init_distributed("gloo")
    try:
        result = train(cfg, ctx)
    finally:
        close_distributed(ctx)
    steps = result.summary["steps"]
    assert steps == 50
    scalars = _scalars(tmp_path / "run")
    # Step 1 and the last step ...
    assert [s for s, _ in scalars["train/loss/total"]] == [1, steps]
    assert [s for s, _ in scalars["train/lr/dense"]] == [1, steps]
    assert scalars["train/lr/dense"][0][1] == pytest.approx(1e-3 / 10)
    assert scalars["train/lr/dense"][1][1] == pytest.approx(0.0)  # linear decay to min_lr_ratio 0
    # ... and the mean of each epoch at its last step: a curve even without a due step.
    assert [s for s, _ in scalars["train/epoch_loss/total"]] == [25, 50]
    assert {"train/epoch_loss/click", "train/loss/rating", "train/lr/sparse"} <= set(scalars)
    first, second = (v for _, v in scalars["train/epoch_loss/total"])
    assert second < first
