"""Per-row parsing and checks of a chunk: missing cells, numbers, labels, id tokens, and the checks
that need no fitted state (:func:`check_chunk`), flagging bad rows on a :class:`BadRows`."""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np
import pandas as pd

from mtl_torchrec.data.preprocessing import Vocabulary
from mtl_torchrec.data.spec.bad_rows import BadRows
from mtl_torchrec.data.spec.data_spec import DataSpec
from mtl_torchrec.data.spec.reading import Chunk
from mtl_torchrec.data.spec.sections import SparseColumn
from mtl_torchrec.data.spec.splits import assign_splits


def is_missing(values: np.ndarray) -> np.ndarray:
    """Missing cells: NaN/None, and the empty string in text (object) columns."""
    return pd.isna(values) | (values == "") if values.dtype == object else pd.isna(values)


def parse_numbers(frame: pd.DataFrame, column: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values, missing mask, unparseable-or-infinite mask) of ``column``; missing and
    unparseable cells are NaN in the values, infinite ones stay infinite."""
    raw = frame[column].to_numpy()
    missing = np.asarray(is_missing(raw), dtype=bool)
    num = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(num) & ~missing
    bad |= np.isinf(num)
    return num, missing, bad


def label_values(spec: DataSpec, chunk: Chunk, bad: BadRows) -> Dict[str, np.ndarray]:
    """task -> float32 label per row (NaN = masked: a missing maskable cell or mask column 0).

    Flags on ``bad``: values neither positive nor negative (when both lists are given), labels
    that are not numbers, binary numbers other than 0/1 (without ``threshold``), missing labels of
    tasks that are not maskable, and mask cells other than 0/1.
    """
    out: Dict[str, np.ndarray] = {}
    frame = chunk.frame
    for lab in spec.labels:
        raw = frame[lab.column].to_numpy()
        missing = np.asarray(is_missing(raw), dtype=bool)
        if lab.type == "binary" and lab.positive is not None:
            text = pd.Series(raw).astype(str).str.strip().to_numpy()
            pos = np.isin(text, [str(v).strip() for v in lab.positive])
            y = pos.astype(np.float32)
            if lab.negative is not None:
                neg = np.isin(text, [str(v).strip() for v in lab.negative])
                bad.flag(~pos & ~neg & ~missing, lab.column, "value is neither positive nor negative", raw)
        else:
            num, missing, unparseable = parse_numbers(frame, lab.column)
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
            mnum, mmiss, mbad = parse_numbers(frame, lab.mask_column)
            bad.flag(mbad | mmiss | ~np.isin(np.nan_to_num(mnum, nan=-1), [0, 1]), lab.mask_column,
                     "mask column must be 0 or 1", frame[lab.mask_column].to_numpy())
            y = np.where(mnum == 1, y, np.nan).astype(np.float32)
        out[lab.task] = y
    return out


def sparse_tokens(column: SparseColumn, frame: pd.DataFrame) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The raw tokens of ``column`` as an object array of str.

    Single-valued: one token per row (None where missing) and no lengths. Multi-valued (with a
    ``separator``): every row's stripped, non-empty tokens in row order, and the number of tokens
    per row (0 for a missing cell)."""
    raw = frame[column.column]
    if column.separator is None:
        values = raw.to_numpy(dtype=object)
        miss = np.asarray(is_missing(values), dtype=bool)
        values = np.where(miss, None, raw.astype(str).to_numpy(dtype=object))
        return values, None
    s = raw.astype(object).where(~np.asarray(is_missing(raw.to_numpy(dtype=object)), dtype=bool), "")
    parts = s.astype(str).str.split(column.separator, regex=False)
    parts = parts.map(lambda xs: [x for x in (t.strip() for t in xs) if x])
    lengths = parts.map(len).to_numpy(dtype=np.int64)
    flat = np.array([t for xs in parts for t in xs], dtype=object)
    return flat, lengths


class ChunkValues(NamedTuple):
    """What :func:`check_chunk` found in a chunk: its bad rows, each row's split, task -> label and
    dense feature -> raw float64 values (NaN where missing), all over every row of the chunk."""

    bad: BadRows
    split: np.ndarray
    labels: Dict[str, np.ndarray]
    dense: Dict[str, np.ndarray]


def check_chunk(spec: DataSpec, chunk: Chunk, skip: bool, counts: Dict[str, int]) -> ChunkValues:
    """Row checks that do not depend on fitted state: split, labels, dense values, identity ids.

    Raises DataError at the first bad row unless ``skip``; then bad rows are marked in the result's
    ``bad.bad`` and counted per reason in ``counts``.
    """
    bad = BadRows(chunk, skip, counts)
    split = assign_splits(spec, chunk, bad)
    labels = label_values(spec, chunk, bad)
    dense: Dict[str, np.ndarray] = {}
    for d in spec.dense:
        num, missing, unparseable = parse_numbers(chunk.frame, d.column)
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
    return ChunkValues(bad, split, labels, dense)
