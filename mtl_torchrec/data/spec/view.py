"""What the reading, the feature kinds and the sequence checks see of a data spec: a structural
type (:class:`SpecView`) that :class:`~mtl_torchrec.data.spec.data_spec.DataSpec` satisfies.

The spec is built from the kinds' sections, so the modules below it cannot name the spec's class
(an import circle); they name this view of it instead, which also says exactly what they read.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Protocol

from mtl_torchrec.data.spec.sections import CsvOptions, Files, LabelColumn, SliceSpec, SplitRule


class SpecView(Protocol):
    """The fields and methods of a data spec that reading files, feature kinds and sequence checks use."""

    files: Files
    labels: List[LabelColumn]
    sparse: List[Any]
    dense: List[Any]
    text: List[Any]
    format: Optional[str]
    csv: CsvOptions
    chunk_rows: int
    split: Optional[SplitRule]
    group: Optional[str]
    slices: List[SliceSpec]
    on_bad_rows: str
    base_dir: str

    def entries(self, kind: Any) -> List[Any]:
        """The entries of ``kind``'s section."""

    def raw_columns(self) -> List[str]:
        """Every file column the spec reads."""

    def column_keys(self) -> Dict[str, str]:
        """Each file column -> the first dotted key naming it."""

    def resolve(self, path: str) -> str:
        """``path`` from the spec's folder."""

    def sparse_by_feature(self, name: str) -> Any:
        """The sparse column of feature ``name``."""

    def raw_column_of(self, name: str) -> str:
        """The file column behind feature ``name``."""
