"""Feature kinds as plug-ins: the registry the spec reader iterates, the bucketised-number kind
(``buckets:``) from fitting to export, and a kind defined outside the package trained end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
import pytest

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.schema import DenseFeature, SparseFeature
from mtl_torchrec.data.spec import FEATURE_KINDS, FeatureKind, build_bundle, load_spec, register_kind
from mtl_torchrec.data.spec.features import FeatureRows, feature_spec
from mtl_torchrec.data.spec.fitting import unfitted_schema
from mtl_torchrec.data.spec.kinds import kinds
from mtl_torchrec.data.spec.kinds.buckets import _Reservoir, bucket_ids, quantile_boundaries
from tests.eval_fixtures import make_frame, spec_dict, train_spec_run, write_case


def _spec(tmp: Path, frame: Optional[pd.DataFrame] = None, **overrides: Any) -> Path:
    return write_case(tmp, frame, spec_dict("data.csv", **overrides))


def test_built_in_kinds_are_registered_in_layout_order() -> None:
    assert [k.section for k in kinds()] == ["sparse", "dense", "text", "buckets"]
    assert FEATURE_KINDS.names() == ["buckets", "dense", "sparse", "text"]
    with pytest.raises(ValueError, match="'dense' is already registered"):
        register_kind(type(FEATURE_KINDS.get("dense"))())


def test_bucket_ids_by_hand() -> None:
    ids = bucket_ids(np.array([-1.0, 0.0, 0.5, 5.0, 7.0, np.nan]), [0.0, 5.0])
    assert ids.tolist() == [1, 2, 2, 3, 3, 0]
    assert ids.dtype == np.int64


def test_quantile_boundaries_merge_repeated_values() -> None:
    assert quantile_boundaries(np.arange(1, 101, dtype=float), 4) == [25.75, 50.5, 75.25]
    # 60 of 100 values are 0: the quantiles 0.25 and 0.5 coincide, so there is one boundary fewer.
    values = np.concatenate([np.zeros(60), np.arange(1, 41)])
    assert quantile_boundaries(values, 4) == [0.0, 15.25]


def test_reservoir_is_bounded_deterministic_and_exact_below_its_size() -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=1000) for _ in range(5)]
    small, big, again = _Reservoir(100, "f"), _Reservoir(10_000, "f"), _Reservoir(100, "f")
    for c in chunks:
        small.add(c)
        big.add(c)
        again.add(c)
    assert len(small.values) == 100 and small.seen == 5000
    np.testing.assert_array_equal(np.sort(small.values), np.sort(again.values))
    np.testing.assert_array_equal(np.sort(big.values), np.sort(np.concatenate(chunks)))
    # A uniform sample of a standard normal: its median is near 0.
    assert abs(float(np.median(small.values))) < 0.35


def test_fitted_buckets_from_spec_to_table(tmp_path: Path) -> None:
    frame = make_frame()
    spec = load_spec(_spec(tmp_path, frame, buckets=[{"column": "price", "num_buckets": 8}]))
    assert spec.feature_layout()[-1] == ["buckets", "price_bucket", "price"]
    assert [f.name for f in unfitted_schema(spec).sparse][-1] == "price_bucket"
    bundle = build_bundle(spec)
    train = frame[frame.split == "train"]
    expected = quantile_boundaries(train.price.to_numpy(dtype=float), 8)
    assert bundle.preprocessing.fitted["price_bucket"] == {"kind": "buckets", "boundaries": expected}
    feature = next(f for f in bundle.schema.sparse if f.name == "price_bucket")
    assert feature.num_embeddings == len(expected) + 2 and not feature.multi_valued
    np.testing.assert_array_equal(bundle.splits["train"].columns["price_bucket"],
                                  bucket_ids(train.price.to_numpy(dtype=float), expected))
    # About equally full buckets on the training rows (8 buckets of 480 rows, rounded prices tie a little).
    counts = np.bincount(bundle.splits["train"].columns["price_bucket"], minlength=len(expected) + 2)
    assert counts[0] == 0 and counts[1:].min() >= 50 and counts[1:].max() <= 70
    # Saved and read back: evaluation and scoring map with the run's boundaries, never refitted.
    bundle.preprocessing.save(tmp_path / "pre")
    pre = Preprocessing.load(tmp_path / "pre")
    rows = FeatureRows(feature_spec(spec, list(frame.columns)), pre)
    part = rows.convert_frame(pd.DataFrame(frame.iloc[:3]).assign(price=[0.0, 1e9, 20.0]))
    assert part.table.columns["price_bucket"].tolist() == bucket_ids(np.array([0.0, 1e9, 20.0]), expected).tolist()


@pytest.mark.parametrize("edited", ["abc", ["x"], 5, None, [float("nan")], [3.0, 1.0], [True]])
def test_edited_boundaries_in_preprocessing_json_are_refused(tmp_path: Path, edited: Any) -> None:
    frame = make_frame()
    spec = load_spec(_spec(tmp_path, frame, buckets=[{"column": "price", "boundaries": [10, 20]}]))
    pre = build_bundle(spec).preprocessing
    pre.fitted["price_bucket"]["boundaries"] = edited
    with pytest.raises(DataError, match=r"preprocessing\.json: fitted\.price_bucket\.boundaries must be strictly"):
        FeatureRows(feature_spec(spec, list(frame.columns)), pre).convert_frame(frame.iloc[:3])


def test_given_boundaries_and_the_missing_value_row(tmp_path: Path) -> None:
    frame = make_frame().astype({"price": object})
    frame.loc[3, "price"] = None
    entry = {"column": "price", "boundaries": [10, 20, 40], "fill_missing": "bucket", "name": "price_range"}
    bundle = build_bundle(load_spec(_spec(tmp_path, frame, buckets=[entry], dense=[])))
    assert bundle.preprocessing.fitted["price_range"]["boundaries"] == [10.0, 20.0, 40.0]
    ids = bundle.splits["train"].columns["price_range"]
    prices = pd.to_numeric(frame[frame.split == "train"].price).to_numpy(dtype=float)
    assert ids.tolist() == bucket_ids(prices, [10, 20, 40]).tolist() and ids[3] == 0


@pytest.mark.parametrize("entry, message", [
    ({"column": "price"}, r"buckets\[0\]: give either num_buckets .* not neither"),
    ({"column": "price", "num_buckets": 4, "boundaries": [1]}, r"buckets\[0\]: give either .* not both"),
    ({"column": "price", "num_buckets": 1}, r"buckets\[0\]\.num_buckets: must be >= 2, got 1"),
    ({"column": "price", "boundaries": [1, 5, 5]}, r"buckets\[0\]\.boundaries\[2\]: 5.0 is not above 5.0"),
    ({"column": "price", "boundaries": []}, r"buckets\[0\]\.boundaries: at least one finite number"),
    ({"column": "price", "num_buckets": 4, "sample_rows": 0}, r"buckets\[0\]\.sample_rows: must be in \[1, 50000000\], got 0"),
    ({"column": "price", "num_buckets": "4"}, r"buckets\[0\]\.num_buckets"),
    ({"column": "price", "num_bucket": 4}, r"buckets\[0\]\.num_bucket"),
    ({"column": "price", "num_buckets": 4, "name": "price"}, r"names used twice: \['price'\]"),
    ({"column": "click", "num_buckets": 4}, r"buckets\[0\]\.column: 'click' is the label column of labels\[0\]"),
    ({"column": "price", "num_buckets": 10**9}, r"buckets\[0\]\.num_buckets: at most 1000000 .* got 1000000000"),
    ({"column": "price", "num_buckets": 50, "sample_rows": 20}, r"buckets\[0\]\.num_buckets: at most 20 "),
    ({"column": "price", "num_buckets": 4, "sample_rows": 10**12}, r"buckets\[0\]\.sample_rows: must be in \[1, "),
    ({"column": "price", "num_buckets": 4, "name": "a b/c"}, r"buckets\[0\]\.name: 'a b/c' must be letters"),
])
def test_bucket_spec_errors_name_the_key(tmp_path: Path, entry: Dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_spec(_spec(tmp_path, buckets=[entry]))
    assert str(tmp_path / "spec.yaml") in str(e.value)


def test_bucket_section_must_be_a_list_and_sections_is_not_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="buckets: expected a list of entries, got dict"):
        load_spec(_spec(tmp_path, buckets={"column": "price"}))
    with pytest.raises(ConfigError, match=r"sections: not a key of a data spec"):
        load_spec(_spec(tmp_path, sections={}))


def test_bad_bucket_cells_are_bad_rows_naming_file_line_and_column(tmp_path: Path) -> None:
    frame = make_frame().astype({"price": object})
    frame.loc[5, "price"] = None
    with pytest.raises(DataError, match=r"data\.csv line 7 column 'price': missing value \(set fill_missing: bucket"):
        build_bundle(load_spec(_spec(tmp_path, frame, buckets=[{"column": "price", "num_buckets": 4}],
                                     dense=[])))
    frame.loc[5, "price"] = "cheap"
    with pytest.raises(DataError, match=r"data\.csv line 7 column 'price': not a finite number"):
        build_bundle(load_spec(_spec(tmp_path, frame, buckets=[{"column": "price", "num_buckets": 4}],
                                     dense=[])))
    skipped = build_bundle(load_spec(_spec(tmp_path, frame, buckets=[{"column": "price", "num_buckets": 4}],
                                           dense=[], on_bad_rows="skip")))
    assert skipped.preprocessing.stats["skipped_rows"] == 1


def test_a_training_split_without_values_is_refused(tmp_path: Path) -> None:
    frame = make_frame().astype({"price": object})
    frame.loc[frame.split == "train", "price"] = None
    entry = {"column": "price", "num_buckets": 4, "fill_missing": "bucket"}
    with pytest.raises(DataError, match=r"buckets\[0\]\.column: 'price' has no value in the training split"):
        build_bundle(load_spec(_spec(tmp_path, frame, buckets=[entry], dense=[])))


def test_a_run_fitted_without_the_feature_is_refused_by_its_layout(tmp_path: Path) -> None:
    frame = make_frame()
    plain = build_bundle(load_spec(_spec(tmp_path, frame)))
    spec = load_spec(_spec(tmp_path / "b", frame, buckets=[{"column": "price", "num_buckets": 4}]))
    with pytest.raises(DataError, match=r"entry 5: trained None, now \['buckets', 'price_bucket', 'price'\]"):
        build_bundle(spec, plain.preprocessing)


# A kind written the way a user adds one (docs/data.md, "Adding a feature kind"): one dataclass, one
# FeatureKind subclass, one registration; nothing in the package changes.
@dataclass
class TitleLength:
    """``title_lengths[i]``: the number of words of a text column, as a dense feature."""

    column: str
    name: Optional[str] = None

    @property
    def feature(self) -> str:
        return self.name or f"{self.column}_words"


class TitleLengthKind(FeatureKind):
    section = "title_lengths"
    entry = TitleLength
    position = 100

    def convert(self, entries: List[TitleLength], values: Dict[str, Any], ctx: Any) -> Dict[str, Any]:
        return {e.feature: ctx.frame[e.column].fillna("").astype(str).str.split().str.len().to_numpy(np.float32)
                for e in entries}

    def schema(self, entries: List[TitleLength], pre: Preprocessing, spec: Any) -> List[Any]:
        return [DenseFeature(e.feature) for e in entries]

    unfitted_schema = schema


@pytest.fixture
def title_lengths():
    kind = register_kind(TitleLengthKind())
    yield kind
    FEATURE_KINDS.unregister(kind.section)


@pytest.mark.slow
def test_a_kind_defined_outside_the_package_trains_and_scores(tmp_path: Path, title_lengths: FeatureKind) -> None:
    from mtl_torchrec.serve import predict_frame

    frame = make_frame()
    spec = spec_dict("data.csv", title_lengths=[{"column": "title"}],
                     buckets=[{"column": "price", "num_buckets": 6}], text=[])
    run = train_spec_run(write_case(tmp_path, frame, spec), tmp_path / "run")
    pre = json.loads((run / "preprocessing" / "preprocessing.json").read_text())
    assert pre["features"][-2:] == [["buckets", "price_bucket", "price"], ["title_lengths", "title_words", "title"]]
    bundle_schema = FeatureRows(feature_spec(load_spec(tmp_path / "spec.yaml"), list(frame.columns)),
                                Preprocessing.load(run / "preprocessing")).schema
    assert [d.name for d in bundle_schema.dense] == ["price", "title_words"]
    assert isinstance(bundle_schema.sparse[-1], SparseFeature) and bundle_schema.sparse[-1].name == "price_bucket"
    test = frame[frame.split == "test"].drop(columns=["click", "rating", "split"])
    scores = predict_frame(run, test)
    assert len(scores) == len(test) and np.isfinite(scores["click"]).all()
    # The word count feeds the model: other titles give other scores.
    longer = predict_frame(run, test.assign(title=test.title + " with many more words in it"))
    assert not np.allclose(longer["click"], scores["click"])


@pytest.mark.slow
def test_buckets_train_predict_and_export_alike(tmp_path: Path) -> None:
    from mtl_torchrec.serve import predict_frame
    from mtl_torchrec.serve.export import export_run, load_artifact

    frame = make_frame()
    spec = spec_dict("data.csv", buckets=[{"column": "price", "num_buckets": 6}], text=[])
    run = train_spec_run(write_case(tmp_path, frame, spec), tmp_path / "run")
    info = json.loads((run / "preprocessing" / "preprocessing.json").read_text())
    assert len(info["fitted"]["price_bucket"]["boundaries"]) == 5
    test = frame[frame.split == "test"].drop(columns=["click", "rating", "split"])
    expected = predict_frame(run, test)
    artifact = export_run(run, tmp_path / "artifact")
    assert "price_bucket" in json.loads((artifact / "artifact.json").read_text())["inputs"]["sparse"]
    got = load_artifact(artifact).predict(test)
    for task in ("click", "rating"):
        np.testing.assert_allclose(got[task], expected[task], rtol=0, atol=1e-5)
