"""Best-checkpoint selection and early stopping (``train.select_by``, ``train.patience``): the config
syntax, the decisions, the ``best`` pointer under rotation, exact resume, and what train and
evaluate then test."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List

import pytest

from mtl_torchrec.config import ConfigError, load_config, parse_select_by
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.distributed.checkpoint.run_dir import (
    best_checkpoint,
    choose_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    read_meta,
)
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.eval.evaluate import evaluate_run
from mtl_torchrec.train.selection import ModelSelection
from mtl_torchrec.train.trainer import Trainer
from mtl_torchrec.workflows import Run, train
from tests.mtl_helpers import SMALL_SYNTHETIC

TINY = [
    *SMALL_SYNTHETIC,
    "train.sharding=table_wise",
    "train.log_every=0",
    "train.diagnostics_every=0",
    "train.progress=false",
]


def _problem(override: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override] if isinstance(override, str) else override)
    return str(e.value)


# ----------------------------------------------------------------------------- config


def test_select_by_syntax():
    tasks = load_config(None, ["model.tasks.1.esmm_parent=click"]).model.tasks
    assert parse_select_by("auc:click,conversion", tasks).tasks == ("click", "conversion")
    assert parse_select_by("auc", tasks).tasks == ("click", "conversion")  # every binary task
    assert parse_select_by("rmse", tasks).tasks == ("rating",)
    assert parse_select_by("auc:conversion_given_click", tasks).tasks == ("conversion_given_click",)
    assert parse_select_by("logloss:click", tasks).higher_is_better is False
    assert parse_select_by("gauc:click", tasks).higher_is_better is True
    assert str(parse_select_by(" auc : click , conversion ", tasks)) == "auc:click,conversion"


@pytest.mark.parametrize(
    "override, line",
    [
        ("train.select_by=acc", "train.select_by: metric 'acc' is not one of ['auc', 'ece', 'gauc', 'gauc_unweighted', "
                                "'logloss', 'mae', 'mse', 'ne', 'rmse']; the form is METRIC or METRIC:TASK,TASK "
                                "(e.g. 'auc:click,conversion')"),
        ("train.select_by=auc:clik", "train.select_by: 'clik' is not a task (tasks: ['click', 'conversion', 'rating']); "
                                     "the form is METRIC or METRIC:TASK,TASK (e.g. 'auc:click,conversion')"),
        ("train.select_by=auc:rating", "train.select_by: 'auc' is a metric of binary tasks; 'rating' is regression"),
        ("train.select_by=auc:click,click", "train.select_by: a task is listed twice in 'click,click'"),
        ("train.select_by=5", "train.select_by: expected a string, got 5"),
        ("train.patience=2", "train.patience: needs train.select_by (the validation metric that decides what improves)"),
        ("train.patience=-1", "train.patience: must be >= 0, got -1"),
    ],
)
def test_bad_selection_settings_name_the_key(override, line):
    assert _problem(override) == line


def test_bad_selection_settings_write_nothing(tmp_path):
    from mtl_torchrec.launch.cli import main

    assert main(["train", "train.select_by=auc:nope", f"output_dir={tmp_path}"]) == 2
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- decisions


def test_model_selection_decisions_and_state():
    tasks = load_config(None, []).model.tasks
    sel = ModelSelection(parse_select_by("logloss:click,conversion", tasks), patience=2)
    value, per_task = sel.measure({"click": {"logloss": 0.5}, "conversion": {"logloss": 0.3}})
    assert value == pytest.approx(0.4) and per_task == {"click": 0.5, "conversion": 0.3}
    assert math.isnan(sel.measure({"click": {"logloss": 0.5}})[0])  # a task without the metric
    assert sel.record(10, 0, 0.40, per_task) is True
    assert sel.record(20, 0, float("nan"), per_task) is False  # undefined never improves
    assert not sel.should_stop
    assert sel.record(30, 0, 0.40, per_task) is False  # equal is not better
    assert sel.should_stop and sel.stopped_at == 30 and sel.best_step == 10
    state = json.loads(json.dumps(sel.state_dict()))
    again = ModelSelection(parse_select_by("logloss:click,conversion", tasks), patience=2)
    assert again.load_state_dict(state) and again.summary() == sel.summary()
    assert sel.summary()["curve"][1]["value"] is None
    other = ModelSelection(parse_select_by("auc", tasks))
    assert other.load_state_dict(state) is False and other.best_step is None


class ScriptedEvaluator:
    """Validation values from a list, one per call; every task gets the same value."""

    def __init__(self, values: List[float]) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self, model: Any, tasks: Any, split: str) -> Dict[str, Any]:
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return {"tasks": {t.name: {"auc": value} for t in tasks}, "slices": {}}


SCRIPT = [0.60, 0.70, 0.65, 0.72, 0.71, 0.70, 0.69, 0.80, 0.80]


def _scripted_trainer(run_dir: Path, ctx: Any, *extra: str) -> Trainer:
    cfg = load_config(None, [*TINY, "train.epochs=2", "train.eval_every=5", "train.select_by=auc:click",
                             "train.patience=3", "train.checkpoint_every=5", "train.keep_checkpoints=1",
                             f"run_dir={run_dir}", *extra])
    return Trainer(cfg, load_data(cfg.data), ctx, run_dir, evaluator=ScriptedEvaluator(SCRIPT))


def test_patience_stops_and_rotation_keeps_the_best(tmp_path):
    run_dir = tmp_path / "run"
    ctx = init_distributed()
    try:
        trainer = _scripted_trainer(run_dir, ctx)
        trainer.fit()
        trainer.close()
        # Validations at steps 5, 10, ...: best 0.72 at step 20, then three without improvement.
        assert trainer.state.global_step == 35
        sel = trainer.selection.summary()
        assert [c["value"] for c in sel["curve"]] == SCRIPT[:7]
        assert [c["step"] for c in sel["curve"]] == [5, 10, 15, 20, 25, 30, 35]
        assert sel["best_step"] == 20 and sel["best_value"] == max(c["value"] for c in sel["curve"])
        assert sel["stopped_early"] and sel["stopped_at_step"] == 35
        # keep_checkpoints=1 keeps the newest, and the best besides.
        assert [p.name for p in list_checkpoints(run_dir)] == ["step_000020", "step_000035"]
        assert best_checkpoint(run_dir).name == "step_000020"
        assert latest_checkpoint(run_dir).name == "step_000035"
        assert read_meta(best_checkpoint(run_dir))["selection"]["best_step"] == 20

        # A crash between moving `latest` and `best` leaves them apart: resuming puts `best` back.
        (run_dir / "checkpoints" / "best").write_text("step_000035\n")
        again = _scripted_trainer(run_dir, ctx)
        assert again.resume("auto").name == "step_000035"
        assert best_checkpoint(run_dir).name == "step_000020"
        assert again.selection.summary() == sel
        # The run had stopped: fit trains no further step.
        again.fit()
        again.close()
        assert again.state.global_step == 35 and again.evaluator.calls == 0
    finally:
        close_distributed(ctx)


def test_choose_checkpoint(tmp_path):
    ctx = init_distributed()
    try:
        trainer = _scripted_trainer(tmp_path / "run", ctx)
        trainer.fit()
        trainer.close()
    finally:
        close_distributed(ctx)
    run_dir = tmp_path / "run"
    assert choose_checkpoint(run_dir, "best").name == "step_000020"
    assert choose_checkpoint(run_dir, "latest").name == "step_000035"
    assert choose_checkpoint(run_dir, "step_20").name == "step_000020"
    assert choose_checkpoint(run_dir, "35").name == "step_000035"
    with pytest.raises(FileNotFoundError, match=r"no checkpoint 'step_15' \(its checkpoints: \['step_000020', "
                                                r"'step_000035'\]\)"):
        choose_checkpoint(run_dir, "step_15")
    with pytest.raises(FileNotFoundError, match="'newest' is not latest, best or step_N"):
        choose_checkpoint(run_dir, "newest")
    (run_dir / "checkpoints" / "best").unlink()
    with pytest.raises(FileNotFoundError, match="has no best checkpoint"):
        choose_checkpoint(run_dir, "best")


# ----------------------------------------------------------------------------- real runs


REAL = [*TINY, "train.epochs=3", "train.dense_lr=0.01", "train.eval_every=10", "train.select_by=auc:click,conversion",
        "train.patience=2", "train.keep_checkpoints=1", "train.calibration=platt"]


def _train(run_dir: Path, *extra: str) -> Run:
    ctx = init_distributed()
    try:
        return train(load_config(None, [*REAL, f"run_dir={run_dir}", *extra]), ctx)
    finally:
        close_distributed(ctx)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """One uninterrupted run, and the same run stopped at step 45 and resumed."""
    root = tmp_path_factory.mktemp("select")
    _train(root / "full")
    _train(root / "part", "train.max_steps=45")
    _train(root / "part")
    return root


def _summary(run_dir: Path) -> Dict[str, Any]:
    return json.loads((run_dir / "train_summary.json").read_text())


@pytest.mark.slow
def test_real_run_stops_early_and_tests_the_best(real_runs):
    run_dir = real_runs / "full"
    s = _summary(run_dir)
    sel = s["selection"]
    values = [c["value"] for c in sel["curve"]]
    assert sel["stopped_early"] and s["steps"] < 3 * 62, s["steps"]
    assert sel["best_value"] == max(values)
    assert sel["curve"][values.index(max(values))]["step"] == sel["best_step"]
    assert s["tested_checkpoint"] == f"step_{sel['best_step']:06d}" == best_checkpoint(run_dir).name
    assert latest_checkpoint(run_dir).name == f"step_{s['steps']:06d}"
    assert {p.name for p in list_checkpoints(run_dir)} == {s["tested_checkpoint"], latest_checkpoint(run_dir).name}
    # `evaluate` tests the best checkpoint by default, calibrated as training did.
    ctx = init_distributed()
    try:
        default = evaluate_run(run_dir, ctx)
        latest = evaluate_run(run_dir, ctx, checkpoint="latest")
        with pytest.raises(FileNotFoundError, match=r"^--checkpoint: .*: no checkpoint 'step_7' \(its checkpoints: "):
            evaluate_run(run_dir, ctx, checkpoint="step_7")
    finally:
        close_distributed(ctx)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert default.summary["checkpoint_name"] == s["tested_checkpoint"]
    assert default.summary["calibration"]["method"] == "platt"
    for task in ("click", "conversion"):
        for key in ("auc", "logloss", "calibration"):
            assert default.summary["tasks"][task][key] == pytest.approx(metrics[task][key], rel=1e-6)
    assert latest.summary["checkpoint_name"] == latest_checkpoint(run_dir).name
    assert "calibration" not in latest.summary  # fitted for the best step, not this one
    assert any("calibration.json was fitted for step" in n for n in latest.summary["notes"])


@pytest.mark.slow
def test_resume_keeps_selection_state_exact(real_runs):
    full, part = _summary(real_runs / "full"), _summary(real_runs / "part")
    assert full["steps"] > 45  # the interruption came before the stop
    assert part["selection"] == full["selection"]
    assert part["tested_checkpoint"] == full["tested_checkpoint"]
    assert (json.loads((real_runs / "part" / "metrics.json").read_text())
            == json.loads((real_runs / "full" / "metrics.json").read_text()))
    assert (json.loads((real_runs / "part" / "calibration.json").read_text())
            == json.loads((real_runs / "full" / "calibration.json").read_text()))
    assert best_checkpoint(real_runs / "part").name == best_checkpoint(real_runs / "full").name


def _two_rank_worker(rank: int, world_size: int, run_dir: str) -> Dict[str, Any]:
    ctx = init_distributed("gloo")
    try:
        result = train(load_config(None, [*REAL, "train.sharding=row_wise", f"run_dir={run_dir}"]), ctx)
    finally:
        close_distributed(ctx)
    return {"summary": result.summary, "best": best_checkpoint(run_dir).name}


@pytest.mark.slow
def test_two_ranks_take_the_same_decisions(tmp_path):
    """Rank 0 alone has exact AUC; both ranks must stop, save and test alike."""
    from tests.ranks import run_ranks

    results = run_ranks(_two_rank_worker, 2, str(tmp_path / "run"))
    assert results[0]["summary"]["selection"] == results[1]["summary"]["selection"]
    sel = results[0]["summary"]["selection"]
    assert sel["stopped_early"] and sel["best_value"] == max(c["value"] for c in sel["curve"])
    assert results[0]["best"] == results[1]["best"] == results[1]["summary"]["tested_checkpoint"]
    saved = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert saved["checkpoint_step"] == sel["best_step"] and set(saved["tasks"]) == {"click", "conversion"}


@pytest.mark.slow
def test_max_steps_on_an_epoch_end_still_validates_it(tmp_path):
    """Training cut by train.max_steps exactly at an epoch's last batch has finished that epoch: its
    end-of-epoch validation runs (the final state is a candidate), as in a run with more epochs."""
    s = _train(tmp_path / "cut", "train.max_steps=62", "train.patience=100", "train.eval_every=25").summary
    steps = [c["step"] for c in s["selection"]["curve"]]
    assert steps == [25, 50, 62], steps
