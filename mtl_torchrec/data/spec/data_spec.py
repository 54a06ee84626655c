"""The whole data spec (:class:`DataSpec`) and :func:`load_spec`, which reads it from YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Union

from mtl_torchrec.core.config.validate import from_dict
from mtl_torchrec.core.config.yaml_files import read_yaml
from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.spec.checks import (
    check_chunk_rows,
    check_csv_options,
    check_files,
    check_label_column,
    check_label_not_feature,
    check_labels_given,
    check_names_unique,
    check_shared_vocabularies,
    check_slice,
    check_sparse_column,
    check_split_rule,
    check_text_feature,
)
from mtl_torchrec.data.spec.sections import (
    CsvOptions,
    DenseColumn,
    Files,
    LabelColumn,
    SliceSpec,
    SparseColumn,
    SplitRule,
    TextFeatureSpec,
)


@dataclass
class DataSpec:
    """A data spec: which files to read and how, and the role of each column (see the package docstring).

    ``validate()`` (run by ``from_dict`` when the spec is loaded) raises :class:`ConfigError`
    naming the dotted key at fault.
    """

    files: Files
    labels: List[LabelColumn]
    sparse: List[SparseColumn] = field(default_factory=list)
    dense: List[DenseColumn] = field(default_factory=list)
    format: Optional[Literal["csv", "parquet"]] = None
    csv: CsvOptions = field(default_factory=CsvOptions)
    chunk_rows: int = 200000
    split: Optional[SplitRule] = None
    group: Optional[str] = None
    text: List[TextFeatureSpec] = field(default_factory=list)
    # Replaced by ``text``; kept only to say so.
    item_text: Optional[Dict[str, object]] = None
    slices: List[SliceSpec] = field(default_factory=list)
    on_bad_rows: Literal["error", "skip"] = "error"
    # Directory that relative paths are resolved against (set by load_spec).
    base_dir: str = "."

    def validate(self) -> None:
        """Checks across fields, in a fixed order so that the first problem reported is stable;
        raises ConfigError naming the dotted key."""
        check_labels_given(self.labels)
        check_chunk_rows(self.chunk_rows)
        for i, s in enumerate(self.sparse):
            check_sparse_column(s, f"sparse[{i}]")
        check_names_unique(self.feature_names())
        check_shared_vocabularies(self.sparse)
        for i, lab in enumerate(self.labels):
            check_label_column(lab, f"labels[{i}]")
        check_label_not_feature(self.labels, self.sparse, self.dense)
        check_csv_options(self.csv)
        check_files(self.files, self.split)
        if self.split is not None:
            check_split_rule(self.split)
        if self.item_text is not None:
            raise ConfigError("item_text: replaced by `text:` (docs/text.md). The same texts, each row reading its "
                              "own: text: [{columns: [...]}]; or an item table: text: [{key: <item column>, "
                              "items: {file: items.csv}, columns: [...]}]")
        for i, t in enumerate(self.text):
            check_text_feature(t, f"text[{i}]", self.labels)
        for i, sl in enumerate(self.slices):
            check_slice(sl, f"slices[{i}]", self.sparse)

    def feature_names(self) -> List[str]:
        """Sparse and dense feature names, then label tasks, in spec order (duplicates kept)."""
        return ([s.feature for s in self.sparse] + [d.feature for d in self.dense] + [t.feature for t in self.text]
                + [lab.task for lab in self.labels])

    def feature_layout(self) -> List[List[str]]:
        """What the model's inputs are built from, in order: ``["sparse", feature, column]``,
        ``["dense", feature, column]``, ``["text", feature]``. A fitted run saves it
        (``preprocessing.json``) so that a spec edited afterwards cannot silently feed other columns
        to the trained tables (:func:`~mtl_torchrec.data.spec.build.check_feature_layout`)."""
        return ([["sparse", s.feature, s.column] for s in self.sparse] + [["dense", d.feature, d.column] for d in self.dense]
                + [["text", t.feature] for t in self.text])

    def sparse_by_feature(self, name: str) -> SparseColumn:
        """The sparse column whose feature name is ``name``; raises StopIteration when there is none."""
        return next(s for s in self.sparse if s.feature == name)

    def raw_columns(self) -> List[str]:
        """Every file column the spec reads, each once, in a fixed order."""
        cols: List[str] = [s.column for s in self.sparse] + [d.column for d in self.dense]
        for lab in self.labels:
            cols.append(lab.column)
            if lab.mask_column:
                cols.append(lab.mask_column)
            if lab.weight_column:
                cols.append(lab.weight_column)
        if self.group:
            cols.append(self.group)
        if self.split and self.split.column:
            cols.append(self.split.column)
        if self.split and self.split.by:
            cols.append(self.split.by)
        for t in self.text:
            cols += ([t.key] if t.key else []) + (t.columns if t.kind == "row" else [])
        for sl in self.slices:
            cols.append(self.raw_column_of(sl.column))
        return list(dict.fromkeys(cols))

    def column_keys(self) -> Dict[str, str]:
        """Each file column the spec reads -> the first dotted key that names it (for messages),
        e.g. ``{"user_id": "sparse[0].column", "clicked": "labels[0].column"}``."""
        keys: Dict[str, str] = {}
        named = [(f"sparse[{i}].column", s.column) for i, s in enumerate(self.sparse)]
        named += [(f"dense[{i}].column", d.column) for i, d in enumerate(self.dense)]
        for i, lab in enumerate(self.labels):
            named.append((f"labels[{i}].column", lab.column))
            if lab.mask_column:
                named.append((f"labels[{i}].mask_column", lab.mask_column))
            if lab.weight_column:
                named.append((f"labels[{i}].weight_column", lab.weight_column))
        if self.group:
            named.append(("group", self.group))
        if self.split and self.split.column:
            named.append(("split.column", self.split.column))
        if self.split and self.split.by:
            named.append(("split.by", self.split.by))
        for i, t in enumerate(self.text):
            named += [(f"text[{i}].key", t.key)] if t.key else []
            named += [(f"text[{i}].columns[{j}]", c) for j, c in enumerate(t.columns)] if t.kind == "row" else []
        named += [(f"slices[{i}].column", self.raw_column_of(sl.column)) for i, sl in enumerate(self.slices)]
        for key, column in named:
            keys.setdefault(column, key)
        return keys

    def resolve(self, path: str) -> str:
        """``path`` as given when absolute, else taken from the spec's folder (``base_dir``)."""
        return path if Path(path).is_absolute() else str(Path(self.base_dir) / path)

    def raw_column_of(self, name: str) -> str:
        """The file column behind feature ``name``; any other name is taken as a file column itself."""
        for s in self.sparse:
            if s.feature == name:
                return s.column
        for d in self.dense:
            if d.feature == name:
                return d.column
        return name


def load_spec(path: Union[str, Path]) -> DataSpec:
    """Reads and checks a YAML data spec; relative paths in it are taken from the spec's folder.

    Raises ConfigError naming the spec file and the dotted key (a missing file, invalid YAML, a
    top level that is not a mapping, an unknown or mistyped key, a missing required key, or any
    check of :meth:`DataSpec.validate`).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data spec not found: {p}")
    raw = read_yaml(p)
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
