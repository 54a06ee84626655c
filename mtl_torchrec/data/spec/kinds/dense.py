"""Dense features (``dense:``): a numeric column normalised with statistics of the training split
(:class:`~mtl_torchrec.data.normalizer.Normalizer`), one column of ``Batch.dense``.

The kind flags unparseable or infinite numbers, missing cells under ``fill_missing: error`` and
negative values under ``log_standard`` (unless ``clip_negative``); fits one normaliser per column in
a single streaming pass; and after fitting flags a value whose normalised form overflows float32.

Example::

    dense:
      - {column: price, normalize: log_standard, fill_missing: mean}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.data.normalizer import Normalizer
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.schema import DenseFeature
from mtl_torchrec.data.spec.bad_rows import BadRows
from mtl_torchrec.data.spec.cells import checked_numbers
from mtl_torchrec.data.spec.kinds.base import ConvertContext, FeatureKind, SchemaFeature, SectionFitter, register_kind
from mtl_torchrec.data.spec.reading import Chunk
from mtl_torchrec.data.spec.view import SpecView


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


def fit_values(norm: Normalizer, values: np.ndarray, keep: np.ndarray, chunk: Chunk, key: str, column: str) -> None:
    """Adds a chunk's training ``values[keep]`` to ``norm``; its DataError (values too large to
    normalise) is raised again naming the file, the line of the largest value and the column."""
    try:
        norm.update(values[keep])
    except DataError as e:
        rows = np.flatnonzero(keep)
        i = int(rows[np.nanargmax(np.abs(values[rows]))])
        raise DataError(f"{chunk.where(i)} column '{column}' ({key}): {e}") from None


class _NormalizerFitter(SectionFitter):
    """One :class:`Normalizer` per column over the training rows' values."""

    def __init__(self, kind: "DenseKind", entries: Sequence[DenseColumn]) -> None:
        self.kind = kind
        self.entries = entries
        self.norms = {d.feature: Normalizer(d.normalize, d.fill_missing) for d in entries}

    def update(self, frame: pd.DataFrame, values: Mapping[str, Any], keep: np.ndarray, chunk: Chunk) -> None:
        """Adds each column's training values (NaN and infinities skipped)."""
        for i, d in enumerate(self.entries):
            fit_values(self.norms[d.feature], values[d.feature], keep, chunk, self.kind.key(i), d.column)

    def finish(self, pre: Preprocessing) -> None:
        """The normalisers into ``pre.normalizers``."""
        pre.normalizers = dict(self.norms)


class DenseKind(FeatureKind):
    """The ``dense:`` section (see the module docstring)."""

    section = "dense"
    entry = DenseColumn
    position = 20

    def fitter(self, entries: Sequence[DenseColumn], spec: SpecView) -> Optional[SectionFitter]:
        """Fits the normalisers (:class:`_NormalizerFitter`)."""
        return _NormalizerFitter(self, entries)

    def check(self, entries: Sequence[DenseColumn], chunk: Chunk, bad: BadRows, spec: SpecView) -> Dict[str, Any]:
        """Feature -> float64 value of every row (NaN where missing); flags unparseable or infinite
        numbers, missing ones under ``fill_missing: error``, negative ones under ``log_standard``."""
        out: Dict[str, Any] = {}
        for d in entries:
            hint = "set fill_missing: mean or zero" if d.fill_missing == "error" else None
            num = checked_numbers(chunk.frame, d.column, bad, hint)
            if d.normalize == "log_standard" and not d.clip_negative:
                bad.flag(num < 0, d.column, "negative value under normalize: log_standard (log of a count; set "
                         "clip_negative: true to map negatives to 0)", chunk.frame[d.column].to_numpy())
            out[d.feature] = num
        return out

    def check_fitted(self, entries: Sequence[DenseColumn], values: Dict[str, Any], pre: Preprocessing, chunk: Chunk,
                     bad: BadRows) -> Dict[str, Any]:
        """Feature -> float32 normalised value of every row; a value whose normalised form overflows
        float32 (``1e308`` under ``standard``) is a bad row."""
        out: Dict[str, Any] = {}
        for d in entries:
            with np.errstate(over="ignore", invalid="ignore"):
                y = pre.normalizers[d.feature].transform(values[d.feature])
            bad.flag(~np.isfinite(y) & ~bad.bad, d.column, "too large: its normalised value overflows float32",
                     chunk.frame[d.column].to_numpy())
            out[d.feature] = y
        return out

    def convert(self, entries: Sequence[DenseColumn], values: Dict[str, Any], ctx: ConvertContext) -> Dict[str, Any]:
        """The good rows' normalised values."""
        return {d.feature: values[d.feature][ctx.rows] for d in entries}

    def schema(self, entries: Sequence[DenseColumn], pre: Preprocessing, spec: SpecView) -> List[SchemaFeature]:
        """One dense feature per column (DataError when ``pre`` has no normaliser for one)."""
        for d in entries:
            if d.feature not in pre.normalizers:
                raise DataError(f"fitted preprocessing has no normaliser for dense feature '{d.feature}'")
        return [DenseFeature(d.feature) for d in entries]

    def unfitted_schema(self, entries: Sequence[DenseColumn], spec: SpecView) -> List[SchemaFeature]:
        """The dense features (nothing about them depends on fitting)."""
        return [DenseFeature(d.feature) for d in entries]


DENSE = register_kind(DenseKind())
