"""Per-row parsing and checks of a chunk: labels, sample weights, and the checks that need no fitted
state (:func:`check_chunk`, which also runs each feature kind's), flagging bad rows on a :class:`BadRows`."""

from __future__ import annotations

from typing import Any, Dict, NamedTuple

import numpy as np
import pandas as pd

from mtl_torchrec.data.label_kinds import LABEL_KINDS
from mtl_torchrec.data.spec.bad_rows import BadRows
from mtl_torchrec.data.spec.cells import is_missing, parse_numbers
from mtl_torchrec.data.spec.data_spec import DataSpec
from mtl_torchrec.data.spec.kinds import kinds
from mtl_torchrec.data.spec.reading import Chunk
from mtl_torchrec.data.spec.splits import assign_splits
from mtl_torchrec.data.tokens import value_tokens


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


class ChunkValues(NamedTuple):
    """What :func:`check_chunk` found in a chunk: its bad rows, each row's split, task -> label,
    each feature kind's parsed values (section -> feature -> values, e.g. ``features["dense"]["price"]``:
    raw float64 values, NaN where missing) and task -> sample weight (float32, only tasks with a
    ``weight_column``), all over every row of the chunk."""

    bad: BadRows
    split: np.ndarray
    labels: Dict[str, np.ndarray]
    features: Dict[str, Dict[str, Any]]
    weights: Dict[str, np.ndarray]


def check_chunk(spec: DataSpec, chunk: Chunk, skip: bool, counts: Dict[str, int]) -> ChunkValues:
    """Row checks that do not depend on fitted state, field counts first, then split, labels, sample
    weights, then each feature kind's (:meth:`~mtl_torchrec.data.spec.kinds.FeatureKind.check`: dense
    values, identity ids, behaviour sequences, ...).

    Raises DataError at the first bad row unless ``skip``; then bad rows are marked in the result's
    ``bad.bad`` and counted per reason in ``counts``.
    """
    bad = BadRows(chunk, skip, counts)
    # First: in a row with a field too many or too few, cells may belong to other columns.
    bad.flag_field_counts()
    split = assign_splits(spec, chunk, bad)
    labels = label_values(spec, chunk, bad)
    weights = weight_values(spec, chunk, bad)
    features: Dict[str, Dict[str, Any]] = {}
    for kind in kinds():
        entries = spec.entries(kind)
        features[kind.section] = kind.check(entries, chunk, bad, spec) if entries else {}
    return ChunkValues(bad, split, labels, features, weights)
