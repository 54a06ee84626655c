"""Per-row parsing and checks of a chunk: missing cells, numbers, labels, id tokens, and the checks
that need no fitted state (:func:`check_chunk`), flagging bad rows on a :class:`BadRows`."""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.data.label_kinds import LABEL_KINDS
from mtl_torchrec.data.preprocessing import Vocabulary, value_tokens
from mtl_torchrec.data.spec.bad_rows import BadRows
from mtl_torchrec.data.spec.data_spec import DataSpec
from mtl_torchrec.data.spec.reading import Chunk
from mtl_torchrec.data.spec.sections import SparseColumn
from mtl_torchrec.data.spec.splits import assign_splits


def is_missing(values: np.ndarray) -> np.ndarray:
    """Missing cells (bool array): NaN/None/pd.NA, and the empty string in text (object) columns."""
    miss = np.asarray(pd.isna(values), dtype=bool)
    if values.dtype == object:
        # Compared only where present: pd.NA == "" is NA, whose truth value is an error.
        present = np.flatnonzero(~miss)
        miss[present] = values[present] == ""
    return miss


def parse_numbers(frame: pd.DataFrame, column: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values, missing mask, unparseable-or-infinite mask) of ``column``; missing and
    unparseable cells are NaN in the values, infinite ones stay infinite (so a missing value, NaN
    in a Parquet float column included, follows ``fill_missing``, while ``inf`` or ``1e999`` is a bad
    value whatever ``fill_missing`` says)."""
    raw = frame[column].to_numpy()
    missing = is_missing(raw)
    num = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(num) & ~missing
    bad |= np.isinf(num)
    return num, missing, bad


def label_values(spec: DataSpec, chunk: Chunk, bad: BadRows) -> Dict[str, np.ndarray]:
    """task -> float32 label per row (NaN = masked: a missing maskable cell or mask column 0).

    Each label is read by its label kind (:data:`~mtl_torchrec.data.label_kinds.LABEL_KINDS`):
    a binary label from ``positive``/``negative`` values, a ``threshold`` or 0/1 numbers, a
    regression label as a number. Flags on ``bad``: values neither positive nor negative (when both
    lists are given), labels that are not numbers, numbers the kind refuses (binary: other than 0/1
    without ``threshold``), missing labels of tasks that are not maskable, and mask cells other than 0/1.
    """
    out: Dict[str, np.ndarray] = {}
    frame = chunk.frame
    for lab in spec.labels:
        raw = frame[lab.column].to_numpy()
        missing = is_missing(raw)
        kind = LABEL_KINDS.get(lab.type)
        if kind.mapped and lab.positive is not None:
            # One text form whatever the file format: the cells 1, 1.0 and "1" all match positive: ["1"].
            text = value_tokens(frame[lab.column])
            pos = pd.Series(text).isin(value_tokens(np.array(lab.positive, dtype=object))).to_numpy()
            y = pos.astype(np.float32)
            if lab.negative is not None:
                neg = pd.Series(text).isin(value_tokens(np.array(lab.negative, dtype=object))).to_numpy()
                bad.flag(~pos & ~neg & ~missing, lab.column, "value is neither positive nor negative", raw)
        else:
            num, missing, unparseable = parse_numbers(frame, lab.column)
            bad.flag(unparseable, lab.column, "label is not a number", raw)
            y, wrong = kind.from_numbers(num, lab.threshold if kind.mapped else None)
            hint = " (or set positive/threshold)" if kind.mapped else ""
            bad.flag(wrong & ~missing & ~unparseable, lab.column, f"{lab.type} label must be {kind.value_rule}{hint}", raw)
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


# The largest weight float32 holds (weights are float32 in the table and the batch).
_MAX_WEIGHT = float(np.finfo(np.float32).max)


def weight_values(spec: DataSpec, chunk: Chunk, bad: BadRows) -> Dict[str, np.ndarray]:
    """task -> float32 sample weight per row, for the tasks whose label has a ``weight_column``.

    Flags on ``bad`` (naming the file, line and weight column): a missing weight, one that is not
    a finite number (text, ``inf``, ``nan``, beyond float32), and a negative one. Weight 0 is allowed
    (the row then counts for nothing). A weight is read on every row, also where the task's label
    is masked, so one rule holds for the whole column.
    """
    out: Dict[str, np.ndarray] = {}
    for lab in spec.labels:
        if lab.weight_column is None:
            continue
        num, missing, unparseable = parse_numbers(chunk.frame, lab.weight_column)
        raw = chunk.frame[lab.weight_column].to_numpy()
        bad.flag(missing, lab.weight_column, f"missing sample weight of task '{lab.task}'", raw)
        bad.flag(unparseable | (np.abs(np.nan_to_num(num)) > _MAX_WEIGHT), lab.weight_column,
                 "sample weight is not a finite number", raw)
        bad.flag(num < 0, lab.weight_column, "negative sample weight (weights must be >= 0)", raw)
        out[lab.task] = np.where(np.isfinite(num) & (num >= 0), num, 0.0).astype(np.float32)
    return out


def sparse_tokens(column: SparseColumn, frame: pd.DataFrame) -> Tuple[Any, Optional[np.ndarray]]:
    """The raw tokens of ``column``, for :meth:`Vocabulary.lookup` (which puts them in its token form).

    Single-valued: the column itself (a Series, one value per row, of the file's type) and no
    lengths. Multi-valued (with a ``separator``): every row's stripped, non-empty tokens in row
    order (object array of str), and the number of tokens per row (0 for a missing cell); a cell
    holding a list (a Parquet list column) gives its elements as they are (missing ones dropped
    here, flagged by :func:`sequence_problems`). With ``max_length``, only each row's last
    ``max_length`` tokens (the most recent ones)."""
    raw = frame[column.column]
    if column.separator is None:
        return raw.reset_index(drop=True), None
    parts = _cell_lists(raw, column.separator).map(lambda xs: [x for x in xs if not _missing_element(x)])
    if column.max_length is not None:
        n = column.max_length
        parts = parts.map(lambda xs: xs[-n:])
    lengths = parts.map(len).to_numpy(dtype=np.int64)
    flat = np.empty(int(lengths.sum()), dtype=object)
    flat[:] = [t for xs in parts for t in xs]
    return flat, lengths


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _missing_element(value: Any) -> bool:
    """A list element that holds no id: None/NaN, or text that is empty after stripping."""
    if isinstance(value, str):
        return not value
    return bool(pd.isna(value)) if not _is_list(value) else False


def _cell_lists(raw: pd.Series, separator: str) -> pd.Series:
    """Each cell of a multi-valued column as a list: a list cell's elements, a text cell split at
    ``separator`` with each part stripped (empty parts kept as ""), a missing cell as []."""

    def split(value: Any) -> List[Any]:
        if _is_list(value):
            return list(value)
        if value is None or (not isinstance(value, str) and bool(pd.isna(value))) or value == "":
            return []
        return [t.strip() for t in str(value).split(separator)]

    return raw.reset_index(drop=True).map(split)


def identity_size(spec: DataSpec, column: SparseColumn) -> Optional[int]:
    """The table size of the ``identity`` vocabulary that maps ``column``: its own, or that of its
    ``shared_with`` feature under ``vocab: shared``; None for any other vocabulary."""
    owner = spec.sparse_by_feature(str(column.shared_with)) if column.vocab == "shared" else column
    return owner.num_embeddings if owner.vocab == "identity" else None


def identity_element_problems(column: SparseColumn, frame: pd.DataFrame, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Rows of a multi-valued ``column`` with an element that is not an integer id in ``[0, size)``
    (every element of the cell, those ``max_length`` cuts off included, as the single-valued column
    it shares ids with is checked): ``(bad row mask, the first such element of each row)`` (None
    where the row is good). Elements that hold no id are left to :func:`sequence_problems`."""
    cells = _cell_lists(frame[column.column], str(column.separator))
    cells = cells.map(lambda xs: [x for x in xs if not _missing_element(x)])
    lengths = cells.map(len).to_numpy(dtype=np.int64)
    flat = np.empty(int(lengths.sum()), dtype=object)
    flat[:] = [x for xs in cells for x in xs]
    wrong = Vocabulary.identity(size).lookup(flat) < 0
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    first = np.full(len(lengths), None, dtype=object)
    # Reversed, so that each row's first wrong element is the one written last.
    first[row_of[wrong][::-1]] = flat[wrong][::-1]
    return np.bincount(row_of[wrong], minlength=len(lengths)) > 0, first


def _is_text_or_list(value: Any) -> bool:
    return isinstance(value, str) or _is_list(value) or _missing_element(value)


def check_multi_valued_type(column: SparseColumn, key: str, chunk: Chunk, bad: BadRows) -> None:
    """A multi-valued ``column`` (``key``: its ``sparse[i]``) must hold lists (a Parquet list column)
    or text split at its ``separator``: a column of numbers, booleans or dates (a Parquet ``int64``
    column, say) raises DataError naming the file, the column and the types it may have; single
    cells of another type in a mixed column (a DataFrame given to ``predict``) are bad rows. A column
    that is missing throughout (every cell empty) passes whatever its type."""
    values = chunk.frame[column.column]
    typed = values.dtype != object and not pd.api.types.is_string_dtype(values.dtype)
    # A column with no value at all (NaN throughout: every history empty) has no type to refuse.
    if typed and not values.isna().all():
        raise DataError(
            f"{chunk.file}: column '{column.column}' ({key}) holds {values.dtype} values; a multi-valued column "
            f"(separator {column.separator!r}) must be a list column (Parquet list<...>) or text with the ids "
            f"joined by {column.separator!r}"
        )
    if values.dtype == object:
        wrong = ~values.map(_is_text_or_list).to_numpy(dtype=bool)
        bad.flag(wrong, column.column, f"neither a list of ids nor text of ids joined by {column.separator!r}",
                 values.to_numpy(dtype=object))


def sequence_problems(column: SparseColumn, frame: pd.DataFrame) -> Tuple[np.ndarray, np.ndarray]:
    """Rows of a behaviour-sequence column (``column.ordered``) with an element that holds no id (an
    empty part of ``"5||7"``, a null in a Parquet list): ``(bad row mask, 1-based position of the first
    such element)`` per row (0 where the row is good)."""
    cells = _cell_lists(frame[column.column], str(column.separator))
    first = cells.map(lambda xs: next((k + 1 for k, x in enumerate(xs) if _missing_element(x)), 0))
    position = first.to_numpy(dtype=np.int64)
    return position > 0, position


class ChunkValues(NamedTuple):
    """What :func:`check_chunk` found in a chunk: its bad rows, each row's split, task -> label,
    dense feature -> raw float64 values (NaN where missing) and task -> sample weight (float32, only
    tasks with a ``weight_column``), all over every row of the chunk."""

    bad: BadRows
    split: np.ndarray
    labels: Dict[str, np.ndarray]
    dense: Dict[str, np.ndarray]
    weights: Dict[str, np.ndarray]


def check_chunk(spec: DataSpec, chunk: Chunk, skip: bool, counts: Dict[str, int]) -> ChunkValues:
    """Row checks that do not depend on fitted state, field counts first, then split, labels, sample
    weights, dense values (negative ones under ``log_standard`` unless ``clip_negative``), identity ids.

    Raises DataError at the first bad row unless ``skip``; then bad rows are marked in the result's
    ``bad.bad`` and counted per reason in ``counts``.
    """
    bad = BadRows(chunk, skip, counts)
    # First: in a row with a field too many or too few, cells may belong to other columns.
    bad.flag_field_counts()
    split = assign_splits(spec, chunk, bad)
    labels = label_values(spec, chunk, bad)
    weights = weight_values(spec, chunk, bad)
    dense: Dict[str, np.ndarray] = {}
    for d in spec.dense:
        num, missing, unparseable = parse_numbers(chunk.frame, d.column)
        raw = chunk.frame[d.column].to_numpy()
        bad.flag(unparseable, d.column, "not a finite number", raw)
        if d.fill_missing == "error":
            bad.flag(missing, d.column, "missing value (set fill_missing: mean or zero)", raw)
        if d.normalize == "log_standard" and not d.clip_negative:
            bad.flag(num < 0, d.column, "negative value under normalize: log_standard (log of a count; set "
                     "clip_negative: true to map negatives to 0)", raw)
        dense[d.feature] = num
    for i, s in enumerate(spec.sparse):
        if s.separator is not None:
            check_multi_valued_type(s, f"sparse[{i}]", chunk, bad)
        if s.ordered:
            rows, _ = sequence_problems(s, chunk.frame)
            bad.flag(rows, s.column, f"behaviour sequence with an empty or null element (ids separated by "
                     f"{s.separator!r})", chunk.frame[s.column].to_numpy(dtype=object))
        size = identity_size(spec, s)
        if size is None:
            continue
        # One rule for the identity ids of a column and of the history sharing them (vocab: shared).
        shared = f" (the ids of '{s.shared_with}', vocab: shared)" if s.vocab == "shared" else ""
        if s.separator is None:
            ids = Vocabulary.identity(size).lookup(chunk.frame[s.column].to_numpy(dtype=object))
            bad.flag(ids < 0, s.column, f"not an integer id in [0, {size}){shared}", chunk.frame[s.column].to_numpy())
        else:
            rows, first = identity_element_problems(s, chunk.frame, size)
            bad.flag(rows, s.column, f"an element is not an integer id in [0, {size}){shared}", first)
    return ChunkValues(bad, split, labels, dense, weights)
