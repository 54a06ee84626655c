"""Checks across the fields of a data spec, one function per concern.

Each raises :class:`ConfigError` whose message starts with the dotted key at fault (``labels[2].
weight_column: ...``); :func:`~mtl_torchrec.data.spec.data_spec.load_spec` prefixes the spec file.
Types and unknown keys are checked before these run, by ``core.config.validate.from_dict``; each feature
kind checks its own section (:mod:`mtl_torchrec.data.spec.kinds`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.label_kinds import LABEL_KINDS
from mtl_torchrec.data.spec.sections import SPLITS, CsvOptions, Files, LabelColumn, SliceSpec, SplitRule


def check_labels_given(labels: Sequence[LabelColumn]) -> None:
    """``labels``: at least one label column; raises ConfigError otherwise."""
    if not labels:
        raise ConfigError("labels: at least one label column is required")


def check_chunk_rows(chunk_rows: int) -> None:
    """``chunk_rows``: a positive number of rows per read; raises ConfigError otherwise."""
    if chunk_rows <= 0:
        raise ConfigError("chunk_rows: must be positive")


def check_names_unique(names: Sequence[str]) -> None:
    """Feature names of every kind and label tasks share one namespace (table columns); raises
    ConfigError listing the names used twice."""
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"features/labels: names used twice: {sorted(dup)} (the features of every section and the "
                          f"label tasks share one namespace)")


def check_label_column(label: LabelColumn, key: str) -> None:
    """``labels[i]`` (``key``): one binary mapping at most, none for a label kind without mappings
    (regression), a weight column that is not the label or mask column; raises ConfigError naming the key."""
    mapped = LABEL_KINDS.get(label.type).mapped
    if mapped and label.positive is not None and label.threshold is not None:
        raise ConfigError(f"{key}: give either positive or threshold, not both")
    if not mapped and (label.positive or label.negative or label.threshold is not None):
        kinds = " / ".join(n for n, k in LABEL_KINDS.items() if k.mapped)
        raise ConfigError(f"{key}: positive/negative/threshold only apply to {kinds} labels")
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


def check_slice(slice_: SliceSpec, key: str, sparse: Sequence[Any]) -> None:
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


def check_label_not_feature(labels: Sequence[LabelColumn], columns: Sequence[Tuple[str, str, Any]]) -> None:
    """A label column is not also a feature column (under its own or another feature name): the
    model would read the answer (AUC 1.0). ``columns``: ``(dotted key, file column, entry)`` of every
    feature column (:meth:`DataSpec.feature_columns`). Allowed with ``allow_label_as_feature: true``
    on that feature; raises ConfigError naming both keys otherwise."""
    for i, lab in enumerate(labels):
        for key, column, entry in columns:
            if column == lab.column and not getattr(entry, "allow_label_as_feature", False):
                owner = key.rsplit(".", 1)[0]
                raise ConfigError(
                    f"{key}: '{column}' is the label column of labels[{i}].column (task '{lab.task}'); "
                    f"a label used as a feature gives the model the answer. Set {owner}.allow_label_as_feature: "
                    f"true if this is intended"
                )
