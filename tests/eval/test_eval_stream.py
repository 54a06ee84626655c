"""Streamed evaluation (a data spec read chunk by chunk) gives exactly what the whole-bundle evaluation
gives: every entry of eval.json, slices, GAUC, ESMM and calibration blocks included, on 1 and 2 gloo
ranks; the pieces it is built from (interleaved rank layout, compact slices, label checks per piece,
--data CSV/Parquet files) on their own."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.loader import BatchDataset, interleaved_rows
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.schema import ColumnTable, DenseFeature, Jagged, LabelSpec, Schema, SparseFeature
from mtl_torchrec.data.spec import build_bundle, load_spec
from mtl_torchrec.data.spec.stream import SplitStream
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.eval.evaluate import evaluate_run
from mtl_torchrec.eval.scoring import score_rows
from mtl_torchrec.model.esmm import check_esmm_labels
from tests.eval_fixtures import evaluate_1rank, make_frame, spec_dict, train_spec_run, write_case
from tests.ranks import run_ranks

TASKS = ("model.tasks=[{name: click, type: binary},"
         " {name: conversion, esmm_parent: click, esmm_derive_and_label: true}, {name: rating, type: regression}]")


def _frame(n: int = 1200) -> pd.DataFrame:
    """:func:`make_frame` with a sample weight, a device column (top-value slices) and a conversion
    label that is 1 on a few non-clicks (derived to click AND conversion)."""
    frame = make_frame(n=n)
    rng = np.random.default_rng(5)
    frame["w"] = np.round(rng.uniform(0.0, 3.0, n), 1)
    frame["device"] = rng.choice(["phone", "tablet", "desktop", "tv"], n, p=[0.5, 0.25, 0.2, 0.05])
    frame["conversion"] = (rng.random(n) < 0.3).astype(int)
    return frame


def _spec(name: str = "data.csv", **overrides):
    spec = spec_dict(name, **overrides)
    spec["labels"][0]["weight_column"] = "w"
    spec["labels"].append({"task": "conversion", "column": "conversion", "type": "binary"})
    spec["slices"] = [{"column": "item", "cold_warm": True}, {"column": "device", "top": 3}]
    return spec


@pytest.fixture(scope="module")
def stream_run(tmp_path_factory):
    """A run with a weighted task, an ESMM task with derived labels, GAUC groups, data slices and a
    platt calibration, trained on a spec whose chunks (128 rows) are smaller than its test split."""
    tmp = tmp_path_factory.mktemp("streamrun")
    spec = write_case(tmp / "data", _frame(), _spec())
    return train_spec_run(spec, tmp / "run", [TASKS, "train.calibration=platt", "train.max_steps=8"])


def _without_timing(summary):
    return {k: v for k, v in summary.items() if k != "timing"}


def _identical(a, b, key=""):
    """Equal to the last digit (NaN equals NaN), dict keys and list order included."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), key
        for k in a:
            _identical(a[k], b[k], f"{key}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), key
        for i, (x, y) in enumerate(zip(a, b)):
            _identical(x, y, f"{key}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), key
    else:
        assert a == b and type(a) is type(b), (key, a, b)


def _check_rows(whole, streamed):
    for field in ("predictions", "labels", "masks", "weights", "raw_predictions"):
        a, b = getattr(whole.rows, field), getattr(streamed.rows, field)
        assert a.keys() == b.keys(), field
        for task in a:
            np.testing.assert_array_equal(a[task], b[task], err_msg=f"{field}[{task}]")
    np.testing.assert_array_equal(whole.rows.group, streamed.rows.group)
    assert whole.slices.keys() == streamed.slices.keys()
    for name in whole.slices:
        np.testing.assert_array_equal(whole.slices[name], streamed.slices[name], err_msg=name)


KW = dict(slice_columns=["user"], slice_top=4, batch_size=16)


def test_streamed_evaluation_equals_whole_bundle_on_one_rank(stream_run):
    whole = evaluate_1rank(stream_run, stream=False, **KW)
    streamed = evaluate_1rank(stream_run, **KW)
    s = streamed.summary
    # The spec's chunks hold ~13 test rows each: the split arrives in many pieces, and its batches
    # of 16 rows straddle them.
    assert s["rows"] == 120 and load_spec(s["data"]["spec"]).chunk_rows == 128
    assert {"calibration", "slices", "warnings", "notes"} <= set(s)
    assert s["tasks"]["click"]["gauc"] == s["tasks"]["click"]["gauc"] and "weight_sum" in s["tasks"]["click"]
    assert "conversion_given_click" in s["tasks"] and s["calibration"]["method"] == "platt"
    assert any(k.startswith("device=") for k in s["slices"]) and "item=cold" in s["slices"]
    assert len([k for k in s["slices"] if k.startswith("user=")]) == 4
    assert any("esmm_derive_and_label" in n for n in s["notes"])
    _identical(_without_timing(whole.summary), _without_timing(s))
    _check_rows(whole, streamed)


def _rank_main(rank: int, world: int, run_dir: str, stream: bool) -> dict:
    ctx = init_distributed(backend="gloo")
    try:
        return _without_timing(evaluate_run(Path(run_dir), ctx, stream=stream, **KW).summary)
    finally:
        close_distributed(ctx)


@pytest.mark.slow
def test_streamed_evaluation_equals_whole_bundle_on_two_ranks(stream_run):
    whole = run_ranks(_rank_main, 2, str(stream_run), False)
    streamed = run_ranks(_rank_main, 2, str(stream_run), True)
    assert streamed[0]["world_size"] == 2 and streamed[0]["rows"] == 120
    _identical(whole[0], streamed[0])
    # Rank 0 computes every metric from the gathered rows, with no cross-rank reduction: the same
    # numbers as one rank to the last digit (its batches hold the same rows); the other rank gets none.
    one = _without_timing(evaluate_1rank(stream_run, **KW).summary)
    assert one["world_size"] == 1
    _identical({**one, "world_size": 2}, streamed[0])
    assert whole[1] == streamed[1] == {"tasks": {}}


def test_data_files_evaluate_like_a_spec_without_split(stream_run, tmp_path):
    """--data with CSV or Parquet files: read with the run's spec (no split rule: split 'all'), its
    slices kept; the same numbers as a YAML spec of the same file without a split rule."""
    frame = _frame(n=300)
    spec = _spec("fresh.csv")
    del spec["split"]
    yaml_spec = write_case(tmp_path, frame, spec, name="fresh.csv", spec_name="fresh.yaml")
    frame.to_parquet(tmp_path / "fresh.parquet", index=False)
    base = evaluate_1rank(stream_run, data_spec=str(yaml_spec), **KW).summary
    for data in (tmp_path / "fresh.csv", tmp_path / "fresh.parquet"):
        got = evaluate_1rank(stream_run, data_spec=str(data), split="test", **KW).summary
        assert got["split"] == "all" and got["rows"] == 300 and got["data"]["spec"] == str(data)
        _identical(base["tasks"], got["tasks"], str(data))
        _identical(base["slices"], got["slices"], str(data))
    with pytest.raises(FileNotFoundError, match="--data: nothing matches"):
        evaluate_1rank(stream_run, data_spec=str(tmp_path / "nope*.csv"))
    # Columns in another order than in training, and columns the spec does not read: the same numbers.
    frame[list(reversed(frame.columns))].to_csv(tmp_path / "reordered.csv", index=False)
    frame.assign(extra=1, note="x").to_parquet(tmp_path / "extra.parquet", index=False)
    for data in (tmp_path / "reordered.csv", tmp_path / "extra.parquet"):
        got = evaluate_1rank(stream_run, data_spec=str(data), **KW).summary
        _identical(base["tasks"], got["tasks"], str(data))
    # A missing label, mask or weight column: one error naming the file, the column and its spec key.
    frame.drop(columns=["rating"]).to_csv(tmp_path / "nolabel.csv", index=False)
    lacks = r"--data: .*nolabel.csv lacks the label column\(s\) 'rating' \(task 'rating': labels\[1\]\.column\)"
    with pytest.raises(DataError, match=lacks):
        evaluate_1rank(stream_run, data_spec=str(tmp_path / "nolabel.csv"))
    frame.drop(columns=["w"]).to_csv(tmp_path / "noweight.csv", index=False)
    lacks = r"--data: .*noweight.csv lacks the label column\(s\) 'w' \(task 'click': labels\[0\]\.weight_column\);"
    with pytest.raises(DataError, match=lacks):
        evaluate_1rank(stream_run, data_spec=str(tmp_path / "noweight.csv"))
    frame.drop(columns=["price"]).to_csv(tmp_path / "nofeature.csv", index=False)
    with pytest.raises(DataError, match=r"missing feature column\(s\) \['price'\]: 'price' \(dense\[0\].column\)"):
        evaluate_1rank(stream_run, data_spec=str(tmp_path / "nofeature.csv"))


def test_slice_column_errors_come_before_scoring(stream_run):
    with pytest.raises(ConfigError, match="--slice: 'price' is not a categorical"):
        evaluate_1rank(stream_run, slice_columns=["price"])
    with pytest.raises(ConfigError, match=r"--slice: 'tags' is multi-valued .* choose from \['user', 'item'\]"):
        evaluate_1rank(stream_run, slice_columns=["tags"])
    with pytest.raises(ConfigError, match="--split: 'nope' not in the data"):
        evaluate_1rank(stream_run, split="nope")


@pytest.mark.parametrize("n, world, batch", [(103, 1, 8), (103, 2, 8), (103, 3, 5), (7, 4, 2), (64, 2, 16)])
def test_interleaved_layout_covers_every_row_once_in_order(n, world, batch):
    table = ColumnTable({"user": np.arange(n, dtype=np.int64) % 10, "price": np.arange(n, dtype=np.float32),
                         "click": np.zeros(n, dtype=np.float32)})
    schema = Schema(sparse=[SparseFeature("user", 10)], dense=[DenseFeature("price")],
                    labels=[LabelSpec("click", "binary")])
    seen = np.empty(n, dtype=np.int64)
    counts = []
    for rank in range(world):
        ds = BatchDataset(table, schema, batch, shuffle=False, rank=rank, world_size=world, interleave=True)
        real = ds.real_rows()
        got = [b.dense[:r, 0].long().numpy() for b, r in zip(ds, real)]
        assert all(b.batch_size == batch for b in ds) and len(real) == len(ds)
        assert all(int(b.masks["click"][r:].sum()) == 0 for b, r in zip(ds, real))
        mine = np.concatenate(got) if got else np.zeros(0, dtype=np.int64)
        np.testing.assert_array_equal(mine, interleaved_rows(n, batch, rank, world))
        seen[interleaved_rows(n, batch, rank, world)] = mine
        counts.append(len(ds))
    # Every rank runs the same number of steps, as many as the contiguous layout.
    contiguous = BatchDataset(table, schema, batch, False, rank=0, world_size=world)
    assert len(set(counts)) == 1 and counts[0] == len(contiguous)
    np.testing.assert_array_equal(seen, np.arange(n))


class _RowModel(torch.nn.Module):
    """Predicts each row's dense value, so scored rows name themselves."""

    def forward(self, batch):
        class Out:
            predictions = {"click": batch.dense[:, 0]}

        return None, Out()


def test_score_rows_gives_the_same_rows_however_the_split_is_cut():
    from mtl_torchrec.distributed.context import DistContext
    from mtl_torchrec.model.tasks import TaskSpec

    n = 157
    table = ColumnTable({"user": np.arange(n, dtype=np.int64) % 10, "price": np.arange(n, dtype=np.float32),
                         "click": (np.arange(n) % 3 == 0).astype(np.float32),
                         "tags": Jagged.from_lists([[i % 4] * (i % 3) for i in range(n)])})
    schema = Schema(sparse=[SparseFeature("user", 10), SparseFeature("tags", 4, multi_valued=True)],
                    dense=[DenseFeature("price")], labels=[LabelSpec("click", "binary")])
    ctx = DistContext(rank=0, world_size=1, local_world_size=1, device=torch.device("cpu"), owns_group=False)
    tasks = [TaskSpec(name="click", type="binary")]
    whole = score_rows(_RowModel(), tasks, [table], schema, ctx, 16)
    for cuts in ([10, 11, 100], [0, 16, 32, 150], list(range(1, n))):
        edges = [0, *cuts, n]
        pieces = [table.take(np.arange(a, b)) for a, b in zip(edges[:-1], edges[1:])]
        got = score_rows(_RowModel(), tasks, pieces, schema, ctx, 16)
        assert got.total == n
        for key in whole.columns:
            np.testing.assert_array_equal(got.columns[key], whole.columns[key], err_msg=key)
    np.testing.assert_array_equal(whole.columns["p:click"], np.arange(n, dtype=np.float32))


def test_split_stream_equals_the_bundle_split(tmp_path):
    """Pieces of a streamed split are the bundle's split table cut at chunk edges; slices, statistics
    and unknown-id counts are the bundle's; per row only the slice codes stay behind."""
    frame = _frame(n=700).astype({"price": object})
    frame.loc[[3, 50], "device"] = np.nan
    spec_path = write_case(tmp_path, frame, _spec(chunk_rows=64, on_bad_rows="skip"))
    frame.loc[13, "price"] = "cheap"  # a bad row, skipped and counted alike
    frame.to_csv(tmp_path / "data.csv", index=False)
    fitted = build_bundle(load_spec(spec_path))
    fitted.preprocessing.save(tmp_path / "pre")
    pre = Preprocessing.load(tmp_path / "pre")
    bundle = build_bundle(load_spec(spec_path), pre)
    for split in ("train", "test"):
        stream = SplitStream(load_spec(spec_path), Preprocessing.load(tmp_path / "pre"), split)
        pieces = list(stream.pieces())
        assert len(pieces) > 3
        joined = ColumnTable.concat([p.table for p in pieces])
        table = bundle.splits[split]
        assert joined.columns.keys() == table.columns.keys()
        for c in table.columns:
            a, b = table[c], joined[c]
            if isinstance(a, Jagged):
                np.testing.assert_array_equal(a.values, b.values)
                np.testing.assert_array_equal(a.lengths, b.lengths)
            else:
                np.testing.assert_array_equal(a, b, err_msg=c)
        masks = stream.slice_masks()
        assert list(masks) == list(bundle.slices[split]) and any(k.startswith("device=") for k in masks)
        for name, mask in bundle.slices[split].items():
            np.testing.assert_array_equal(mask, masks[name], err_msg=name)
        _identical(bundle.preprocessing.stats, stream.stats())
        assert stream.stats()["skipped_rows"] == 1
    # A run trained without text: text columns are left out of the tables and of the model's data.
    plain = SplitStream(load_spec(spec_path), pre, "test", text=False)
    assert not plain.model_data.texts and "title" not in next(plain.pieces()).table


def test_label_check_per_piece_words_errors_as_on_the_whole_split(tmp_path):
    from mtl_torchrec.model.config import TaskConfig
    from mtl_torchrec.model.esmm import LabelCheck

    n = 40
    table = ColumnTable({"click": (np.arange(n) % 2).astype(np.float32), "conversion": np.zeros(n, dtype=np.float32)})
    table.columns["conversion"][[4, 9, 10, 22, 30, 31, 38]] = 1.0  # 4, 10, 22, 30, 38: non-clicks
    schema = Schema(sparse=[], dense=[], labels=[LabelSpec("click", "binary"), LabelSpec("conversion", "binary")])
    tasks = [TaskConfig(name="click"), TaskConfig(name="conversion", esmm_parent="click")]
    bundle = DataBundle(schema=schema, splits={"test": table},
                        row_origin=lambda s, rows: [f"f line {r + 2}" for r in rows])
    with pytest.raises(DataError) as whole:
        check_esmm_labels(bundle, tasks, ["test"])
    check = LabelCheck(tasks, {"click": "click", "conversion": "conversion"})
    assert check.may_fail()
    for lo, hi in ((0, 7), (7, 23), (23, 23), (23, 40)):
        check.check("test", table.take(np.arange(lo, hi)), lo,
                    origin=lambda rows, lo=lo: [f"f line {lo + r + 2}" for r in rows])
    assert check.failed
    with pytest.raises(DataError) as pieces:
        check.finish()
    assert str(pieces.value) == str(whole.value)
    assert ("5 row(s) have conversion = 1 where click = 0, e.g. test row 4 (f line 6), test row 10 (f line 12)"
            in str(whole.value))
    # Derived: labels set in each piece, one note with the same count.
    derive = [TaskConfig(name="click"), TaskConfig(name="conversion", esmm_parent="click", esmm_derive_and_label=True)]
    check = LabelCheck(derive, {"click": "click", "conversion": "conversion"})
    assert not check.may_fail()
    parts = [table.take(np.arange(lo, hi)) for lo, hi in ((0, 20), (20, 40))]
    for lo, part in zip((0, 20), parts):
        check.check("test", part, lo)
    assert not check.failed
    assert check.finish() == check_esmm_labels(DataBundle(schema=schema, splits={"test": table.take(np.arange(n))}),
                                               derive, ["test"])
    assert sum(float(p["conversion"].sum()) for p in parts) == 2.0


def test_a_split_the_rule_leaves_empty_is_one_error_before_anything_else(stream_run, tmp_path, caplog):
    """Streamed evaluation of a split that the split rule leaves without rows: one error naming the
    split and the rows per split read, before any warning (empty slices) or file; never a NaN eval.json."""
    frame = _frame(n=300).assign(split="train")
    spec = write_case(tmp_path, frame, _spec("all_train.csv"), name="all_train.csv", spec_name="all_train.yaml")
    caplog.clear()
    with pytest.raises(DataError, match=r"^split 'test' has no rows \(of the 300 rows read, per split: "
                                        r"\{'train': 300, 'val': 0, 'test': 0\}\): nothing to evaluate"):
        evaluate_1rank(stream_run, data_spec=str(spec), split="test", progress=True)
    assert not [m for m in caplog.messages if "warning" in m]


def test_rows_skipped_as_bad_are_a_warning_in_evaluate_and_predict(stream_run, tmp_path, caplog):
    """Rows dropped under ``on_bad_rows: skip`` have no metric and no prediction: evaluate lists them in
    eval.json's warnings (and logs them), predict logs the same line; nothing when none is skipped."""
    from mtl_torchrec.serve.predict import predict_files
    from mtl_torchrec.serve.runs import load_run

    frame = _frame(n=200).astype({"price": object})
    frame.loc[[4, 77], "price"] = "cheap"
    del frame["split"]
    spec = _spec("bad.csv", on_bad_rows="skip")
    del spec["split"]
    path = write_case(tmp_path, frame, spec, name="bad.csv", spec_name="bad.yaml")
    line = ("2 bad rows skipped while reading the files (on_bad_rows: skip; counted over every row read, all splits); "
            "by reason: price: not a finite number: 2")
    got = evaluate_1rank(stream_run, data_spec=str(path), **KW).summary
    assert got["rows"] == 198 and got["warnings"][0] == line
    assert f"warning: {line}" in caplog.messages
    caplog.clear()
    ctx = init_distributed()
    try:
        written = predict_files(load_run(stream_run), str(path), tmp_path / "p.parquet", ctx)
    finally:
        close_distributed(ctx)
    assert written == 198 and f"warning: {line}" in caplog.messages
    # Every row bad: one error saying why there is nothing, and no output file (not an empty one).
    frame["price"] = "cheap"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"has no rows.*200 bad rows skipped"):
        evaluate_1rank(stream_run, data_spec=str(path), **KW)
    ctx = init_distributed()
    try:
        with pytest.raises(DataError, match=r"has no rows to score; 200 bad rows skipped"):
            predict_files(load_run(stream_run), str(path), tmp_path / "none.parquet", ctx)
    finally:
        close_distributed(ctx)
    assert not (tmp_path / "none.parquet").exists()
    clean = _frame(n=50)
    del clean["split"]
    clean_path = write_case(tmp_path / "clean", clean, spec, name="bad.csv", spec_name="clean.yaml")
    assert not any("skipped" in w for w in evaluate_1rank(stream_run, data_spec=str(clean_path), **KW).summary["warnings"])


def test_predict_reads_no_label_so_a_bad_label_keeps_its_row(stream_run, tmp_path):
    """Scoring reads features only: a label cell that evaluation refuses (or skips) costs predict nothing."""
    from mtl_torchrec.serve.predict import predict_files
    from mtl_torchrec.serve.runs import load_run

    frame = _frame(n=50)
    del frame["split"]
    frame.loc[3, "click"] = "maybe"
    spec = _spec("lab.csv", on_bad_rows="skip")
    del spec["split"]
    path = write_case(tmp_path, frame, spec, name="lab.csv", spec_name="lab.yaml")
    assert evaluate_1rank(stream_run, data_spec=str(path), **KW).summary["rows"] == 49
    ctx = init_distributed()
    try:
        written = predict_files(load_run(stream_run), str(path), tmp_path / "p.parquet", ctx)
    finally:
        close_distributed(ctx)
    assert written == 50 and pd.read_parquet(tmp_path / "p.parquet")["row"].tolist() == list(range(50))
