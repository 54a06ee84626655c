"""Bring your own tabular data: a YAML data spec turns CSV/Parquet files into a Schema and
ColumnTables that the loader, model and trainer take unchanged.

Files are read in chunks twice: the first pass fits vocabularies and normalisers on training rows
only, the second converts every chunk to compact numpy columns (int64 ids, float32 dense and
labels), so only the converted columns, never the raw text, have to fit in memory.

A spec (paths are relative to the spec file)::

    files: data/*.csv                 # a glob, a list, or {train: ..., val: ..., test: ...}
    csv: {separator: ",", header: true, na_values: ["", "?"]}
    split: {by: user_id, val_fraction: 0.1, test_fraction: 0.1, seed: 0}   # or {column: split}
    sparse:
      - {column: user_id, vocab: build, min_count: 2}
      - {column: item_id, vocab: hash, hash_buckets: 100000}
      - {column: genres, separator: "|", vocab: file, vocab_file: genres.txt}
    dense:
      - {column: price, normalize: log_standard, fill_missing: mean}
    labels:
      - {task: click, column: clicked, type: binary, positive: ["yes", "1"]}
      - {task: rating, column: stars, type: regression, maskable: true}
    group: user_id
    item_text: {item: item_id, columns: [title, description]}
    slices: [{column: item_id, cold_warm: true}, {column: device, top: 5}]
    on_bad_rows: error                # or skip: bad rows are dropped and counted

Example::

    spec = load_spec("my_data.yaml")
    bundle = build_bundle(spec)                   # fits on train, converts all splits
    bundle.preprocessing.save(run_dir / "preprocessing")
    again = build_bundle(spec, Preprocessing.load(run_dir / "preprocessing"))   # no refit
"""

from __future__ import annotations

import glob as globlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple, Union

import numpy as np
import pandas as pd
import yaml

from mtl_torchrec.core.config import from_dict
from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.preprocessing import (
    Normalizer,
    Preprocessing,
    Vocabulary,
    stable_hash,
)
from mtl_torchrec.data.schema import (
    ColumnTable,
    DataError,
    DenseFeature,
    Jagged,
    LabelSpec,
    Schema,
    SparseFeature,
)

SPLITS = ("train", "val", "test")
# Rows of a spec without a split rule (evaluation data) form this split.
ALL_SPLIT = "all"


# ----------------------------------------------------------------------------- the spec


@dataclass
class CsvOptions:
    separator: str = ","
    header: bool = True
    # Column names when the file has no header row.
    names: Optional[List[str]] = None
    # Cell values read as missing (besides empty cells when "" is listed).
    na_values: List[str] = field(default_factory=lambda: [""])
    encoding: str = "utf-8"
    # Strip spaces after the separator (e.g. "a, b").
    skip_initial_space: bool = False


@dataclass
class SparseColumn:
    column: str
    vocab: Literal["build", "file", "hash", "identity"]
    # Feature name in the model (default: the column name).
    name: Optional[str] = None
    # Multi-valued cell, e.g. "a|b|c" with separator "|".
    separator: Optional[str] = None
    min_count: int = 1
    vocab_file: Optional[str] = None
    hash_buckets: int = 0
    num_embeddings: int = 0
    table: Optional[str] = None
    pooling: Literal["sum", "mean"] = "sum"

    @property
    def feature(self) -> str:
        return self.name or self.column


@dataclass
class DenseColumn:
    column: str
    name: Optional[str] = None
    normalize: Literal["standard", "log_standard", "minmax", "none"] = "standard"
    fill_missing: Literal["error", "mean", "zero"] = "error"

    @property
    def feature(self) -> str:
        return self.name or self.column


@dataclass
class LabelColumn:
    task: str
    column: str
    type: Literal["binary", "regression"]
    # Binary mapping from raw values: cells equal to one of ``positive`` are 1; with ``negative``
    # given, only those are 0 and any other value is a bad row, else every other value is 0.
    positive: Optional[List[str]] = None
    negative: Optional[List[str]] = None
    # Binary from a number: value >= threshold is 1.
    threshold: Optional[float] = None
    # A missing cell means "no label for this task" (masked) instead of a bad row.
    maskable: bool = False
    # A 0/1 column: rows where it is 0 have no label for this task.
    mask_column: Optional[str] = None


@dataclass
class SplitRule:
    # A column naming each row's split, with the values that mean train / val / test.
    column: Optional[str] = None
    train_values: List[str] = field(default_factory=lambda: ["train"])
    val_values: List[str] = field(default_factory=lambda: ["val", "valid", "validation"])
    test_values: List[str] = field(default_factory=lambda: ["test"])
    # Otherwise a deterministic hash split, by a key column (all rows of a key in one split) or by row.
    by: Optional[str] = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0


@dataclass
class ItemText:
    # The sparse feature whose ids index the text (its vocabulary maps raw item -> id).
    item: str
    columns: List[str] = field(default_factory=list)
    separator: str = " | "


@dataclass
class SliceSpec:
    column: str
    # One slice per most frequent raw value (up to ``top``) of a single-valued column ...
    top: int = 10
    # ... or (for a sparse feature) cold = id unseen in training (OOV), warm = the rest.
    cold_warm: bool = False


@dataclass
class DataSpec:
    files: Union[str, List[str], Dict[str, Union[str, List[str]]]]
    labels: List[LabelColumn]
    sparse: List[SparseColumn] = field(default_factory=list)
    dense: List[DenseColumn] = field(default_factory=list)
    format: Optional[Literal["csv", "parquet"]] = None
    csv: CsvOptions = field(default_factory=CsvOptions)
    chunk_rows: int = 200000
    split: Optional[SplitRule] = None
    group: Optional[str] = None
    item_text: Optional[ItemText] = None
    slices: List[SliceSpec] = field(default_factory=list)
    on_bad_rows: Literal["error", "skip"] = "error"
    # Directory that relative paths are resolved against (set by load_spec).
    base_dir: str = "."

    def validate(self) -> None:
        if not self.labels:
            raise ConfigError("labels: at least one label column is required")
        if self.chunk_rows <= 0:
            raise ConfigError("chunk_rows: must be positive")
        for i, s in enumerate(self.sparse):
            key = f"sparse[{i}]"
            if s.vocab == "file" and not s.vocab_file:
                raise ConfigError(f"{key}.vocab_file: required with vocab: file")
            if s.vocab == "hash" and s.hash_buckets < 2:
                raise ConfigError(f"{key}.hash_buckets: required (>= 2) with vocab: hash")
            if s.vocab == "identity" and s.num_embeddings < 1:
                raise ConfigError(f"{key}.num_embeddings: required (>= 1) with vocab: identity")
            if s.vocab == "build" and s.min_count < 1:
                raise ConfigError(f"{key}.min_count: must be >= 1")
            if s.vocab == "identity" and s.separator:
                raise ConfigError(f"{key}.separator: multi-valued columns need a vocabulary, not identity")
        names = [s.feature for s in self.sparse] + [d.feature for d in self.dense] + [lab.task for lab in self.labels]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"sparse/dense/labels: names used twice: {sorted(dup)}")
        for i, lab in enumerate(self.labels):
            if lab.type == "binary" and lab.positive is not None and lab.threshold is not None:
                raise ConfigError(f"labels[{i}]: give either positive or threshold, not both")
            if lab.type == "regression" and (lab.positive or lab.negative or lab.threshold is not None):
                raise ConfigError(f"labels[{i}]: positive/negative/threshold only apply to binary labels")
        if isinstance(self.files, dict):
            bad = [k for k in self.files if k not in SPLITS]
            if bad:
                raise ConfigError(f"files: unknown split(s) {bad}; use {list(SPLITS)}")
            if self.split is not None and (self.split.column or self.split.test_fraction):
                raise ConfigError("split: with files per split, a split rule may only carve val out of "
                                  "the train files (split.by / val_fraction, test_fraction: 0)")
        if self.split is not None:
            sp = self.split
            if sp.column and sp.by:
                raise ConfigError("split: give either column or by, not both")
            if not (0 <= sp.val_fraction and 0 <= sp.test_fraction and sp.val_fraction + sp.test_fraction < 1):
                raise ConfigError("split: val_fraction + test_fraction must be in [0, 1)")
        sparse_names = {s.feature for s in self.sparse}
        if self.item_text is not None:
            if self.item_text.item not in sparse_names:
                raise ConfigError(f"item_text.item: '{self.item_text.item}' is not a sparse feature")
            if not self.item_text.columns:
                raise ConfigError("item_text.columns: at least one text column is required")
        for i, sl in enumerate(self.slices):
            if sl.cold_warm and sl.column not in sparse_names:
                raise ConfigError(f"slices[{i}].cold_warm: '{sl.column}' is not a sparse feature")
            if sl.cold_warm and self.sparse_by_feature(sl.column).vocab not in ("build", "file"):
                raise ConfigError(f"slices[{i}].cold_warm: needs vocab build or file for '{sl.column}'")

    def sparse_by_feature(self, name: str) -> SparseColumn:
        return next(s for s in self.sparse if s.feature == name)

    def raw_columns(self) -> List[str]:
        """Every file column the spec reads."""
        cols: List[str] = [s.column for s in self.sparse] + [d.column for d in self.dense]
        for lab in self.labels:
            cols.append(lab.column)
            if lab.mask_column:
                cols.append(lab.mask_column)
        if self.group:
            cols.append(self.group)
        if self.split and self.split.column:
            cols.append(self.split.column)
        if self.split and self.split.by:
            cols.append(self.split.by)
        if self.item_text:
            cols += self.item_text.columns
        for sl in self.slices:
            if not sl.cold_warm:
                cols.append(self._raw_column_of(sl.column))
        return list(dict.fromkeys(cols))

    def _raw_column_of(self, name: str) -> str:
        for s in self.sparse:
            if s.feature == name:
                return s.column
        for d in self.dense:
            if d.feature == name:
                return d.column
        return name


def load_spec(path: Union[str, Path]) -> DataSpec:
    """Reads and checks a YAML data spec; errors name the spec file and key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data spec not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    raw = dict(raw)
    raw["base_dir"] = str(p.resolve().parent)
    try:
        return from_dict(DataSpec, raw)
    except TypeError as e:
        # A missing required key surfaces as a TypeError from the dataclass constructor.
        raise ConfigError(f"{p}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


# ----------------------------------------------------------------------------- reading


@dataclass
class Chunk:
    frame: pd.DataFrame
    file: str
    # File line (CSV, 1-based) or row (Parquet, 0-based) of the chunk's first row.
    first_line: int
    line_word: str
    # Position of the chunk's first row among all rows of all files (for row-hash splits).
    global_start: int
    # Split of every row of the file, when files are given per split.
    file_split: Optional[str]

    def where(self, i: int) -> str:
        return f"{self.file} {self.line_word} {self.first_line + i}"


def _expand(spec: DataSpec, pattern: str) -> List[str]:
    full = pattern if Path(pattern).is_absolute() else str(Path(spec.base_dir) / pattern)
    found = sorted(globlib.glob(full))
    if not found:
        raise FileNotFoundError(f"data spec files: nothing matches '{pattern}' (looked for {full})")
    return found


def spec_files(spec: DataSpec) -> List[Tuple[str, Optional[str]]]:
    """(path, split or None) for every data file, in reading order."""
    if isinstance(spec.files, dict):
        out = []
        for split in SPLITS:
            pats = spec.files.get(split)
            for pat in [pats] if isinstance(pats, str) else (pats or []):
                out += [(f, split) for f in _expand(spec, pat)]
        return out
    pats = [spec.files] if isinstance(spec.files, str) else spec.files
    return [(f, None) for pat in pats for f in _expand(spec, pat)]


def _format(spec: DataSpec, path: str) -> str:
    if spec.format:
        return spec.format
    low = path.lower()
    if low.endswith((".parquet", ".pq")):
        return "parquet"
    if low.endswith((".csv", ".tsv", ".txt", ".data", ".test", ".csv.gz", ".gz")):
        return "csv"
    raise ConfigError(f"format: cannot tell the format of '{path}' from its name; set format: csv or parquet")


def iter_chunks(spec: DataSpec) -> Iterator[Chunk]:
    """Chunks of the spec's columns from every file, with positions for error messages."""
    columns = spec.raw_columns()
    global_start = 0
    for path, split in spec_files(spec):
        fmt = _format(spec, path)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            have = set(pf.schema_arrow.names)
            missing = [c for c in columns if c not in have]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}; present: {sorted(have)}")
            row = 0
            for rb in pf.iter_batches(batch_size=spec.chunk_rows, columns=columns):
                frame = rb.to_pandas()
                yield Chunk(frame, path, row, "row", global_start, split)
                row += len(frame)
                global_start += len(frame)
            continue
        o = spec.csv
        if o.header and o.names:
            raise ConfigError("csv.names: only for files without a header row (csv.header: false)")
        if not o.header and not o.names:
            raise ConfigError("csv.names: required when csv.header is false")
        try:
            header = pd.read_csv(
                path, sep=o.separator, nrows=0, header=0 if o.header else None, names=o.names,
                encoding=o.encoding, skipinitialspace=o.skip_initial_space,
            )
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
            raise DataError(f"{path}: cannot read the CSV header: {e}") from None
        have = [str(c) for c in header.columns]
        missing = [c for c in columns if c not in have]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; present: {have}")
        reader = pd.read_csv(
            path, sep=o.separator, header=0 if o.header else None, names=o.names, usecols=columns,
            dtype=str, keep_default_na=False, na_values=o.na_values, chunksize=spec.chunk_rows,
            encoding=o.encoding, skipinitialspace=o.skip_initial_space,
        )
        # Line numbers assume one line per record (no newlines inside quoted cells).
        line = 2 if o.header else 1
        try:
            for frame in reader:
                yield Chunk(frame, path, line, "line", global_start, split)
                line += len(frame)
                global_start += len(frame)
        except pd.errors.ParserError as e:
            raise DataError(f"{path}: malformed CSV: {e}") from None


# ----------------------------------------------------------------------------- row checks


class BadRows:
    """Collects bad rows of a chunk; raises at the first one unless skipping is on."""

    def __init__(self, chunk: Chunk, skip: bool, counts: Dict[str, int]) -> None:
        self.chunk = chunk
        self.skip = skip
        self.counts = counts
        self.bad = np.zeros(len(chunk.frame), dtype=bool)

    def flag(self, rows: np.ndarray, column: str, reason: str, values: Any) -> None:
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows
        if len(rows) == 0:
            return
        if not self.skip:
            i = int(rows[0])
            raise DataError(
                f"{self.chunk.where(i)} column '{column}': {reason} (value {values[i]!r}); "
                f"{len(rows)} such row(s) in this chunk. Set on_bad_rows: skip to drop and count them."
            )
        new = rows[~self.bad[rows]]
        self.bad[rows] = True
        key = f"{column}: {reason}"
        self.counts[key] = self.counts.get(key, 0) + int(len(new))


def _is_missing(values: np.ndarray) -> np.ndarray:
    return pd.isna(values) | (values == "") if values.dtype == object else pd.isna(values)


def _numbers(frame: pd.DataFrame, column: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float values, missing mask, unparseable mask) of a column."""
    raw = frame[column].to_numpy()
    missing = np.asarray(_is_missing(raw), dtype=bool)
    num = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(num) & ~missing
    bad |= np.isinf(num)
    return num, missing, bad


def _labels(spec: DataSpec, chunk: Chunk, bad: BadRows) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for lab in spec.labels:
        frame = chunk.frame
        raw = frame[lab.column].to_numpy()
        missing = np.asarray(_is_missing(raw), dtype=bool)
        if lab.type == "binary" and lab.positive is not None:
            text = pd.Series(raw).astype(str).str.strip().to_numpy()
            pos = np.isin(text, [str(v).strip() for v in lab.positive])
            y = pos.astype(np.float32)
            if lab.negative is not None:
                neg = np.isin(text, [str(v).strip() for v in lab.negative])
                bad.flag(~pos & ~neg & ~missing, lab.column, "value is neither positive nor negative", raw)
        else:
            num, missing, unparseable = _numbers(frame, lab.column)
            bad.flag(unparseable, lab.column, "label is not a number", raw)
            if lab.type == "binary" and lab.threshold is not None:
                y = (num >= lab.threshold).astype(np.float32)
            elif lab.type == "binary":
                bad.flag(~missing & ~unparseable & (num != 0) & (num != 1), lab.column,
                         "binary label must be 0 or 1 (or set positive/threshold)", raw)
                y = num.astype(np.float32)
            else:
                y = num.astype(np.float32)
        if lab.maskable:
            y = np.where(missing, np.nan, y).astype(np.float32)
        else:
            bad.flag(missing, lab.column, f"missing label for task '{lab.task}' (set maskable: true to mask)", raw)
        if lab.mask_column:
            mnum, mmiss, mbad = _numbers(frame, lab.mask_column)
            bad.flag(mbad | mmiss | ~np.isin(np.nan_to_num(mnum, nan=-1), [0, 1]), lab.mask_column,
                     "mask column must be 0 or 1", frame[lab.mask_column].to_numpy())
            y = np.where(mnum == 1, y, np.nan).astype(np.float32)
        out[lab.task] = y
    return out


def _tokens(spec_col: SparseColumn, frame: pd.DataFrame) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Raw tokens (object array) and, for multi-valued columns, per-row lengths."""
    raw = frame[spec_col.column]
    if spec_col.separator is None:
        values = raw.to_numpy(dtype=object)
        miss = np.asarray(_is_missing(values), dtype=bool)
        values = np.where(miss, None, raw.astype(str).to_numpy(dtype=object))
        return values, None
    s = raw.astype(object).where(~np.asarray(_is_missing(raw.to_numpy(dtype=object)), dtype=bool), "")
    parts = s.astype(str).str.split(spec_col.separator, regex=False)
    parts = parts.map(lambda xs: [x for x in (t.strip() for t in xs) if x])
    lengths = parts.map(len).to_numpy(dtype=np.int64)
    flat = np.array([t for xs in parts for t in xs], dtype=object)
    return flat, lengths


def _split_of(spec: DataSpec, chunk: Chunk, bad: BadRows) -> np.ndarray:
    n = len(chunk.frame)
    sp = spec.split
    if chunk.file_split is not None and (chunk.file_split != "train" or sp is None):
        return np.full(n, chunk.file_split, dtype=object)
    if sp is None:
        return np.full(n, ALL_SPLIT, dtype=object)
    if sp.column:
        raw = chunk.frame[sp.column].astype(str).str.strip().to_numpy(dtype=object)
        out = np.full(n, None, dtype=object)
        for name, values in (("train", sp.train_values), ("val", sp.val_values), ("test", sp.test_values)):
            out[np.isin(raw, [str(v) for v in values])] = name
        bad.flag(pd.isna(out), sp.column, "split value is not one of the configured train/val/test values", raw)
        return out
    if sp.by:
        h = stable_hash(chunk.frame[sp.by].to_numpy(dtype=object))
    else:
        h = stable_hash(np.arange(chunk.global_start, chunk.global_start + n))
    u = _uniform(h, sp.seed)
    return np.where(u < sp.test_fraction, "test", np.where(u < sp.test_fraction + sp.val_fraction, "val", "train")).astype(object)


def _uniform(h: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (hash xor seed) mapped to [0, 1): the seed reshuffles the split."""
    with np.errstate(over="ignore"):
        z = h.astype(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def _check_chunk(spec: DataSpec, chunk: Chunk, skip: bool, counts: Dict[str, int]) -> Tuple[BadRows, np.ndarray, Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Row checks that do not depend on fitted state: split, labels, dense values, identity ids."""
    bad = BadRows(chunk, skip, counts)
    split = _split_of(spec, chunk, bad)
    labels = _labels(spec, chunk, bad)
    dense: Dict[str, np.ndarray] = {}
    for d in spec.dense:
        num, missing, unparseable = _numbers(chunk.frame, d.column)
        raw = chunk.frame[d.column].to_numpy()
        bad.flag(unparseable, d.column, "not a finite number", raw)
        if d.fill_missing == "error":
            bad.flag(missing, d.column, "missing value (set fill_missing: mean or zero)", raw)
        dense[d.feature] = num
    for s in spec.sparse:
        if s.vocab == "identity":
            ids = Vocabulary.identity(s.num_embeddings).lookup(chunk.frame[s.column].to_numpy(dtype=object))
            bad.flag(ids < 0, s.column, f"not an integer id in [0, {s.num_embeddings})",
                     chunk.frame[s.column].to_numpy())
    return bad, split, labels, dense


# ----------------------------------------------------------------------------- fitting and conversion


def fit_preprocessing(spec: DataSpec) -> Preprocessing:
    """First pass: vocabularies and normalisers from the training split's good rows only."""
    counts: Dict[str, pd.Series] = {s.feature: pd.Series(dtype=np.int64) for s in spec.sparse if s.vocab == "build"}
    norms = {d.feature: Normalizer(d.normalize, d.fill_missing) for d in spec.dense}
    skipped: Dict[str, int] = {}
    train_rows = 0
    if spec.split is None and not isinstance(spec.files, dict):
        raise ConfigError("split: fitting needs a training split: give a split rule (split.column, or "
                          "split.by / fractions) or files per split")
    for chunk in iter_chunks(spec):
        bad, split, _, dense = _check_chunk(spec, chunk, spec.on_bad_rows == "skip", skipped)
        keep = (split == "train") & ~bad.bad
        train_rows += int(keep.sum())
        frame = chunk.frame[keep]
        for s in spec.sparse:
            if s.vocab != "build":
                continue
            tokens, _ = _tokens(s, frame)
            tokens = tokens[~pd.isna(tokens)]
            vc = pd.Series(tokens, dtype=object).value_counts()
            counts[s.feature] = counts[s.feature].add(vc, fill_value=0)
        for d in spec.dense:
            norms[d.feature].update(dense[d.feature][keep])
    if train_rows == 0:
        raise DataError("data spec: the training split has no rows (check files and split rule)")
    vocabs: Dict[str, Vocabulary] = {}
    for s in spec.sparse:
        if s.vocab == "build":
            vocabs[s.feature] = Vocabulary.build({str(k): int(v) for k, v in counts[s.feature].items()}, s.min_count)
        elif s.vocab == "file":
            vf = s.vocab_file if Path(s.vocab_file).is_absolute() else str(Path(spec.base_dir) / s.vocab_file)
            vocabs[s.feature] = Vocabulary.from_file(vf)
        elif s.vocab == "hash":
            vocabs[s.feature] = Vocabulary.hashed(s.hash_buckets)
        else:
            vocabs[s.feature] = Vocabulary.identity(s.num_embeddings)
    return Preprocessing(vocabs=vocabs, normalizers=norms, stats={"fit_train_rows": train_rows})


def schema_for(spec: DataSpec, pre: Preprocessing) -> Schema:
    sparse = []
    for s in spec.sparse:
        if s.feature not in pre.vocabs:
            raise DataError(f"fitted preprocessing has no vocabulary for sparse feature '{s.feature}'")
        sparse.append(SparseFeature(s.feature, pre.vocabs[s.feature].num_embeddings, multi_valued=s.separator is not None,
                                    table=s.table, pooling=s.pooling))
    for d in spec.dense:
        if d.feature not in pre.normalizers:
            raise DataError(f"fitted preprocessing has no normaliser for dense feature '{d.feature}'")
    labels = [LabelSpec(lab.task, lab.type, maskable=lab.maskable or lab.mask_column is not None) for lab in spec.labels]
    return Schema(
        sparse=sparse, dense=[DenseFeature(d.feature) for d in spec.dense], labels=labels,
        group=group_column(spec.group) if spec.group else None,
        text_item=spec.item_text.item if spec.item_text else None,
    )


def group_column(raw: str) -> str:
    """The table column holding group ids (a 63-bit hash of the raw group value)."""
    return f"group:{raw}"


class _SplitBuilder:
    """Accumulates converted chunks of one split."""

    def __init__(self) -> None:
        self.parts: Dict[str, List[Any]] = {}
        self.slice_raw: Dict[str, List[np.ndarray]] = {}

    def add(self, name: str, value: Any) -> None:
        self.parts.setdefault(name, []).append(value)

    def table(self, spec: DataSpec) -> ColumnTable:
        cols: Dict[str, Any] = {}
        multi = {s.feature for s in spec.sparse if s.separator is not None}
        for name, parts in self.parts.items():
            if name in multi:
                cols[name] = Jagged(np.concatenate([p.values for p in parts]), np.concatenate([p.lengths for p in parts]))
            else:
                cols[name] = np.concatenate(parts)
        return ColumnTable(cols)


def build_bundle(spec: DataSpec, preprocessing: Optional[Preprocessing] = None) -> Any:
    """Converts the spec's files to a :class:`~mtl_torchrec.data.sources.DataBundle`.

    Fits preprocessing on the training split unless ``preprocessing`` is given (evaluation and
    serving reuse the run's fitted mapping). Bad rows raise or, with ``on_bad_rows: skip``, are
    dropped and counted in ``bundle.preprocessing.stats["skipped_rows"]``.
    """
    fitted = preprocessing is None
    pre = fit_preprocessing(spec) if fitted else preprocessing
    schema = schema_for(spec, pre)
    skip = spec.on_bad_rows == "skip"
    skipped: Dict[str, int] = {}
    builders: Dict[str, _SplitBuilder] = {}
    item_vocab = pre.vocabs[spec.item_text.item] if spec.item_text else None
    item_text: Optional[List[Optional[str]]] = [None] * item_vocab.num_embeddings if item_vocab else None
    total_rows = 0
    for chunk in iter_chunks(spec):
        total_rows += len(chunk.frame)
        bad, split, labels, dense = _check_chunk(spec, chunk, skip, skipped)
        keep = ~bad.bad
        frame = chunk.frame[keep]
        split = split[keep]
        converted: Dict[str, Any] = {}
        for s in spec.sparse:
            tokens, lengths = _tokens(s, frame)
            ids = pre.vocabs[s.feature].lookup(tokens)
            converted[s.feature] = ids if lengths is None else Jagged(ids, lengths)
        for d in spec.dense:
            converted[d.feature] = pre.normalizers[d.feature].transform(dense[d.feature][keep])
        for task, y in labels.items():
            converted[task] = y[keep]
        if spec.group:
            h = stable_hash(frame[spec.group].to_numpy(dtype=object))
            converted[group_column(spec.group)] = (h >> np.uint64(1)).astype(np.int64)
        raw_slices = {sl.column: frame[spec._raw_column_of(sl.column)].astype(str).to_numpy(dtype=object)
                      for sl in spec.slices if not sl.cold_warm}
        if item_text is not None:
            _fill_text(item_text, converted[spec.item_text.item], frame, spec.item_text)
        for name in np.unique(split):
            rows = np.flatnonzero(split == name)
            b = builders.setdefault(str(name), _SplitBuilder())
            for col, v in converted.items():
                b.add(col, v.take(rows) if isinstance(v, Jagged) else v[rows])
            for col, raw in raw_slices.items():
                b.slice_raw.setdefault(col, []).append(raw[rows])
    splits = {name: b.table(spec) for name, b in builders.items()}
    for name in SPLITS if (spec.split is not None or isinstance(spec.files, dict)) else ():
        splits.setdefault(name, _empty_table(spec, schema))
    slices = {name: _slices(spec, pre, splits[name], b) for name, b in builders.items()}
    stats = dict(pre.stats)
    stats.update({
        "rows_read": total_rows,
        "rows_per_split": {k: len(v) for k, v in splits.items()},
        "skipped_rows": sum(skipped.values()),
        "skipped_by_reason": skipped,
    })
    if fitted:
        pre.stats = stats
    out_pre = Preprocessing(pre.vocabs, pre.normalizers, stats)
    return DataBundle(schema=schema, splits=splits, item_text=item_text, slices=slices, preprocessing=out_pre)


def _empty_table(spec: DataSpec, schema: Schema) -> ColumnTable:
    cols: Dict[str, Any] = {}
    for f in schema.sparse:
        cols[f.name] = Jagged(np.zeros(0), np.zeros(0)) if f.multi_valued else np.zeros(0, dtype=np.int64)
    for d in schema.dense:
        cols[d.name] = np.zeros(0, dtype=np.float32)
    for lab in schema.labels:
        cols[lab.column_name] = np.zeros(0, dtype=np.float32)
    if schema.group:
        cols[schema.group] = np.zeros(0, dtype=np.int64)
    return ColumnTable(cols)


def _fill_text(item_text: List[Optional[str]], ids: np.ndarray, frame: pd.DataFrame, spec: ItemText) -> None:
    if isinstance(ids, Jagged):
        raise DataError(f"item_text.item: '{spec.item}' must be a single-valued feature")
    parts = [frame[c].fillna("").astype(str).str.strip() for c in spec.columns]
    text = parts[0]
    for p in parts[1:]:
        text = text.str.cat(p, sep=spec.separator)
    # The first text seen for an id wins; id 0 (OOV / missing) has no single item, so no text.
    first = pd.Series(np.arange(len(ids))).groupby(ids).first()
    values = text.to_numpy(dtype=object)
    for item, row in first.items():
        if item != 0 and item_text[item] is None:
            item_text[item] = values[row]


def _slices(spec: DataSpec, pre: Preprocessing, table: ColumnTable, b: _SplitBuilder) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for sl in spec.slices:
        if sl.cold_warm:
            ids = table[sl.column]
            cold = ids == 0
            out[f"{sl.column}=cold"] = cold
            out[f"{sl.column}=warm"] = ~cold
            continue
        raw = np.concatenate(b.slice_raw[sl.column]) if b.slice_raw.get(sl.column) else np.zeros(0, dtype=object)
        top = pd.Series(raw).value_counts().index[: sl.top]
        for v in top:
            out[f"{sl.column}={v}"] = raw == v
    return out
