"""Checks across the fields of a data spec, one function per concern.

Each raises :class:`ConfigError` whose message starts with the dotted key at fault (``sparse[2].
hash_buckets: ...``); :func:`~mtl_torchrec.data.spec.data_spec.load_spec` prefixes the spec file.
Types and unknown keys are checked before these run, by ``core.config.from_dict``.
"""

from __future__ import annotations

from typing import Optional, Sequence

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.spec.sections import (
    SPLITS,
    Files,
    ItemText,
    LabelColumn,
    SliceSpec,
    SparseColumn,
    SplitRule,
)


def check_labels_given(labels: Sequence[LabelColumn]) -> None:
    """``labels``: at least one label column; raises ConfigError otherwise."""
    if not labels:
        raise ConfigError("labels: at least one label column is required")


def check_chunk_rows(chunk_rows: int) -> None:
    """``chunk_rows``: a positive number of rows per read; raises ConfigError otherwise."""
    if chunk_rows <= 0:
        raise ConfigError("chunk_rows: must be positive")


def check_sparse_column(column: SparseColumn, key: str) -> None:
    """``sparse[i]`` (``key``): the settings its vocabulary mode needs; raises ConfigError naming the field."""
    if column.vocab == "file" and not column.vocab_file:
        raise ConfigError(f"{key}.vocab_file: required with vocab: file")
    if column.vocab == "hash" and column.hash_buckets < 2:
        raise ConfigError(f"{key}.hash_buckets: required (>= 2) with vocab: hash")
    if column.vocab == "identity" and column.num_embeddings < 1:
        raise ConfigError(f"{key}.num_embeddings: required (>= 1) with vocab: identity")
    if column.vocab == "build" and column.min_count < 1:
        raise ConfigError(f"{key}.min_count: must be >= 1")
    if column.vocab == "identity" and column.separator:
        raise ConfigError(f"{key}.separator: multi-valued columns need a vocabulary, not identity")


def check_names_unique(names: Sequence[str]) -> None:
    """Sparse and dense feature names and label tasks share one namespace (table columns); raises
    ConfigError listing the names used twice."""
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"sparse/dense/labels: names used twice: {sorted(dup)}")


def check_label_column(label: LabelColumn, key: str) -> None:
    """``labels[i]`` (``key``): one binary mapping at most, none for regression; raises ConfigError."""
    if label.type == "binary" and label.positive is not None and label.threshold is not None:
        raise ConfigError(f"{key}: give either positive or threshold, not both")
    if label.type == "regression" and (label.positive or label.negative or label.threshold is not None):
        raise ConfigError(f"{key}: positive/negative/threshold only apply to binary labels")


def check_files(files: Files, split: Optional[SplitRule]) -> None:
    """``files``: per-split keys are split names, and with per-split files a split rule may only
    carve val out of the train files; raises ConfigError."""
    if not isinstance(files, dict):
        return
    bad = [k for k in files if k not in SPLITS]
    if bad:
        raise ConfigError(f"files: unknown split(s) {bad}; use {list(SPLITS)}")
    if split is not None and (split.column or split.test_fraction):
        raise ConfigError("split: with files per split, a split rule may only carve val out of "
                          "the train files (split.by / val_fraction, test_fraction: 0)")


def check_split_rule(split: SplitRule) -> None:
    """``split``: a column or a hash key, not both, and fractions that leave rows for training;
    raises ConfigError."""
    if split.column and split.by:
        raise ConfigError("split: give either column or by, not both")
    if not (0 <= split.val_fraction and 0 <= split.test_fraction and split.val_fraction + split.test_fraction < 1):
        raise ConfigError("split: val_fraction + test_fraction must be in [0, 1)")


def check_item_text(item_text: ItemText, sparse: Sequence[SparseColumn]) -> None:
    """``item_text``: its item is a sparse feature and it names at least one text column; raises ConfigError."""
    if item_text.item not in {s.feature for s in sparse}:
        raise ConfigError(f"item_text.item: '{item_text.item}' is not a sparse feature")
    if not item_text.columns:
        raise ConfigError("item_text.columns: at least one text column is required")


def check_slice(slice_: SliceSpec, key: str, sparse: Sequence[SparseColumn]) -> None:
    """``slices[i]`` (``key``): a cold/warm slice needs a sparse feature with a fitted vocabulary
    (build or file), where OOV means unseen in training; raises ConfigError."""
    if not slice_.cold_warm:
        return
    by_feature = {s.feature: s for s in sparse}
    if slice_.column not in by_feature:
        raise ConfigError(f"{key}.cold_warm: '{slice_.column}' is not a sparse feature")
    if by_feature[slice_.column].vocab not in ("build", "file"):
        raise ConfigError(f"{key}.cold_warm: needs vocab build or file for '{slice_.column}'")
