"""Checkpoints: exact resume (2 ranks), SIGKILL + torchrun restart, resharding between rank
counts and plans, incompatible configs, no unpickling, atomic layout.

The 2-rank runs happen once per module (one spawn of two gloo ranks does all of them) and
the tests then check what they left on disk.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from torch import nn

from mtl_torchrec.config import load_config
from mtl_torchrec.core.errors import CheckpointError, RunDirError
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.distributed.checkpoint.dcp_io import load_checkpoint, save_checkpoint
from mtl_torchrec.distributed.checkpoint.manifest import MANIFEST, verify_checkpoint, write_manifest
from mtl_torchrec.distributed.checkpoint.run_dir import latest_checkpoint, list_checkpoints, read_meta
from mtl_torchrec.distributed.run_lock import LOCK_FILE
from mtl_torchrec.model.builder import build_train_module
from mtl_torchrec.workflows.training import make_trainer
from tests.mtl_helpers import SMALL_SYNTHETIC
from tests.ranks import run_ranks

ROOT = Path(__file__).resolve().parents[2]

SMALL = [
    *SMALL_SYNTHETIC,
    "train.epochs=1",
    "train.sharding=table_wise",
    "train.checkpoint_every=10",
    "train.keep_checkpoints=2",
    "train.log_every=0",
    "train.progress=false",
]
# 16000 training rows, global batch 512 on 2 ranks: 31 steps (one epoch).
TOTAL_STEPS_2 = 31
# A warmup that the crash below interrupts (checkpoint at step 10, crash at 14), then cosine decay.
SCHEDULE = ["train.lr_schedule.warmup_steps=20", "train.lr_schedule.decay=cosine", "train.lr_schedule.min_lr_ratio=0.1"]
CRASH_STEP = 14


class _Crash(Exception):
    """Stands for a failure in the middle of training."""


def _crash_at(step: int) -> Any:
    from mtl_torchrec.train.callbacks import Callback

    class CrashAt(Callback):
        def on_step_end(self, trainer: Any, out: Any) -> None:
            if trainer.state.global_step == step:
                raise _Crash(f"crash at step {step}")

    return CrashAt()


def _cfg(run_dir: Path, *extra: str) -> Any:
    return load_config(None, SMALL + [f"run_dir={run_dir}", *extra])


def _two_rank_worker(rank: int, world_size: int, root: str) -> None:
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.workflows import train

    root_p = Path(root)
    ctx = init_distributed("gloo")
    try:
        # An uninterrupted run, and the same run stopped after 23 steps and resumed.
        train(_cfg(root_p / "full"), ctx)
        train(_cfg(root_p / "part", "train.max_steps=23"), ctx)
        train(_cfg(root_p / "part"), ctx)
        # With an lr schedule: uninterrupted, and crashed mid-warmup then resumed (same config).
        train(_cfg(root_p / "sched_full", *SCHEDULE), ctx)
        try:
            train(_cfg(root_p / "sched_part", *SCHEDULE), ctx, extra_callbacks=[_crash_at(CRASH_STEP)])
        except _Crash:
            pass
        train(_cfg(root_p / "sched_part", *SCHEDULE), ctx)
        # 1 rank table-wise -> 2 ranks row-wise, saved again by 2 ranks.
        cfg = _cfg(root_p / "rw_from_1", "train.sharding=row_wise")
        trainer = make_trainer(cfg, load_data(cfg.data), ctx, root_p / "rw_from_1")
        trainer.restore(latest_checkpoint(root_p / "single"))
        # The position goes through samples: 12 batches of 256 on 1 rank = 6 global batches of 512.
        assert (trainer.state.epoch, trainer.state.batch_in_epoch, trainer.state.global_step) == (0, 6, 12)
        trainer.save()
        # 2 ranks table-wise -> 2 ranks row-wise: same test metrics.
        trainer = make_trainer(cfg, load_data(cfg.data), ctx, root_p / "rw_eval")
        trainer.restore(latest_checkpoint(root_p / "full"))
        metrics = trainer.evaluate("test")["tasks"]
        trainer.close()
        if ctx.is_main:
            (root_p / "rw_eval_metrics.json").write_text(json.dumps(metrics))
        # Refusals that rank 0 decides (checkpoint integrity, the run-dir lock) reach every rank.
        refusals = []
        if ctx.is_main:
            shutil.copytree(root_p / "full", root_p / "damaged", ignore=shutil.ignore_patterns("tensorboard"))
            shard = latest_checkpoint(root_p / "damaged") / "__1_0.distcp"
            shard.write_bytes(shard.read_bytes()[:-1] + b"?")
            (root_p / "locked").mkdir()
            # The parent (the pytest process) is alive on this host: the lock is held.
            (root_p / "locked" / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
        torch.distributed.barrier()
        for name, error in (("damaged", CheckpointError), ("locked", RunDirError)):
            try:
                train(_cfg(root_p / name), ctx)
            except error as e:
                refusals.append(str(e))
        (root_p / f"refusals_rank{rank}.json").write_text(json.dumps(refusals))
    finally:
        close_distributed(ctx)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.workflows import train

    root = tmp_path_factory.mktemp("ckpt")
    ctx = init_distributed("gloo")
    try:
        train(_cfg(root / "single", "train.max_steps=12"), ctx)
    finally:
        close_distributed(ctx)
    run_ranks(_two_rank_worker, 2, str(root))
    return root


def _full(t: Any) -> torch.Tensor:
    """A state tensor as one plain tensor (ShardedTensor / DTensor of a 1-rank group, or plain)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    if isinstance(t, ShardedTensor):
        out = torch.zeros(t.size(), dtype=t.dtype)
        for shard in t.local_shards():
            idx = tuple(slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
            out[idx] = shard.tensor
        return out
    if isinstance(t, DTensor):
        return t.full_tensor()
    return t.detach().clone()


def _unsharded_state(run_or_ckpt: Path, cfg: Any) -> Dict[str, torch.Tensor]:
    module = build_train_module(cfg.model, load_data(cfg.data), cfg.train.loss_balance, cfg.train.balance)
    load_checkpoint(run_or_ckpt, module)
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_same_state(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_interrupted_run_resumes_exactly(runs: Path) -> None:
    full, part = runs / "full", runs / "part"
    assert json.loads((full / "metrics.json").read_text()) == json.loads((part / "metrics.json").read_text())
    summary = json.loads((part / "train_summary.json").read_text())
    # The second invocation trained only the remaining steps.
    assert summary["steps"] == TOTAL_STEPS_2 and summary["samples"] == (TOTAL_STEPS_2 - 23) * 256 * 2
    cfg = _cfg(full)
    _assert_same_state(_unsharded_state(full, cfg), _unsharded_state(part, cfg))
    # ... and the models did move away from their initial state.
    fresh = build_train_module(cfg.model, load_data(cfg.data), cfg.train.loss_balance, cfg.train.balance).state_dict()
    trained = _unsharded_state(full, cfg)
    assert not torch.equal(fresh["model.towers.towers.click.head.weight"], trained["model.towers.towers.click.head.weight"])


@pytest.mark.slow
def test_run_with_lr_schedule_crashed_mid_warmup_resumes_exactly(runs: Path) -> None:
    full, part = runs / "sched_full", runs / "sched_part"
    summary = json.loads((part / "train_summary.json").read_text())
    # The second invocation resumed from step 10 (inside the 20-step warmup).
    assert summary["steps"] == TOTAL_STEPS_2 and summary["samples"] == (TOTAL_STEPS_2 - 10) * 256 * 2
    meta = read_meta(part)
    assert meta["lr_scheduler"]["last_epoch"] == TOTAL_STEPS_2
    assert json.loads((full / "metrics.json").read_text()) == json.loads((part / "metrics.json").read_text())
    cfg = _cfg(full, *SCHEDULE)
    _assert_same_state(_unsharded_state(full, cfg), _unsharded_state(part, cfg))
    # The schedule did act: the same run without it ends elsewhere.
    plain = _unsharded_state(runs / "full", cfg)
    assert not torch.equal(plain["model.towers.towers.click.head.weight"],
                           _unsharded_state(full, cfg)["model.towers.towers.click.head.weight"])


@pytest.mark.slow
def test_run_dir_layout_latest_and_keep(runs: Path) -> None:
    ckpts = list_checkpoints(runs / "full")
    assert [p.name for p in ckpts] == ["step_000030", "step_000031"]  # keep_checkpoints=2
    assert (runs / "full" / "checkpoints" / "latest").read_text().strip() == "step_000031"
    assert latest_checkpoint(runs / "full") == ckpts[-1]
    meta = read_meta(runs / "full")
    assert meta["global_step"] == TOTAL_STEPS_2 and meta["epoch"] == 1 and meta["world_size"] == 2
    assert sorted(p.name for p in (ckpts[-1] / "rng").iterdir()) == ["rank_00000.json", "rank_00001.json"]
    # Both ranks' files are in the manifest (each rank hashed its own; rank 0 wrote the manifest).
    for ckpt in ckpts:
        listed = set(json.loads((ckpt / MANIFEST).read_text())["files"])
        on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()} - {MANIFEST}
        assert listed == on_disk and {"__0_0.distcp", "__1_0.distcp", "rng/rank_00001.json"} <= listed
        assert verify_checkpoint(ckpt)
    assert not [p for p in (runs / "full" / "checkpoints").iterdir() if p.name.startswith(".tmp")]


@pytest.mark.slow
def test_refusals_reach_every_rank(runs: Path) -> None:
    """Rank 0 verifies checkpoints and takes the run-dir lock; both ranks raise its verdict."""
    got = [json.loads((runs / f"refusals_rank{r}.json").read_text()) for r in range(2)]
    assert got[0] == got[1] and len(got[0]) == 2
    assert "damaged file" in got[0][0] and "__1_0.distcp" in got[0][0]
    # The lock names this (pytest) process, the spawned ranks' parent.
    assert f"another training is using this run directory (pid {os.getpid()} on " in got[0][1]


@pytest.mark.slow
def test_two_ranks_into_one_rank_row_wise(runs: Path) -> None:
    from mtl_torchrec.data.loader import BatchDataset
    from mtl_torchrec.distributed.context import close_distributed, init_distributed

    cfg = _cfg(runs / "rw_to_1", "train.sharding=row_wise")
    data = load_data(cfg.data)
    batch = next(iter(BatchDataset(data.splits["test"], data.schema, 512, shuffle=False)))
    unsharded = build_train_module(cfg.model, data, cfg.train.loss_balance, cfg.train.balance)
    load_checkpoint(runs / "full", unsharded)
    ctx = init_distributed("gloo")
    try:
        trainer = make_trainer(cfg, data, ctx, runs / "rw_to_1")
        meta = trainer.restore(latest_checkpoint(runs / "full"))
        assert meta["world_size"] == 2 and trainer.state.batch_in_epoch == 0 and trainer.state.epoch == 1
        got = {k: _full(v) for k, v in trainer.dmp.state_dict().items()}
        opt = trainer.optimizer.state_dict()["state"]
        trainer.dmp.eval()
        unsharded.eval()
        with torch.no_grad():
            sharded_out = trainer.dmp(batch)[1].predictions
            plain_out = unsharded(batch)[1].predictions
        trainer.close()
    finally:
        close_distributed(ctx)
    _assert_same_state(got, unsharded.state_dict())
    for task, p in plain_out.items():
        torch.testing.assert_close(sharded_out[task], p, rtol=1e-5, atol=1e-6)
    # Fused row-wise Adagrad state came along (non-zero after training).
    assert float(_full(opt["model.embedding.embedding_bags.t_user_id.weight"]["t_user_id.momentum1"]).abs().sum()) > 0


@pytest.mark.slow
def test_one_rank_into_two_ranks_row_wise_roundtrip(runs: Path) -> None:
    cfg = _cfg(runs / "single")
    _assert_same_state(_unsharded_state(runs / "single", cfg), _unsharded_state(runs / "rw_from_1", cfg))
    meta = read_meta(runs / "rw_from_1")
    assert meta["world_size"] == 2 and meta["config"]["train"]["sharding"] == "row_wise"


@pytest.mark.slow
def test_other_plan_same_ranks_same_metrics(runs: Path) -> None:
    want = json.loads((runs / "full" / "metrics.json").read_text())
    got = json.loads((runs / "rw_eval_metrics.json").read_text())
    for task, values in want.items():
        for name, v in values.items():
            expected = pytest.approx(v, rel=1e-5, abs=1e-6) if isinstance(v, float) else v
            assert got[task][name] == expected, (task, name)


@pytest.mark.slow
def test_incompatible_checkpoint_says_what_differs(runs: Path) -> None:
    bigger = load_config(None, SMALL + ["data.synthetic.num_items=600", "model.embedding_dim=4"])
    module = build_train_module(bigger.model, load_data(bigger.data), bigger.train.loss_balance, bigger.train.balance)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(runs / "full", module)
    msg = str(e.value)
    assert "table 't_item_id': num_embeddings 500 in the checkpoint, 600 in the model" in msg
    assert "embedding_dim 8 in the checkpoint, 4 in the model" in msg
    two_tasks = load_config(None, SMALL + ['model.tasks=[{"name": "click"}, {"name": "conversion"}]'])
    module = build_train_module(two_tasks.model, load_data(two_tasks.data), two_tasks.train.loss_balance, two_tasks.train.balance)
    with pytest.raises(CheckpointError, match="tasks .*rating.* in the checkpoint"):
        load_checkpoint(runs / "full", module)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_loading_never_unpickles_code(runs: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "evil"
    shutil.copytree(latest_checkpoint(runs / "full"), ckpt)
    marker = tmp_path / "pwned"
    (ckpt / ".metadata").write_bytes(pickle.dumps(_Payload(str(marker))))
    cfg = _cfg(runs / "full")
    module = build_train_module(cfg.model, load_data(cfg.data), cfg.train.loss_balance, cfg.train.balance)
    # The manifest catches the replaced file first ...
    with pytest.raises(CheckpointError, match=r"damaged file .*\.metadata"):
        load_checkpoint(ckpt, module)
    # ... and with a manifest rewritten to match, the unpickler refuses (tests/distributed/test_checkpoint_trust.py
    # has the other crafted files).
    write_manifest(ckpt)
    with pytest.raises(CheckpointError, match=r"refused global posix\.system"):
        load_checkpoint(ckpt, module)
    assert not marker.exists()


@pytest.mark.slow
def test_sigkill_mid_save_restarts_and_finishes(runs: Path, tmp_path: Path) -> None:
    """Rank 1 SIGKILLs itself while the step-30 checkpoint is being written; torchrun restarts
    the workers, which resume from step 20 (the last complete checkpoint) and end exactly like the
    uninterrupted run."""
    run_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1", str(ROOT / "tests" / "kill_during_save.py"), "1", "30", *SMALL, f"run_dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "resuming from" in out and "step_000020 (step 20)" in out, out[-4000:]
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads((runs / "full" / "metrics.json").read_text())
    assert latest_checkpoint(run_dir).name == "step_000031"


class _LearnedWeights(nn.Module):
    """A balancer with parameters (log-variance weighting), as learned balancers have."""

    def __init__(self, names: List[str]) -> None:
        super().__init__()
        self.names = names
        self.log_var = nn.Parameter(torch.zeros(len(names)))

    def forward(self, losses: Dict[str, torch.Tensor], shared: torch.Tensor, labelled=None) -> torch.Tensor:
        return sum(torch.exp(-self.log_var[i]) * losses[t] + self.log_var[i] for i, t in enumerate(self.names))


def test_balancer_parameters_and_optimizer_state_are_checkpointed(tmp_path: Path) -> None:
    from mtl_torchrec.distributed.context import close_distributed, init_distributed

    cfg = load_config(None, SMALL + ["data.synthetic.num_impressions=3000", "train.max_steps=4",
                                     f"run_dir={tmp_path}", "train.checkpoint_every=0"])
    data = load_data(cfg.data)

    def module() -> nn.Module:
        m = build_train_module(cfg.model, data, cfg.train.loss_balance, cfg.train.balance)
        m.balancer = _LearnedWeights([t.name for t in m.tasks])
        return m

    ctx = init_distributed("gloo")
    try:
        a = make_trainer(cfg, data, ctx, tmp_path, train_module=module())
        a.fit()
        a.close()
        b = make_trainer(cfg, data, ctx, tmp_path / "other", train_module=module())
        assert b.resume("never") is None
        b.restore(latest_checkpoint(tmp_path))
        b.close()
        sa, sb = a.dmp.state_dict(), b.dmp.state_dict()
        assert float(sa["balancer.log_var"].abs().sum()) > 0
        assert torch.equal(sa["balancer.log_var"], sb["balancer.log_var"])
        oa, ob = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
        key = [k for k in oa if k.endswith("balancer.log_var")][0]
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(oa[key][name], ob[key][name]), name
        assert b.state.global_step == 4
        with pytest.raises(FileNotFoundError, match="already holds checkpoints"):
            make_trainer(cfg, data, ctx, tmp_path, train_module=module()).resume("never")
        with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
            make_trainer(cfg, data, ctx, tmp_path / "empty", train_module=module()).resume("required")
    finally:
        close_distributed(ctx)


def test_plain_checkpoint_of_unsharded_module_roundtrips(tmp_path: Path) -> None:
    """``save_checkpoint``/``load_checkpoint`` work without a process group on a plain module
    (how evaluation and export load a run)."""
    cfg = load_config(None, SMALL + ["data.synthetic.num_impressions=3000"])
    data = load_data(cfg.data)
    torch.manual_seed(1)
    a = build_train_module(cfg.model, data, cfg.train.loss_balance, cfg.train.balance)
    save_checkpoint(tmp_path / "ck", a, None, {"note": "plain"})
    torch.manual_seed(2)
    b = build_train_module(cfg.model, data, cfg.train.loss_balance, cfg.train.balance)
    meta = load_checkpoint(tmp_path / "ck", b)
    assert meta["note"] == "plain"
    _assert_same_state(a.state_dict(), b.state_dict())


class _RandomWeights(nn.Module):
    """Task weights with dropout noise: every training step draws from torch's global RNG."""

    def __init__(self, names: List[str]) -> None:
        super().__init__()
        self.names = names

    def forward(self, losses: Dict[str, torch.Tensor], shared: torch.Tensor, labelled=None) -> torch.Tensor:
        w = torch.nn.functional.dropout(torch.ones(len(self.names)), p=0.5, training=self.training)
        return sum(w[i] * losses[t] for i, t in enumerate(self.names))


@pytest.mark.slow
def test_resume_restores_rng_streams(tmp_path: Path) -> None:
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.train.trainer import seed_everything

    base = SMALL + ["data.synthetic.num_impressions=3000", "train.checkpoint_every=0"]
    data = load_data(load_config(None, base).data)

    def run(run_dir: Path, *extra: str) -> Dict[str, torch.Tensor]:
        cfg = load_config(None, base + [f"run_dir={run_dir}", *extra])
        seed_everything(cfg.train.seed)
        module = build_train_module(cfg.model, data, cfg.train.loss_balance, cfg.train.balance)
        module.balancer = _RandomWeights([t.name for t in module.tasks])
        trainer = make_trainer(cfg, data, ctx, run_dir, train_module=module)
        trainer.resume("auto")
        trainer.fit()
        trainer.close()
        return {k: _full(v) for k, v in trainer.dmp.state_dict().items()}

    ctx = init_distributed("gloo")
    try:
        full = run(tmp_path / "full")  # 2400 rows / 256: 9 steps
        run(tmp_path / "part", "train.max_steps=4")
        _assert_same_state(full, run(tmp_path / "part"))
        # Control: the same resume without the saved RNG states ends elsewhere.
        run(tmp_path / "norng", "train.max_steps=4")
        ckpt = latest_checkpoint(tmp_path / "norng")
        shutil.rmtree(ckpt / "rng")
        write_manifest(ckpt)  # a checkpoint saved without RNG states, not a damaged one
        other = run(tmp_path / "norng")
        assert any(not torch.equal(full[k], other[k]) for k in full)
    finally:
        close_distributed(ctx)
