"""Multi-node training for real: two ``torchrun`` agents on this machine, each one "node" with one
gloo worker, meet through torchrun's c10d rendezvous, train with checkpoints, stop early, and a
second 2-node job resumes from the checkpoint and finishes. Its test metrics must equal, bitwise,
those of the same run on 2 ranks of one node (``torchrun --standalone``), as the project asserts
for resumed and restarted 2-rank runs (tests/distributed/test_checkpoint.py).

Every process runs in its own session and is killed (with its workers) when the time is up, so a
rendezvous that never completes fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import List, Sequence

import pytest

from tests.mtl_helpers import SMALL_SYNTHETIC

ROOT = Path(__file__).resolve().parents[2]

# 8000 training rows, global batch 512 on 2 ranks: 15 steps; checkpoints every 5 steps and at the end. The first multi-node job stops after STOP steps.
SMALL = [
    *SMALL_SYNTHETIC,
    "data.synthetic.num_impressions=10000",
    "train.epochs=1",
    "train.sharding=table_wise",
    "train.checkpoint_every=5",
    "train.log_every=0",
    "train.progress=false",
]
STOP = 7
JOB_TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _torchrun(launch: Sequence[str], overrides: Sequence[str], log: Path) -> subprocess.Popen:
    """``torchrun LAUNCH -m mtl_torchrec train OVERRIDES`` in a session of its own (so it and its
    workers can be killed together), output to ``log``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "mtl_torchrec", "train", *overrides]
    with log.open("w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait(procs: List[subprocess.Popen], logs: List[Path], timeout: float) -> None:
    """Waits for every process; past ``timeout`` (or on any interruption) kills each live one's
    process group (the agent and its workers) and fails. Fails also when any exits non-zero,
    showing the logs' tails."""
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if timed_out:
        pytest.fail(f"torchrun did not finish in {timeout:.0f} s:\n" + _tails(logs))
    codes = [p.returncode for p in procs]
    assert codes == [0] * len(procs), f"exit codes {codes}:\n" + _tails(logs)


def _tails(logs: List[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in logs)


def _two_nodes(overrides: Sequence[str], logs_dir: Path, tag: str) -> str:
    """One 2-node job: two torchrun agents ("node" 0 hosts the rendezvous store, as the node named in
    ``--rdzv_endpoint`` does on a cluster; on one machine both names match, so ``is_host`` says which).
    No ``--node_rank``: the c10d rendezvous assigns ranks (torchrun ignores it there, with a warning).
    Returns both agents' output."""
    port, run_id = _free_port(), f"mtl-multinode-{uuid.uuid4().hex[:8]}"
    procs, logs = [], []
    for node in (0, 1):
        launch = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                  "--rdzv_endpoint", f"localhost:{port}", "--rdzv_id", run_id,
                  "--rdzv_conf", f"is_host={int(node == 0)}"]
        logs.append(logs_dir / f"{tag}_node{node}.log")
        procs.append(_torchrun(launch, overrides, logs[-1]))
    _wait(procs, logs, JOB_TIMEOUT_S)
    return "".join(log.read_text(errors="replace") for log in logs)


@pytest.mark.slow
def test_two_node_training_resumes_and_matches_one_node(tmp_path: Path) -> None:
    ref_dir, run_dir = tmp_path / "one_node", tmp_path / "two_nodes"
    log = tmp_path / "one_node.log"
    _wait([_torchrun(["--standalone", "--nproc_per_node", "2"], [*SMALL, f"run_dir={ref_dir}"], log)], [log],
          JOB_TIMEOUT_S)
    ref_summary = json.loads((ref_dir / "train_summary.json").read_text())
    total = ref_summary["steps"]
    assert total > STOP and ref_summary["world_size"] == 2

    # 2 nodes x 1 process, stopped after STOP steps: its final state is checkpointed.
    out = _two_nodes([*SMALL, f"run_dir={run_dir}", f"train.max_steps={STOP}"], tmp_path, "first")
    assert "resuming from" not in out
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{STOP:06d}"
    meta = json.loads((run_dir / "checkpoints" / f"step_{STOP:06d}" / "meta.json").read_text())
    assert meta["world_size"] == 2
    # Each node's worker wrote its own RNG state: both ranks took part in one group of 2.
    rng = sorted(p.name for p in (run_dir / "checkpoints" / f"step_{STOP:06d}" / "rng").iterdir())
    assert rng == ["rank_00000.json", "rank_00001.json"]

    # A second 2-node job on the same run directory resumes there (train.resume=auto) and finishes.
    out = _two_nodes([*SMALL, f"run_dir={run_dir}"], tmp_path, "resume")
    resumed = re.findall(r"resuming from (\S+) \(step (\d+)\)", out)
    assert resumed == [(str(run_dir / "checkpoints" / f"step_{STOP:06d}"), str(STOP))], out[-3000:]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == total
    # Only the steps after the checkpoint were trained again (samples count this job's rows, all ranks).
    assert summary["samples"] == ref_summary["samples"] // total * (total - STOP)
    for name in ("config.yaml", "metrics.json", "train_summary.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{total:06d}"
    assert not (run_dir / "train.lock").exists()

    # The same numbers as the uninterrupted run on one node.
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads((ref_dir / "metrics.json").read_text())


def test_a_job_past_its_time_is_killed_with_its_children(tmp_path: Path) -> None:
    """The bound the multi-node test relies on: a "job" whose child outlives it is killed, child
    included, and the test fails instead of waiting."""
    log, pid_file = tmp_path / "job.log", tmp_path / "child.pid"
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", "-c", f"sleep 300 & echo $! > {pid_file}; wait"], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    while not pid_file.exists() or not pid_file.read_text().strip():
        time.sleep(0.05)
    child = int(pid_file.read_text())
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="did not finish in 1 s"):
        _wait([proc], [log], timeout=1)
    assert time.monotonic() - started < 30
    for _ in range(100):  # the child is gone once its parent (init) reaps it
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"child {child} still running")
