"""The YAML data spec: parsing, errors that name file/line/column, vocabularies, normalisers,
saved preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from mtl_torchrec.config import ConfigError, DataConfig
from mtl_torchrec.data.normalizer import Normalizer
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.schema import DataError, Jagged
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.data.spec import build_bundle, load_spec
from mtl_torchrec.data.spec.checks import check_files, check_label_column, check_slice, check_split_rule
from mtl_torchrec.data.spec.kinds.ids import SparseColumn, check_sparse_column
from mtl_torchrec.data.spec.kinds.text import TextFeatureSpec, check_text_feature
from mtl_torchrec.data.spec.sections import LabelColumn, SliceSpec, SplitRule
from mtl_torchrec.data.vocabulary import Vocabulary
from tests.eval_fixtures import make_frame, spec_dict, write_case


def test_spec_builds_schema_and_tables(tmp_path):
    frame = make_frame()
    bundle = build_bundle(load_spec(write_case(tmp_path, frame)))
    bundle.validate()
    assert {k: len(v) for k, v in bundle.splits.items()} == {"train": 480, "val": 60, "test": 60}
    assert bundle.schema.sparse_names == ["user", "item", "tags", "title_text"]
    assert bundle.schema.label("rating").maskable
    tr = bundle.splits["train"]
    raw = frame[frame.split == "train"]
    np.testing.assert_array_equal(tr["click"], (raw.click == "yes").to_numpy(dtype=np.float32))
    np.testing.assert_array_equal(np.isnan(tr["rating"]), raw.rating.isna().to_numpy())
    assert isinstance(tr["tags"], Jagged)
    np.testing.assert_array_equal(tr["tags"].lengths, [len([t for t in s.split("|") if t]) for s in raw.tags])
    # Same raw group value -> same group id; different -> different.
    g = tr[bundle.schema.group]
    users = raw.user.to_numpy()
    assert len(np.unique(g)) == len(np.unique(users))
    # Each row reads its own text (per-row text feature "title_text"); row 0 of its table is no text.
    table = bundle.texts["title_text"]
    assert bundle.schema.text_features[0].name == "title_text" and table.kind == "row"
    assert [table.texts[r] for r in tr["title_text"][:20]] == [t or None for t in raw.title.iloc[:20]]
    assert table.texts[0] is None


def test_parquet_in_small_chunks_equals_csv(tmp_path):
    frame = make_frame()
    a = build_bundle(load_spec(write_case(tmp_path / "csv", frame)))
    b = build_bundle(load_spec(write_case(tmp_path / "pq", frame, spec=spec_dict("data.parquet", chunk_rows=37),
                                          name="data.parquet")))
    for split in a.splits:
        for col in a.splits[split].columns:
            x, y = a.splits[split][col], b.splits[split][col]
            if isinstance(x, Jagged):
                np.testing.assert_array_equal(x.values, y.values)
                np.testing.assert_array_equal(x.lengths, y.lengths)
            else:
                np.testing.assert_allclose(x, y, rtol=1e-6)


def test_build_vocab_min_count_and_oov(tmp_path):
    frame = make_frame()
    frame.loc[frame.split == "test", "item"] = "never_seen_in_train"
    spec = spec_dict(sparse=[{"column": "user", "vocab": "build", "min_count": 12},
                             {"column": "item", "vocab": "build"}])
    bundle = build_bundle(load_spec(write_case(tmp_path, frame, spec)))
    vocab = bundle.preprocessing.vocabs["user"]
    counts = frame[frame.split == "train"].user.value_counts()
    assert sorted(vocab.tokens) == sorted(counts[counts >= 12].index)
    assert bundle.schema.sparse[0].num_embeddings == len(vocab.tokens) + 1
    rare = counts[counts < 12].index
    train_users = frame[frame.split == "train"].user.to_numpy()
    ids = bundle.splits["train"]["user"]
    assert (ids[np.isin(train_users, rare)] == 0).all() and (ids[~np.isin(train_users, rare)] > 0).all()
    assert (bundle.splits["test"]["item"] == 0).all()
    # cold_warm slice: every test item is cold.
    assert bundle.slices["test"]["item=cold"].all() and not bundle.slices["test"]["item=warm"].any()


def test_vocab_modes_file_hash_identity(tmp_path):
    v = Vocabulary.build({"a": 5, "b": 1, "c": 3}, min_count=2)
    assert v.tokens == ["a", "c"]
    np.testing.assert_array_equal(v.lookup(np.array(["c", "zzz", None], dtype=object)), [2, 0, 0])
    h = Vocabulary.hashed(10)
    ids = h.lookup(np.array(["x", "y", "x", None], dtype=object))
    assert ids[0] == ids[2] and ids[3] == 0 and ((ids[:3] >= 1) & (ids[:3] < 10)).all()
    (tmp_path / "v.txt").write_text("p\nq\n", encoding="utf-8")
    f = Vocabulary.from_file(tmp_path / "v.txt")
    np.testing.assert_array_equal(f.lookup(np.array(["q", "p", "r"], dtype=object)), [2, 1, 0])
    (tmp_path / "dup.txt").write_text("p\nq\np\n", encoding="utf-8")
    with pytest.raises(DataError, match="appears twice"):
        Vocabulary.from_file(tmp_path / "dup.txt")
    ident = Vocabulary.identity(5)
    np.testing.assert_array_equal(ident.lookup(np.array(["0", "4", "5", "1.5", None], dtype=object)), [0, 4, -1, -1, -1])
    # Round trips through JSON give the same mapping.
    for voc in (v, h, f, ident):
        back = Vocabulary.from_json(json.loads(json.dumps(voc.to_json())))
        probe = np.array(["a", "c", "x", "p", "3", None], dtype=object)
        np.testing.assert_array_equal(back.lookup(probe), voc.lookup(probe))


def test_hash_is_stable_across_processes(tmp_path):
    import os
    import subprocess
    import sys

    code = ("import numpy as np; from mtl_torchrec.data.vocabulary import Vocabulary; "
            "print(list(Vocabulary.hashed(1000).lookup(np.array(['alpha','beta'], dtype=object))))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(s)}).stdout
            for s in (1, 2)}
    assert len(outs) == 1


def test_normaliser_fitted_on_train_only(tmp_path):
    frame = make_frame()
    frame.loc[frame.split != "train", "price"] = 1e6
    spec = spec_dict(dense=[{"column": "price", "normalize": "standard"}])
    bundle = build_bundle(load_spec(write_case(tmp_path, frame, spec)))
    norm = bundle.preprocessing.normalizers["price"]
    train_price = frame[frame.split == "train"].price.to_numpy()
    assert norm.count == len(train_price)
    assert norm.mean == pytest.approx(train_price.mean())
    assert norm.std == pytest.approx(train_price.std(), rel=1e-9)
    np.testing.assert_allclose(bundle.splits["train"]["price"], (train_price - train_price.mean()) / train_price.std(),
                               rtol=1e-5, atol=1e-5)
    assert bundle.splits["test"]["price"].min() > 10  # far outside the train distribution, not refitted


def test_normaliser_modes_and_fill():
    n = Normalizer("minmax", fill_missing="mean")
    n.update(np.array([2.0, 4.0, np.nan]))
    np.testing.assert_allclose(n.transform(np.array([2.0, 4.0, np.nan])), [0.0, 1.0, 0.5])
    z = Normalizer("log_standard", fill_missing="zero")
    z.update(np.array([0.0, 10.0, 100.0]))
    out = z.transform(np.array([np.nan, 10.0]))
    assert out[0] == 0.0 and np.isfinite(out[1])


def test_saved_preprocessing_round_trip_reproduces_tables(tmp_path):
    spec_path = write_case(tmp_path, make_frame())
    bundle = build_bundle(load_spec(spec_path))
    bundle.preprocessing.save(tmp_path / "run" / "preprocessing")
    saved = (tmp_path / "run" / "preprocessing" / "preprocessing.json").read_text()
    assert "pickle" not in saved and json.loads(saved)["format_version"] == 1
    loaded = Preprocessing.load(tmp_path / "run" / "preprocessing")
    # New data with a different distribution is mapped with the saved (training-time) mapping.
    other = make_frame(seed=5)
    spec2 = spec_dict("other.csv")
    del spec2["split"]
    again = build_bundle(load_spec(write_case(tmp_path, other, spec2, name="other.csv", spec_name="other.yaml")), loaded)
    assert set(again.splits) == {"all"}
    assert again.preprocessing.normalizers["price"].mean == bundle.preprocessing.normalizers["price"].mean
    users = other.user.to_numpy()
    ids = again.splits["all"]["user"]
    vocab = bundle.preprocessing.vocabs["user"]
    np.testing.assert_array_equal(ids, vocab.lookup(users.astype(object)))
    # Same files, loaded mapping: identical tables.
    same = build_bundle(load_spec(spec_path), loaded)
    for split, table in bundle.splits.items():
        np.testing.assert_array_equal(same.splits[split]["user"], table["user"])
        np.testing.assert_array_equal(same.splits[split]["price"], table["price"])


def test_bad_value_error_names_file_line_and_column(tmp_path):
    frame = make_frame()
    frame["price"] = frame["price"].astype(object)
    frame.loc[7, "price"] = "cheap"
    path = write_case(tmp_path, frame)
    with pytest.raises(DataError) as e:
        build_bundle(load_spec(path))
    msg = str(e.value)
    # Row 7 is the 9th line of the file (header is line 1).
    assert "data.csv line 9" in msg and "'price'" in msg and "cheap" in msg


def test_bad_rows_skipped_and_counted_when_opted_in(tmp_path):
    frame = make_frame()
    frame["price"] = frame["price"].astype(object)
    frame.loc[[3, 8, 200], "price"] = "n/a?"
    frame.loc[5, "click"] = "maybe"
    path = write_case(tmp_path, frame, spec_dict(on_bad_rows="skip"))
    bundle = build_bundle(load_spec(path))
    stats = bundle.preprocessing.stats
    assert stats["skipped_rows"] == 4
    assert stats["skipped_by_reason"] == {"price: not a finite number": 3,
                                          "click: value is neither positive nor negative": 1}
    # The line training prints (and evaluate and predict give for their rows): skipped rows are not silent.
    assert stats["warnings"] == ["4 bad rows skipped while reading the files (on_bad_rows: skip; counted over every "
                                 "row read, all splits); by reason: price: not a "
                                 "finite number: 3, click: value is neither positive nor negative: 1"]
    assert sum(len(t) for t in bundle.splits.values()) == len(frame) - 4
    # Every row bad: the error says the rows were skipped, not only that the split is empty.
    frame["price"] = "n/a?"
    path = write_case(tmp_path, frame, spec_dict(on_bad_rows="skip"))
    with pytest.raises(DataError, match=r"training split has no rows .*; 600 bad rows skipped .*not a finite number"):
        build_bundle(load_spec(path))


def test_label_mapping_threshold_and_missing_label(tmp_path):
    frame = make_frame()
    spec = spec_dict(labels=[{"task": "good", "column": "rating", "type": "binary", "threshold": 4, "maskable": True}],
                     slices=[], text=[])
    bundle = build_bundle(load_spec(write_case(tmp_path, frame, spec)))
    y = bundle.splits["train"]["good"]
    r = frame[frame.split == "train"].rating.to_numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(r))
    np.testing.assert_array_equal(y[~np.isnan(r)], (r[~np.isnan(r)] >= 4).astype(np.float32))
    spec["labels"][0]["maskable"] = False
    with pytest.raises(DataError, match="line .* column 'rating': missing label"):
        build_bundle(load_spec(write_case(tmp_path, frame, spec)))


def test_spec_errors_name_the_key(tmp_path):
    write_case(tmp_path)
    bad = spec_dict()
    bad["sparse"][0]["vocabb"] = "build"
    (tmp_path / "s1.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"s1.yaml: unknown config key 'sparse\[0\].vocabb'"):
        load_spec(tmp_path / "s1.yaml")
    bad = spec_dict()
    bad["sparse"][2] = {"column": "tags", "vocab": "hash"}
    (tmp_path / "s2.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"sparse\[2\].hash_buckets"):
        load_spec(tmp_path / "s2.yaml")
    bad = spec_dict()
    del bad["sparse"][0]["vocab"]
    (tmp_path / "s3.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="s3.yaml.*vocab"):
        load_spec(tmp_path / "s3.yaml")
    bad = spec_dict(files="nothing_*.csv")
    (tmp_path / "s4.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(FileNotFoundError, match="nothing_"):
        build_bundle(load_spec(tmp_path / "s4.yaml"))
    bad = spec_dict(dense=[{"column": "no_such_column"}])
    (tmp_path / "s5.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(DataError, match=r"data.csv: missing column\(s\) \['no_such_column'\]"):
        build_bundle(load_spec(tmp_path / "s5.yaml"))


def test_hash_split_rule_is_deterministic_and_keeps_keys_together(tmp_path):
    frame = make_frame(n=2000).drop(columns=["split"])
    spec = spec_dict(split={"by": "user", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 3})
    a = build_bundle(load_spec(write_case(tmp_path, frame, spec)))
    b = build_bundle(load_spec(write_case(tmp_path, frame, spec)))
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(a.splits[split]["user"], b.splits[split]["user"])
    # Every user's rows lie in exactly one split (group ids are per raw user).
    owners = {}
    for split in ("train", "val", "test"):
        for g in np.unique(a.splits[split][a.schema.group]):
            assert owners.setdefault(g, split) == split
    assert all(len(a.splits[s]) > 0 for s in ("train", "val", "test"))


def test_load_data_spec_source(tmp_path):
    path = write_case(tmp_path)
    bundle = load_data(DataConfig(source="spec", spec=str(path)))
    assert bundle.preprocessing is not None and len(bundle.splits["train"]) == 480
    with pytest.raises(ConfigError, match="data.spec"):
        load_data(DataConfig(source="spec"))


def test_census_income_example_spec_builds():
    from pathlib import Path

    from mtl_torchrec.config import load_config

    root = Path(__file__).resolve().parents[2] / "examples" / "census_income"
    bundle = build_bundle(load_spec(root / "spec.yaml"))
    bundle.validate()
    assert set(bundle.splits) == {"train", "val", "test"} and all(len(t) for t in bundle.splits.values())
    # The val split is carved out of the train file only; the test file stays whole.
    assert len(bundle.splits["train"]) + len(bundle.splits["val"]) == 1200 and len(bundle.splits["test"]) == 400
    cfg = load_config(root / "config.yaml")
    assert [t.name for t in cfg.model.tasks] == bundle.schema.tasks


def test_spec_checks_name_the_dotted_key():
    hashed = SparseColumn(column="tags", vocab="hash", hash_buckets=16)
    cases = [
        (lambda: check_sparse_column(SparseColumn(column="c", vocab="identity"), "sparse[4]"),
         r"^sparse\[4\]\.num_embeddings: required \(>= 1\) with vocab: identity$"),
        (lambda: check_label_column(LabelColumn(task="t", column="c", type="regression", threshold=1.0), "labels[1]"),
         r"^labels\[1\]: positive/negative/threshold only apply to binary labels$"),
        (lambda: check_files({"train": "a.csv", "holdout": "b.csv"}, None),
         r"^files: unknown split\(s\) \['holdout'\]; use \['train', 'val', 'test'\]$"),
        (lambda: check_split_rule(SplitRule(val_fraction=0.6, test_fraction=0.4)),
         r"^split: val_fraction \+ test_fraction must be in \[0, 1\)$"),
        (lambda: check_text_feature(TextFeatureSpec(key="item", items={"file": "i.csv"}), "text[0]", []),
         r"^text\[0\]\.columns: at least one text column is required$"),
        (lambda: check_text_feature(TextFeatureSpec(columns=["t"], key="item"), "text[1]", []),
         r"^text\[1\]\.key: only with text\[1\]\.items or text\[1\]\.store"),
        (lambda: check_text_feature(TextFeatureSpec(store="s"), "text[0]", []),
         r"^text\[0\]\.key: required with text\[0\]\.store"),
        (lambda: check_text_feature(TextFeatureSpec(columns=["rating"]), "text[2]",
                                    [LabelColumn(task="r", column="rating", type="regression")]),
         r"^text\[2\]\.columns: 'rating' is a label column of labels\[0\]"),
        (lambda: check_text_feature(TextFeatureSpec(key="rating", store="s"), "text[0]",
                                    [LabelColumn(task="r", column="rating", type="regression")]),
         r"^text\[0\]\.key: 'rating' is a label column of labels\[0\]"),
        (lambda: check_text_feature(TextFeatureSpec(columns=["t"], template="{{t}} only"), "text[0]", []),
         r"^text\[0\]\.template: uses none of the text columns"),
        (lambda: check_text_feature(TextFeatureSpec(columns=["t"], template="{t:d}"), "text[0]", []),
         r"^text\[0\]\.template: cannot be applied to text cells"),
        (lambda: check_text_feature(TextFeatureSpec(columns=["t"], name="a.b"), "text[0]", []),
         r"^text\[0\]\.name: 'a\.b' must be letters, digits and '_'"),
        (lambda: check_text_feature(TextFeatureSpec(columns=["t", "t"]), "text[0]", []),
         r"^text\[0\]\.columns: a column is given twice"),
        (lambda: check_text_feature(TextFeatureSpec(columns=["t"], template="{t} {x}"), "text[0]", []),
         r"^text\[0\]\.template: field\(s\) \['x'\] are not among the text columns"),
        (lambda: check_slice(SliceSpec(column="tags", cold_warm=True), "slices[2]",
                             [SparseColumn(column="tags", vocab="hash", hash_buckets=16, separator="|")]),
         r"^slices\[2\]\.cold_warm: 'tags' is multi-valued"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError, match=message):
            call()
    # Valid sections pass.
    check_sparse_column(hashed, "sparse[0]")
    check_slice(SliceSpec(column="device", top=3), "slices[0]", [hashed])


def test_spec_reports_the_first_problem_in_a_fixed_order(tmp_path):
    # Two problems: the sparse column is checked before the labels, whatever the YAML order.
    write_case(tmp_path)
    bad = spec_dict()
    bad["labels"][0]["threshold"] = 1.0
    bad["sparse"][2] = {"column": "tags", "vocab": "hash"}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"two.yaml: sparse\[2\].hash_buckets"):
        load_spec(tmp_path / "two.yaml")


def test_normalizer_is_numerically_stable_for_large_offsets():
    """Timestamps near 1.7e9 with a spread of 30: a sum of squares gave std 22.6."""
    rng = np.random.default_rng(0)
    x = 1.7e9 + rng.normal(0.0, 30.0, 200_000)
    norm = Normalizer(method="standard")
    for chunk in np.array_split(x, 37):
        norm.update(chunk)
    assert norm.mean == pytest.approx(x.mean(), rel=1e-15, abs=1e-6)
    assert norm.std == pytest.approx(x.std(), rel=1e-9)
    again = Normalizer.from_json(norm.to_json())
    assert (again.mean, again.std) == (norm.mean, norm.std)


def test_normalizer_refuses_values_whose_spread_overflows():
    norm = Normalizer(method="standard")
    with pytest.raises(DataError, match="too large to normalise"):
        norm.update(np.array([1e308, -1e308, 3.0]))
    assert norm.count == 0
