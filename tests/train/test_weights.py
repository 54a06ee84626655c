"""Sample weights (``labels[i].weight_column``): read and checked from the data spec, carried in the
batch, and used by the loss and every metric, where a row of weight 2 counts exactly as two copies."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

from mtl_torchrec.config import ConfigError, load_config
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.loader import BatchDataset, make_loader
from mtl_torchrec.data.schema import ColumnTable, DataError, LabelSpec, Schema, SparseFeature
from mtl_torchrec.data.spec import build_bundle, load_spec, weight_column
from mtl_torchrec.eval import plots
from mtl_torchrec.eval.metrics import TaskMetrics, binary_auc, grouped_auc
from mtl_torchrec.eval.plots import residual_bins
from mtl_torchrec.model.builder import build_train_module
from mtl_torchrec.model.tasks import TaskSpec, task_losses
from mtl_torchrec.workflows.evaluation import write_outputs
from tests.eval.test_metrics import _batch
from tests.eval_fixtures import TRAIN_CONFIG, evaluate_1rank, make_frame, spec_dict, train_spec_run, write_case

# Metrics that must agree between a weighted evaluation and one of duplicated rows.
_SAME = ("auc", "gauc", "gauc_unweighted", "groups", "groups_used", "groups_one_class", "logloss", "ne",
         "calibration", "positive_rate", "mean_prediction", "rmse", "mse", "mae", "mean_label")


def _weighted_spec(**overrides):
    spec = spec_dict(**overrides)
    for lab in spec["labels"]:
        lab["weight_column"] = "w"
    return spec


def _weighted_frame(n=1000, seed=0):
    frame = make_frame(n=n, seed=seed)
    # Integer weights, 0 included, so that each row can be written out as that many copies.
    frame["w"] = np.random.default_rng(seed + 7).choice([0, 1, 1, 2, 3], n)
    return frame


def _duplicated(frame):
    """Each row ``w`` times with weight 1 (weight 0: dropped)."""
    out = frame.loc[frame.index.repeat(frame["w"])].reset_index(drop=True)
    out["w"] = 1
    return out


# ---------------------------------------------------------------------------------------------- reading


def test_weights_are_read_into_the_table_and_the_batch(tmp_path):
    frame = _weighted_frame(n=300)
    frame["w"] = frame["w"] * 0.5
    bundle = build_bundle(load_spec(write_case(tmp_path, frame, _weighted_spec())))
    bundle.validate()
    assert bundle.schema.label("click").weight == weight_column("click") == "weight:click"
    train = bundle.splits["train"]
    raw = frame[frame.split == "train"]
    np.testing.assert_array_equal(train[weight_column("click")], raw.w.to_numpy(dtype=np.float32))
    np.testing.assert_array_equal(train[weight_column("rating")], raw.w.to_numpy(dtype=np.float32))
    ds = BatchDataset(bundle.splits["test"], bundle.schema, batch_size=16, shuffle=False)
    batches = list(make_loader(ds))
    got = torch.cat([b.weights["click"] for b in batches])
    test_w = frame[frame.split == "test"].w.to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(got[: len(test_w)].numpy(), test_w)
    # Padding rows weigh nothing.
    assert float(got[len(test_w):].abs().sum()) == 0.0
    # A spec without weight columns: no weights in the batch, as before.
    plain = build_bundle(load_spec(write_case(tmp_path / "plain", frame)))
    assert plain.schema.label("click").weight is None
    assert Batch.from_table(plain.splits["test"], plain.schema).weights is None


@pytest.mark.parametrize("cell, reason", [
    ("-1", "negative sample weight"),
    ("heavy", "sample weight is not a finite number"),
    ("nan", "sample weight is not a finite number"),
    ("inf", "sample weight is not a finite number"),
    ("1e39", "sample weight is not a finite number"),
    ("", "missing sample weight of task 'click'"),
])
def test_bad_weights_are_bad_rows_naming_file_line_and_column(tmp_path, cell, reason):
    frame = _weighted_frame(n=60).astype({"w": object})
    frame.loc[4, "w"] = cell
    spec = write_case(tmp_path, frame, _weighted_spec())
    with pytest.raises(DataError) as e:
        build_bundle(load_spec(spec))
    # Row 4 is file line 6 (header line 1).
    assert str(e.value).startswith(f"{tmp_path / 'data.csv'} line 6 column 'w': {reason}")
    assert "on_bad_rows: skip" in str(e.value)


def test_bad_weights_skipped_and_counted(tmp_path):
    frame = _weighted_frame(n=200).astype({"w": object})
    frame.loc[[3, 10], "w"] = "-2"
    frame.loc[20, "w"] = "x"
    bundle = build_bundle(load_spec(write_case(tmp_path, frame, _weighted_spec(on_bad_rows="skip"))))
    assert bundle.preprocessing.stats["skipped_by_reason"] == {
        "w: negative sample weight (weights must be >= 0)": 2, "w: sample weight is not a finite number": 1,
    }
    assert sum(len(t) for t in bundle.splits.values()) == 197


def test_weight_column_must_not_be_the_label_column(tmp_path):
    spec = spec_dict()
    spec["labels"][0]["weight_column"] = "click"
    with pytest.raises(ConfigError, match=r"labels\[0\]\.weight_column: 'click' is the task's label"):
        load_spec(write_case(tmp_path, spec=spec))


def test_schema_validate_refuses_negative_or_missing_weights():
    schema = Schema(sparse=[SparseFeature("f", 3)], dense=[], labels=[LabelSpec("y", "binary", weight="wy")])
    cols = {"f": np.zeros(3, dtype=np.int64), "y": np.array([0.0, 1.0, 1.0])}
    with pytest.raises(DataError, match=r"missing column\(s\) \['wy'\]"):
        schema.validate(ColumnTable(cols))
    with pytest.raises(DataError, match=r"weight column 'wy' row 1: sample weight -1.0 of task 'y' must be"):
        schema.validate(ColumnTable({**cols, "wy": np.array([1.0, -1.0, np.nan])}))
    schema.validate(ColumnTable({**cols, "wy": np.array([1.0, 0.0, 2.5])}))


# ---------------------------------------------------------------------------------------------- loss and metrics


def test_loss_of_weighted_rows_equals_duplicated_rows(tmp_path):
    frame = _weighted_frame(n=600)
    spec = _weighted_spec()
    weighted = build_bundle(load_spec(write_case(tmp_path / "w", frame, spec)))
    # Vocabularies and normalisers come from the training split: keep it, duplicate the test rows.
    dup = pd.concat([frame[frame.split != "test"], _duplicated(frame[frame.split == "test"])], ignore_index=True)
    duplicated = build_bundle(load_spec(write_case(tmp_path / "d", dup, spec)))
    cfg = load_config(None, TRAIN_CONFIG)
    torch.manual_seed(0)
    module = build_train_module(cfg.model, weighted)
    a, b = Batch.from_table(weighted.splits["test"], weighted.schema), Batch.from_table(
        duplicated.splits["test"], duplicated.schema)
    assert a.batch_size < b.batch_size
    with torch.no_grad():
        la = task_losses(module.model(a), a, module.tasks)
        lb = task_losses(module.model(b), b, module.tasks)
    for t in module.tasks:
        torch.testing.assert_close(la[t.name], lb[t.name], rtol=1e-6, atol=0), t.name


def test_task_metrics_weighted_equal_duplicated_and_sklearn():
    rng = np.random.default_rng(5)
    n = 1200
    tasks = [TaskSpec("click", "binary"), TaskSpec("rating", "regression")]
    p = rng.uniform(0.01, 0.99, n).astype(np.float32)
    y = (rng.random(n) < p).astype(np.float32)
    rp = rng.normal(3, 1, n).astype(np.float32)
    r = rng.normal(3, 1.2, n).astype(np.float32)
    mask = (rng.random(n) < 0.8).astype(np.float32)
    w = rng.choice([0, 1, 2, 3], n).astype(np.float32)
    rep = np.repeat(np.arange(n), w.astype(int))

    def run(rows, weights):
        m = TaskMetrics(tasks, world_size=1, rank=0, batch_size=len(rows))
        batch = _batch({"click": y[rows], "rating": r[rows]}, {"click": mask[rows], "rating": mask[rows]})
        if weights is not None:
            batch.weights = {"click": torch.from_numpy(weights), "rating": torch.from_numpy(weights)}
        m.update({"click": torch.from_numpy(p[rows]), "rating": torch.from_numpy(rp[rows])}, batch)
        return m.compute()

    weighted, duplicated = run(np.arange(n), w), run(rep, None)
    for task, values in weighted.items():
        for key, v in values.items():
            assert v == pytest.approx(duplicated[task][key], rel=1e-6), (task, key)
    c = mask > 0
    assert weighted["click"]["logloss"] == pytest.approx(log_loss(y[c], p[c], sample_weight=w[c]), rel=1e-5)
    assert weighted["click"]["auc"] == pytest.approx(roc_auc_score(y[c], p[c], sample_weight=w[c]), abs=1e-5)
    assert weighted["click"]["calibration"] == pytest.approx((w * p)[c].sum() / (w * y)[c].sum(), rel=1e-5)
    assert weighted["rating"]["mse"] == pytest.approx(mean_squared_error(r[c], rp[c], sample_weight=w[c]), rel=1e-5)
    assert weighted["rating"]["mae"] == pytest.approx(mean_absolute_error(r[c], rp[c], sample_weight=w[c]), rel=1e-5)
    assert weighted["click"]["count"] == pytest.approx(float(w[c].sum()))


@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_auc_and_gauc_equal_duplicated_rows_and_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 1500
    g = rng.integers(0, 80, n) * 31
    p = np.round(rng.random(n) * 20) / 20  # many ties
    y = (rng.random(n) < 0.2 + 0.6 * p).astype(float)
    w = rng.choice([0, 1, 2, 5], n).astype(float)
    rep = np.repeat(np.arange(n), w.astype(int))
    assert binary_auc(p, y, w) == pytest.approx(binary_auc(p[rep], y[rep]), abs=1e-12)
    kept = w > 0
    got = grouped_auc(p[kept], y[kept], g[kept], w[kept])
    want = grouped_auc(p[rep], y[rep], g[rep])
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    # Brute force: every (positive, negative) pair of a group, weighted w_pos * w_neg, ties half.
    aucs, sizes = [], []
    for key in np.unique(g):
        sel = (g == key) & kept
        pos, neg = sel & (y == 1), sel & (y == 0)
        if not pos.any() or not neg.any():
            continue
        d = p[pos][:, None] - p[neg][None, :]
        pair_w = w[pos][:, None] * w[neg][None, :]
        aucs.append(((d > 0) + 0.5 * (d == 0)).ravel() @ pair_w.ravel() / pair_w.sum())
        sizes.append(w[sel].sum())
        assert aucs[-1] == pytest.approx(roc_auc_score(y[sel], p[sel], sample_weight=w[sel]), abs=1e-12)
    assert got["gauc"] == pytest.approx(np.dot(aucs, sizes) / np.sum(sizes), abs=1e-12)
    assert got["gauc_unweighted"] == pytest.approx(np.mean(aucs), abs=1e-12)


def test_regression_residual_bins_weighted_equal_duplicated_rows_and_brute_force():
    rng = np.random.default_rng(3)
    n = 900
    pred = np.round(rng.uniform(1, 5, n), 1)  # ties across bucket edges
    label = np.clip(np.round(pred + rng.normal(0, 0.8, n)), 1, 5)
    w = rng.choice([1, 2, 3], n).astype(float)
    rep = np.repeat(np.arange(n), w.astype(int))
    got, want = residual_bins(pred, label, w), residual_bins(pred[rep], label[rep])
    np.testing.assert_array_equal(got["weight"], want["count"])
    for key in ("mean_prediction", "mean_residual", "sd_residual"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12, err_msg=key)
    assert got["count"].sum() == n and len(got["count"]) > 5
    # Brute force on the duplicated rows: buckets are contiguous ranges of the prediction.
    order = np.sort(pred[rep])
    start = 0
    for k, c in enumerate(want["count"].astype(int)):
        p = order[start:start + c]
        sel = (pred[rep] >= p[0]) & (pred[rep] <= p[-1])
        res = label[rep][sel] - pred[rep][sel]
        assert sel.sum() == c
        assert want["mean_residual"][k] == pytest.approx(res.mean(), abs=1e-12)
        assert want["sd_residual"][k] == pytest.approx(res.std(), abs=1e-12)
        start += c


# ---------------------------------------------------------------------------------------------- a weighted run


@pytest.fixture(scope="module")
def weighted_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weighted")
    frame = _weighted_frame(n=1000)
    spec = write_case(tmp / "data", frame, _weighted_spec())
    dup = pd.concat([frame[frame.split != "test"], _duplicated(frame[frame.split == "test"])], ignore_index=True)
    dup_spec = write_case(tmp / "dup", dup, _weighted_spec())
    return train_spec_run(spec, tmp / "run"), spec, dup_spec


def test_weighted_run_trains_and_every_metric_equals_duplicated_rows(weighted_run, tmp_path, monkeypatch):
    run_dir, spec, dup_spec = weighted_run
    a = evaluate_1rank(run_dir, data_spec=str(spec))
    b = evaluate_1rank(run_dir, data_spec=str(dup_spec))
    for task, ta in a.summary["tasks"].items():
        tb = b.summary["tasks"][task]
        assert ta["weight_sum"] == tb["count"] > ta["count"], task
        for key in _SAME:
            if key in ta:
                assert ta[key] == pytest.approx(tb[key], rel=1e-6, abs=1e-12), (task, key)
    for name, sl in a.summary["slices"].items():
        for task, ta in sl["tasks"].items():
            tb = b.summary["slices"][name]["tasks"][task]
            for key in _SAME:
                if key in ta:
                    assert ta[key] == pytest.approx(tb[key], rel=1e-6, abs=1e-12), (name, task, key)
    # Against sklearn's sample_weight on the scored rows.
    rows = a.rows
    m = rows.masks["click"]
    w, p, y = rows.weights["click"][m], rows.predictions["click"][m].astype(np.float64), rows.labels["click"][m]
    click = a.summary["tasks"]["click"]
    assert click["auc"] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-12)
    assert click["logloss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), sample_weight=w), rel=1e-4)
    # The regression plot is weighted: its residual buckets equal those of the duplicated rows.
    drawn = {}
    real = plots.plot_regression

    def spy(pred, label, task, path, weight=None, bins=10):
        drawn[path.parents[1].name] = (weight is not None, residual_bins(pred, label, weight, bins))
        return real(pred, label, task, path, weight, bins)

    monkeypatch.setattr(plots, "plot_regression", spy)
    out = write_outputs(a, tmp_path / "out")
    write_outputs(b, tmp_path / "dup")
    report = (out / "report.md").read_text()
    assert "weighted by its sample weights" in report
    assert (out / "plots" / "regression_rating.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(plots/regression_rating.png)" in report
    assert drawn["out"][0] and drawn["out"][1]["weight"].sum() == a.summary["tasks"]["rating"]["weight_sum"]
    for key in ("mean_prediction", "mean_residual", "sd_residual", "weight"):
        np.testing.assert_allclose(drawn["out"][1][key], drawn["dup"][1][key], rtol=1e-6, err_msg=key)
    assert json.loads((out / "eval.json").read_text())["tasks"]["click"]["weight_sum"] == click["weight_sum"]
