"""The sections of a YAML data spec that are not features (``csv``, ``labels``, ``split``,
``slices``) as plain dataclasses, and the split names. Each feature section (``sparse``, ``dense``,
``text``, ``buckets``, ...) belongs to its feature kind (:mod:`mtl_torchrec.data.spec.kinds`).

Field names are the YAML keys; ``core.config.validate.from_dict`` type-checks a mapping into them and names
an unknown or mistyped key by its dotted path. Checks across fields live in
:mod:`mtl_torchrec.data.spec.checks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Dict, List, Optional, Union

from mtl_torchrec.core.config.fields import one_of
from mtl_torchrec.data.label_kinds import LABEL_KINDS

# The splits a spec produces, in reading order of per-split files.
SPLITS = ("train", "val", "test")
# Rows of a spec without a split rule (evaluation data) form this split.
ALL_SPLIT = "all"
# ``files:`` a glob, a list of globs, or globs per split name.
Files = Union[str, List[str], Dict[str, Union[str, List[str]]]]


@dataclass
class CsvOptions:
    """``csv:`` how CSV files are parsed (pandas ``read_csv`` options of the same meaning).

    Every record must have the header's number of fields (or ``len(names)``): a row with a field
    too many or too few is a bad row (see ``on_bad_rows``).
    """

    # One character (pandas' fast C parser; a longer separator would be a regular expression).
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
class LabelColumn:
    """``labels[i]``: the column holding task ``task``'s label and how raw values map to it."""

    task: str
    column: str
    # The label kind (data/label_kinds.py): binary | regression.
    type: Annotated[str, one_of(LABEL_KINDS)]
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
    # A column of per-row sample weights for this task (finite numbers >= 0): a row of weight 2
    # counts like two copies of it in the loss and in every metric, weight 0 like no row. A missing,
    # negative or non-numeric weight is a bad row. Without it every row weighs 1.
    weight_column: Optional[str] = None


@dataclass
class SplitRule:
    """``split:`` which rows are train / val / test.

    Either a ``column`` naming each row's split, or a deterministic hash split by the key column
    ``by`` (all rows of a key land in one split) or, without ``by``, by row position.
    """

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
class SliceSpec:
    """``slices[i]``: named row masks for sliced evaluation reports."""

    column: str
    # One slice per most frequent raw value (up to ``top``) of a single-valued column ...
    top: int = 10
    # ... or (for a single-valued column) cold = raw key never seen in the training split, warm =
    # the rest, whatever the column's vocabulary mode.
    cold_warm: bool = False
