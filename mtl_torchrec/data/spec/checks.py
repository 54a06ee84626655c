"""Checks across the fields of a data spec, one function per concern.

Each raises :class:`ConfigError` whose message starts with the dotted key at fault (``sparse[2].
hash_buckets: ...``); :func:`~mtl_torchrec.data.spec.data_spec.load_spec` prefixes the spec file.
Types and unknown keys are checked before these run, by ``core.config.validate.from_dict``.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.item_table import template_fields
from mtl_torchrec.data.spec.sections import (
    SPLITS,
    CsvOptions,
    DenseColumn,
    Files,
    LabelColumn,
    SliceSpec,
    SparseColumn,
    SplitRule,
    TextFeatureSpec,
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
    if column.vocab == "shared" and not column.shared_with:
        raise ConfigError(f"{key}.shared_with: required with vocab: shared (the feature whose vocabulary it uses)")
    if column.shared_with is not None and column.vocab != "shared":
        raise ConfigError(f"{key}.shared_with: only with vocab: shared")
    if column.allow_unknown_ids and (column.vocab != "shared" or column.separator is None):
        raise ConfigError(f"{key}.allow_unknown_ids: only for a behaviour sequence (vocab: shared with a separator)")
    if column.max_length is not None:
        if column.separator is None:
            raise ConfigError(f"{key}.max_length: only for multi-valued columns (give a separator)")
        if column.max_length < 1:
            raise ConfigError(f"{key}.max_length: must be >= 1, got {column.max_length}")


def check_shared_vocabularies(sparse: Sequence[SparseColumn]) -> None:
    """``sparse[i].shared_with``: names another sparse feature that has a vocabulary of its own (not
    ``shared``), and ``sparse[i].table`` (if given) is that feature's table; raises ConfigError naming
    the key."""
    by_feature = {s.feature: s for s in sparse}
    for i, s in enumerate(sparse):
        if s.vocab != "shared":
            continue
        key = f"sparse[{i}]"
        owner = by_feature.get(str(s.shared_with))
        if owner is None or owner is s:
            raise ConfigError(f"{key}.shared_with: '{s.shared_with}' is not another sparse feature of the spec "
                              f"(sparse features: {[c.feature for c in sparse]})")
        if owner.vocab == "shared":
            raise ConfigError(f"{key}.shared_with: '{owner.feature}' shares a vocabulary itself; name the feature "
                              f"that owns it ('{owner.shared_with}')")
        table = owner.table or owner.feature
        if s.table is not None and s.table != table:
            raise ConfigError(f"{key}.table: '{s.table}', but a shared vocabulary means the table of "
                              f"'{owner.feature}' ('{table}'); leave table out")


def check_names_unique(names: Sequence[str]) -> None:
    """Sparse and dense feature names and label tasks share one namespace (table columns); raises
    ConfigError listing the names used twice."""
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"sparse/dense/labels: names used twice: {sorted(dup)}")


def check_label_column(label: LabelColumn, key: str) -> None:
    """``labels[i]`` (``key``): one binary mapping at most, none for regression, a weight column that
    is not the label or mask column; raises ConfigError naming the key."""
    if label.type == "binary" and label.positive is not None and label.threshold is not None:
        raise ConfigError(f"{key}: give either positive or threshold, not both")
    if label.type == "regression" and (label.positive or label.negative or label.threshold is not None):
        raise ConfigError(f"{key}: positive/negative/threshold only apply to binary labels")
    if label.weight_column is not None and label.weight_column in (label.column, label.mask_column):
        raise ConfigError(f"{key}.weight_column: '{label.weight_column}' is the task's label or mask column; "
                          f"name a column of per-row weights")


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


def check_text_feature(text: TextFeatureSpec, key: str, labels: Sequence[LabelColumn]) -> None:
    """``text[i]`` (``key``): one of item table + key + columns, store + key, or columns alone;
    a valid template; no label column among its columns (the text would give the model the
    answer). Raises ConfigError naming the dotted key."""
    if text.items is not None and text.store is not None:
        raise ConfigError(f"{key}: give either items (an item table) or store (an encoded store), not both")
    if text.kind == "row":
        if text.key is not None:
            raise ConfigError(f"{key}.key: only with {key}.items or {key}.store; without them each row's own "
                              f"text columns are used")
        if text.missing != "error":
            raise ConfigError(f"{key}.missing: only with {key}.items (a key missing from the item table)")
    elif not text.key:
        raise ConfigError(f"{key}.key: required with {key}.{'items' if text.kind == 'item' else 'store'} "
                          f"(the row column holding the item key)")
    if text.store_key is not None and text.kind != "key":
        raise ConfigError(f"{key}.store_key: only with {key}.store")
    if text.kind == "key":
        if text.columns:
            raise ConfigError(f"{key}.columns: not with {key}.store (the store already holds the vectors)")
        if text.missing != "error":
            raise ConfigError(f"{key}.missing: only with {key}.items; a store must cover every key")
    elif not text.columns:
        raise ConfigError(f"{key}.columns: at least one text column is required")
    if len(set(text.columns)) != len(text.columns):
        raise ConfigError(f"{key}.columns: a column is given twice in {text.columns}")
    if text.template is not None:
        template_fields(text.template, text.columns, f"{key}.template")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text.feature):
        raise ConfigError(f"{key}.name: '{text.feature}' must be letters, digits and '_' (it names a module and a "
                          f"table)" if text.name else f"{key}: the feature name '{text.feature}' made from its "
                          f"column must be letters, digits and '_'; give {key}.name")
    for i, lab in enumerate(labels):
        label_columns = {lab.column} | ({lab.mask_column} if lab.mask_column else set())
        if text.kind == "row" and label_columns & set(text.columns):
            column = sorted(label_columns & set(text.columns))[0]
            raise ConfigError(f"{key}.columns: '{column}' is a label column of labels[{i}]; "
                              f"a label used as text gives the model the answer")
        if text.key is not None and text.key in label_columns:
            raise ConfigError(f"{key}.key: '{text.key}' is a label column of labels[{i}]; keying text by it "
                              f"gives the model the answer")


def check_slice(slice_: SliceSpec, key: str, sparse: Sequence[SparseColumn]) -> None:
    """``slices[i]`` (``key``): a cold/warm slice needs a single-valued sparse feature (cold = its raw
    key never seen in the training split, in every vocabulary mode); raises ConfigError."""
    if not slice_.cold_warm:
        return
    by_feature = {s.feature: s for s in sparse}
    if slice_.column not in by_feature:
        raise ConfigError(f"{key}.cold_warm: '{slice_.column}' is not a sparse feature")
    if by_feature[slice_.column].separator is not None:
        raise ConfigError(f"{key}.cold_warm: '{slice_.column}' is multi-valued; cold/warm needs one key per row")


def check_csv_options(options: CsvOptions) -> None:
    """``csv``: a one-character separator, ``names`` exactly when there is no header row, and no
    name given twice; raises ConfigError naming the key."""
    if len(options.separator) != 1:
        raise ConfigError(f"csv.separator: must be one character, got {options.separator!r}")
    if options.header and options.names:
        raise ConfigError("csv.names: only for files without a header row (csv.header: false)")
    if not options.header and not options.names:
        raise ConfigError("csv.names: required when csv.header is false")
    names = list(options.names or [])
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ConfigError(f"csv.names: '{name}' is given twice (csv.names[{names.index(name)}] and "
                              f"csv.names[{i}])")


def check_label_not_feature(labels: Sequence[LabelColumn], sparse: Sequence[SparseColumn],
                            dense: Sequence[DenseColumn]) -> None:
    """A label column is not also a feature column (under its own or another feature name): the
    model would read the answer (AUC 1.0). Allowed with ``allow_label_as_feature: true`` on that
    feature; raises ConfigError naming both keys otherwise."""
    features = [(f"sparse[{i}]", s) for i, s in enumerate(sparse)] + [(f"dense[{i}]", d) for i, d in enumerate(dense)]
    for i, lab in enumerate(labels):
        for key, feature in features:
            if feature.column == lab.column and not feature.allow_label_as_feature:
                raise ConfigError(
                    f"{key}.column: '{feature.column}' is the label column of labels[{i}].column (task '{lab.task}'); "
                    f"a label used as a feature gives the model the answer. Set {key}.allow_label_as_feature: "
                    f"true if this is intended"
                )
