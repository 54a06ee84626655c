"""torchx components: command lines, the entry point group, dry runs against Kubernetes and
Slurm, and a real 2-process ``local_cwd`` training job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtl_torchrec import components
from mtl_torchrec.launch.jobs import command_line

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SMALL = [
    "data.synthetic.num_impressions=20000",
    "data.synthetic.num_users=2000",
    "data.synthetic.num_items=500",
    "data.batch_size=256",
    "model.embedding_dim=8",
    "model.dense_layers=[16]",
    "model.mmoe.num_experts=4",
    "model.mmoe.expert_layers=[32]",
    "model.tower_layers=[16]",
    "train.epochs=1",
    "train.sharding=table_wise",
    "train.checkpoint_every=10",
    "train.log_every=0",
    "train.progress=false",
]


def _env() -> dict:
    # torchx's ddp runs `torchrun` from PATH; the package comes from this checkout.
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT)}


def _torchx(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "torchx"), *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def test_train_component_command_line() -> None:
    app = components.train("train.epochs=3", config="default", j="2x4", max_restarts=3, gpu=4)
    words = command_line(app)
    assert words[:3] == ["bash", "-c", "torchrun"]
    assert words[words.index("--max_restarts") + 1] == "3"
    assert words[words.index("--nnodes") + 1] == "2" and words[words.index("--nproc_per_node") + 1] == "4"
    tail = words[words.index("-m"):]
    assert tail == ["-m", "mtl_torchrec", "train", "--config", "default", "train.epochs=3",
                    "run_dir=runs/${app_id}"]
    role = app.roles[0]
    assert role.num_replicas == 2 and role.resource.gpu == 4
    # An explicit run_dir wins over the per-job default.
    words = command_line(components.train("run_dir=/mnt/runs/a"))
    assert words[-1] == "run_dir=/mnt/runs/a" and not any(w.startswith("run_dir=runs/") for w in words)


def test_evaluate_and_encode_components_pass_arguments_through() -> None:
    words = command_line(components.evaluate("runs/a", "data.eval_batch_size=512", config="c.yaml"))
    assert words[words.index("-m"):] == ["-m", "mtl_torchrec", "evaluate", "--config", "c.yaml", "runs/a",
                                         "data.eval_batch_size=512"]
    words = command_line(components.encode_text("model.text.cache_dir=/data/text"))
    assert words[words.index("-m"):] == ["-m", "mtl_torchrec", "encode-text", "model.text.cache_dir=/data/text"]
    with pytest.raises(ValueError, match="max_restarts"):
        components.train(max_restarts=-1)


def test_entry_point_lists_ours_and_torchx_builtins() -> None:
    from importlib.metadata import entry_points

    from torchx.specs.finder import get_components

    group = {e.name: e.value for e in entry_points(group="torchx.components")}
    assert group == {"mtl_torchrec": "mtl_torchrec.components", "_builtins": "torchx.components"}
    found = get_components()
    for name in ("mtl_torchrec.train", "mtl_torchrec.evaluate", "mtl_torchrec.encode_text", "dist.ddp", "utils.echo"):
        assert name in found, name
    assert not [n for n in found if n.startswith("mtl_torchrec.") and n.split(".", 1)[1].startswith("_")]


def test_kubernetes_dryrun_prints_a_multi_node_job() -> None:
    proc = _torchx("run", "--workspace", "", "-s", "kubernetes", "--dryrun", "-cfg", "queue=default",
                   "mtl_torchrec.train", "-j", "2x2", "--image", "registry.example/mtl:1",
                   "--config", "default", "--max_restarts", "2", "--", "train.epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    start = out.index("apiVersion:")
    job = yaml.safe_load(out[start:])
    assert job["apiVersion"] == "batch.volcano.sh/v1alpha1" and job["kind"] == "Job"
    tasks = job["spec"]["tasks"]
    assert len(tasks) == 2
    for task in tasks:
        container = task["template"]["spec"]["containers"][0]
        assert container["image"] == "registry.example/mtl:1"
        cmd = " ".join(container["command"])
        assert "torchrun --max_restarts 2" in cmd and "--nnodes 2" in cmd and "--nproc_per_node 2" in cmd
        assert "-m mtl_torchrec train --config default train.epochs=1" in cmd
        assert "run_dir=runs/mtl-torchrec-train-" in cmd  # the job id, filled in by torchx


def test_slurm_dryrun_prints_a_multi_node_job() -> None:
    proc = _torchx("run", "--workspace", "", "-s", "slurm", "--dryrun", "mtl_torchrec.train", "-j", "2x4",
                   "--gpu", "4", "--config", "default", "--", "run_dir=/shared/runs/a")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    script = out[out.index("#!/bin/bash"):]
    assert script.count("#SBATCH --job-name=") == 2 and "#SBATCH hetjob" in script
    assert "--gpus-per-task=4" in script
    assert script.count("torchrun --max_restarts 0") == 2
    assert "--nnodes 2 --nproc_per_node 4" in script
    assert "-m mtl_torchrec train --config default run_dir=/shared/runs/a" in script


@pytest.mark.slow
def test_local_cwd_two_process_training(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _torchx("run", "-s", "local_cwd", "--wait", "--log", "mtl_torchrec/components.py:train", "-j", "1x2",
                   "--", *SMALL, f"run_dir={run_dir}", timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"click", "conversion", "rating"}
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 31  # 16000 rows / (256 x 2)
    meta = json.loads((run_dir / "checkpoints" / "step_000031" / "meta.json").read_text())
    assert meta["world_size"] == 2
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000031"
