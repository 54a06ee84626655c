"""End to end: train a few steps on a CSV data spec with the real Trainer, then evaluate the run
(1 rank in-process, 2 ranks spawned with gloo) and check metrics, report and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

from mtl_torchrec.config import ConfigError, load_config
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.eval.evaluate import evaluate_run
from mtl_torchrec.eval.report import load_eval
from mtl_torchrec.launch.cli import main as cli_main
from mtl_torchrec.launch.evaluate_cmd import write_outputs
from mtl_torchrec.launch.train_cmd import train
from tests.distributed import run_ranks
from tests.eval_fixtures import TRAIN_CONFIG, make_frame, spec_dict, write_case
from tests.test_metrics import _gauc_reference


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    spec = write_case(tmp / "data", make_frame(n=1000))
    run_dir = tmp / "run"
    cfg = load_config(None, [*TRAIN_CONFIG, "data.source=spec", f"data.spec={spec}", f"run_dir={run_dir}"])
    ctx = init_distributed()
    try:
        train(cfg, ctx)
    finally:
        close_distributed(ctx)
    return run_dir


def _evaluate_1rank(run_dir, **kw):
    ctx = init_distributed()
    try:
        return evaluate_run(run_dir, ctx, **kw)
    finally:
        close_distributed(ctx)


def test_evaluate_metrics_match_exact_computation(trained_run, tmp_path):
    assert (trained_run / "preprocessing" / "preprocessing.json").is_file()
    result = _evaluate_1rank(trained_run)
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
    for name in ("roc_click.png", "scores_click.png", "calibration.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{name})" in report
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


def test_evaluate_on_other_data_spec_uses_saved_preprocessing(trained_run, tmp_path):
    spec = spec_dict("fresh.csv")
    del spec["split"]
    path = write_case(tmp_path, make_frame(n=300, seed=11), spec, name="fresh.csv", spec_name="fresh.yaml")
    result = _evaluate_1rank(trained_run, data_spec=str(path))
    assert result.summary["split"] == "all" and result.summary["rows"] == 300
    # Fresh rows of the same users and items: scored through the saved vocabularies, the model
    # ranks them as well as its own test split (about 0.73); a constant predictor has AUC 0.5.
    assert result.summary["tasks"]["click"]["auc"] > 0.65
    with pytest.raises(ConfigError, match="--split"):
        _evaluate_1rank(trained_run, split="nope")


def _rank_main(rank: int, world: int, run_dir: str) -> dict:
    ctx = init_distributed(backend="gloo")
    try:
        return evaluate_run(Path(run_dir), ctx, batch_size=16).summary
    finally:
        close_distributed(ctx)


@pytest.mark.slow
def test_two_rank_evaluate_equals_one_rank(trained_run, tmp_path):
    one = _evaluate_1rank(trained_run).summary
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
    result = _evaluate_1rank(trained_run, data_spec=str(spec))
    click = result.summary["tasks"]["click"]
    p = result.rows.predictions["click"][result.rows.masks["click"]].astype(np.float64)
    assert click["positive_rate"] == 0.0
    assert np.isnan(click["calibration"])
    assert click["mean_prediction"] == pytest.approx(p.mean(), rel=1e-9) and click["mean_prediction"] > 0.05
    line = next(ln for ln in format_table(result.summary["tasks"]).splitlines() if ln.startswith("click"))
    assert "n/a" in line


def test_empty_split_is_an_error_naming_it(trained_run, tmp_path):
    from mtl_torchrec.core.errors import DataError

    frame = make_frame(n=1000)
    frame = frame[frame["split"] != "test"]
    spec = write_case(tmp_path / "data", frame)
    with pytest.raises((DataError, ConfigError), match="test"):
        _evaluate_1rank(trained_run, data_spec=str(spec))
