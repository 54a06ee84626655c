"""The command line starts fast: building the parser imports no torch (nor anything else heavy)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Set

import pytest

REPO = Path(__file__).resolve().parents[2]
# Packages that take seconds to import (torch alone: ~2 s warm, far more on a loaded machine) and
# that no sub-command needs until it runs.
HEAVY = {"torch", "torchrec", "fbgemm_gpu", "torchx", "transformers", "numpy", "pandas", "pyarrow", "matplotlib"}


def _imported_top_level(importtime_stderr: str) -> Set[str]:
    """Top-level package names from ``python -X importtime`` output (``import time: self | cum | name``)."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name.split(".")[0])
    return names


def _run(args: List[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-X", "importtime", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"]])
def test_help_imports_no_heavy_package(argv: List[str]) -> None:
    proc = _run(["-m", "mtl_torchrec", *argv])
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = _imported_top_level(proc.stderr)
    assert "mtl_torchrec" in imported, "importtime output not understood"
    assert not imported & HEAVY, f"`mtl-torchrec {' '.join(argv)}` imports {sorted(imported & HEAVY)}"
    if argv == ["--help"]:
        for command in ("train", "evaluate", "compare-single-task", "encode-text"):
            assert command in proc.stdout


def test_a_bad_argument_is_reported_without_torch() -> None:
    proc = _run(["-m", "mtl_torchrec", "train", "--config", "no-such-config"])
    assert proc.returncode == 2
    assert "packaged: aitm, default, feature_attention, ple_esmm" in proc.stderr
    assert not _imported_top_level(proc.stderr) & HEAVY


def test_export_refuses_int8_programs_before_importing_torch(tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    proc = _run(["-m", "mtl_torchrec", "export", "--run", str(tmp_path / "run"), "--out", str(out), "--int8",
                 "--format", "export"])
    assert proc.returncode == 2
    assert "--int8: INT8 tables are exported as TorchScript only" in proc.stderr
    assert not _imported_top_level(proc.stderr) & HEAVY and not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["predict", "--run", "r", "--data", "d", "--out", "."], "argument --out: '.' is a directory"),
    (["predict", "--run", "r", "--data", "d", "--out", "s.parquet", "--batch-size", "0"],
     "argument --batch-size: expected an integer >= 1, got 0"),
    (["export", "--run", "r", "--out", "."], "argument --out: '.' has no folder name of its own"),
])
def test_output_and_batch_arguments_are_checked_before_any_work(argv: List[str], message: str) -> None:
    proc = _run(["-m", "mtl_torchrec", *argv])
    assert proc.returncode == 2 and message in proc.stderr
    assert not _imported_top_level(proc.stderr) & HEAVY


def test_the_checker_sees_torch() -> None:
    proc = _run(["-c", "import torch"])
    assert proc.returncode == 0
    assert "torch" in _imported_top_level(proc.stderr)


@pytest.mark.slow
def test_a_stderr_that_cannot_be_written_costs_the_messages_not_the_run(tmp_path: Path) -> None:
    """stderr on a full disk (/dev/full): notes and progress cannot be printed; the command still
    trains and writes its run (it used to stop at its first note with nothing on stdout)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    args = [sys.executable, "-m", "mtl_torchrec", "train", "--config", "default", "data.synthetic.num_impressions=3000",
            "train.epochs=1", f"run_dir={tmp_path / 'run'}"]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=full, text=True, timeout=600)
    assert proc.returncode == 0 and "test metrics" in proc.stdout
    assert (tmp_path / "run" / "metrics.json").is_file()
