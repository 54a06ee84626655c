"""predict and export of a trained spec run: scores equal evaluate's per row, labels optional,
streaming CLI output, 2 ranks equal 1, fp32 TorchScript parity in a fresh process without
mtl_torchrec, INT8 within its stated bounds, and the refusals (missing columns, another version,
no preprocessing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pandas as pd
import pytest
import torch

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.spec.features import FeatureRows, feature_spec
from mtl_torchrec.eval.metrics import binary_auc
from mtl_torchrec.launch.cli import main
from mtl_torchrec.model.tasks import predictions
from mtl_torchrec.serve import load_run, predict_frame, scoring_inputs
from mtl_torchrec.serve.export import ARTIFACT_FILE, export_run, load_artifact
from tests.eval_fixtures import evaluate_1rank, make_frame, train_spec_run, write_case

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["click", "rating", "split"]
# INT8 tables (row-wise int8 with an fp32 scale and bias per row) against the fp32 model on the
# small run's test rows: the largest probability and rating differences, and the AUC drop, allowed.
INT8_PROB_ATOL = 2e-3
INT8_RATING_ATOL = 1e-2
INT8_AUC_DROP = 0.01


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small spec run with Platt calibration (so scores come calibrated and raw)."""
    tmp = tmp_path_factory.mktemp("serve")
    return train_spec_run(write_case(tmp), tmp / "run", ["train.calibration=platt", "train.max_steps=12"])


def slope(run: Path) -> float:
    """The click calibration's Platt slope (at least 1)."""
    return max(1.0, abs(json.loads((run / "calibration.json").read_text())["tasks"]["click"]["a"]))


def assert_scores_close(got: pd.DataFrame, expected: pd.DataFrame, run: Path, atol: float = 1e-6) -> None:
    """Same columns and rows; predictions within ``atol``, calibrated ones within ``atol`` times the
    calibration's slope (other batch boundaries or kernels change float32 rounding, which a steep
    calibration magnifies: this 12-step model is nearly constant, so its Platt slope is large)."""
    assert list(got.columns) == list(expected.columns) and len(got) == len(expected)
    for c in got.columns:
        if c in ("click",):
            np.testing.assert_allclose(got[c], expected[c], rtol=0, atol=atol * slope(run))
        elif got[c].dtype.kind == "f":
            np.testing.assert_allclose(got[c], expected[c], rtol=0, atol=atol)
        else:
            assert list(got[c]) == list(expected[c])


def _test_rows(labels: bool = False) -> pd.DataFrame:
    frame = make_frame()
    test = frame[frame.split == "test"]
    return test if labels else test.drop(columns=LABELS)


@pytest.mark.slow
def test_predict_equals_evaluate_with_or_without_labels(run: Path) -> None:
    result = evaluate_1rank(run, progress=False)
    assert result.summary.get("calibration"), "the fixture run should be calibrated"
    for labels in (False, True):
        scores = predict_frame(run, _test_rows(labels), keep=["user"])
        assert list(scores["row"]) == list(range(60))
        assert list(scores["user"]) == list(_test_rows()["user"])
        for task in ("click", "rating"):
            np.testing.assert_allclose(scores[f"{task}_raw"], result.rows.raw_predictions[task], rtol=0, atol=1e-6)
            # Calibration magnifies float32 rounding (evaluate's sharded table kernels vs the plain
            # table here) by its slope: this 12-step model is nearly constant, so its Platt slope is large.
            np.testing.assert_allclose(scores[task], result.rows.predictions[task], rtol=0, atol=1e-6 * slope(run))


@pytest.mark.slow
def test_bad_input_is_one_clear_error_and_unseen_ids_are_oov(run: Path) -> None:
    rows = _test_rows()
    with pytest.raises(DataError) as e:
        predict_frame(run, rows.drop(columns=["price", "tags"]))
    message = str(e.value)
    assert "'tags' (sparse[2].column)" in message and "'price' (dense[0].column)" in message
    loaded = load_run(run)
    unseen = rows.assign(user="never-seen-user")
    missing = rows.assign(user=None)
    a, b = predict_frame(loaded, unseen), predict_frame(loaded, missing)
    # An unseen user and a missing one both read the out-of-vocabulary row 0, as in training.
    np.testing.assert_array_equal(a["click"], b["click"])
    assert not np.array_equal(a["click"], predict_frame(loaded, rows)["click"])
    # A missing price follows the training rule: this spec's fill_missing is the default, error.
    with pytest.raises(DataError, match="DataFrame row 0 column 'price': missing value"):
        predict_frame(loaded, rows.assign(price=np.nan))
    # A pass-through column the DataFrame lacks names the Python argument, not the CLI flag.
    with pytest.raises(ConfigError, match=r"^keep: column\(s\) \['order_id'\] are not in the DataFrame"):
        predict_frame(loaded, rows, keep=["order_id"])
    with pytest.raises(ValueError, match="batch_size: must be an integer >= 1, got 0"):
        predict_frame(loaded, rows, batch_size=0)


@pytest.mark.slow
def test_predict_command_streams_chunks_to_parquet(run: Path, tmp_path: Path) -> None:
    frame = make_frame().drop(columns=LABELS)  # 600 rows; the spec reads 128 rows per chunk
    frame.to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "scores.parquet"
    assert main(["predict", "--run", str(run), "--data", str(tmp_path / "rows.csv"), "--out", str(out),
                 "--keep", "user"]) == 0
    got = pd.read_parquet(out)
    assert len(got) == 600
    assert_scores_close(got, predict_frame(run, frame, keep=["user"]), run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv", "scores.parquet"]  # no temporary file left


def _unknown_id_lines(err: str) -> list:
    return [line for line in err.splitlines() if line.startswith("warning:") and "unknown to the run's" in line]


@pytest.mark.slow
def test_predict_warns_like_evaluate_when_ids_are_unknown(run: Path, tmp_path: Path, capsys) -> None:
    """User ids in another form than in training ('u12' -> '12') all read the out-of-vocabulary row:
    ``predict`` (the command and :func:`predict_frame`) prints the very warning ``evaluate`` prints for
    the same file, and scores the rows as they are; rows as in training give no warning."""
    rows = _test_rows(labels=True).assign(user=lambda f: f["user"].str[1:])
    rows.to_csv(tmp_path / "rows.csv", index=False)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(tmp_path / "rows.csv"), "--out", str(tmp_path / "ev"),
                 "--no-plots", "--no-progress"]) == 0
    expected = _unknown_id_lines(capsys.readouterr().err)
    assert expected == ["warning: sparse feature 'user': 100.0% of its ids in split 'all' (60 of 60) are unknown to "
                        "the run's vocabulary, against 0.0% in training; check that the ids have the same form as "
                        "in the training data"]
    out = tmp_path / "scores.parquet"
    assert main(["predict", "--run", str(run), "--data", str(tmp_path / "rows.csv"), "--out", str(out)]) == 0
    assert _unknown_id_lines(capsys.readouterr().err) == expected
    assert_scores_close(pd.read_parquet(out), predict_frame(run, rows.drop(columns=LABELS)), run)
    assert _unknown_id_lines(capsys.readouterr().err) == expected
    predict_frame(run, _test_rows())
    assert "warning" not in capsys.readouterr().err


@pytest.mark.slow
def test_predict_two_ranks_equals_one(run: Path, tmp_path: Path) -> None:
    frame = make_frame().drop(columns=LABELS)
    frame.to_parquet(tmp_path / "rows.parquet", index=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    outs = {}
    for ranks in (1, 2):
        outs[ranks] = tmp_path / f"scores{ranks}.parquet"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
               "-m", "mtl_torchrec", "predict", "--run-dir", str(run), "--data", str(tmp_path / "rows.parquet"),
               "--out", str(outs[ranks])]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    one, two = pd.read_parquet(outs[1]), pd.read_parquet(outs[2])
    assert_scores_close(one, two, run)
    assert list(one["row"]) == list(range(600))


# Runs in a fresh interpreter: torch and fbgemm_gpu only, never mtl_torchrec (nor torchrec).
_LOADER = """
import sys, torch, fbgemm_gpu
path = sys.argv[1]
model = torch.export.load(path).module() if path.endswith(".pt2") else torch.jit.load(path)
inputs = torch.load(sys.argv[2])
with torch.no_grad():
    out = model(inputs["values"], inputs["lengths"], inputs["dense"])
torch.save(dict(out), sys.argv[3])
assert not [m for m in sys.modules if m.startswith(("mtl_torchrec", "torchrec"))], "imported our package"
"""


def _fresh_process_outputs(artifact: Path, inputs: Dict[str, torch.Tensor], tmp: Path,
                           model_file: str = "model.pt") -> Dict[str, Any]:
    torch.save(inputs, tmp / "inputs.pt")
    (tmp / "loader.py").write_text(_LOADER, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(tmp / "loader.py"), str(artifact / model_file), str(tmp / "inputs.pt"),
                           str(tmp / "outputs.pt")], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(tmp / "outputs.pt")


def _eager_and_inputs(run: Path) -> tuple:
    loaded = load_run(run)
    spec = feature_spec(loaded.spec, list(_test_rows().columns), text=False)
    rows = FeatureRows(spec, loaded.preprocessing)
    batch = Batch.from_table(rows.convert_frame(_test_rows()).table, rows.schema)
    with torch.no_grad():
        eager = predictions(loaded.module.model(batch).logits, loaded.tasks)
    values, lengths, dense = scoring_inputs(batch)
    return loaded, eager, {"values": values, "lengths": lengths, "dense": dense}


@pytest.mark.slow
def test_fp32_export_equals_the_model_in_a_fresh_process(run: Path, tmp_path: Path) -> None:
    out = export_run(run, tmp_path / "artifact")
    assert sorted(p.name for p in out.iterdir()) == ["artifact.json", "calibration.json", "model.pt",
                                                      "preprocessing.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # written under a temporary name, renamed
    info = json.loads((out / ARTIFACT_FILE).read_text())
    assert info["precision"] == "fp32" and info["outputs"] == ["click", "rating"]
    loaded, eager, inputs = _eager_and_inputs(run)
    got = _fresh_process_outputs(out, inputs, tmp_path)
    for task in ("click", "rating"):
        torch.testing.assert_close(got[task], eager[task], rtol=0, atol=1e-5)
    # The documented loader on raw rows: the same scores as predict (calibrated, and raw).
    scores = load_artifact(out).predict(_test_rows(labels=True), keep=["user"])
    expected = predict_frame(loaded, _test_rows(), keep=["user"])
    assert_scores_close(scores, expected, run, atol=1e-5)
    with pytest.raises(ConfigError, match="exists"):
        export_run(run, out)


@pytest.mark.slow
def test_torch_export_program_has_a_dynamic_batch(run: Path, tmp_path: Path) -> None:
    """``--format export``: a torch.export program, loaded in a fresh process, equals the model at
    the test split's 60 rows and at 7 rows (the batch size is not baked in)."""
    out = export_run(run, tmp_path / "program", fmt="export")
    assert (out / "model.pt2").is_file() and not (out / "model.pt").exists()
    loaded, eager, inputs = _eager_and_inputs(run)
    got = _fresh_process_outputs(out, inputs, tmp_path, "model.pt2")
    for task in ("click", "rating"):
        torch.testing.assert_close(got[task], eager[task], rtol=0, atol=1e-5)
    assert_scores_close(load_artifact(out).predict(_test_rows().iloc[:7]),
                        predict_frame(loaded, _test_rows().iloc[:7]), run, atol=1e-5)
    with pytest.raises(ConfigError, match="--int8"):
        export_run(run, tmp_path / "never", int8=True, fmt="export")


@pytest.mark.slow
def test_int8_export_within_its_bounds(run: Path, tmp_path: Path) -> None:
    out = export_run(run, tmp_path / "int8", int8=True)
    assert json.loads((out / ARTIFACT_FILE).read_text())["precision"] == "int8"
    _, eager, inputs = _eager_and_inputs(run)
    got = _fresh_process_outputs(out, inputs, tmp_path)
    assert (got["click"] - eager["click"]).abs().max() <= INT8_PROB_ATOL
    assert (got["rating"] - eager["rating"]).abs().max() <= INT8_RATING_ATOL
    labels = (_test_rows(labels=True)["click"] == "yes").to_numpy(dtype=np.float64)
    drop = binary_auc(eager["click"].double().numpy(), labels) - binary_auc(got["click"].double().numpy(), labels)
    assert drop <= INT8_AUC_DROP


@pytest.mark.slow
def test_refusals_other_version_and_no_preprocessing(run: Path, tmp_path: Path) -> None:
    out = export_run(run, tmp_path / "artifact", calibrate=False)
    assert not (out / "calibration.json").exists()
    info = json.loads((out / ARTIFACT_FILE).read_text())
    info["package_version"] = "0.0.1"
    (out / ARTIFACT_FILE).write_text(json.dumps(info))
    with pytest.raises(DataError, match="exported by mtl_torchrec 0.0.1"):
        load_artifact(out)
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    shutil.rmtree(bare / "preprocessing")
    with pytest.raises(DataError, match="no fitted preprocessing"):
        export_run(bare, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert main(["export", "--run", str(bare), "--out", str(tmp_path / "never")]) == 2


def test_a_spec_edited_after_training_is_refused(run: Path, tmp_path: Path) -> None:
    """Swapping two sparse: entries keeps every column and vocabulary valid but would feed them to
    each other's trained tables: predict, export and evaluate refuse it, naming the entry."""
    import yaml

    from mtl_torchrec.config import load_config
    from mtl_torchrec.data.preprocessing import Preprocessing
    from mtl_torchrec.data.spec import load_spec
    from mtl_torchrec.data.spec.build import build_bundle

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg_text = yaml.safe_load((copy / "config.yaml").read_text())
    spec_path = Path(cfg_text["data"]["spec"])
    spec = yaml.safe_load(spec_path.read_text())
    spec["sparse"][0], spec["sparse"][1] = spec["sparse"][1], spec["sparse"][0]
    edited = spec_path.with_name("edited_spec.yaml")
    edited.write_text(yaml.safe_dump(spec))
    cfg_text["data"]["spec"] = str(edited)
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg_text))
    with pytest.raises(DataError, match=r"features differ from those the run was trained on \(entry 0"):
        predict_frame(copy, _test_rows())
    pre = Preprocessing.load(run / "preprocessing")
    with pytest.raises(DataError, match="features differ"):
        build_bundle(load_spec(load_config(None, [f"data.spec={edited}"]).data.spec), pre)


def test_a_damaged_artifact_is_one_error_naming_the_file(run: Path, tmp_path: Path) -> None:
    good = export_run(run, tmp_path / "artifact", calibrate=False)

    def damaged(name: str, edit) -> Path:
        copy = tmp_path / name
        shutil.copytree(good, copy)
        edit(copy)
        return copy

    def edit_info(change):
        def apply(folder: Path) -> None:
            info = json.loads((folder / ARTIFACT_FILE).read_text())
            change(info)
            (folder / ARTIFACT_FILE).write_text(json.dumps(info))
        return apply

    def swap_sparse(info: Dict[str, Any]) -> None:
        info["spec"]["sparse"][0], info["spec"]["sparse"][1] = info["spec"]["sparse"][1], info["spec"]["sparse"][0]

    cases = [
        ("garbled", lambda f: (f / "preprocessing.json").write_text("{not json"), r"preprocessing.json: cannot be read"),
        ("truncated", lambda f: (f / "model.pt").write_bytes((f / "model.pt").read_bytes()[:1000]),
         r"model.pt: cannot be loaded, damaged\?"),
        ("no_model", lambda f: (f / "model.pt").unlink(), r"model.pt: missing from the artifact"),
        ("no_spec", edit_info(lambda i: i.pop("spec")), r"artifact.json: no \['spec'\]"),
        ("swapped", edit_info(swap_sparse), r"features differ from those the run was trained on"),
    ]
    for name, edit, message in cases:
        with pytest.raises(DataError, match=message):
            load_artifact(damaged(name, edit))
    with pytest.raises(ConfigError, match=r"^keep: column\(s\) \['nope'\]"):
        load_artifact(good).predict(_test_rows(), keep=["nope"])
