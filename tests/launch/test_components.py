"""torchx components: command lines, resource requests, the entry point group, dry runs against
Kubernetes and Slurm (resources, and no path of this machine in the spec), every torchx command of
README.md, docs/jobs.md and the components' docstring as written, and a real 2-process
``local_cwd`` training job followed by an evaluation job.

Every torchx process runs with a ``PATH`` that does not hold the virtual environment (as from a
fresh clone whose ``.venv`` was never activated): the components must find ``torchrun`` themselves.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import pytest
import torchx.specs as specs
import yaml

from mtl_torchrec import components
from mtl_torchrec.launch import jobs
from mtl_torchrec.launch.jobs import (
    CPU_IMAGE,
    CUDA_IMAGE,
    DEFAULT_CPU_PER_GPU,
    DEFAULT_MEM_GB_PER_GPU,
    DEFAULT_SHM_GB_PER_GPU,
    LAUNCHER_ENV,
    command_line,
    launcher_dir,
    role_resource,
)

ROOT = Path(__file__).resolve().parents[2]
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


# A PATH without the virtual environment (and without any other torchrun).
BARE_PATH = os.pathsep.join(p for p in ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin")
                            if Path(p).is_dir() and not (Path(p) / "torchrun").exists())
DOCS = ("README.md", "docs/jobs.md", "mtl_torchrec/components.py")


# What every component's command starts with: no path, only the variable a local job inherits.
PATH_PREFIX = f'PATH="${{{LAUNCHER_ENV}:+${LAUNCHER_ENV}:}}$PATH" '


def _env() -> dict:
    # The package comes from this checkout; the venv is not on PATH and not activated, and the
    # launcher variable (set in this process by components built here) is not inherited either.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", LAUNCHER_ENV)}
    return {**env, "PATH": BARE_PATH, "PYTHONPATH": str(ROOT)}


def _torchx(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return _run([str(BIN / "torchx"), *args], timeout)


def _run(words: List[str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(words, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def documented_commands(docs: Sequence[str] = DOCS) -> List[List[str]]:
    """Every ``.venv/bin/torchx ...`` command of :data:`DOCS` (continuation lines joined, comments
    dropped), split into words as a shell would, with ``.venv/bin/torchx`` resolved to this checkout's
    venv (or, where the checkout has none, the one running the tests)."""
    found = []
    for doc in docs:
        text = (ROOT / doc).read_text(encoding="utf-8")
        if doc.endswith(".py"):
            text = ast.get_docstring(ast.parse(text)) or ""
        for line in re.sub(r"\\\n\s*", " ", text).splitlines():
            line = line.strip()
            if line.startswith(".venv/bin/torchx "):
                words = shlex.split(line, comments=True)
                exe = ROOT / ".venv" / "bin" / "torchx"
                found.append([str(exe if exe.exists() else BIN / "torchx"), *words[1:]])
    return found


def _dry(words: List[str]) -> List[str]:
    """``words`` with ``--dryrun`` after ``run`` (unless there already)."""
    if words[1] != "run" or "--dryrun" in words:
        return words
    return [words[0], "run", "--dryrun", *words[2:]]


def _option(words: List[str], name: str):
    return words[words.index(name) + 1] if name in words else None


def test_documented_commands_are_found() -> None:
    commands = [" ".join(w[1:]) for w in documented_commands()]
    assert len(documented_commands(["README.md"])) == 2
    assert any(c.startswith("run -s local_cwd mtl_torchrec/components.py:train") for c in commands)
    assert any(c.startswith("run -s local_cwd mtl_torchrec/components.py:evaluate --run_dir") for c in commands)
    assert any(c.startswith("run -s kubernetes --dryrun") for c in commands)
    assert any(c.startswith("run -s slurm") for c in commands) and any(c == "builtins" for c in commands)
    assert len(commands) >= 8


@pytest.mark.parametrize("words", documented_commands(), ids=lambda w: f"{' '.join(w[1:4])}")
def test_documented_command_works_as_written(words: List[str]) -> None:
    """Each documented command, as a dry run where it would submit (no cluster here), from the
    repository root without the venv on PATH and without a Docker daemon."""
    proc = _run(_dry(words), timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    out = proc.stdout
    if words[1] == "builtins":
        for name in ("mtl_torchrec.train", "mtl_torchrec.evaluate", "mtl_torchrec.encode_text", "dist.ddp"):
            assert name in out, name
        return
    scheduler = _option(words, "-s")
    assert "=== SCHEDULER REQUEST ===" in out
    if scheduler == "local_cwd":
        # The command names no path; the local job inherits the launcher variable (the slow
        # local_cwd test below runs it with the venv off PATH).
        request = ast.literal_eval(out.split("=== SCHEDULER REQUEST ===", 1)[1].strip())
        (replica,) = request["role_params"]["mtl_torchrec"]
        assert replica["args"][:2] == ["bash", "-c"]
        assert replica["args"][2].startswith(PATH_PREFIX + "torchrun --max_restarts "), replica["args"]
        return
    _assert_no_local_path(out)
    gpu = int(_option(words, "--gpu") or 0)
    knobs = {k: int(_option(words, f"--{k}")) for k in ("cpu", "memMB", "cpu_per_gpu", "mem_gb_per_gpu",
                                                         "shm_gb_per_gpu") if _option(words, f"--{k}")}
    expected = role_resource(gpu, **knobs)  # its numbers are checked in test_role_resources_follow_the_gpus
    cpu, mem = expected.cpu, expected.memMB
    if scheduler == "kubernetes":
        image = _option(words, "--image") or (CUDA_IMAGE if gpu else CPU_IMAGE)
        job = yaml.safe_load(out[out.index("apiVersion:"):])
        for task in job["spec"]["tasks"]:
            container = task["template"]["spec"]["containers"][0]
            assert container["image"] == image
            assert "torchrun --max_restarts" in " ".join(container["command"])
            assert container["resources"]["limits"]["cpu"] == f"{cpu * 1000}m"
            assert container["resources"]["limits"]["memory"] == f"{mem}M"
    if scheduler == "slurm":
        assert "#SBATCH" in out and "torchrun --max_restarts" in out
        assert f"--cpus-per-task={cpu} --mem={mem}" in out


def test_train_component_command_line() -> None:
    app = components.train("train.epochs=3", config="default", j="2x4", max_restarts=3, gpu=4)
    words = command_line(app)
    assert words[:4] == ["bash", "-c", f"PATH=${{{LAUNCHER_ENV}:+${LAUNCHER_ENV}:}}$PATH", "torchrun"]
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
    words = command_line(components.evaluate("--split", "val", "--batch-size", "512", run_dir="runs/a"))
    assert words[words.index("-m"):] == ["-m", "mtl_torchrec", "evaluate", "--run-dir", "runs/a", "--split", "val",
                                         "--batch-size", "512"]
    words = command_line(components.evaluate("--compare", "runs/a", "runs/b"))
    assert words[words.index("-m"):] == ["-m", "mtl_torchrec", "evaluate", "--compare", "runs/a", "runs/b"]
    # The run directory was once passed positionally, which `mtl-torchrec evaluate` refuses.
    with pytest.raises(ValueError, match="--run_dir RUN_DIR"):
        components.evaluate("runs/a")
    words = command_line(components.encode_text("model.text.cache_dir=/data/text"))
    assert words[words.index("-m"):] == ["-m", "mtl_torchrec", "encode-text", "model.text.cache_dir=/data/text"]
    with pytest.raises(ValueError, match="max_restarts"):
        components.train(max_restarts=-1)


def test_job_finds_the_submitting_environments_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a component puts this venv's ``bin/`` into this process's environment (which local
    schedulers copy into the job), and the job's shell then resolves ``torchrun`` to this venv's with
    a PATH that lacks it; without the variable (a pod, a fresh container) the image's PATH is searched
    as it is; without a torchrun beside the interpreter the variable is not set."""
    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    assert launcher_dir() == BIN
    cmd = components.train().roles[0].args[1]
    assert os.environ[LAUNCHER_ENV] == str(BIN)
    prefix = cmd[:cmd.index("torchrun ")]
    assert prefix == PATH_PREFIX
    found = subprocess.run(["bash", "-c", prefix + "command -v torchrun"],
                           env={"PATH": BARE_PATH, LAUNCHER_ENV: os.environ[LAUNCHER_ENV]},
                           capture_output=True, text=True, timeout=30)
    assert found.stdout.strip() == str(BIN / "torchrun")
    in_container = subprocess.run(["bash", "-c", prefix + "command -v torchrun; echo $PATH"], env={"PATH": BARE_PATH},
                                  capture_output=True, text=True, timeout=30)
    assert in_container.stdout.splitlines() == [BARE_PATH]  # no torchrun off the venv, PATH untouched
    monkeypatch.delenv(LAUNCHER_ENV)
    monkeypatch.setattr(jobs.sys, "executable", "/nonexistent/bin/python")
    assert launcher_dir() is None
    assert components.train().roles[0].args[1].startswith(PATH_PREFIX + "torchrun --max_restarts 0 ")
    assert LAUNCHER_ENV not in os.environ


def test_role_resources_follow_the_gpus() -> None:
    """8 GPUs ask for 6 CPUs and 32 + 2 GB per GPU; each knob overrides; no GPUs keeps 2 CPUs and
    8 GB; a named resource wins; the request reaches the role (and picks the image)."""
    # The defaults docs/jobs.md ("Resources"), README.md and the components' docstring state.
    assert (DEFAULT_CPU_PER_GPU, DEFAULT_MEM_GB_PER_GPU, DEFAULT_SHM_GB_PER_GPU) == (6, 32, 2)
    assert role_resource(gpu=8) == specs.Resource(cpu=48, gpu=8, memMB=8 * 34 * 1024)
    assert role_resource(gpu=1) == specs.Resource(cpu=6, gpu=1, memMB=34 * 1024)
    assert role_resource() == specs.Resource(cpu=2, gpu=0, memMB=8192)
    assert role_resource(gpu=8, cpu_per_gpu=12, mem_gb_per_gpu=100, shm_gb_per_gpu=0) == \
        specs.Resource(cpu=96, gpu=8, memMB=800 * 1024)
    assert role_resource(gpu=8, cpu=20, memMB=65536) == specs.Resource(cpu=20, gpu=8, memMB=65536)
    assert role_resource(cpu=16, memMB=32768) == specs.Resource(cpu=16, gpu=0, memMB=32768)
    named = role_resource(gpu=1, cpu=3, h="aws_p4d.24xlarge")
    assert named == specs.named_resources["aws_p4d.24xlarge"] and named.gpu == 8
    for key, kwargs in (("gpu", {"gpu": -1}), ("cpu", {"cpu": -2}), ("memMB", {"memMB": -1}),
                        ("cpu_per_gpu", {"gpu": 1, "cpu_per_gpu": 0}), ("mem_gb_per_gpu", {"mem_gb_per_gpu": 0}),
                        ("shm_gb_per_gpu", {"shm_gb_per_gpu": -1})):
        with pytest.raises(ValueError, match=f"^{key} must be >= "):
            role_resource(**kwargs)
    for component in (components.train, components.evaluate, components.encode_text):
        args = ("--run-dir", "r") if component is components.evaluate else ()
        assert component(*args, gpu=4, shm_gb_per_gpu=8).roles[0].resource == \
            specs.Resource(cpu=24, gpu=4, memMB=4 * 40 * 1024)
        assert component(*args).roles[0].resource == specs.Resource(cpu=2, gpu=0, memMB=8192)
        role = component(*args, h="aws_p4d.24xlarge").roles[0]
        assert role.resource.capabilities == specs.named_resources["aws_p4d.24xlarge"].capabilities
        assert role.image == CUDA_IMAGE


def _local_paths() -> List[str]:
    """Absolute paths of this machine that a cluster job spec must not hold: the working directory
    and this checkout, the interpreter's prefix and folder, the home directory, and the top folder
    of each (``/work/``)."""
    paths = {os.getcwd(), str(ROOT), sys.prefix, sys.exec_prefix, str(BIN), str(Path(sys.executable).resolve().parent),
             str(Path.home())}
    tops = {f"/{Path(p).parts[1]}/" for p in paths if len(Path(p).parts) > 2}
    return sorted(p for p in paths | tops if p not in ("/", "/usr/", "/usr"))


def _assert_no_local_path(text: str) -> None:
    found = [p for p in _local_paths() if p in text]
    assert not found, f"local paths {found} in the job spec"


@pytest.mark.parametrize("scheduler", ["kubernetes", "slurm"])
def test_cluster_dryrun_asks_for_gpu_resources_and_names_no_local_path(scheduler: str) -> None:
    """An 8-GPU role's dry run on each cluster scheduler asks for the derived CPUs and memory (and
    the overrides), names the image and runs the image's ``torchrun``, with no path of this machine
    anywhere in the printed spec; run from a PATH without the venv and with the venv's torchx."""
    cfg = ["-cfg", "queue=default"] if scheduler == "kubernetes" else []
    common = ["run", "--workspace", "", "-s", scheduler, "--dryrun", *cfg, "mtl_torchrec.train", "-j", "2x8"]
    for extra, cpu, mem in (([], 48, 8 * 34 * 1024),
                            (["--cpu_per_gpu", "10", "--mem_gb_per_gpu", "64", "--shm_gb_per_gpu", "16"], 80,
                             8 * 80 * 1024)):
        proc = _torchx(*common, "--gpu", "8", "--image", "registry.example/mtl:1", *extra, "--config", "default",
                       "--", "run_dir=/mnt/shared/runs/a")
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = proc.stdout
        _assert_no_local_path(out)
        if scheduler == "kubernetes":
            job = yaml.safe_load(out[out.index("apiVersion:"):])
            for task in job["spec"]["tasks"]:
                container = task["template"]["spec"]["containers"][0]
                assert container["image"] == "registry.example/mtl:1"
                limits, requests = container["resources"]["limits"], container["resources"]["requests"]
                assert limits == {"cpu": f"{cpu * 1000}m", "memory": f"{mem}M", "nvidia.com/gpu": "8"}
                # torchx requests slightly less than the limit (the node's reserved share).
                assert requests["nvidia.com/gpu"] == "8" and int(requests["memory"][:-1]) == mem - 1024
                assert container["command"][:2] == ["bash", "-c"]
                assert container["command"][2].startswith(PATH_PREFIX + "torchrun --max_restarts 0 ")
        else:
            assert out.count(f"--cpus-per-task={cpu} --mem={mem} --gpus-per-task=8") == 2
            assert out.count(f"bash -c '{PATH_PREFIX}torchrun --max_restarts 0 ") == 2
    # A CPU-only role keeps 2 CPUs and 8 GB.
    proc = _torchx(*common, "--config", "default")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_no_local_path(proc.stdout)
    assert ("cpu: 2000m" in proc.stdout and "memory: 8192M" in proc.stdout) if scheduler == "kubernetes" \
        else proc.stdout.count("--cpus-per-task=2 --mem=8192\n") == 2


def test_local_path_scan_catches_a_local_path() -> None:
    """The scan above is not vacuous: the venv path the components once wrote is caught."""
    with pytest.raises(AssertionError, match="local paths"):
        _assert_no_local_path(f"bash -c 'PATH={BIN}:\"$PATH\" torchrun ...'")
    with pytest.raises(AssertionError, match="local paths"):
        _assert_no_local_path(f"cd {Path.home()}/runs")


def test_default_image_is_the_packaged_one() -> None:
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert CPU_IMAGE == f"mtl-torchrec:{version}-cpu" and CUDA_IMAGE == f"mtl-torchrec:{version}-cuda"
    for component in (components.train, components.evaluate, components.encode_text):
        args = ("--run-dir", "r") if component is components.evaluate else ()
        assert component(*args).roles[0].image == CPU_IMAGE
        assert component(*args, gpu=1).roles[0].image == CUDA_IMAGE
        assert component(*args, image="registry/mtl:1").roles[0].image == "registry/mtl:1"
    # packaging/Dockerfile documents building exactly these tags.
    dockerfile = (ROOT / "packaging" / "Dockerfile").read_text()
    assert f"docker build -f packaging/Dockerfile -t {CPU_IMAGE} ." in dockerfile
    assert f"docker build -f packaging/Dockerfile --build-arg VARIANT=cuda -t {CUDA_IMAGE} ." in dockerfile


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
def test_local_cwd_two_process_training_and_evaluation_as_documented(tmp_path: Path) -> None:
    """The README's local training command as written, with a small config and a run directory
    appended, then the documented evaluation command on that run; the venv is not on PATH."""
    train = next(w for w in documented_commands(["README.md"]) if "mtl_torchrec/components.py:train" in w)
    run_dir = tmp_path / "run"
    proc = _run([*train, *SMALL, f"run_dir={run_dir}"], timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"click", "conversion", "rating"}
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 31  # 16000 rows / (256 x 2)
    meta = json.loads((run_dir / "checkpoints" / "step_000031" / "meta.json").read_text())
    assert meta["world_size"] == 2
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000031"

    evaluate = next(w for w in documented_commands() if "mtl_torchrec/components.py:evaluate" in w)
    evaluate = [str(run_dir) if w == "runs/exp1" else w for w in evaluate]
    proc = _run([*evaluate, "--", "--no-progress"], timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = (run_dir / "eval" / "test" / "report.md").read_text()
    assert "(plots/regression_rating.png)" in report and "(plots/calibration.png)" in report
    evaluated = json.loads((run_dir / "eval" / "test" / "eval.json").read_text())
    assert evaluated["tasks"]["click"]["auc"] == pytest.approx(metrics["click"]["auc"], abs=1e-6)
