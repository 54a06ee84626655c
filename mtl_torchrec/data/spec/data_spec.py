"""The whole data spec (:class:`DataSpec`) and :func:`load_spec`, which reads it from YAML."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

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
    check_slice,
    check_split_rule,
)
from mtl_torchrec.data.spec.kinds import DenseColumn, FeatureKind, SparseColumn, TextFeatureSpec, kinds
from mtl_torchrec.data.spec.sections import CsvOptions, Files, LabelColumn, SliceSpec, SplitRule


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
    # The entries of the other registered feature kinds (data/spec/kinds), by section name: a kind
    # added as a plug-in needs no field here. Set by load_spec, never read from the YAML as such.
    sections: Dict[str, List[Any]] = field(default_factory=dict)

    def validate(self) -> None:
        """Checks across fields, in a fixed order so that the first problem reported is stable;
        raises ConfigError naming the dotted key."""
        check_labels_given(self.labels)
        check_chunk_rows(self.chunk_rows)
        if self.item_text is not None:
            raise ConfigError("item_text: replaced by `text:` (docs/text.md). The same texts, each row reading its "
                              "own: text: [{columns: [...]}]; or an item table: text: [{key: <item column>, "
                              "items: {file: items.csv}, columns: [...]}]")
        for kind in kinds():
            kind.validate(self.entries(kind), self)
        check_names_unique(self.feature_names())
        for i, lab in enumerate(self.labels):
            check_label_column(lab, f"labels[{i}]")
        check_label_not_feature(self.labels, self.feature_columns())
        check_csv_options(self.csv)
        check_files(self.files, self.split)
        if self.split is not None:
            check_split_rule(self.split)
        for i, sl in enumerate(self.slices):
            check_slice(sl, f"slices[{i}]", self.sparse)

    def entries(self, kind: FeatureKind) -> List[Any]:
        """The entries of ``kind``'s section (a field of this class, or :attr:`sections`)."""
        if kind.section in _FIELDS:
            return list(getattr(self, kind.section))
        return list(self.sections.get(kind.section, []))

    def feature_entries(self) -> List[Tuple[FeatureKind, int, Any]]:
        """``(kind, index, entry)`` of every feature entry, kinds in their order, entries in spec order."""
        return [(kind, i, e) for kind in kinds() for i, e in enumerate(self.entries(kind))]

    def feature_columns(self) -> List[Tuple[str, str, Any]]:
        """``(dotted key, file column, entry)`` of every file column a feature reads, in feature order
        (``("sparse[0].column", "user_id", <entry>)``, ``("text[1].columns[0]", "review", <entry>)``)."""
        return [(f"{kind.key(i)}.{name}", column, e) for kind, i, e in self.feature_entries()
                for name, column in kind.file_columns(e)]

    def feature_names(self) -> List[str]:
        """Feature names (every kind's, in kind order), then label tasks, in spec order (duplicates kept)."""
        return [e.feature for _, _, e in self.feature_entries()] + [lab.task for lab in self.labels]

    def feature_layout(self) -> List[List[str]]:
        """What the model's inputs are built from, in order: one line per feature from its kind
        (``["sparse", feature, column]``, ``["dense", feature, column]``, ``["text", feature]``,
        ``["buckets", feature, column]``). A fitted run saves it (``preprocessing.json``) so that a
        spec edited afterwards cannot silently feed other columns to the trained tables
        (:func:`~mtl_torchrec.data.spec.build.check_feature_layout`)."""
        return [kind.layout(e) for kind, _, e in self.feature_entries()]

    def sparse_by_feature(self, name: str) -> SparseColumn:
        """The sparse column whose feature name is ``name``; raises StopIteration when there is none."""
        return next(s for s in self.sparse if s.feature == name)

    def raw_columns(self) -> List[str]:
        """Every file column the spec reads, each once, in a fixed order (features, labels, group,
        split, slices)."""
        cols: List[str] = [column for _, column, _ in self.feature_columns()]
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
        for sl in self.slices:
            cols.append(self.raw_column_of(sl.column))
        return list(dict.fromkeys(cols))

    def column_keys(self) -> Dict[str, str]:
        """Each file column the spec reads -> the first dotted key that names it (for messages),
        e.g. ``{"user_id": "sparse[0].column", "clicked": "labels[0].column"}``."""
        keys: Dict[str, str] = {}
        named = [(key, column) for key, column, _ in self.feature_columns()]
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
        named += [(f"slices[{i}].column", self.raw_column_of(sl.column)) for i, sl in enumerate(self.slices)]
        for key, column in named:
            keys.setdefault(column, key)
        return keys

    def resolve(self, path: str) -> str:
        """``path`` as given when absolute, else taken from the spec's folder (``base_dir``)."""
        return path if Path(path).is_absolute() else str(Path(self.base_dir) / path)

    def raw_column_of(self, name: str) -> str:
        """The file column behind feature ``name`` (a feature reading one column); any other name is
        taken as a file column itself."""
        for _, _, e in self.feature_entries():
            if e.feature == name and isinstance(getattr(e, "column", None), str):
                return e.column
        return name


# The feature sections that are fields of DataSpec (the others live in DataSpec.sections).
_FIELDS = ("sparse", "dense", "text")


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
        if "sections" in raw:
            raise ConfigError(f"sections: not a key of a data spec (feature sections: {[k.section for k in kinds()]})")
        return spec_from_dict(raw)
    except TypeError as e:
        # A missing required key surfaces as a TypeError from the dataclass constructor.
        raise ConfigError(f"{p}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def spec_from_dict(raw: Mapping[str, Any]) -> DataSpec:
    """A checked :class:`DataSpec` from a mapping: a YAML spec's top level, or the saved form
    (``dataclasses.asdict``), whose plug-in kinds' entries are under ``sections``. Each plug-in
    section's entries are type-checked into their kind's dataclass. Raises ConfigError naming the
    dotted key (TypeError for a missing required key, from the dataclass constructor)."""
    raw = dict(raw)
    # The keys a user may write: the fields (less the two the loader sets) and every kind's section.
    keys = sorted({f.name for f in dataclasses.fields(DataSpec)} - {"sections", "base_dir"}
                  | {k.section for k in kinds()})
    unknown_keys = [k for k in raw if k not in keys and k not in ("sections", "base_dir")]
    if unknown_keys:
        raise ConfigError(f"{unknown_keys[0]}: not a key of a data spec (its keys: {keys}; a feature kind of your "
                          f"own is known once its module is imported, docs/data.md)")
    plugged = dict(raw.pop("sections", None) or {})
    plugged.update({k.section: raw.pop(k.section) for k in kinds() if k.section not in _FIELDS and k.section in raw})
    unknown = [name for name in plugged if name not in {k.section for k in kinds()}]
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a registered feature kind (feature sections: "
                          f"{[k.section for k in kinds()]})")
    sections = {name: _entries(name, value) for name, value in plugged.items()}
    spec = from_dict(DataSpec, raw)
    if sections:
        spec.sections = sections
        spec.validate()
    return spec


def _entries(section: str, value: Any) -> List[Any]:
    """The entries of a plug-in kind's section, each type-checked into the kind's dataclass
    (ConfigError naming ``section[i].key``)."""
    kind = next(k for k in kinds() if k.section == section)
    if not isinstance(value, list):
        raise ConfigError(f"{section}: expected a list of entries, got {type(value).__name__}")
    return [from_dict(kind.entry, e, prefix=kind.key(i)) for i, e in enumerate(value)]
