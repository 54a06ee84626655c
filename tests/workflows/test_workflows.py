"""The Python API (mtl_torchrec.workflows): docs/python_api.md's notebook block runs as written on the
census-income sample (train -> evaluate -> predict -> export, then Run.load), config resolution from an
object, a file or a packaged name, and the built-in synthetic data in one process group."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pandas as pd
import pytest

from mtl_torchrec.config import Config, save_config
from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.serve.export import Artifact
from mtl_torchrec.workflows import PredictionFile, Run, evaluate, predict, process_group, resolve_config, train
from tests.mtl_helpers import SMALL_SYNTHETIC

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "python_api.md"


def doc_blocks() -> list:
    """The ```python blocks of docs/python_api.md, in order."""
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_resolve_config_takes_an_object_a_file_or_a_packaged_name(tmp_path: Path) -> None:
    packaged = resolve_config("ple_esmm", ["train.epochs=3"])
    assert packaged.model.backbone == "ple" and packaged.train.epochs == 3
    own = tmp_path / "exp.yaml"
    own.write_text("train: {epochs: 4}\nmodel: {backbone: shared_bottom}\n", encoding="utf-8")
    from_file = resolve_config(own, ["train.max_steps=7"])
    assert (from_file.train.epochs, from_file.model.backbone, from_file.train.max_steps) == (4, "shared_bottom", 7)
    assert resolve_config(str(own)).train.epochs == 4
    defaults = resolve_config()
    assert isinstance(defaults, Config) and defaults.data.source == "synthetic"
    assert resolve_config(defaults) is defaults
    changed = resolve_config(defaults, ["train.epochs=5", "model.tasks.0.weight=2"])
    assert changed.train.epochs == 5 and changed.model.tasks[0].weight == 2
    assert defaults.train.epochs != 5 and defaults.model.tasks[0].weight != 2, "the given Config was modified"
    with pytest.raises(ConfigError, match="'defualt' is neither a config file nor a packaged config"):
        resolve_config("defualt")
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        resolve_config(defaults, ["train.epochs=-1"])


@pytest.mark.slow
def test_the_python_api_doc_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The notebook block of docs/python_api.md, run as it stands there from a folder whose ``examples``
    is the repository's (its paths are relative to the repository root)."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    block = doc_blocks()[0]
    assert "train(" in block and "evaluate(" in block and "predict(" in block and "export(" in block
    names: Dict[str, Any] = {}
    exec(compile(block, str(DOC), "exec"), names)

    run, result, written, scores, artifact, frame = (names[k] for k in
                                                     ("run", "result", "written", "scores", "artifact", "frame"))
    tasks = {"income", "never_married"}
    # The last line reloaded the run from its directory: the same as train() returned.
    assert isinstance(run, Run) and run.run_dir == Path("runs/notebook")
    assert set(run.metrics) == tasks and {"auc", "logloss", "ne"} <= set(run.metrics["income"])
    assert run.checkpoint is not None and run.checkpoint.is_dir() and run.checkpoint.name.startswith("step_")
    assert run.preprocessing == Path("runs/notebook/preprocessing") and run.calibration_file is None
    assert run.summary["steps"] > 0 and "history" not in run.summary and run.history()["world_size"] == 1
    assert run.config.data.spec == "examples/census_income/spec.yaml" and run.test_calibration is None
    # evaluate: the same test metrics as training, and the report files.
    assert set(result.summary["tasks"]) == tasks
    for task in tasks:
        assert result.summary["tasks"][task]["auc"] == pytest.approx(run.metrics[task]["auc"], rel=1e-6)
    assert (Path("runs/notebook/eval/test/report.md")).is_file() and Path("runs/notebook/eval/test/eval.json").is_file()
    # predict: one row per test row, one probability per task.
    assert isinstance(written, PredictionFile) and written.rows == 400 and written.checkpoint == run.checkpoint
    assert list(scores.columns) == ["row", *sorted(tasks)] and list(scores["row"]) == list(range(400))
    assert scores[sorted(tasks)].apply(lambda c: c.between(0, 1).all()).all()
    # export: the artifact loads and scores the DataFrame as the run and the file did.
    assert isinstance(artifact, Artifact) and artifact.info["checkpoint"] == run.checkpoint.name
    from_run = predict(run, frame.head(8))
    from_artifact = artifact.predict(frame.head(8))
    assert isinstance(from_run, pd.DataFrame) and len(from_run) == 8
    for task in tasks:
        np.testing.assert_allclose(from_artifact[task], from_run[task], rtol=0, atol=1e-5)
        np.testing.assert_allclose(from_run[task], scores[task][:8], rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="^out: a DataFrame's scores are returned"):
        predict(run, frame.head(8), "x.parquet")
    with pytest.raises(ConfigError, match="^out: name the Parquet file"):
        predict(run, "examples/census_income/sample/census-income.test")


def test_builtin_synthetic_data_in_one_process_group(tmp_path: Path) -> None:
    """As the doc's second block: train and evaluate in a group the caller holds, on the built-in
    synthetic data (a tiny config); a run without fitted preprocessing cannot score raw rows."""
    tiny = [*SMALL_SYNTHETIC, "train.max_steps=6", "train.progress=false", "train.log_every=0",
            "train.diagnostics_every=0", "train.sharding=table_wise", f"run_dir={tmp_path / 'run'}"]
    with process_group() as ctx:
        run = train("default", ctx, overrides=tiny)
        result = evaluate(run, split="val", ctx=ctx, write=False)
    assert set(run.metrics) == {"click", "conversion", "rating"} and run.summary["steps"] == 6
    assert run.preprocessing is None and run.checkpoint == tmp_path / "run" / "checkpoints" / "step_000006"
    assert result.summary["split"] == "val" and set(result.summary["tasks"]) == set(run.metrics)
    assert not (tmp_path / "run" / "eval").exists()
    loaded = Run.load(tmp_path / "run")
    assert loaded.metrics == run.metrics and loaded.summary == run.summary and loaded.checkpoint == run.checkpoint
    with pytest.raises(DataError, match="the run has no fitted preprocessing"):
        predict(run, pd.DataFrame({"user_id": [1]}))
    # resume=required on a run directory without checkpoints: refused, and no folder is left behind.
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        train("default", overrides=[*tiny[:-1], f"run_dir={tmp_path / 'fresh'}"], resume="required")
    assert not (tmp_path / "fresh").exists()


def test_run_load_refuses_what_is_not_a_finished_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        Run.load(tmp_path)
    save_config(resolve_config(), tmp_path / "config.yaml")
    with pytest.raises(FileNotFoundError, match="metrics.json: missing: the run's training has not finished"):
        Run.load(tmp_path)
