"""Post-hoc calibration (``train.calibration``): each method's fit, AUC kept, ESMM consistency, the
JSON file, ECE, and a run that fits on val and reports test before / after."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.isotonic import IsotonicRegression

from mtl_torchrec.config import ConfigError, load_config
from mtl_torchrec.core.errors import DataError
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.eval.calibration import CALIBRATION_FILE, Calibration, fit_calibration, fit_task
from mtl_torchrec.eval.evaluate import evaluate_run
from mtl_torchrec.eval.metrics import binary_auc, binary_logloss, expected_calibration_error
from mtl_torchrec.model.tasks import TaskSpec
from mtl_torchrec.workflows import train
from tests.eval_fixtures import TRAIN_CONFIG, make_frame, write_case


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _labels(p, seed=0):
    return (np.random.default_rng(seed).random(len(p)) < p).astype(np.float64)


def _overconfident(n=40000, seed=0, shift=-0.5):
    """Predictions sigmoid(z) of rows whose true probability is sigmoid(z / 2 + shift)."""
    z = np.random.default_rng(seed + 1).normal(0, 2.5, n)
    return _sigmoid(z), _labels(_sigmoid(z / 2 + shift), seed)


def test_temperature_recovers_the_scale():
    z = np.random.default_rng(1).normal(0, 2.5, 40000)
    cal = fit_task("temperature", _sigmoid(z), _labels(_sigmoid(z / 2)))
    assert cal.params["temperature"] == pytest.approx(2.0, rel=0.05)


def test_platt_recovers_slope_and_bias_and_matches_the_mean():
    p, y = _overconfident()
    cal = fit_task("platt", p, y)
    assert cal.params["a"] == pytest.approx(0.5, rel=0.05)
    assert cal.params["b"] == pytest.approx(-0.5, abs=0.05)
    # The maximum-likelihood optimum with a bias puts the mean prediction on the observed rate.
    assert cal(p).mean() == pytest.approx(y.mean(), rel=1e-5)
    assert binary_logloss(cal(p), y) < binary_logloss(p, y)


def test_isotonic_is_scikit_learns():
    p, y = _overconfident()
    cal = fit_task("isotonic", p, y)
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p, y)
    grid = np.concatenate([np.linspace(-0.1, 1.1, 500), p[:1000]])
    np.testing.assert_allclose(cal(grid), reference.predict(grid), rtol=0, atol=1e-12)
    assert cal(p).mean() == pytest.approx(y.mean(), rel=1e-9)


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_each_method_improves_calibration_and_keeps_the_ranking(method):
    # Temperature scales logits about 0: it fixes over-confidence, not a shifted base rate.
    shift = 0.0 if method == "temperature" else -0.5
    p, y = _overconfident(shift=shift)
    test_p, test_y = _overconfident(seed=7, shift=shift)
    cal = fit_task(method, p, y)
    after = cal(test_p)
    assert expected_calibration_error(after, test_y) < expected_calibration_error(test_p, test_y) / 2
    if method == "isotonic":
        # Flat steps tie scores: AUC moves, but little.
        assert binary_auc(after, test_y) == pytest.approx(binary_auc(test_p, test_y), abs=0.005)
    else:
        assert binary_auc(after, test_y) == binary_auc(test_p, test_y)
        assert np.all(np.diff(after[np.argsort(test_p)]) >= 0)


def test_one_class_cannot_be_fitted():
    with pytest.raises(DataError, match="calibration needs both classes"):
        fit_task("platt", np.array([0.2, 0.3]), np.array([0.0, 0.0]))
    tasks = [TaskSpec("click", "binary")]
    with pytest.raises(DataError, match="train.calibration: task 'click' on split 'val': 2 rows with 0 positives"):
        fit_calibration("platt", tasks, {"click": np.array([0.2, 0.3])}, {"click": np.zeros(2)},
                        {"click": np.ones(2, dtype=bool)})


def test_esmm_products_stay_consistent_and_json_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    ctr = rng.uniform(0.01, 0.6, 20000)
    cvr = rng.uniform(0.01, 0.5, 20000)
    click = _labels(np.clip(ctr * 1.3, 0, 1), 1)
    conversion = click * _labels(cvr * 0.7, 2)
    tasks = [TaskSpec("click", "binary"), TaskSpec("conversion", "binary", esmm_parent="click"),
             TaskSpec("rating", "regression")]
    preds = {"click": ctr, "conversion": ctr * cvr, "conversion_given_click": cvr, "rating": rng.normal(3, 1, 20000)}
    ones = np.ones(20000, dtype=bool)
    cal = fit_calibration("isotonic", tasks, preds, {"click": click, "conversion": conversion},
                          {"click": ones, "conversion": ones}, checkpoint_step=12)
    out = cal.apply_numpy(preds)
    assert np.all(out["conversion"] <= out["click"] + 1e-15)
    np.testing.assert_allclose(out["conversion_given_click"] * out["click"], out["conversion"], atol=1e-12)
    assert out["rating"] is preds["rating"]
    assert out["click"].mean() == pytest.approx(click.mean(), rel=1e-6)
    assert out["conversion"].mean() == pytest.approx(conversion.mean(), rel=0.01)

    cal.save(tmp_path / CALIBRATION_FILE)
    text = (tmp_path / CALIBRATION_FILE).read_text()
    again = Calibration.load(tmp_path / CALIBRATION_FILE)
    assert json.loads(text)["esmm"] == {"conversion": "click"} and again.checkpoint_step == 12
    for k, v in again.apply_numpy(preds).items():
        np.testing.assert_array_equal(v, out[k])
    # On tensors, as evaluation applies it: the inputs' dtype, the same values.
    tensors = {k: torch.from_numpy(v).float() for k, v in preds.items()}
    applied = cal.apply(tensors)
    assert applied["click"].dtype == torch.float32 and applied["rating"] is tensors["rating"]
    np.testing.assert_allclose(applied["conversion"].numpy(), cal.apply_numpy(
        {k: v.double().numpy() for k, v in tensors.items()})["conversion"], rtol=1e-6)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "the run's calibration cannot be read"),
        ('{"format": "x"}', "not a calibration file"),
        ('{"format": "mtl_torchrec calibration", "version": 1, "tasks": {"click": {"method": "beta"}}}',
         "tasks.click.method: 'beta' is not one of"),
        ('{"format": "mtl_torchrec calibration", "version": 1, "tasks": {"click": {"method": "platt", "a": 1}}}',
         "tasks.click: a, b must be finite numbers"),
        ('{"format": "mtl_torchrec calibration", "version": 1, "tasks": {"click": {"method": "isotonic", '
         '"x": [0.5, 0.1], "y": [0, 1]}}}', "x non-decreasing"),
        ('{"format": "mtl_torchrec calibration", "version": 1, "esmm": {"conversion": "click"}, '
         '"tasks": {"click": {"method": "temperature", "temperature": 1.5}}}', "esmm: every ESMM task"),
    ],
)
def test_bad_calibration_file_is_named(tmp_path, content, message):
    path = tmp_path / CALIBRATION_FILE
    path.write_text(content)
    with pytest.raises(DataError, match=str(path) + ".*" + message.replace("(", r"\(").replace(".", r"\.")):
        Calibration.load(path)


def test_expected_calibration_error():
    assert expected_calibration_error(np.array([0.1, 0.1, 0.9, 0.9]), np.array([0, 0, 1, 1]), bins=2) == \
        pytest.approx(0.1)
    assert expected_calibration_error(np.full(100, 0.3), np.r_[np.ones(30), np.zeros(70)]) == pytest.approx(0.0)
    assert np.isnan(expected_calibration_error(np.array([]), np.array([])))


def test_calibration_needs_a_binary_task():
    with pytest.raises(ConfigError, match=r"^train.calibration: 'platt' calibrates binary tasks and model.tasks has "
                                          r"none$"):
        load_config(None, ["train.calibration=platt", "model.tasks=[{name: rating, type: regression}]"])
    with pytest.raises(ConfigError, match=r"train.calibration: 'beta' is not one of \['none', 'temperature', 'platt', "
                                          r"'isotonic'\]"):
        load_config(None, ["train.calibration=beta"])


def test_run_fits_on_val_and_evaluate_applies_it(tmp_path):
    spec = write_case(tmp_path / "data", make_frame(n=3000))
    run_dir = tmp_path / "run"
    cfg = load_config(None, [*TRAIN_CONFIG, "train.max_steps=20", "data.source=spec", f"data.spec={spec}",
                             f"run_dir={run_dir}", "train.calibration=isotonic"])
    ctx = init_distributed()
    try:
        result = train(cfg, ctx)
        evaluated = evaluate_run(run_dir, ctx)
        raw = evaluate_run(run_dir, ctx, calibrate=False)
    finally:
        close_distributed(ctx)
    saved = json.loads((run_dir / CALIBRATION_FILE).read_text())
    assert saved["method"] == "isotonic" and saved["checkpoint_step"] == 20 and set(saved["tasks"]) == {"click"}
    block = result.test_calibration["tasks"]["click"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["click"]["calibration"] == pytest.approx(block["after"]["calibration"], rel=1e-5)
    assert metrics["click"]["ece"] == pytest.approx(block["after"]["ece"], rel=1e-5)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["calibration"]["test"]["click"] == block and summary["tested_checkpoint"] == "step_000020"
    # evaluate applies the run's calibration by default (fitted for this step), and reports before / after.
    assert evaluated.summary["calibration"]["tasks"]["click"]["before"] == pytest.approx(block["before"], rel=1e-5)
    assert evaluated.summary["tasks"]["click"]["auc"] == pytest.approx(metrics["click"]["auc"], rel=1e-6)
    assert "calibration" not in raw.summary
    assert raw.summary["tasks"]["click"]["calibration"] == pytest.approx(block["before"]["calibration"], rel=1e-5)
    assert raw.summary["tasks"]["rating"]["rmse"] == pytest.approx(evaluated.summary["tasks"]["rating"]["rmse"])
