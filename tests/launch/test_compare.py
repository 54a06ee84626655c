"""``mtl-torchrec compare-single-task`` end to end (1 process) and its budget matching."""

import json

import pytest

from mtl_torchrec.config import load_config
from mtl_torchrec.data.synthetic import synthetic_schema
from mtl_torchrec.launch.cli import main
from mtl_torchrec.launch.compare_cmd import compare_rows, dense_parameter_count, matched_layers
from tests.mtl_helpers import SMALL, esmm_tasks


def test_matched_layers_hit_the_budget():
    cfg = load_config(None, SMALL + ["model.mmoe.expert_layers=[32, 16]"])
    schema = synthetic_schema(cfg.data.synthetic)
    target = dense_parameter_count(cfg.model, schema)
    layers, count = matched_layers(cfg.model, cfg.model.tasks[0], schema, target)
    assert len(layers) == 2 and layers[0] > 32
    assert count == pytest.approx(target, rel=0.05)
    small, small_count = matched_layers(cfg.model, cfg.model.tasks[0], schema, target // 3)
    assert small_count == pytest.approx(target / 3, rel=0.1) and small[0] < layers[0]


def test_compare_rows_direction():
    multi = {"click": {"auc": 0.7, "logloss": 0.5}, "rating": {"rmse": 1.0, "mae": 0.8}}
    single = {"click": {"click": {"auc": 0.6, "logloss": 0.4}}, "rating": {"rating": {"rmse": 1.2, "mae": 0.8}}}
    rows = compare_rows(multi, single, {"click": "binary", "rating": "regression"})
    got = {(r["task"], r["metric"]): r["better"] for r in rows}
    assert got == {
        ("click", "auc"): "multi-task",
        ("click", "logloss"): "single-task",
        ("rating", "rmse"): "multi-task",
        ("rating", "mae"): "tie",
    }
    assert rows[0]["difference"] == pytest.approx(0.1)


@pytest.mark.slow
def test_compare_single_task_command(tmp_path, capsys):
    args = ["compare-single-task", "--budget", "total"] + SMALL + esmm_tasks() + [
        f"run_dir={tmp_path}", "model.backbone=ple", "train.diagnostics_every=0"
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "conversion" in printed and "better" in printed
    report = json.loads((tmp_path / "compare.json").read_text())
    assert {(r["task"], r["metric"]) for r in report["rows"]} >= {("click", "auc"), ("conversion", "auc"), ("rating", "rmse")}
    total = sum(s["dense_params"] for s in report["single_task"].values())
    assert total == pytest.approx(report["multi_task"]["dense_params"], rel=0.1)
    for task in ("click", "conversion", "rating"):
        assert (tmp_path / f"single_{task}" / "metrics.json").is_file()
        assert list(report["single_task"][task]["metrics"]) == [task]
    assert (tmp_path / "multitask" / "diagnostics.json").is_file()
    assert "gradient_cosine" in report["multi_task"]
    assert (tmp_path / "compare.md").read_text().startswith("Multi-task (ple")
