"""Rows to score: raw feature rows (a DataFrame, or CSV/Parquet files read in chunks) mapped with a
run's fitted preprocessing exactly as training maps them, with or without label columns.

There is one data path: :func:`feature_spec` narrows the run's data spec to what the given columns
hold (no split rule, labels only where their columns are present, no slices), and every chunk goes
through :func:`~mtl_torchrec.data.spec.build.convert_chunk`, the function training and evaluation
use: the same vocabularies (unknown ids -> the out-of-vocabulary row 0, hashing, multi-valued
separators), the same dense normalisers and missing-value rule (``fill_missing``), the same text
keys. Rows a spec with ``on_bad_rows: skip`` drops are left out; :attr:`FeatureChunk.rows` says which
input rows the table holds. Unknown ids are counted as evaluation counts them, and
:meth:`FeatureRows.unknown_id_warnings` gives evaluation's warnings for them.

Example::

    spec = feature_spec(load_spec("data/spec.yaml"), df.columns)        # DataError naming missing columns
    rows = FeatureRows(spec, Preprocessing.load(run_dir / "preprocessing"))
    part = rows.convert_frame(df)            # FeatureChunk: .table (ColumnTable), .rows (input positions)
    batch = Batch.from_table(part.table, rows.schema)
    for part in rows.read_files():           # the spec's files, chunk by chunk (memory bounded by chunk_rows)
        ...
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.data.preprocessing import Preprocessing, oov_warnings, skipped_rows_warnings
from mtl_torchrec.data.schema import ColumnTable, Schema
from mtl_torchrec.data.spec.build import convert_chunk, reader_states
from mtl_torchrec.data.spec.data_spec import DataSpec
from mtl_torchrec.data.spec.fitting import schema_for
from mtl_torchrec.data.spec.kinds import TEXT, OovCounts, TextParts
from mtl_torchrec.data.spec.reading import Chunk, file_format, iter_chunks, read_header, spec_files
from mtl_torchrec.data.spec.sections import ALL_SPLIT, LabelColumn


def feature_columns(spec: DataSpec) -> Dict[str, str]:
    """Every file column the model's features read -> the spec key that names it (every feature
    kind's columns: sparse and dense columns, text keys and per-row text columns, ...), in feature order."""
    named: Dict[str, str] = {}
    for key, column, _ in spec.feature_columns():
        named.setdefault(column, key)
    return named


def feature_spec(spec: DataSpec, columns: Sequence[str], text: bool = True, where: str = "the data",
                 slices: bool = False, labels: bool = True) -> DataSpec:
    """``spec`` narrowed to rows that have ``columns``: every feature column is required (DataError
    naming all missing ones with their spec keys, before any row is read); a label is kept only when
    its column (and mask / weight column) is present; the group column only when present; no split
    rule (every row is in split ``all``), no per-split files, no slices (with ``slices``, the
    spec's slices whose column is present: evaluation reports them). ``text=False`` drops the text
    features (a run trained without them does not read their columns); ``labels=False`` drops every
    label (scoring reads none, so a bad label cell must not cost its row a prediction)."""
    if not text:
        spec = dataclasses.replace(spec, text=[])
    have = set(str(c) for c in columns)
    missing = [(c, key) for c, key in feature_columns(spec).items() if c not in have]
    if missing:
        named = ", ".join(f"'{c}' ({key})" for c, key in missing)
        raise DataError(f"{where}: missing feature column(s) {[c for c, _ in missing]}: {named}; "
                        f"it has {sorted(have)}")

    def present(lab: LabelColumn) -> bool:
        cols = [lab.column, lab.mask_column, lab.weight_column]
        return all(c is None or c in have for c in cols)

    return dataclasses.replace(
        spec, labels=[lab for lab in spec.labels if labels and present(lab)], split=None,
        slices=[sl for sl in spec.slices if spec.raw_column_of(sl.column) in have] if slices else [],
        group=spec.group if spec.group in have else None,
        files=spec.files if not isinstance(spec.files, dict) else [p for v in spec.files.values() if v
                                                                   for p in ([v] if isinstance(v, str) else v)],
    )


def file_columns(spec: DataSpec, path: str) -> List[str]:
    """The column names of one data file (CSV header or ``csv.names``, Parquet schema); DataError
    for an empty CSV file."""
    if file_format(spec, path) == "parquet":
        import pyarrow.parquet as pq  # only when a Parquet file is read

        return list(pq.ParquetFile(path).schema_arrow.names)
    header = read_header(path, spec.csv)
    if header is None:
        raise DataError(f"{path}: the file is empty (no header and no rows)")
    return header.names


def files_spec(spec: DataSpec, files: Sequence[str], text: bool = True, slices: bool = False,
               labels: bool = True) -> DataSpec:
    """The run's ``spec`` reading ``files`` (absolute paths, or relative to the working directory)
    instead of its own, narrowed by :func:`feature_spec` to the columns every one of them has
    (``slices``: keeping the spec's slices whose column they have; ``labels``: as there)."""
    paths = [str(Path(f).resolve()) for f in files]
    spec = dataclasses.replace(spec, files=paths)
    common: Optional[List[str]] = None
    for path, _ in spec_files(spec):
        cols = file_columns(spec, path)
        missing = [c for c in feature_columns(spec if text else dataclasses.replace(spec, text=[])) if c not in cols]
        if missing:
            feature_spec(spec, cols, text, where=path)  # raises, naming the file and the columns
        common = cols if common is None else [c for c in common if c in cols]
    return feature_spec(spec, common or [], text, slices=slices, labels=labels)


class FeatureChunk(NamedTuple):
    """A converted chunk: ``table`` (features, plus labels / group where the spec keeps them),
    ``rows`` (0-based position of each table row among all input rows), ``frame`` (the chunk's raw
    rows that ``rows`` point at, for passing key columns through)."""

    table: ColumnTable
    rows: np.ndarray
    frame: pd.DataFrame


class FeatureRows:
    """Converts raw rows with a run's fitted preprocessing (see the module docstring).

    Args:
        spec: a spec from :func:`feature_spec` / :func:`files_spec`.
        pre: the run's fitted preprocessing (``preprocessing.json``); never refitted here.

    Raises DataError (from :func:`~mtl_torchrec.data.spec.fitting.schema_for`) when ``pre`` lacks a
    feature of the spec.
    """

    def __init__(self, spec: DataSpec, pre: Preprocessing) -> None:
        self.spec = spec
        self.pre = pre
        self.schema: Schema = schema_for(spec, pre)
        self.states = reader_states(spec, pre, fitting=False)
        self.texts: TextParts = self.states[TEXT.section]
        self.skipped: Dict[str, int] = {}
        # Unknown ids per feature of every row converted (all in split ALL_SPLIT: no split rule).
        self.oov = OovCounts()
        self._seen = 0

    def _convert(self, chunk: Chunk) -> FeatureChunk:
        converted, _, keep = convert_chunk(self.spec, self.pre, chunk, self.states, self.skipped, self.oov)
        positions = np.arange(self._seen, self._seen + len(chunk.frame))[keep]
        self._seen += len(chunk.frame)
        return FeatureChunk(ColumnTable(converted), positions, chunk.frame[keep])

    def convert_frame(self, frame: pd.DataFrame, name: str = "DataFrame") -> FeatureChunk:
        """One DataFrame of raw rows (any index; rows are numbered in call order across calls).
        Bad rows are reported as ``<name> row <n>``."""
        frame = frame.reset_index(drop=True)
        start = self._seen
        chunk = Chunk(frame, name, np.arange(start, start + len(frame)), "row", start, None)
        return self._convert(chunk)

    def read_files(self) -> Iterator[FeatureChunk]:
        """Every chunk of the spec's files (``chunk_rows`` rows each), converted."""
        for chunk in iter_chunks(self.spec):
            yield self._convert(chunk)

    def unknown_id_warnings(self) -> List[str]:
        """The warnings ``mtl-torchrec evaluate`` gives (:func:`~mtl_torchrec.data.preprocessing.oov_warnings`)
        for the rows converted so far: id features (behaviour-sequence histories included) whose share of
        ids unknown to the run's vocabularies is far above training's, text features with unknown keys."""
        stats = {"oov": self.oov.stats(), "train_oov": self.pre.stats.get("train_oov")}
        return oov_warnings(stats, ALL_SPLIT, [t.feature for t in self.spec.text])

    def skipped_rows_warnings(self) -> List[str]:
        """The warning ``mtl-torchrec evaluate`` gives when rows converted so far were dropped under
        ``on_bad_rows: skip`` (:func:`~mtl_torchrec.data.preprocessing.skipped_rows_warnings`)."""
        return skipped_rows_warnings(self.skipped)
