"""End to end: train a few steps on a CSV data spec with the real Trainer, then evaluate the run
(1 rank in-process, 2 ranks spawned with gloo) and check metrics, report and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

from mtl_torchrec.config import ConfigError
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.eval.evaluate import evaluate_run
from mtl_torchrec.eval.report import load_eval
from mtl_torchrec.launch.cli import main as cli_main
from mtl_torchrec.workflows.evaluation import write_outputs
from tests.eval.test_metrics import _gauc_reference
from tests.eval_fixtures import (
    evaluate_1rank,
    int_id_frame,
    make_frame,
    spec_dict,
    train_spec_run,
    write_case,
)
from tests.ranks import run_ranks


def _train_on(tmp, frame):
    """Trains a few steps on ``frame`` written as a CSV spec under ``tmp``; returns (run dir, spec)."""
    spec = write_case(tmp / "data", frame)
    return train_spec_run(spec, tmp / "run"), spec


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return _train_on(tmp_path_factory.mktemp("evalrun"), make_frame(n=1000))[0]


def test_evaluate_metrics_match_exact_computation(trained_run, tmp_path):
    assert (trained_run / "preprocessing" / "preprocessing.json").is_file()
    result = evaluate_1rank(trained_run)
    s = result.summary
    assert s["split"] == "test" and s["rows"] == 100
    rows = result.rows
    m = rows.masks["click"]
    p, y = rows.predictions["click"][m].astype(np.float64), rows.labels["click"][m]
    click = s["tasks"]["click"]
    assert click["count"] == 100
    assert click["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert click["logloss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), rel=1e-4)
    assert click["ne"] == pytest.approx(log_loss(y, p) / log_loss(y, np.full(len(y), y.mean())), rel=1e-4)
    assert click["calibration"] == pytest.approx(p.sum() / y.sum(), rel=1e-4)
    assert click["positive_rate"] == pytest.approx(y.mean(), rel=1e-6)
    # GAUC against a per-user loop.
    gauc, gauc_unweighted, _, skipped = _gauc_reference(p, y, rows.group[m])
    assert click["gauc"] == pytest.approx(gauc, abs=1e-12)
    assert click["gauc_unweighted"] == pytest.approx(gauc_unweighted, abs=1e-12)
    assert click["groups_one_class"] == skipped > 0
    r = s["tasks"]["rating"]
    mr = rows.masks["rating"]
    assert r["count"] == int(mr.sum()) < 100
    assert r["rmse"] == pytest.approx(mean_squared_error(rows.labels["rating"][mr], rows.predictions["rating"][mr]) ** 0.5, rel=1e-4)
    assert r["mae"] == pytest.approx(mean_absolute_error(rows.labels["rating"][mr], rows.predictions["rating"][mr]), rel=1e-4)
    # The train command's test metrics (torchrec, same checkpoint and rows) agree.
    trained = json.loads((trained_run / "metrics.json").read_text())
    assert click["ne"] == pytest.approx(trained["click"]["ne"], rel=1e-5)
    # Slices from the spec: cold/warm items partition the split.
    sl = s["slices"]
    assert sl["item=cold"]["rows"] + sl["item=warm"]["rows"] == 100
    warm = sl["item=warm"]["tasks"]["click"]
    wm = result.slices["item=warm"][m]
    assert warm["auc"] == pytest.approx(roc_auc_score(y[wm], p[wm]), abs=1e-12)
    assert warm["positive_rate"] == pytest.approx(y[wm].mean(), rel=1e-6)

    out = write_outputs(result, tmp_path / "out")
    report = (out / "report.md").read_text()
    # Binary tasks' ROC, histograms and reliability curves; the rating task's predicted vs observed plot.
    for name in ("roc_click.png", "scores_click.png", "calibration.png", "regression_rating.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{name})" in report
    assert "plots/regression_rating.png" in json.loads((out / "eval.json").read_text())["plots"]
    assert "| click |" in report and "| rating |" in report and "## Regression by label range" in report
    assert json.loads((out / "eval.json").read_text())["tasks"]["click"]["auc"] == click["auc"]


def test_cli_evaluate_and_compare(trained_run, tmp_path, capsys):
    assert cli_main(["evaluate", "--run", str(trained_run), "--out", str(tmp_path / "a"), "--no-plots",
                     "--slice", "user", "--slice-top", "3"]) == 0
    user_slices = {k: v for k, v in load_eval(str(tmp_path / "a"))["slices"].items() if k.startswith("user=")}
    assert len(user_slices) == 3 and all(k[len("user="):].startswith("u") for k in user_slices)
    assert all(v["tasks"]["click"]["count"] == v["rows"] for v in user_slices.values())
    assert cli_main(["evaluate", "--run", str(trained_run), "--split", "val", "--out", str(tmp_path / "b"),
                     "--no-plots"]) == 0
    capsys.readouterr()
    assert cli_main(["evaluate", "--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    a, b = load_eval(str(tmp_path / "a")), load_eval(str(tmp_path / "b"))
    line = next(x for x in out.splitlines() if x.split()[:2] == ["click", "auc"])
    assert float(line.split()[4]) == pytest.approx(b["tasks"]["click"]["auc"] - a["tasks"]["click"]["auc"], abs=1e-4)
    assert "not the same evaluation data" in out
    assert cli_main(["evaluate", "--run", str(tmp_path / "nope")]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    # A multi-valued column cannot be sliced, and the choices offered are the single-valued ones.
    assert cli_main(["evaluate", "--run", str(trained_run), "--out", str(tmp_path / "c"), "--slice", "tags"]) == 2
    assert "--slice: 'tags' is multi-valued (several ids per row) and cannot be sliced; slices need one value per " \
           "row: choose from ['user', 'item']" in capsys.readouterr().err
    assert cli_main(["evaluate", "--run", str(trained_run), "--out", str(tmp_path / "c"), "--slice", "nope"]) == 2
    assert "choose from ['user', 'item']" in capsys.readouterr().err


def test_evaluate_on_other_data_spec_uses_saved_preprocessing(trained_run, tmp_path):
    spec = spec_dict("fresh.csv")
    del spec["split"]
    path = write_case(tmp_path, make_frame(n=300, seed=11), spec, name="fresh.csv", spec_name="fresh.yaml")
    result = evaluate_1rank(trained_run, data_spec=str(path))
    assert result.summary["split"] == "all" and result.summary["rows"] == 300
    # Fresh rows of the same users and items: scored through the saved vocabularies, the model
    # ranks them as well as its own test split (about 0.73); a constant predictor has AUC 0.5.
    assert result.summary["tasks"]["click"]["auc"] > 0.65
    with pytest.raises(ConfigError, match="--split"):
        evaluate_1rank(trained_run, split="nope")


def _rank_main(rank: int, world: int, run_dir: str) -> dict:
    ctx = init_distributed(backend="gloo")
    try:
        return evaluate_run(Path(run_dir), ctx, batch_size=16).summary
    finally:
        close_distributed(ctx)


@pytest.mark.slow
def test_two_rank_evaluate_equals_one_rank(trained_run, tmp_path):
    one = evaluate_1rank(trained_run).summary
    two = run_ranks(_rank_main, 2, str(trained_run))[0]
    assert two["world_size"] == 2 and two["rows"] == one["rows"]

    def close(a, b):
        for k, v in a.items():
            if isinstance(v, dict):
                close(v, b[k])
            elif isinstance(v, float):
                assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-6, nan_ok=True), k
            elif k not in ("world_size",):
                assert b[k] == v, k

    close(one["tasks"], two["tasks"])
    close(one["slices"], two["slices"])


def test_no_positives_gives_true_mean_prediction_and_no_calibration(trained_run, tmp_path):
    """Every test row a non-click: calibration is undefined (not 0), mean prediction is the mean of
    the predictions (not calibration x positive rate = 0)."""
    from mtl_torchrec.eval.metrics import format_table

    frame = make_frame(n=1000)
    frame["click"] = "no"
    frame["rating"] = np.nan
    spec = write_case(tmp_path / "data", frame)
    result = evaluate_1rank(trained_run, data_spec=str(spec))
    click = result.summary["tasks"]["click"]
    p = result.rows.predictions["click"][result.rows.masks["click"]].astype(np.float64)
    assert click["positive_rate"] == 0.0
    assert np.isnan(click["calibration"])
    assert click["mean_prediction"] == pytest.approx(p.mean(), rel=1e-9) and click["mean_prediction"] > 0.05
    line = next(ln for ln in format_table(result.summary["tasks"]).splitlines() if ln.startswith("click"))
    assert "n/a" in line
    # eval.json is valid JSON: the undefined calibration is null (a bare NaN is refused here), and the
    # side-by-side comparison of two such files still says n/a.
    from mtl_torchrec.eval.report import compare_table, load_eval
    from mtl_torchrec.workflows.evaluation import write_outputs

    out = write_outputs(result, tmp_path / "out", plots=False)

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    saved = json.loads((out / "eval.json").read_text(), parse_constant=refuse)
    assert saved["tasks"]["click"]["calibration"] is None
    assert saved["tasks"]["click"]["positive_rate"] == 0.0
    row = next(ln for ln in compare_table(load_eval(str(out)), load_eval(str(out))).splitlines()
               if ln.startswith("click") and " calibration " in ln)
    assert row.split()[2:4] == ["n/a", "n/a"]


def test_empty_split_is_an_error_naming_it(trained_run, tmp_path):
    from mtl_torchrec.core.errors import DataError

    frame = make_frame(n=1000)
    frame = frame[frame["split"] != "test"]
    spec = write_case(tmp_path / "data", frame)
    with pytest.raises((DataError, ConfigError), match="test"):
        evaluate_1rank(trained_run, data_spec=str(spec))


@pytest.fixture(scope="module")
def int_id_run(tmp_path_factory):
    """A run trained on a CSV whose user and item ids are integers."""
    return _train_on(tmp_path_factory.mktemp("intrun"), int_id_frame(n=1000))


def _same(a, b, key=""):
    if isinstance(a, dict):
        assert set(a) == set(b), key
        for k in a:
            _same(a[k], b[k], f"{key}.{k}")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), key
    else:
        assert a == b, key


def test_parquet_ids_of_any_type_evaluate_like_the_training_csv(int_id_run, tmp_path, caplog):
    """Train on CSV, evaluate the same rows as Parquet with int, float and nullable-int ids:
    identical metrics and no OOV warning (float ids used to be "12.0", unknown to the vocabulary)."""
    run_dir, csv_spec = int_id_run
    base = evaluate_1rank(run_dir, data_spec=str(csv_spec)).summary
    # Every test item was seen in training: the cold slice is empty, which is said, never hidden.
    empty_cold = ["slice 'item=cold' has no rows in split 'test'"]
    assert base["warnings"] == empty_cold
    assert base["data"]["oov_rate"]["user"] == base["data"]["train_oov_rate"]["user"] == 0.0
    frame = int_id_frame(n=1000)
    for form in ("int64", "float64", "Int64"):
        other = frame.astype({"user": form, "item": form})
        spec = write_case(tmp_path / form, other, spec_dict("data.parquet"), name="data.parquet")
        got = evaluate_1rank(run_dir, data_spec=str(spec)).summary
        assert got["warnings"] == empty_cold, form
        _same(base["tasks"], got["tasks"], form)
        _same(base["slices"], got["slices"], form)
        assert got["data"]["oov_rate"] == base["data"]["oov_rate"]
    assert {m for m in caplog.messages if "warning:" in m} == {f"warning: {empty_cold[0]}"}


def test_ids_in_another_form_warn_and_land_in_eval_json(int_id_run, tmp_path, capsys):
    run_dir, _ = int_id_run
    frame = int_id_frame(n=1000)
    frame["user"] = "user_" + frame["user"].astype(str)  # cannot match the run's integer ids
    spec = write_case(tmp_path / "data", frame)
    assert cli_main(["evaluate", "--run", str(run_dir), "--data", str(spec), "--out", str(tmp_path / "out"),
                     "--no-plots", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: sparse feature 'user': 100.0% of its ids in split 'test' (100 of 100) are unknown to the run's " \
           "vocabulary, against 0.0% in training; check that the ids have the same form as in the training data" in err
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["data"]["oov_rate"]["user"] == 1.0 and saved["data"]["train_oov_rate"]["user"] == 0.0
    assert len(saved["warnings"]) == 2 and "sparse feature 'user'" in saved["warnings"][0]
    assert saved["warnings"][1] == "slice 'item=cold' has no rows in split 'test'"
    assert "**warning:** sparse feature 'user'" in (tmp_path / "out" / "report.md").read_text()


def test_evaluate_refuses_esmm_labels_before_writing(trained_run, tmp_path, capsys):
    """The run's tasks made ESMM (conversion with parent click) and data with conversion = 1 on a
    non-click test row: refused before the model is built or anything written."""
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["tasks"] = [{"name": "click", "type": "binary"}, {"name": "conversion", "esmm_parent": "click"},
                             {"name": "rating", "type": "regression"}]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    frame = make_frame(n=1000)
    frame["conversion"] = 0
    frame.loc[19, ["click", "conversion"]] = ["no", 1]  # row 19: test row 1, file line 21
    labels = spec_dict()["labels"] + [{"task": "conversion", "column": "conversion", "type": "binary"}]
    spec = write_case(tmp_path / "data", frame, spec_dict(labels=labels))
    assert cli_main(["evaluate", "--run", str(run), "--data", str(spec), "--no-plots", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"1 row(s) have conversion = 1 where click = 0, e.g. test row 1 ({tmp_path / 'data' / 'data.csv'} line 21)" in err
    assert not (run / "eval").exists()
