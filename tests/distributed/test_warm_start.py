"""Warm start (train.init_from): a 3-task run into a 4-task model with a grown table, a removed
task, sharded tables on 1 and 2 ranks, config errors before any folder, and resume winning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch

from mtl_torchrec.config import ConfigError, load_config
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.distributed.checkpoint.dcp_io import load_checkpoint
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.distributed.warm_start import plan_warm_start, resolve_init_from
from mtl_torchrec.model.builder import build_train_module
from mtl_torchrec.workflows.training import make_trainer, train
from tests.eval_fixtures import make_frame, spec_dict, write_case
from tests.ranks import run_ranks

TAGS = "model.embedding.embedding_bags.t_tags.weight"
USER = "model.embedding.embedding_bags.t_user.weight"
THREE = "[{name: click, type: binary}, {name: rating, type: regression}, {name: pricey, type: binary}]"
FOUR = THREE[:-1] + ", {name: liked, type: binary}]"
BASE = [
    "data.source=spec",
    "data.batch_size=64",
    "data.eval_batch_size=100",
    "model.embedding_dim=8",
    "model.dense_layers=[8]",
    "model.mmoe.num_experts=2",
    "model.mmoe.expert_layers=[16]",
    "model.tower_layers=[8]",
    "train.epochs=1",
    "train.sharding=table_wise",
    "train.log_every=0",
    "train.diagnostics_every=0",
    "train.progress=false",
]


def _spec(folder: Path, hash_buckets: int) -> Path:
    """The evaluation fixture's data with two more binary labels; ``tags`` hashed into ``hash_buckets`` rows."""
    frame = make_frame()
    frame["pricey"] = np.where(frame.price > frame.price.median(), "yes", "no")
    frame["liked"] = np.where(frame.rating.fillna(0) >= 4, "yes", "no")
    spec = spec_dict()
    spec["sparse"][2]["hash_buckets"] = hash_buckets
    spec["labels"] += [
        {"task": t, "column": t, "type": "binary", "positive": ["yes"], "negative": ["no"]} for t in ("pricey", "liked")
    ]
    return write_case(folder, frame, spec)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """A trained 3-task run (tags in 16 buckets) and the 4-task data (tags in 32 buckets)."""
    root = tmp_path_factory.mktemp("warm")
    cfg = load_config(None, BASE + [f"data.spec={_spec(root / 'data3', 16)}", f"model.tasks={THREE}",
                                    "train.max_steps=5", f"run_dir={root / 'base'}"])
    ctx = init_distributed("gloo")
    try:
        train(cfg, ctx)
    finally:
        close_distributed(ctx)
    plain = build_train_module(cfg.model, load_data(cfg.data), cfg.train.loss_balance, cfg.train.balance)
    load_checkpoint(root / "base", plain)
    return {"root": root, "cfg": cfg, "state": {k: v.clone() for k, v in plain.state_dict().items()},
            "spec4": _spec(root / "data4", 32)}


def _four_overrides(base: Dict[str, Any], *extra: str) -> List[str]:
    return BASE + [f"data.spec={base['spec4']}", f"model.tasks={FOUR}", *extra]


def _four(base: Dict[str, Any], *extra: str) -> Any:
    return load_config(None, _four_overrides(base, *extra))


def _full(t: Any) -> torch.Tensor:
    from tests.distributed.test_checkpoint import _full as full

    return full(t)


def _reinitialised(report: Dict[str, Any]) -> Dict[str, str]:
    return {r["key"]: r["reason"] for r in report["reinitialised"]}


def test_plan_sorts_keys_by_shape() -> None:
    saved = {"a.w": [2, 3], "t.embedding_bags.x.weight": [4, 8], "gone": [1], "b.w": [3], "b.bias": [1]}
    current = {"a.w": [2, 3], "t.embedding_bags.x.weight": [6, 8], "b.w": [4], "b.bias": [1], "new": [5]}
    plan = plan_warm_start(saved, current)
    assert plan["loaded"] == ["a.w"] and plan["ignored"] == ["gone"]
    assert plan["grown"] == [{"key": "t.embedding_bags.x.weight", "rows_loaded": 4, "rows": 6}]
    # Module b changed shape: its bias, of the same shape, is not loaded either.
    assert plan["reinitialised"] == [
        {"key": "b.bias", "reason": "another tensor of 'b' is new or changed shape"},
        {"key": "b.w", "reason": "shape [3] in the checkpoint, [4] in the model"},
        {"key": "new", "reason": "new"},
    ]


@pytest.mark.slow
def test_three_task_run_into_a_four_task_model(base_run: Dict[str, Any]) -> None:
    cfg = _four(base_run, "train.max_steps=3", f"train.init_from={base_run['root'] / 'base'}",
                f"run_dir={base_run['root'] / 'four'}")
    data = load_data(cfg.data)
    ctx = init_distributed("gloo")
    try:
        trainer = make_trainer(cfg, data, ctx, base_run["root"] / "four")
        fresh_tags = _full(trainer.dmp.state_dict()[TAGS])
        report = trainer.warm_start(cfg.train.init_from)
        state = {k: _full(v) for k, v in trainer.dmp.state_dict().items()}
        trainer.close()
        # ... and the whole command trains from it.
        result = train(load_config(None, BASE + [f"data.spec={base_run['spec4']}", f"model.tasks={FOUR}",
                                                 "train.max_steps=3", f"train.init_from={base_run['root'] / 'base'}",
                                                 f"run_dir={base_run['root'] / 'four_cli'}"]), ctx)
    finally:
        close_distributed(ctx)
    old = base_run["state"]
    reinit = _reinitialised(report)
    # The new task's tower and its MMoE gate (the 4th) are new; nothing else is (the fixed
    # balancer has no tensors).
    liked = {k for k in state if k.startswith(("model.towers.towers.liked.", "model.backbone.gates.3."))}
    assert len(liked) == 6 and reinit == {k: "new" for k in liked}
    # Tables and dense modules of the old run are loaded as they were.
    for key in (USER, "model.backbone.experts.weights.0", "model.towers.towers.pricey.head.weight"):
        assert key in report["loaded"] and torch.equal(state[key], old[key]), key
    # The grown table: its 16 saved rows, then the new rows as initialised.
    assert report["grown"] == [{"key": TAGS, "rows_loaded": 16, "rows": 32}]
    assert torch.equal(state[TAGS][:16], old[TAGS]) and torch.equal(state[TAGS][16:], fresh_tags[16:])
    assert report["ignored"] == []
    written = json.loads((base_run["root"] / "four" / "warm_start.json").read_text())
    assert written == report
    assert result.summary["steps"] == 3 and set(result.metrics) == {"click", "rating", "pricey", "liked"}
    assert (base_run["root"] / "four_cli" / "warm_start.json").is_file()


@pytest.mark.slow
def test_removed_task_is_ignored(base_run: Dict[str, Any]) -> None:
    cfg = load_config(None, BASE + [f"data.spec={_spec(base_run['root'] / 'data2', 16)}",
                                    "model.tasks=[{name: click, type: binary}, {name: rating, type: regression}]"])
    ctx = init_distributed("gloo")
    try:
        trainer = make_trainer(cfg, load_data(cfg.data), ctx, base_run["root"] / "two")
        report = trainer.warm_start(str(base_run["root"] / "base" / "step_000005"))  # RUN_DIR/step_N
        trainer.close()
    finally:
        close_distributed(ctx)
    assert report["checkpoint"].endswith("checkpoints/step_000005")
    # The removed (last) task's tower and gate.
    assert len(report["ignored"]) == 6
    assert all(k.startswith(("model.towers.towers.pricey.", "model.backbone.gates.2.")) for k in report["ignored"])
    assert report["reinitialised"] == [] and report["grown"] == []


def _gathered(t: Any) -> torch.Tensor:
    """The whole of a table sharded over the ranks, on every rank."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    out = _full(t)  # a ShardedTensor's other ranks' rows are zeros here
    if isinstance(t, ShardedTensor):
        torch.distributed.all_reduce(out)
    return out


def _two_rank_warm_start(rank: int, world_size: int, overrides: List[str], init_from: str, run_dir: str) -> Dict[str, Any]:
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.workflows.training import make_trainer

    cfg = load_config(None, overrides)
    ctx = init_distributed("gloo")
    try:
        trainer = make_trainer(cfg, load_data(cfg.data), ctx, Path(run_dir))
        fresh = _gathered(trainer.dmp.state_dict()[TAGS])
        report = trainer.warm_start(init_from)
        state = trainer.dmp.state_dict()
        out = {"report": report, "fresh_tags": fresh, "tags": _gathered(state[TAGS]), "user": _gathered(state[USER])}
        trainer.close()
        return out
    finally:
        close_distributed(ctx)


@pytest.mark.slow
def test_two_ranks_row_wise_warm_start_from_one_rank(base_run: Dict[str, Any]) -> None:
    overrides = _four_overrides(base_run, "train.sharding=row_wise")
    results: List[Dict[str, Any]] = run_ranks(_two_rank_warm_start, 2, overrides, str(base_run["root"] / "base"),
                                              str(base_run["root"] / "two_ranks"))
    old = base_run["state"]
    assert results[0]["report"] == results[1]["report"]
    assert results[0]["report"]["grown"] == [{"key": TAGS, "rows_loaded": 16, "rows": 32}]
    # Each rank holds half of the rows: together the saved rows, then the fresh ones.
    tags, fresh = results[0]["tags"], results[0]["fresh_tags"]
    assert torch.equal(tags[:16], old[TAGS]) and torch.equal(tags[16:], fresh[16:])
    assert torch.equal(results[0]["user"], old[USER])


def test_bad_init_from_is_a_config_error_before_any_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for value, says in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "is not a run directory")):
        with pytest.raises(ConfigError) as e:
            resolve_init_from(value)
        assert str(e.value).startswith("train.init_from: ") and says in str(e.value)
        run_dir = tmp_path / "new_run"
        cfg = load_config(None, [f"train.init_from={value}", f"run_dir={run_dir}"])
        ctx = init_distributed("gloo")
        try:
            with pytest.raises(ConfigError, match="train.init_from"):
                train(cfg, ctx)
        finally:
            close_distributed(ctx)
        assert not run_dir.exists()
    with pytest.raises(ConfigError, match="train.init_from"):
        load_config(None, ["train.init_from=''"])


@pytest.mark.slow
def test_resume_wins_over_init_from(base_run: Dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    run_dir = base_run["root"] / "resumed"
    ctx = init_distributed("gloo")
    try:
        train(load_config(None, BASE + [f"data.spec={base_run['spec4']}", f"model.tasks={FOUR}",
                                        "train.max_steps=2", f"run_dir={run_dir}"]), ctx)
        capsys.readouterr()
        result = train(_four(base_run, "train.max_steps=4", f"train.init_from={base_run['root'] / 'base'}",
                             f"run_dir={run_dir}"), ctx)
    finally:
        close_distributed(ctx)
    out = capsys.readouterr().out
    assert "resuming from" in out and "train.init_from" in out and "not used" in out
    assert result.summary["steps"] == 4 and not (run_dir / "warm_start.json").exists()
