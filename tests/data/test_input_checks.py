"""No silent wrong data: every bad input of a data spec is one clear error (or, with
``on_bad_rows: skip``, a counted bad row), named by file, line, column or spec key.

Field counts and real line numbers, header problems, one token form for ids whatever the file
format, a label used as a feature, ESMM labels, values too large to normalise, negatives under
``log_standard``. The evaluation side (OOV warnings, Parquet vs CSV) is in test_evaluate.py.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import List

import numpy as np
import pandas as pd
import pytest
import yaml

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.spec import build_bundle, load_spec
from mtl_torchrec.data.spec import records as records_module
from mtl_torchrec.data.spec.records import RecordIndex
from mtl_torchrec.data.spec.sections import CsvOptions
from mtl_torchrec.data.tokens import canonical_tokens, stable_hash
from mtl_torchrec.data.vocabulary import Vocabulary
from mtl_torchrec.model.config import TaskConfig
from mtl_torchrec.model.esmm import check_esmm_labels
from tests.eval_fixtures import int_id_frame, make_frame, spec_dict, write_case


def _csv_lines(frame: pd.DataFrame) -> List[str]:
    return frame.to_csv(index=False).splitlines()


def _write(tmp: Path, lines: List[str], spec: dict = None, name: str = "data.csv") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec if spec is not None else spec_dict(name)), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- 1. field counts


def test_extra_field_is_an_error_naming_the_line_not_a_shifted_label(tmp_path):
    frame = make_frame(n=60)
    lines = _csv_lines(frame)
    # Row 5 (file line 7) gets a comma inside an unquoted title: one field too many. Read by name,
    # it used to be cut off silently.
    lines[6] = lines[6].replace("item number", "item, number")
    with pytest.raises(DataError) as e:
        build_bundle(load_spec(_write(tmp_path, lines)))
    assert str(e.value).startswith(f"{tmp_path / 'data.csv'} line 7: 9 fields, expected 8; 1 such row(s)")


def test_missing_field_is_an_error_naming_the_line(tmp_path):
    lines = _csv_lines(make_frame(n=60))
    lines[12] = lines[12].rsplit(",", 1)[0]  # the split cell dropped: 7 fields
    with pytest.raises(DataError, match=r"data.csv line 13: 7 fields, expected 8;"):
        build_bundle(load_spec(_write(tmp_path, lines)))


def test_wrong_field_counts_skipped_and_counted(tmp_path):
    frame = make_frame(n=200)
    lines = _csv_lines(frame)
    lines[3] += ",extra"
    lines[40] = lines[40].rsplit(",", 2)[0]
    spec = spec_dict(on_bad_rows="skip")
    bundle = build_bundle(load_spec(_write(tmp_path / "bad", lines, spec)))
    assert bundle.preprocessing.stats["skipped_by_reason"] == {"row: wrong number of fields (expected 8)": 2}
    # The other rows are read exactly as the same file without those two rows.
    clean = build_bundle(load_spec(write_case(tmp_path / "clean", frame.drop(index=[2, 39]), spec)))
    for split, table in clean.splits.items():
        np.testing.assert_array_equal(bundle.splits[split]["click"], table["click"])
        np.testing.assert_array_equal(bundle.splits[split]["user"], table["user"])


@pytest.mark.parametrize("quoted", [False, True])
def test_line_numbers_count_blank_lines_and_newlines_in_quoted_cells(tmp_path, quoted):
    frame = make_frame(n=60)
    frame["price"] = frame["price"].astype(object)
    frame.loc[30, "price"] = "cheap"
    lines = _csv_lines(frame)
    # Blank lines (pandas skips them) before the bad row, and (csv-module walk) a title over two lines.
    lines[10:10] = ["", "   "]
    if quoted:
        lines[4] = lines[4].replace(f"item number {frame.item[3][1:]}", '"two\nlines"')
    path = _write(tmp_path, lines)
    text = (tmp_path / "data.csv").read_text()
    expected = text.splitlines().index(next(ln for ln in text.splitlines() if ",cheap," in ln)) + 1
    assert expected == 32 + 2 + (1 if quoted else 0)
    with pytest.raises(DataError, match=rf"data.csv line {expected} column 'price': not a finite number \(value 'cheap'\)"):
        build_bundle(load_spec(path))


def _truth(path: Path, o: CsvOptions):
    """(line, fields) of every record after the header, by the csv module and pandas' blank-line rule."""
    out, before = [], 0
    with open(path, newline="", encoding="utf-8") as f:
        raw = f.read()
    reader = csv.reader(io.StringIO(raw, newline=""), skipinitialspace=o.skip_initial_space)
    physical = io.StringIO(raw, newline="").readlines()
    for row in reader:
        one = reader.line_num == before + 1
        blank = not row or (len(row) == 1 and one and physical[before].strip(" \t\r\n") == "")
        if not blank:
            out.append((before + 1, len(row)))
        before = reader.line_num
    return out[1:]


ROW_KINDS = [
    "", "  \t", "\r", "{i},x", "{i},x,y,z", "{i},,", "{i},{i},{i}", '{i},"q,\nr",s', '"{i}","a""b",""',
    '{i},"x\r\ny",z\r', '"{i}\n\n",",",', "{i},{i},{i}\r",
]


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
@pytest.mark.parametrize("late", ["", '{i},a"b,c', '{i}, "x,y",z', "{i},x\ry"])
def test_record_walk_matches_the_csv_module_at_any_block_size(tmp_path, monkeypatch, block, late):
    """Blank lines, CRLF, quoted separators, line ends and doubled quotes; from row 300 on a form
    only the csv module reads as pandas does (a quote inside a cell, a quote after a space, a bare
    CR), where the walk hands over to it."""
    rng = np.random.default_rng(block)
    rows = ["a,b,c"]
    for i in range(400):
        kinds = ROW_KINDS + ([late] if late and i >= 300 else [])
        rows.append(kinds[int(rng.integers(0, len(kinds)))].format(i=i))
    path = tmp_path / "walk.csv"
    path.write_bytes("\n".join(rows).encode())
    monkeypatch.setattr(records_module, "_BLOCK", block)
    o = CsvOptions()
    walked = RecordIndex(str(path), o, skip=1, expected=3)
    lines, fields = walked.take(10_000)
    assert not walked.left()
    assert list(zip(lines.tolist(), fields.tolist())) == _truth(path, o)
    # pandas finds the same records.
    assert len(pd.read_csv(path, usecols=[0], dtype=str)) == len(lines)


# ---------------------------------------------------------------------------------------------- 2. header, names


def _headerless(tmp: Path, names: List[str]) -> Path:
    frame = make_frame(n=40)
    spec = spec_dict(csv={"header": False, "names": names})
    (tmp).mkdir(parents=True, exist_ok=True)
    frame.to_csv(tmp / "data.csv", index=False, header=False)
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_csv_names_too_few_too_many_or_repeated(tmp_path):
    names = list(make_frame(n=1).columns)
    with pytest.raises(ConfigError, match=r"^csv.names: too few names \(7\) for .*data.csv, whose line 1 has 8 fields$"):
        build_bundle(load_spec(_headerless(tmp_path / "few", names[:-1])))
    with pytest.raises(ConfigError, match=r"^csv.names: too many names \(9\) for .*data.csv, whose line 1 has 8 fields$"):
        build_bundle(load_spec(_headerless(tmp_path / "many", names + ["extra"])))
    with pytest.raises(ConfigError, match=r"spec.yaml: csv.names: 'user' is given twice \(csv.names\[0\] and csv.names\[7\]\)"):
        load_spec(_headerless(tmp_path / "twice", names[:-1] + ["user"]))
    # The right names read the same tables as a header row.
    a = build_bundle(load_spec(_headerless(tmp_path / "ok", names)))
    b = build_bundle(load_spec(write_case(tmp_path / "hdr", make_frame(n=40))))
    np.testing.assert_array_equal(a.splits["train"]["click"], b.splits["train"]["click"])


def test_header_problems_name_file_line_and_key(tmp_path):
    lines = _csv_lines(make_frame(n=30))
    # A spec column the header lacks: named with the key that reads it.
    spec = spec_dict(dense=[{"column": "prices"}])
    with pytest.raises(DataError, match=r"data.csv: missing column\(s\) \['prices'\] \(dense\[0\].column: 'prices'\); "
                                        r"the header \(line 1\) has \['user'"):
        build_bundle(load_spec(_write(tmp_path / "missing", lines, spec)))
    # A header naming a read column twice: which one would be read is a guess.
    dup = [lines[0] + ",price"] + [ln + ",1" for ln in lines[1:]]
    with pytest.raises(DataError, match=r"data.csv line 1: column 'price' \(dense\[0\].column\) appears twice in the "
                                        r"header, as fields 4 and 9; rename one"):
        build_bundle(load_spec(_write(tmp_path / "dup", dup)))
    # A repeated column the spec does not read is harmless.
    other = [lines[0] + ",notes,notes"] + [ln + ",a,b" for ln in lines[1:]]
    assert len(build_bundle(load_spec(_write(tmp_path / "other", other))).splits["train"]) > 0


def test_empty_and_header_only_files(tmp_path):
    with pytest.raises(DataError, match=r"data.csv: the file is empty \(no header and no rows\)"):
        build_bundle(load_spec(_write(tmp_path / "empty", [""])))
    header = _csv_lines(make_frame(n=3))[:1]
    with pytest.raises(DataError, match=r"data.csv: no data rows \(only a header\)"):
        build_bundle(load_spec(_write(tmp_path / "header", header)))
    spec = spec_dict("data.parquet")
    path = write_case(tmp_path / "pq", make_frame(n=10).iloc[:0], spec, name="data.parquet")
    with pytest.raises(DataError, match=r"data.parquet: no rows"):
        build_bundle(load_spec(path))


def test_invalid_utf8_names_line_and_byte_offset(tmp_path):
    text = "\n".join(_csv_lines(make_frame(n=30))) + "\n"
    lines = text.encode().split(b"\n")
    lines[17] = lines[17].replace(b"item number", b"item n\xffmber")
    data = b"\n".join(lines)
    offset = data.index(b"\xff")
    path = _write(tmp_path, ["x"])
    (tmp_path / "data.csv").write_bytes(data)
    with pytest.raises(DataError, match=rf"data.csv line 18: not valid utf-8 text at byte offset {offset} \(byte 0xff\); "
                                        r"set csv.encoding"):
        build_bundle(load_spec(path))
    # The same file read as latin-1, as the message suggests, loads.
    spec = spec_dict(csv={"encoding": "latin-1"})
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    assert len(build_bundle(load_spec(path)).splits["train"]) > 0


def test_separator_must_be_one_character(tmp_path):
    path = _write(tmp_path, _csv_lines(make_frame(n=5)), spec_dict(csv={"separator": "::"}))
    with pytest.raises(ConfigError, match=r"spec.yaml: csv.separator: must be one character, got '::'"):
        load_spec(path)


# ---------------------------------------------------------------------------------------------- 3. token forms


def test_canonical_tokens_one_form_for_every_type():
    assert list(canonical_tokens(np.array(["5", "5.0", "-3.00", "007", "u1", "", None, "0.5"], dtype=object))) == \
        ["5", "5", "-3", "007", "u1", None, None, "0.5"]
    assert list(canonical_tokens(pd.Series([5, None, 7], dtype="Int64"))) == ["5", None, "7"]
    assert list(canonical_tokens(pd.Series([5.0, np.nan, 0.5, 1e20]))) == ["5", None, "0.5", "1e+20"]
    assert list(canonical_tokens(pd.Series([5, 6]))) == ["5", "6"]
    assert list(canonical_tokens(pd.Series(["5.0", None], dtype="str"))) == ["5", None]
    assert list(canonical_tokens(np.array([5, 5.0, b"ab", True, pd.NA], dtype=object))) == ["5", "5", "ab", "True", None]
    # canonical(v) == canonical(str(v)): what lets vocabularies saved as str text be read.
    for v in (5, 5.0, -2.0, 0.25, 1e20, 2.0**60, np.int64(9), np.float32(3.0), True):
        assert canonical_tokens(np.array([v], dtype=object))[0] == canonical_tokens(np.array([str(v)], dtype=object))[0]


@pytest.mark.parametrize("form", ["int", "float", "nullable"])
def test_parquet_ids_of_any_type_map_like_csv(tmp_path, form):
    frame = int_id_frame(n=300)
    csv_bundle = build_bundle(load_spec(write_case(tmp_path / "csv", frame)))
    other = frame.copy()
    if form == "float":
        other[["user", "item"]] = other[["user", "item"]].astype(np.float64)
    if form == "nullable":
        other[["user", "item"]] = other[["user", "item"]].astype("Int64")
        other["price"] = other["price"].astype("Float64")
    spec = spec_dict("data.parquet")
    pq = build_bundle(load_spec(write_case(tmp_path / "pq", other, spec, name="data.parquet")), csv_bundle.preprocessing)
    for split, table in csv_bundle.splits.items():
        for col in ("user", "item", "price", "click"):
            np.testing.assert_array_equal(pq.splits[split][col], table[col], err_msg=f"{split} {col}")
    assert pq.preprocessing.stats["oov"]["train"]["user"]["unknown"] == 0


def test_nullable_int_parquet_labels_and_missing_ids(tmp_path):
    """pd.NA in Int64 columns used to crash with 'boolean value of NA is ambiguous'."""
    frame = int_id_frame(n=300)
    frame["click"] = (frame["click"] == "yes").astype("Int64")
    frame["user"] = frame["user"].astype("Int64")
    frame.loc[[4, 9], "user"] = pd.NA
    frame.loc[[6], "click"] = pd.NA
    spec = spec_dict("data.parquet", labels=[{"task": "click", "column": "click", "type": "binary", "maskable": True}],
                     slices=[], item_text=None)
    bundle = build_bundle(load_spec(write_case(tmp_path, frame, spec, name="data.parquet")))
    train = bundle.splits["train"]
    rows = frame[frame.split == "train"].reset_index(drop=True)
    assert (train["user"][rows["user"].isna().to_numpy()] == 0).all()
    assert np.isnan(train["click"][rows["click"].isna().to_numpy()]).all()
    np.testing.assert_array_equal(train["click"][rows["click"].notna().to_numpy()],
                                  rows["click"].dropna().to_numpy(dtype=np.float32))


def test_labels_and_split_values_match_in_one_form(tmp_path):
    """A 0/1 label written as 1.0 (a float column) matches positive: ["1"]; split codes 0/1/2 too."""
    frame = make_frame(n=200)
    frame["click"] = np.where(frame["click"] == "yes", 1.0, 0.0)
    frame["split"] = frame["split"].map({"train": 0.0, "val": 1.0, "test": 2.0})
    spec = spec_dict("data.parquet", split={"column": "split", "train_values": ["0"], "val_values": ["1"],
                                            "test_values": ["2"]},
                     labels=[{"task": "click", "column": "click", "type": "binary", "positive": ["1"],
                              "negative": ["0"]}])
    bundle = build_bundle(load_spec(write_case(tmp_path, frame, spec, name="data.parquet")))
    assert {k: len(v) for k, v in bundle.splits.items()} == {"train": 160, "val": 20, "test": 20}
    np.testing.assert_array_equal(bundle.splits["train"]["click"], frame[frame.split == 0.0]["click"].to_numpy())


def test_vocabularies_saved_before_the_canonical_form_map_the_same(tmp_path):
    # A build vocabulary trained on float ids ("5.0") and a hash vocabulary, saved without token_form.
    old_build = {"mode": "build", "num_embeddings": 4, "tokens": ["5.0", "u1", "7.0"], "min_count": 1}
    old_hash = {"mode": "hash", "num_embeddings": 50, "hash_buckets": 50}
    build, hashed = Vocabulary.from_json(old_build), Vocabulary.from_json(old_hash)
    probe = np.array(["5.0", "u1", "7.0", "x", None], dtype=object)
    np.testing.assert_array_equal(build.lookup(probe), [1, 2, 3, 0, 0])
    # ... and now the same ids arrive from int or CSV-text columns as well.
    np.testing.assert_array_equal(build.lookup(np.array([5, "5", 7.0], dtype=object)), [1, 1, 3])
    old_ids = (stable_hash(probe[:4]) % np.uint64(49)).astype(np.int64) + 1
    np.testing.assert_array_equal(hashed.lookup(probe)[:4], old_ids)
    assert hashed.token_form == "str" and build.token_form == "canonical"
    # Saved tokens that would coincide in canonical form keep the old form (and ids) exactly.
    clash = Vocabulary.from_json({"mode": "build", "tokens": ["5", "5.0"], "num_embeddings": 3})
    np.testing.assert_array_equal(clash.lookup(np.array(["5", "5.0"], dtype=object)), [1, 2])
    # New vocabularies say their form; a round trip keeps it.
    new = Vocabulary.build({"5": 3, "6": 1})
    assert Vocabulary.from_json(json.loads(json.dumps(new.to_json()))).token_form == "canonical"
    (tmp_path / "v.txt").write_text("5\nu\n5.0\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"v.txt line 3: token '5.0' appears twice \(first on line 1\)"):
        Vocabulary.from_file(tmp_path / "v.txt")


def test_oov_rate_per_split_in_stats(tmp_path):
    frame = make_frame()
    test = frame.split == "test"
    frame.loc[test, "item"] = [f"new{i}" if i % 2 else v for i, v in enumerate(frame.loc[test, "item"])]
    bundle = build_bundle(load_spec(write_case(tmp_path, frame)))
    oov = bundle.preprocessing.stats["oov"]
    unseen = ~frame.loc[test, "item"].isin(set(frame.loc[frame.split == "train", "item"]))
    assert int(unseen.sum()) >= 30
    assert oov["test"]["item"] == {"tokens": 60, "unknown": int(unseen.sum()), "rate": unseen.sum() / 60}
    assert oov["train"]["item"]["rate"] == 0.0 and bundle.preprocessing.stats["train_oov"]["item"] == 0.0
    assert "tags" not in oov["train"]  # hash vocabularies have no unknown ids
    bundle.preprocessing.save(tmp_path / "run")
    assert Preprocessing.load(tmp_path / "run").stats["train_oov"] == {"user": 0.0, "item": 0.0, "title_text": 0.0}


# ---------------------------------------------------------------------------------------------- 4. label as feature


def test_label_column_used_as_a_feature_is_refused_unless_allowed(tmp_path):
    write_case(tmp_path)
    spec = spec_dict(sparse=[{"column": "user", "vocab": "build"}, {"column": "click", "name": "clicked", "vocab": "build"}])
    (tmp_path / "leak.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"leak.yaml: sparse\[1\].column: 'click' is the label column of labels\[0\].column "
                                          r"\(task 'click'\); a label used as a feature gives the model the answer. "
                                          r"Set sparse\[1\].allow_label_as_feature: true if this is intended"):
        load_spec(tmp_path / "leak.yaml")
    spec = spec_dict(dense=[{"column": "rating", "name": "stars", "fill_missing": "zero"}])
    (tmp_path / "leak2.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"dense\[0\].column: 'rating' is the label column of labels\[1\].column"):
        load_spec(tmp_path / "leak2.yaml")
    spec["dense"][0]["allow_label_as_feature"] = True
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(spec))
    assert load_spec(tmp_path / "ok.yaml").dense[0].allow_label_as_feature


# ---------------------------------------------------------------------------------------------- 5. ESMM labels


def _esmm_bundle(tmp_path, bad_rows=(3, 17, 259), **spec_overrides):
    frame = make_frame(n=300)
    frame["conversion"] = np.where((frame["click"] == "yes") & (np.arange(300) % 3 == 0), 1, 0)
    frame.loc[list(bad_rows), "click"] = "no"
    frame.loc[list(bad_rows), "conversion"] = 1
    labels = spec_dict()["labels"] + [{"task": "conversion", "column": "conversion", "type": "binary"}]
    return build_bundle(load_spec(write_case(tmp_path, frame, spec_dict(labels=labels, **spec_overrides)))), frame


ESMM = [TaskConfig(name="click"), TaskConfig(name="conversion", esmm_parent="click")]


def test_esmm_conversion_without_click_is_refused_with_rows_and_lines(tmp_path):
    bundle, frame = _esmm_bundle(tmp_path)
    with pytest.raises(DataError) as e:
        check_esmm_labels(bundle, ESMM)
    # Rows 3 and 17 are train rows 3 and 15 (rows 8 and 9 of every ten are val and test); 259 is test row 25.
    assert str(e.value) == (
        f"model.tasks[1] 'conversion' (esmm_parent 'click'): 3 row(s) have conversion = 1 where click = 0, "
        f"e.g. train row 3 ({tmp_path / 'data.csv'} line 5), train row 15 ({tmp_path / 'data.csv'} line 19), "
        f"test row 25 ({tmp_path / 'data.csv'} line 261); ESMM trains and scores conversion as click AND "
        f"conversion. Fix the labels, or set model.tasks[1].esmm_derive_and_label: true to use click AND conversion"
    )
    # Only the evaluated split is checked at evaluation.
    assert check_esmm_labels(bundle, ESMM, ["val"]) == []


def test_esmm_derive_and_label_sets_the_and_and_reports_the_count(tmp_path):
    bundle, _ = _esmm_bundle(tmp_path)
    before = {s: t["conversion"].copy() for s, t in bundle.splits.items()}
    tasks = [TaskConfig(name="click"), TaskConfig(name="conversion", esmm_parent="click", esmm_derive_and_label=True)]
    notes = check_esmm_labels(bundle, tasks)
    assert notes == ["model.tasks[1] 'conversion' (esmm_parent 'click'): label set to click AND conversion on 3 "
                     "row(s) (train 2, test 1) (esmm_derive_and_label)"]
    for split, table in bundle.splits.items():
        np.testing.assert_array_equal(table["conversion"], before[split] * table["click"])
    assert check_esmm_labels(bundle, ESMM) == []
    with pytest.raises(ConfigError, match=r"model.tasks\[0\].esmm_derive_and_label: only for an ESMM task"):
        check_esmm_labels(bundle, [TaskConfig(name="click", esmm_derive_and_label=True)])
    # The config refuses it when loaded, before any data is read.
    from mtl_torchrec.config import load_config

    with pytest.raises(ConfigError, match=r"model.tasks\[0\].esmm_derive_and_label: only for an ESMM task "
                                          r"\(set esmm_parent\)"):
        load_config(None, ["model.tasks=[{name: click, esmm_derive_and_label: true}]"])


def test_train_command_refuses_esmm_labels_before_writing(tmp_path, capsys):
    from mtl_torchrec.launch.cli import main as cli_main
    from tests.eval_fixtures import TRAIN_CONFIG

    frame = make_frame(n=300)
    frame["conversion"] = 0
    frame.loc[5, ["click", "conversion"]] = ["no", 1]
    labels = spec_dict()["labels"] + [{"task": "conversion", "column": "conversion", "type": "binary"}]
    spec = write_case(tmp_path / "data", frame, spec_dict(labels=labels))
    run_dir = tmp_path / "run"
    tasks = "model.tasks=[{name: click}, {name: conversion, esmm_parent: click}, {name: rating, type: regression}]"
    args = ["train", *TRAIN_CONFIG, tasks, "data.source=spec", f"data.spec={spec}", f"run_dir={run_dir}"]
    assert cli_main(args) == 2
    assert "1 row(s) have conversion = 1 where click = 0, e.g. train row 5 (" in capsys.readouterr().err
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "preprocessing").exists()


# ---------------------------------------------------------------------------------------------- 6./7. dense values


def test_value_too_large_to_normalise_names_file_line_and_column(tmp_path):
    frame = make_frame()
    frame.loc[42, "price"] = 1e308
    spec = spec_dict(dense=[{"column": "price", "normalize": "standard"}])
    with pytest.raises(DataError, match=r"data.csv line 44 column 'price' \(dense\[0\]\): values up to 1e\+308 are "
                                        r"too large to normalise"):
        build_bundle(load_spec(write_case(tmp_path / "fit", frame, spec)))
    # Evaluation data mapped with a fitted normaliser: a value whose normalised form leaves float32.
    fitted = build_bundle(load_spec(write_case(tmp_path / "ok", make_frame(), spec))).preprocessing
    with pytest.raises(DataError, match=r"data.csv line 44 column 'price': too large: its normalised value overflows "
                                        r"float32 \(value '1e\+308'\)"):
        build_bundle(load_spec(write_case(tmp_path / "eval", frame, spec)), fitted)


@pytest.mark.parametrize("fill", ["error", "mean", "zero"])
def test_missing_and_infinite_values_follow_fill_missing(tmp_path, fill):
    frame = make_frame()
    frame["price"] = frame["price"].astype(object)
    frame.loc[[0, 10], "price"] = ""  # missing
    spec = spec_dict(dense=[{"column": "price", "normalize": "standard", "fill_missing": fill}])
    path = write_case(tmp_path / "csv", frame, spec)
    pq = frame.copy()
    pq["price"] = pd.to_numeric(pq["price"], errors="coerce").astype(np.float64)  # NaN in a Parquet float column
    pq_path = write_case(tmp_path / "pq", pq, spec_dict("data.parquet", dense=spec["dense"]), name="data.parquet")
    if fill == "error":
        for p, where in ((path, "data.csv line 2"), (pq_path, "data.parquet row 0")):
            with pytest.raises(DataError, match=rf"{where} column 'price': missing value \(set fill_missing"):
                build_bundle(load_spec(p))
    else:
        a, b = build_bundle(load_spec(path)), build_bundle(load_spec(pq_path))
        norm = a.preprocessing.normalizers["price"]
        prices = pd.to_numeric(frame[frame.split == "train"]["price"]).to_numpy()
        assert norm.count == len(prices) - 2 and norm.mean == pytest.approx(np.nanmean(prices))
        filled = a.splits["train"]["price"][0]
        assert filled == pytest.approx(0.0)  # the mean standardises to 0, and zero is 0 after it
        np.testing.assert_array_equal(a.splits["train"]["price"], b.splits["train"]["price"])
    # Infinity (and a number beyond float64, and NaN written as text) is a bad value whatever fill_missing says.
    for bad in ("inf", "1e999", "nan"):
        frame = make_frame()
        frame["price"] = frame["price"].astype(object)
        frame.loc[5, "price"] = bad
        with pytest.raises(DataError, match=rf"data.csv line 7 column 'price': not a finite number \(value '{bad}'\)"):
            build_bundle(load_spec(write_case(tmp_path / bad, frame, spec)))
    pq = make_frame()
    pq.loc[5, "price"] = np.inf
    with pytest.raises(DataError, match=r"data.parquet row 5 column 'price': not a finite number"):
        build_bundle(load_spec(write_case(tmp_path / "pqinf", pq, spec_dict("data.parquet", dense=spec["dense"]),
                                          name="data.parquet")))


def test_negative_values_under_log_standard_refused_or_clipped_when_asked(tmp_path):
    frame = make_frame()
    frame.loc[12, "price"] = -3.5
    with pytest.raises(DataError, match=r"data.csv line 14 column 'price': negative value under normalize: log_standard "
                                        r".*set clip_negative: true"):
        build_bundle(load_spec(write_case(tmp_path / "refused", frame)))
    spec = spec_dict(dense=[{"column": "price", "normalize": "log_standard", "clip_negative": True}])
    bundle = build_bundle(load_spec(write_case(tmp_path / "clipped", frame, spec)))
    norm = bundle.preprocessing.normalizers["price"]
    # Row 12 is train row 10 (rows 8 and 9 of every ten are val and test).
    assert bundle.splits["train"]["price"][10] == pytest.approx(norm.transform(np.array([0.0]))[0])
