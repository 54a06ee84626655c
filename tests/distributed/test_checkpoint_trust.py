"""Checkpoints and run directories that cannot be turned against the user.

Real crafted files and real processes: malicious ``.metadata`` pickles (each one first shown to
run its command under plain ``pickle``), flipped bytes and deleted shards, garbled bookkeeping
files, two trainings on one run directory, and refused starts that must leave a run untouched.
Each is checked through ``load_checkpoint``, ``Trainer.resume`` and ``mtl-torchrec evaluate``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest
import torch
from torch.distributed.checkpoint.metadata import Metadata

from mtl_torchrec.config import load_config
from mtl_torchrec.core.errors import CheckpointError, RunDirError
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.distributed.checkpoint.dcp_io import load_checkpoint
from mtl_torchrec.distributed.checkpoint.manifest import MANIFEST, write_manifest
from mtl_torchrec.distributed.checkpoint.run_dir import latest_checkpoint
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.distributed.run_lock import LOCK_FILE, RunDirLock
from mtl_torchrec.eval.evaluate import evaluate_run
from mtl_torchrec.launch.cli import main as cli_main
from mtl_torchrec.model.builder import build_train_module
from mtl_torchrec.workflows.training import make_trainer, train
from tests.eval_fixtures import TRAIN_CONFIG, make_frame, write_case

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_case(tmp_path_factory.mktemp("trustdata"), make_frame(n=1000))


def _overrides(spec: Path, run_dir: Path, *extra: str) -> list:
    return [*TRAIN_CONFIG, "data.source=spec", f"data.spec={spec}", f"run_dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, spec: Path) -> Path:
    """A finished run (6 steps, one checkpoint, fitted preprocessing)."""
    run_dir = tmp_path_factory.mktemp("trustrun") / "run"
    ctx = init_distributed()
    try:
        train(load_config(None, _overrides(spec, run_dir)), ctx)
    finally:
        close_distributed(ctx)
    return run_dir


@pytest.fixture(scope="module")
def setup(spec: Path, trained: Path) -> Dict[str, Any]:
    cfg = load_config(None, _overrides(spec, trained))
    return {"cfg": cfg, "data": load_data(cfg.data)}


@pytest.fixture
def ctx() -> Iterator[Any]:
    c = init_distributed()
    yield c
    close_distributed(c)


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tensorboard", "eval", LOCK_FILE))
    return dst


def _plain_module(setup: Dict[str, Any]) -> torch.nn.Module:
    cfg = setup["cfg"]
    return build_train_module(cfg.model, setup["data"], cfg.train.loss_balance, cfg.train.balance)


def _resume(setup: Dict[str, Any], ctx: Any, run_dir: Path) -> Any:
    trainer = make_trainer(setup["cfg"], setup["data"], ctx, run_dir)
    try:
        return trainer.resume("auto")
    finally:
        trainer.close()


def _evaluate_cli(run_dir: Path, capsys: pytest.CaptureFixture) -> str:
    """Runs ``mtl-torchrec evaluate`` in this process; asserts exit code 2 and a one-line error
    without a traceback; returns that line."""
    capsys.readouterr()
    assert cli_main(["evaluate", "--run", str(run_dir), "--out", str(run_dir / "eval_out"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("mtl-torchrec evaluate: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not (run_dir / "eval_out").exists()
    return lines[0]


def _tree(path: Path) -> Dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- 1. no code execution


class _Payload:
    """Pickles as a call of ``os.system`` (``posix.system``): the classic pickle exploit."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> Any:
        return (os.system, (self.command,))


def _unicode(text: str) -> bytes:
    """Pickle's protocol-0 UNICODE opcode: a string up to the end of the line."""
    return b"V" + text.encode("raw_unicode_escape") + b"\n"


def _short(text: str) -> bytes:
    """Pickle's SHORT_BINUNICODE opcode (protocol 4+)."""
    data = text.encode("utf-8")
    return b"\x8c" + bytes([len(data)]) + data


DCP_METADATA_MODULE = "torch.distributed.checkpoint.metadata"


def _craft(kind: str, marker: Path) -> bytes:
    """A crafted ``.metadata`` that runs ``touch marker`` when plain pickle loads it."""
    command = f"touch {marker}"
    if kind == "reduce_protocol0":  # GLOBAL 'posix system', MARK, string, TUPLE, REDUCE
        return pickle.dumps(_Payload(command), protocol=0)
    if kind == "reduce_protocol5":  # STACK_GLOBAL 'posix' 'system'
        return pickle.dumps(_Payload(command), protocol=5)
    if kind == "dotted_global_protocol4":  # os.system reached as an attribute of a DCP module
        return b"\x80\x04c" + f"{DCP_METADATA_MODULE}\nos.system\n".encode() + _unicode(command) + b"\x85R."
    if kind == "dotted_stack_global_protocol5":
        return b"\x80\x05" + _short(DCP_METADATA_MODULE) + _short("os.system") + b"\x93" + _short(command) + b"\x85R."
    if kind == "dcp_module_function":
        # An undotted function of a torch.distributed.checkpoint module: torch_save_to_dcp
        # torch.load()s a file with weights_only=False, which runs the file's pickle.
        evil = marker.parent / f"{marker.name}.pt"
        torch.save(_Payload(command), evil)
        return (b"\x80\x04ctorch.distributed.checkpoint.format_utils\ntorch_save_to_dcp\n"
                + _unicode(str(evil)) + _unicode(str(marker.parent / f"{marker.name}.out")) + b"\x86R.")
    raise AssertionError(kind)


KINDS = ["reduce_protocol0", "reduce_protocol5", "dotted_global_protocol4", "dotted_stack_global_protocol5",
         "dcp_module_function"]
REFUSED = {
    "reduce_protocol0": "refused global posix.system",
    "reduce_protocol5": "refused global posix.system",
    "dotted_global_protocol4": f"refused global {DCP_METADATA_MODULE}.os.system",
    "dotted_stack_global_protocol5": f"refused global {DCP_METADATA_MODULE}.os.system",
    "dcp_module_function": "refused global torch.distributed.checkpoint.format_utils.torch_save_to_dcp",
}


@pytest.mark.parametrize("kind", KINDS)
def test_crafted_metadata_is_live_under_plain_pickle(kind: str, tmp_path: Path) -> None:
    """Control: each crafted file really runs its command when unpickled without the allow-list."""
    marker = tmp_path / "ran"
    try:
        pickle.loads(_craft(kind, marker))
    except BaseException:  # noqa: BLE001 - torch_save_to_dcp fails (CheckpointException) after the command ran
        pass
    assert marker.exists()


def _plant(run_dir: Path, payload: bytes) -> Path:
    """Replaces the latest checkpoint's .metadata and rewrites its manifest to match, as an
    attacker who can write the folder would (so that the unpickler, not the checksum, refuses)."""
    ckpt = latest_checkpoint(run_dir)
    (ckpt / ".metadata").write_bytes(payload)
    write_manifest(ckpt)
    return ckpt


@pytest.mark.parametrize("kind", KINDS)
def test_crafted_metadata_never_runs(kind: str, trained: Path, setup: Dict[str, Any], ctx: Any,
                                     tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    run_dir = _copy_run(trained, tmp_path / "run")
    ckpt = _plant(run_dir, _craft(kind, marker))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt, _plain_module(setup))
    assert str(e.value) == (f"{ckpt / '.metadata'}: {REFUSED[kind]}: DCP metadata holds only DCP's metadata "
                            "classes, so this file was not written by a checkpoint save")
    with pytest.raises(CheckpointError, match=REFUSED[kind].replace(".", r"\.")):
        _resume(setup, ctx, run_dir)
    line = _evaluate_cli(run_dir, capsys)
    assert REFUSED[kind] in line and str(ckpt) in line
    assert not marker.exists()
    # Also with no manifest at all (a checkpoint from before manifests).
    (ckpt / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=REFUSED[kind].replace(".", r"\.")):
        load_checkpoint(ckpt, _plain_module(setup))
    assert not marker.exists()


def test_pickle_setting_class_attributes_is_refused_and_undone(trained: Path, setup: Dict[str, Any],
                                                               tmp_path: Path) -> None:
    """BUILD on an allowed class itself would change it for the whole process."""
    payload = b"\x80\x04c" + f"{DCP_METADATA_MODULE}\nMetadata\n".encode() + b"N}" + _unicode("planted") + b"K\x01s\x86b."
    run_dir = _copy_run(trained, tmp_path / "run")
    ckpt = _plant(run_dir, payload)
    with pytest.raises(CheckpointError, match=r"refused: the pickle sets Metadata\.planted"):
        load_checkpoint(ckpt, _plain_module(setup))
    assert not hasattr(Metadata, "planted")


@pytest.mark.slow
def test_evaluate_subprocess_refuses_crafted_metadata(trained: Path, tmp_path: Path) -> None:
    """The real command: exit code 2, one line on stderr, no traceback, the command never ran."""
    marker = tmp_path / "pwned"
    run_dir = _copy_run(trained, tmp_path / "run")
    ckpt = _plant(run_dir, _craft("dotted_global_protocol4", marker))
    proc = subprocess.run([sys.executable, "-m", "mtl_torchrec", "evaluate", "--run", str(run_dir), "--no-plots"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [x for x in proc.stderr.splitlines() if "error:" in x]
    assert errors == [f"mtl-torchrec evaluate: error: {ckpt / '.metadata'}: refused global "
                      f"{DCP_METADATA_MODULE}.os.system: DCP metadata holds only DCP's metadata classes, "
                      "so this file was not written by a checkpoint save"], proc.stderr[-3000:]
    assert not marker.exists()


# ----------------------------------------------------------------------------- 2. integrity


def test_manifest_lists_every_file_of_the_checkpoint(trained: Path) -> None:
    ckpt = latest_checkpoint(trained)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(manifest["files"]) == on_disk
    assert {".metadata", "meta.json", "rng/rank_00000.json", "__0_0.distcp"} <= on_disk
    assert manifest["algorithm"] == "sha256" and all(len(e["sha256"]) == 64 for e in manifest["files"].values())


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_in_a_shard_is_named(trained: Path, setup: Dict[str, Any], ctx: Any, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    run_dir = _copy_run(trained, tmp_path / "run")
    ckpt = latest_checkpoint(run_dir)
    shard = ckpt / "__0_0.distcp"
    _flip_byte(shard)
    want = f"damaged file {shard} (its sha256 differs from {MANIFEST})"
    with pytest.raises(CheckpointError, match="checkpoint is damaged") as e:
        load_checkpoint(ckpt, _plain_module(setup))
    assert want in str(e.value)
    with pytest.raises(CheckpointError) as e:
        _resume(setup, ctx, run_dir)
    assert want in str(e.value)
    assert want in _evaluate_cli(run_dir, capsys)
    # Control: without the manifest the same damage loads silently (what happened before).
    (ckpt / MANIFEST).unlink()
    load_checkpoint(ckpt, _plain_module(setup))


def test_deleted_or_truncated_files_are_named(trained: Path, setup: Dict[str, Any], ctx: Any, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    run_dir = _copy_run(trained, tmp_path / "run")
    ckpt = latest_checkpoint(run_dir)
    (ckpt / "__0_0.distcp").unlink()
    want = f"missing file {ckpt / '__0_0.distcp'}"
    with pytest.raises(CheckpointError, match="checkpoint is damaged") as e:
        load_checkpoint(ckpt, _plain_module(setup))
    assert want in str(e.value)
    with pytest.raises(CheckpointError) as e:
        _resume(setup, ctx, run_dir)
    assert want in str(e.value)
    assert want in _evaluate_cli(run_dir, capsys)
    rng = ckpt / "rng" / "rank_00000.json"
    rng.write_bytes(rng.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=f"damaged file {rng} .* the manifest says"):
        load_checkpoint(ckpt, _plain_module(setup))


def test_garbled_manifest_is_named(trained: Path, setup: Dict[str, Any], tmp_path: Path) -> None:
    run_dir = _copy_run(trained, tmp_path / "run")
    ckpt = latest_checkpoint(run_dir)
    manifest = ckpt / MANIFEST
    for content, message in [(b"\x00\xff{", "not a valid checkpoint manifest"),
                             (b'{"files": []}', "not a checkpoint manifest"),
                             (json.dumps({**json.loads(manifest.read_text()), "files": {"../../x": {"bytes": 1, "sha256": "0"}}}).encode(),
                              "lists '../../x', which is not a file of the checkpoint folder")]:
        manifest.write_bytes(content)
        with pytest.raises(CheckpointError, match=message) as e:
            load_checkpoint(ckpt, _plain_module(setup))
        assert str(manifest) in str(e.value)


def test_checkpoint_without_manifest_loads_with_a_warning(trained: Path, setup: Dict[str, Any], tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    run_dir = _copy_run(trained, tmp_path / "run")
    ckpt = latest_checkpoint(run_dir)
    (ckpt / MANIFEST).unlink()
    want = _plain_module(setup)
    load_checkpoint(latest_checkpoint(trained), want)
    got = _plain_module(setup)
    with caplog.at_level(logging.WARNING, logger="mtl_torchrec.distributed.checkpoint.manifest"):
        load_checkpoint(ckpt, got)
    warned = [r.getMessage() for r in caplog.records if r.name == "mtl_torchrec.distributed.checkpoint.manifest"]
    assert warned == [f"{ckpt}: no {MANIFEST} (written before checkpoints had checksums): its files are not verified"]
    for k, v in want.state_dict().items():
        assert torch.equal(v, got.state_dict()[k]), k


# ----------------------------------------------------------------------------- 3. bookkeeping files and paths


@pytest.mark.parametrize("content", [b"\x00\xfe\xff garbage", b"../../../elsewhere/step_000006\n", b"", b"step_6\n"])
def test_garbled_latest_pointer_is_named(content: bytes, trained: Path, setup: Dict[str, Any], ctx: Any,
                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = _copy_run(trained, tmp_path / "run")
    pointer = run_dir / "checkpoints" / "latest"
    pointer.write_bytes(content)
    with pytest.raises(CheckpointError, match="garbled") as e:
        latest_checkpoint(run_dir)
    assert str(e.value).startswith(f"{pointer}: garbled")
    with pytest.raises(CheckpointError, match="garbled"):
        _resume(setup, ctx, run_dir)
    assert f"{pointer}: garbled" in _evaluate_cli(run_dir, capsys)


def test_latest_pointer_naming_a_missing_checkpoint_falls_back(trained: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A pointer that names a checkpoint which is gone (a crash while the same step was saved
    again) is not garbled: the newest complete checkpoint is used, with a warning."""
    run_dir = _copy_run(trained, tmp_path / "run")
    (run_dir / "checkpoints" / "latest").write_text("step_000999\n")
    with caplog.at_level(logging.WARNING, logger="mtl_torchrec.distributed.checkpoint.run_dir"):
        assert latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step_000006"
    assert "names step_000999, which is not a complete checkpoint" in caplog.text


def test_garbled_meta_and_rng_files_are_named(trained: Path, setup: Dict[str, Any], ctx: Any, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    run_dir = _copy_run(trained, tmp_path / "run")
    ckpt = latest_checkpoint(run_dir)
    meta = ckpt / "meta.json"
    good = meta.read_bytes()
    meta.write_bytes(good[: len(good) // 2])
    # With its manifest: the damage is found first.
    with pytest.raises(CheckpointError, match=f"damaged file {meta}"):
        load_checkpoint(ckpt, _plain_module(setup))
    # Without one (an old checkpoint): the JSON error, with the file and where it breaks.
    (ckpt / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=f"{meta}: not a valid checkpoint meta.json \\(JSON error at line"):
        load_checkpoint(ckpt, _plain_module(setup))
    assert f"{meta}: not a valid checkpoint meta.json" in _evaluate_cli(run_dir, capsys)
    meta.write_text(json.dumps({**json.loads(good), "epoch": "zero"}))
    with pytest.raises(CheckpointError, match=f"{meta}: 'epoch' must be a count, got 'zero'"):
        _resume(setup, ctx, run_dir)
    meta.write_bytes(good)
    rng = ckpt / "rng" / "rank_00000.json"
    rng.write_text("[1, 2")
    with pytest.raises(CheckpointError, match=f"{rng}: not a valid RNG state file"):
        _resume(setup, ctx, run_dir)


def test_run_dir_naming_a_file_is_refused(spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for run_dir in (a_file, a_file / "run"):
        capsys.readouterr()
        assert cli_main(["train", *_overrides(spec, run_dir)]) == 2
        err = capsys.readouterr().err
        assert f"mtl-torchrec train: error: run_dir: '{run_dir}' cannot be a run directory: '{a_file}' is a file" in err
        assert "Traceback" not in err
    assert a_file.read_text() == "mine"


def test_run_option_that_is_not_a_run_directory(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    (tmp_path / "empty").mkdir()
    for path in (a_file, tmp_path / "empty", latest_checkpoint(trained), tmp_path / "missing"):
        assert f"{path}: not a run directory (no config.yaml)" in _evaluate_cli(path, capsys)
    garbled = _copy_run(trained, tmp_path / "garbled")
    (garbled / "config.yaml").write_bytes(b"\xff\xfe\x00 not yaml")
    assert f"{garbled / 'config.yaml'} line 1: not valid UTF-8 text (byte offset 0)" in _evaluate_cli(garbled, capsys)
    no_ckpt = _copy_run(trained, tmp_path / "no_ckpt")
    shutil.rmtree(no_ckpt / "checkpoints")
    assert "no complete checkpoint here" in _evaluate_cli(no_ckpt, capsys)
    bad_pre = _copy_run(trained, tmp_path / "bad_pre")
    (bad_pre / "preprocessing" / "preprocessing.json").write_text("{")
    assert f"{bad_pre / 'preprocessing' / 'preprocessing.json'}: the run's saved preprocessing cannot be read" in \
        _evaluate_cli(bad_pre, capsys)


# ----------------------------------------------------------------------------- 4. one training per run directory


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _paused_training(spec: Path, run_dir: Path, started: Path, go: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "train_paused.py"), str(started), str(go), *_overrides(spec, run_dir, *extra)],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
def test_second_training_on_a_run_dir_is_refused(spec: Path, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "run"
    lock = run_dir / LOCK_FILE
    started, go = tmp_path / "started", tmp_path / "go"
    first = _paused_training(spec, run_dir, started, go)
    try:
        _wait_for(started, first)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        before = _tree(run_dir)
        second = subprocess.run([sys.executable, "-m", "mtl_torchrec", "train", *_overrides(spec, run_dir)],
                                cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert second.returncode == 2, second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        errors = [x for x in second.stderr.splitlines() if "error:" in x]
        assert len(errors) == 1 and errors[0].startswith(
            f"mtl-torchrec train: error: {run_dir}: another training is using this run directory "
            f"(pid {first.pid} on {socket.gethostname()}, started {holder['started']}; lock file {lock})"
        ), second.stderr[-3000:]
        assert _tree(run_dir) == before
        go.touch()
        out, err = first.communicate(timeout=600)
        assert first.returncode == 0, err[-3000:]
    finally:
        first.kill()
        first.wait()
    assert not lock.exists()  # removed at exit
    assert latest_checkpoint(run_dir).name == "step_000006"

    # A training killed while holding the lock leaves it; the next start on this host takes it over.
    started.unlink()
    go.unlink()
    killed = _paused_training(spec, run_dir, started, go, "train.max_steps=8")
    try:
        _wait_for(started, killed)
        killed.kill()
    finally:
        killed.wait()
    assert json.loads(lock.read_text())["pid"] == killed.pid
    ctx = init_distributed()
    try:
        with caplog.at_level(logging.WARNING, logger="mtl_torchrec.distributed.run_lock"):
            result = train(load_config(None, _overrides(spec, run_dir, "train.max_steps=8")), ctx)
    finally:
        close_distributed(ctx)
    assert f"{run_dir}: took over the lock of a training that is no longer running (pid {killed.pid}" in caplog.text
    assert result.summary["steps"] == 8 and not lock.exists()


def test_lock_is_removed_on_exceptions(spec: Path, tmp_path: Path, ctx: Any) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train(load_config(None, _overrides(spec, run_dir, "train.resume=required")), ctx)
    # No lock left behind; and the folder this refused start made is gone again (it was empty).
    assert not (run_dir / LOCK_FILE).exists() and not run_dir.exists()
    # A run directory that existed before keeps existing, without a lock.
    run_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train(load_config(None, _overrides(spec, run_dir, "train.resume=required")), ctx)
    assert run_dir.is_dir() and not (run_dir / LOCK_FILE).exists()


def test_locks_that_cannot_be_checked_are_not_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": "yesterday"}))
    with pytest.raises(RunDirError, match=f"pid 1 on elsewhere.example, another host, started yesterday; lock file {lock}"):
        RunDirLock(tmp_path).acquire()
    for garbled in ("", "{", json.dumps({"pid": 0, "host": socket.gethostname()})):
        lock.write_text(garbled)
        with pytest.raises(RunDirError, match=f"its lock file {lock} is empty or garbled"):
            RunDirLock(tmp_path).acquire()
    # An earlier attempt of this same torchelastic job (a torchrun restart or a scheduler retry,
    # possibly on another host) has ended: its lock is taken over. Another job's is not.
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    for run_id, taken in (("job-6", False), ("none", False), ("job-7", True)):
        lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "run_id": run_id}))
        if taken:
            earlier = RunDirLock(tmp_path)
            assert earlier.acquire()["run_id"] == "job-7"
            assert json.loads(lock.read_text())["pid"] == os.getpid()
            earlier.release()
        else:
            with pytest.raises(RunDirError, match="another host"):
                RunDirLock(tmp_path).acquire()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "run_id": None}))
    with pytest.raises(RunDirError, match="another host"):
        RunDirLock(tmp_path).acquire()
    # This process is alive: its own lock, seen by a second lock object, is held.
    lock.unlink()
    mine = RunDirLock(tmp_path)
    assert mine.acquire() is None
    with pytest.raises(RunDirError, match=f"pid {os.getpid()} on "):
        RunDirLock(tmp_path).acquire()
    mine.release()
    assert not lock.exists()


# ----------------------------------------------------------------------------- 5. check everything, then write


def test_refused_starts_leave_the_run_untouched(trained: Path, spec: Path, tmp_path: Path, ctx: Any) -> None:
    run_dir = _copy_run(trained, tmp_path / "run")
    before = _tree(run_dir)
    assert {"config.yaml", "preprocessing/preprocessing.json"} <= set(before)
    evaluated = evaluate_run(run_dir, ctx).summary

    # Other data (another vocabulary, so other preprocessing) and a smaller embedding.
    other_spec = write_case(tmp_path / "other", make_frame(n=1500, seed=3, num_users=70, num_items=90))
    refused: Dict[str, Callable[[], Any]] = {
        "incompatible": lambda: train(load_config(None, _overrides(other_spec, run_dir, "model.embedding_dim=4")), ctx),
        "resume=never": lambda: train(load_config(None, _overrides(spec, run_dir, "train.resume=never",
                                                                   "train.max_steps=9")), ctx),
    }
    with pytest.raises(CheckpointError, match="checkpoint does not match the model"):
        refused["incompatible"]()
    assert _tree(run_dir) == before
    with pytest.raises(FileNotFoundError, match="already holds checkpoints"):
        refused["resume=never"]()
    assert _tree(run_dir) == before
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        lock = run_dir / LOCK_FILE
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "now"}))
        with pytest.raises(RunDirError, match=f"pid {sleeper.pid}"):
            refused["incompatible"]()
        lock.unlink()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _tree(run_dir) == before
    after = evaluate_run(run_dir, ctx).summary
    for s in (evaluated, after):
        s.pop("timing")
    assert json.dumps(after, sort_keys=True) == json.dumps(evaluated, sort_keys=True)
