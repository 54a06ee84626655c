"""The sections of a YAML data spec (``csv``, ``sparse``, ``dense``, ``labels``, ``split``, ``text``,
``slices``) as plain dataclasses, and the split names.

Field names are the YAML keys; ``core.config.validate.from_dict`` type-checks a mapping into them and names
an unknown or mistyped key by its dotted path. Checks across fields live in
:mod:`mtl_torchrec.data.spec.checks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Union

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
class SparseColumn:
    """``sparse[i]``: an id column mapped to embedding rows by one explicit vocabulary mode.

    ``build`` fits tokens seen ``min_count`` times in training, ``file`` reads ``vocab_file``,
    ``hash`` hashes into ``hash_buckets``, ``identity`` takes integer ids in ``[0, num_embeddings)``
    (see :mod:`mtl_torchrec.data.preprocessing`); ``shared`` uses the vocabulary and the table of the
    feature ``shared_with`` (fitted on that feature's tokens only), e.g. a behaviour sequence of the
    candidate item's ids: the same raw key gets the same row in both, an unknown one row 0 in both.

    A behaviour sequence is a multi-valued column (``separator`` in CSV, or a Parquet list column)
    whose ids are ordered **oldest first, most recent last**; ``max_length`` keeps each row's
    ``max_length`` most recent (last) ids. An empty element (``"5||7"``) or a null in a Parquet list
    of a ``shared`` or ``max_length`` column is a bad row. A multi-valued column is a list column or
    text (its cells split at ``separator``); a column of numbers is refused. The training-split checks
    of a history (its unknown ids against the candidate's, all rows empty, the row's own candidate in
    it) are in :mod:`mtl_torchrec.data.spec.sequences`.
    """

    column: str
    vocab: Literal["build", "file", "hash", "identity", "shared"]
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
    # The column is also a label column: allowed only when set (it gives the model the answer).
    allow_label_as_feature: bool = False
    # vocab: shared: the feature whose vocabulary and table this one uses.
    shared_with: Optional[str] = None
    # Multi-valued: keep each row's max_length last (most recent) ids; none: every id.
    max_length: Optional[int] = None
    # vocab: shared history: most of its training ids unknown to the shared vocabulary (and far more
    # than the candidate's own) is refused unless set (ids in another form than the candidate's).
    allow_unknown_ids: bool = False

    @property
    def feature(self) -> str:
        """The feature name in the schema and model."""
        return self.name or self.column

    @property
    def ordered(self) -> bool:
        """Whether the column is a behaviour sequence (``shared`` vocabulary or ``max_length``), whose
        elements are checked one by one (an empty one is a bad row)."""
        return self.separator is not None and (self.vocab == "shared" or self.max_length is not None)


@dataclass
class DenseColumn:
    """``dense[i]``: a numeric column, normalised with statistics of the training split."""

    column: str
    name: Optional[str] = None
    normalize: Literal["standard", "log_standard", "minmax", "none"] = "standard"
    # Missing cells (empty, a ``na_values`` entry, NaN in Parquet): a bad row, the training mean, or
    # 0 after normalisation. Infinite or unparseable values are bad rows whatever this says.
    fill_missing: Literal["error", "mean", "zero"] = "error"
    # log_standard takes log(1 + x) of counts: a negative value is a bad row unless this maps it to 0.
    clip_negative: bool = False
    # The column is also a label column: allowed only when set (it gives the model the answer).
    allow_label_as_feature: bool = False

    @property
    def feature(self) -> str:
        """The feature name in the schema and model."""
        return self.name or self.column


@dataclass
class LabelColumn:
    """``labels[i]``: the column holding task ``task``'s label and how raw values map to it."""

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
class ItemTable:
    """``text[i].items:`` an item table file: one row per item, its key and its text columns."""

    # CSV, TSV, JSONL or Parquet (by suffix); relative to the spec's folder.
    file: str
    # The key column of the item file (default: the row column ``text[i].key``).
    key: Optional[str] = None


@dataclass
class TextFeatureSpec:
    """``text[i]``: a language-model text feature, read through a frozen table keyed by raw keys.

    One of three sources (see :mod:`mtl_torchrec.data.texts`):

    * ``items`` + ``key`` + ``columns``: the item table's text of each row's raw item key (items
      unseen in training keep their text; a key missing from the table is an error unless
      ``missing: no_text``);
    * ``columns`` alone: each row's own text (a review, a query, or an item text repeated on every
      impression: each row reads its own, so a later text never leaks into earlier rows);
    * ``store`` + ``key``: a store encoded by ``mtl-torchrec encode-text --id-column``, keyed by raw
      item key (a key the store lacks is an error naming a few).
    """

    columns: List[str] = field(default_factory=list)
    # Feature name in the model (default: ``<key>_text``, or ``<columns[0]>_text`` for per-row text).
    name: Optional[str] = None
    key: Optional[str] = None
    items: Optional[ItemTable] = None
    store: Optional[str] = None
    # The key column the store was built from (``encode-text --id-column``), when it is not named
    # like ``key``: saying so states that both columns hold the same ids.
    store_key: Optional[str] = None
    # A str.format pattern over ``columns`` ("{title}. Genres: {genres}."); else non-empty cells
    # joined by ``separator``.
    template: Optional[str] = None
    separator: str = " | "
    # A row whose key is not in the item table: an error naming the row, or the "no text" vector.
    missing: Literal["error", "no_text"] = "error"

    @property
    def kind(self) -> str:
        """``item``, ``key`` or ``row`` (see the class docstring)."""
        return "item" if self.items is not None else "key" if self.store is not None else "row"

    @property
    def feature(self) -> str:
        """The feature name in the schema and model."""
        if self.name:
            return self.name
        return f"{self.key}_text" if self.key else f"{self.columns[0] if self.columns else 'row'}_text"


@dataclass
class SliceSpec:
    """``slices[i]``: named row masks for sliced evaluation reports."""

    column: str
    # One slice per most frequent raw value (up to ``top``) of a single-valued column ...
    top: int = 10
    # ... or (for a single-valued column) cold = raw key never seen in the training split, warm =
    # the rest, whatever the column's vocabulary mode.
    cold_warm: bool = False
