"""Training end to end: the loss falls, every task beats a constant predictor, and the CLI writes a run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtl_torchrec.config import load_config
from mtl_torchrec.core.packaged import config_path
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.workflows.training import make_trainer

SMALL = [
    "data.synthetic.num_users=2000",
    "data.synthetic.num_items=1000",
    "data.synthetic.num_impressions=120000",
    "data.batch_size=512",
    "model.mmoe.num_experts=4",
    "model.mmoe.expert_layers=[64, 32]",
    "model.tower_layers=[32]",
    "train.epochs=2",
    "train.progress=false",
    "train.log_every=20",
]
REPO = Path(__file__).resolve().parents[2]
# The CLI runs' data: small, in batches small enough for ~60 steps in one epoch.
CLI_DATA = ("data.synthetic.num_impressions=20000", "data.batch_size=256")


def _constant_baselines(data):
    train, test = data.splits["train"], data.splits["test"]
    out = {}
    for task in ("click", "conversion"):
        p = float(np.mean(train[task]))
        y = test[task]
        out[task] = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    r_train = train["rating"][~np.isnan(train["rating"])]
    r_test = test["rating"][~np.isnan(test["rating"])]
    out["rating"] = float(np.sqrt(np.mean((r_test - r_train.mean()) ** 2)))
    return out


@pytest.mark.slow
def test_training_lowers_loss_and_beats_constant_predictor(tmp_path):
    cfg = load_config(None, SMALL + ["train.sharding=row_wise"])
    data = load_data(cfg.data)
    ctx = init_distributed()
    try:
        trainer = make_trainer(cfg, data, ctx, tmp_path)
        before = trainer.evaluate("test")["tasks"]
        trainer.fit()
        after = trainer.evaluate("test")["tasks"]
        trainer.close()
    finally:
        close_distributed(ctx)
    const = _constant_baselines(data)
    first, last = trainer.history[0], trainer.history[-1]
    assert last["total"] < first["total"]
    for task in ("click", "conversion"):
        assert after[task]["logloss"] < before[task]["logloss"]
        assert after[task]["logloss"] < const[task] - 0.01, (task, after[task], const[task])
        assert after[task]["auc"] > 0.65, (task, after[task])
    assert after["rating"]["rmse"] < before["rating"]["rmse"]
    assert after["rating"]["rmse"] < const["rating"] - 0.02, (after["rating"], const["rating"])


def _run_cli(args, env_extra=None, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.update(env_extra or {})
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _warning_lines(stderr: str) -> list:
    """Library warnings and log lines in a run's stderr (launch/quiet.py silences the harmless ones)."""
    return [line for line in stderr.splitlines() if "Warning" in line or "WARNING" in line or line.startswith("[rank")]


def _check_run_dir(stdout: str) -> Path:
    run_dir = Path(stdout.strip().splitlines()[-1])
    assert run_dir.is_dir(), stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"click", "conversion", "rating"}
    # Better than a constant predictor (AUC 0.5; RMSE of the training mean): about 0.67 and
    # 0.75 < 0.80 with one process or two.
    assert metrics["click"]["auc"] > 0.6 and metrics["conversion"]["auc"] > 0.6, metrics
    cfg = load_config(config_path("default"), list(CLI_DATA))
    assert metrics["rating"]["rmse"] < _constant_baselines(load_data(cfg.data))["rating"]
    assert (run_dir / "config.yaml").is_file()
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert (run_dir / "checkpoints" / latest / "meta.json").is_file()
    return run_dir


@pytest.mark.slow
def test_cli_single_process_writes_run(tmp_path):
    """The CLI with stderr in a log file (as under torchx or CI): a run is written, and the progress bars
    (train.progress is on by default) are whole lines of tqdm's status, never '\\r' redraws."""
    args = [sys.executable, "-m", "mtl_torchrec", "train", "--config", "default"]
    args += [*CLI_DATA, "train.epochs=1", f"output_dir={tmp_path}"]
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        proc = subprocess.run(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True, timeout=600)
    stderr = log.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    assert "test metrics" in proc.stdout and "auc" in proc.stdout
    assert _warning_lines(stderr) == []
    assert "\r" not in stderr
    # The epoch's last line (every step done) with the losses, and the splits' scoring.
    # The losses are named by the step they are from (the last logged one, not necessarily the last step).
    assert re.search(r"^epoch 1/1: 100% (\d+)/\1 \[.*loss@step=\d+, .*total=", stderr, re.M), stderr
    assert re.search(r"^scoring test: 100% ", stderr, re.M), stderr
    _check_run_dir(proc.stdout)


@pytest.mark.slow
def test_cli_two_ranks_torchrun(tmp_path):
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args += ["-m", "mtl_torchrec", "train", "--config", "default"]
    args += [*CLI_DATA, "train.epochs=1", "train.sharding=row_wise", f"output_dir={tmp_path}"]
    proc = _run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _warning_lines(proc.stderr) == []
    run_dir = _check_run_dir(proc.stdout)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["world_size"] == 2


def test_cli_reports_config_errors():
    proc = _run_cli([sys.executable, "-m", "mtl_torchrec", "train", "train.epoch=2"])
    assert proc.returncode == 2
    assert "train.epoch" in proc.stderr and "Traceback" not in proc.stderr


def test_train_split_smaller_than_a_global_batch_is_refused(tmp_path):
    """Training would run 0 steps and report an untrained model: refused at start-up."""
    from mtl_torchrec.launch.cli import main

    argv = ["train", "data.synthetic.num_impressions=1000", "data.batch_size=1024", "train.progress=false",
            f"output_dir={tmp_path}"]
    assert main(argv) == 2
    # The run folder made for this start is gone again: a refused start writes nothing.
    assert list(tmp_path.iterdir()) == []


def test_check_splits_names_the_sizes_and_notes_empty_evaluation_splits():
    from mtl_torchrec.core.errors import DataError
    from mtl_torchrec.train.trainer import check_splits

    data = load_data(load_config(None, ["data.synthetic.num_impressions=2000", "data.synthetic.test_fraction=0.0"]).data)
    n = len(data.splits["train"])
    with pytest.raises(DataError, match=rf"train split has {n} rows, fewer than one global batch of 4096 "
                                        r"\(data.batch_size=2048 x 2 rank"):
        check_splits(data, 2048, 2)
    assert check_splits(data, 64, 1) == ["the 'test' split has no rows: its evaluation is skipped"]


@pytest.mark.slow
def test_empty_test_split_trains_and_skips_test_metrics(tmp_path):
    from mtl_torchrec.workflows import train

    cfg = load_config(None, SMALL + ["data.synthetic.num_impressions=5000", "data.synthetic.test_fraction=0.0",
                                     "train.epochs=1", f"run_dir={tmp_path / 'run'}"])
    ctx = init_distributed()
    try:
        result = train(cfg, ctx)
    finally:
        close_distributed(ctx)
    assert result.summary["steps"] > 0 and result.metrics == {}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {}


def test_run_steps_continues_across_epochs_and_fit_resumes_at_its_position(tmp_path):
    """Trainer.run_steps (benchmarks) steps through the epoch boundary with fit's bookkeeping, and a
    later fit() trains on from the step run_steps reached, with a fresh pipeline."""
    from tests.mtl_helpers import SMALL_SYNTHETIC

    cfg = load_config(None, [*SMALL_SYNTHETIC, "train.epochs=3", "train.progress=false", "train.log_every=0"])
    data = load_data(cfg.data)
    ctx = init_distributed()
    try:
        trainer = make_trainer(cfg, data, ctx, tmp_path / "run")
        per_epoch = trainer.train_ds.num_batches()
        with pytest.raises(ValueError, match="steps must be >= 0"):
            trainer.run_steps(-1)
        for wrong in (True, 2.5, "3", None):
            with pytest.raises(TypeError, match=r"run_steps: steps must be an int \(a number of training steps\), "
                                                rf"got {re.escape(repr(wrong))}"):
                trainer.run_steps(wrong)
        assert trainer.run_steps(0) == 0 and trainer.state.global_step == 0
        trainer.run_steps(per_epoch + 3)
        assert (trainer.state.epoch, trainer.state.batch_in_epoch, trainer.state.global_step) == (1, 3, per_epoch + 3)
        summary = trainer.fit()
        # Past train.epochs: run_steps runs what it is asked (a fourth epoch), a later fit() trains nothing more.
        assert trainer.run_steps(np.int64(2)) == 2
        assert (trainer.state.epoch, trainer.state.global_step) == (3, 3 * per_epoch + 2)
        again = trainer.fit()
        trainer.close()
    finally:
        close_distributed(ctx)
    assert summary["steps"] == 3 * per_epoch
    assert again["steps"] == 3 * per_epoch + 2 == trainer.state.global_step and again["samples"] == 0
    assert summary["peak_rss_mb"] > 0
