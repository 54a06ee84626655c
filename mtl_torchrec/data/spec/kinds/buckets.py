"""Bucketised numbers (``buckets:``): a numeric column cut into ranges, each range one row of an
embedding table, so the model learns a vector per range instead of one weight on a normalised value
(prices, ages, counts whose effect is not monotone).

Boundaries are either given (``boundaries``: ascending) or fitted as quantiles of the training split
(``num_buckets``: about equally full buckets; equal quantiles, from values that repeat, merge into
one boundary, so a column with few distinct values gets fewer buckets). Quantiles are taken over a
uniform sample of at most ``sample_rows`` training values (a fixed-seed reservoir, so memory stays
bounded however large the split; below that size they are exact).

A value ``v`` goes to row ``1 + #{b in boundaries : b <= v}`` (rows ``1 .. len(boundaries) + 1``);
row 0 is the missing-value row, used only with ``fill_missing: bucket`` (otherwise a missing cell is
a bad row). An unparseable or infinite value is always a bad row.

Example::

    buckets:
      - {column: price, num_buckets: 20}                   # feature price_bucket, 21 rows at most
      - {column: age, boundaries: [18, 25, 35, 50, 65], name: age_range}
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.schema import SparseFeature
from mtl_torchrec.data.spec.bad_rows import BadRows
from mtl_torchrec.data.spec.cells import checked_numbers
from mtl_torchrec.data.spec.kinds.base import ConvertContext, FeatureKind, SchemaFeature, SectionFitter, register_kind
from mtl_torchrec.data.spec.reading import Chunk
from mtl_torchrec.data.spec.view import SpecView

# Bounds that keep a typo from allocating the machine away: sampled values kept to fit quantiles,
# and fitted buckets (table rows).
MAX_SAMPLE_ROWS = 50_000_000
MAX_BUCKETS = 1_000_000


@dataclass
class BucketColumn:
    """``buckets[i]``: a numeric column as an id feature of its value ranges (see the module docstring)."""

    column: str
    # Feature name in the model (default: ``<column>_bucket``, so the column can be a dense feature too).
    name: Optional[str] = None
    # Fitted boundaries: this many quantile ranges of the training values (>= 2) ...
    num_buckets: Optional[int] = None
    # ... or given ones, strictly ascending finite numbers.
    boundaries: Optional[List[float]] = None
    # A missing cell: a bad row, or the missing-value row 0.
    fill_missing: Literal["error", "bucket"] = "error"
    # Training values kept (uniformly sampled) to fit the quantiles.
    sample_rows: int = 1_000_000
    table: Optional[str] = None
    pooling: Literal["sum", "mean"] = "sum"
    # The column is also a label column: allowed only when set (it gives the model the answer).
    allow_label_as_feature: bool = False

    @property
    def feature(self) -> str:
        """The feature name in the schema and model."""
        return self.name or f"{self.column}_bucket"


def bucket_ids(values: np.ndarray, boundaries: Sequence[float]) -> np.ndarray:
    """int64 row of each value: ``1 + #{b <= v}``, 0 where ``v`` is NaN (missing).

    Example: ``bucket_ids(np.array([-1.0, 0.0, 5.0, np.nan]), [0.0, 5.0])`` -> ``[1, 2, 3, 0]``.
    """
    v = np.asarray(values, dtype=np.float64)
    ids = np.searchsorted(np.asarray(boundaries, dtype=np.float64), v, side="right").astype(np.int64) + 1
    ids[np.isnan(v)] = 0
    return ids


def quantile_boundaries(sample: np.ndarray, num_buckets: int) -> List[float]:
    """The distinct inner quantiles ``k / num_buckets`` (``k = 1 .. num_buckets - 1``) of ``sample``
    (numpy's default linear interpolation), ascending."""
    qs = np.quantile(np.asarray(sample, dtype=np.float64), np.arange(1, num_buckets) / num_buckets)
    return [float(q) for q in np.unique(qs)]


class _Reservoir:
    """A uniform sample of at most ``size`` values of a stream: each value gets a random priority
    from a generator seeded by the feature name, and the ``size`` lowest priorities are kept, so the
    sample depends on the values and their order only."""

    def __init__(self, size: int, seed_text: str) -> None:
        self.size = size
        self.rng = np.random.default_rng(zlib.crc32(seed_text.encode("utf-8")))
        self.values = np.zeros(0, dtype=np.float64)
        self.priority = np.zeros(0, dtype=np.float64)
        self.seen = 0

    def add(self, x: np.ndarray) -> None:
        """Offers the values ``x`` (finite float64) to the sample."""
        self.seen += len(x)
        values = np.concatenate([self.values, x])
        priority = np.concatenate([self.priority, self.rng.random(len(x))])
        if len(values) > self.size:
            keep = np.argpartition(priority, self.size - 1)[: self.size]
            values, priority = values[keep], priority[keep]
        self.values, self.priority = values, priority


class _BoundaryFitter(SectionFitter):
    """The boundaries of every entry: fitted quantiles of a sample of the training values, or the given ones."""

    def __init__(self, kind: "BucketKind", entries: Sequence[BucketColumn]) -> None:
        self.kind = kind
        self.entries = entries
        self.samples = {e.feature: _Reservoir(e.sample_rows, e.feature) for e in entries if e.boundaries is None}

    def update(self, frame: pd.DataFrame, values: Mapping[str, Any], keep: np.ndarray, chunk: Chunk) -> None:
        """Offers each fitted column's finite training values to its sample."""
        for e in self.entries:
            if e.feature in self.samples:
                x = values[e.feature][keep]
                self.samples[e.feature].add(x[np.isfinite(x)])

    def finish(self, pre: Preprocessing) -> None:
        """``pre.fitted[feature] = {"kind": "buckets", "boundaries": [...]}``; DataError naming the
        key when a fitted column has no value in the training split."""
        for i, e in enumerate(self.entries):
            if e.boundaries is not None:
                boundaries = [float(b) for b in e.boundaries]
            else:
                sample = self.samples[e.feature]
                if not len(sample.values):
                    raise DataError(f"{self.kind.key(i)}.column: '{e.column}' has no value in the training split to "
                                    f"fit {e.num_buckets} buckets on; give {self.kind.key(i)}.boundaries instead")
                boundaries = quantile_boundaries(sample.values, int(e.num_buckets or 0))
            pre.fitted[e.feature] = {"kind": BucketKind.section, "boundaries": boundaries}


class BucketKind(FeatureKind):
    """The ``buckets:`` section (see the module docstring)."""

    section = "buckets"
    entry = BucketColumn
    position = 40

    def validate(self, entries: Sequence[BucketColumn], spec: SpecView) -> None:
        """Exactly one of ``num_buckets`` (>= 2) and ``boundaries`` (strictly ascending, finite, at least
        one), a positive ``sample_rows``, a feature name of letters, digits and ``_``."""
        for i, e in enumerate(entries):
            key = self.key(i)
            if (e.num_buckets is None) == (e.boundaries is None):
                raise ConfigError(f"{key}: give either num_buckets (fitted quantiles) or boundaries, not "
                                  f"{'both' if e.boundaries is not None else 'neither'}")
            if e.num_buckets is not None and e.num_buckets < 2:
                raise ConfigError(f"{key}.num_buckets: must be >= 2, got {e.num_buckets}")
            if e.boundaries is not None:
                b = [float(x) for x in e.boundaries]
                if not b or not all(math.isfinite(x) for x in b):
                    raise ConfigError(f"{key}.boundaries: at least one finite number is required, got {e.boundaries}")
                wrong = next((j for j in range(1, len(b)) if b[j] <= b[j - 1]), None)
                if wrong is not None:
                    raise ConfigError(f"{key}.boundaries[{wrong}]: {b[wrong]} is not above {b[wrong - 1]} "
                                      f"(boundaries must be strictly ascending)")
            if not 1 <= e.sample_rows <= MAX_SAMPLE_ROWS:
                raise ConfigError(f"{key}.sample_rows: must be in [1, {MAX_SAMPLE_ROWS}], got {e.sample_rows}")
            if e.num_buckets is not None and e.num_buckets > min(e.sample_rows, MAX_BUCKETS):
                raise ConfigError(f"{key}.num_buckets: at most {min(e.sample_rows, MAX_BUCKETS)} (quantiles of at most "
                                  f"sample_rows values, and at most {MAX_BUCKETS} table rows), got {e.num_buckets}")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", e.feature):
                raise ConfigError(f"{key}.name: '{e.feature}' must be letters, digits and '_' (it names a table)")

    def fitter(self, entries: Sequence[BucketColumn], spec: SpecView) -> Optional[SectionFitter]:
        """Fits the boundaries (:class:`_BoundaryFitter`)."""
        return _BoundaryFitter(self, entries)

    def check(self, entries: Sequence[BucketColumn], chunk: Chunk, bad: BadRows, spec: SpecView) -> Dict[str, Any]:
        """Feature -> float64 value of every row (NaN where missing); flags unparseable or infinite
        numbers, and missing ones under ``fill_missing: error``."""
        out: Dict[str, Any] = {}
        for e in entries:
            hint = "set fill_missing: bucket for the missing-value row" if e.fill_missing == "error" else None
            out[e.feature] = checked_numbers(chunk.frame, e.column, bad, hint)
        return out

    def convert(self, entries: Sequence[BucketColumn], values: Dict[str, Any], ctx: ConvertContext) -> Dict[str, Any]:
        """Each good row's bucket row under the run's boundaries."""
        return {e.feature: bucket_ids(values[e.feature][ctx.rows], self.boundaries(ctx.pre, e)) for e in entries}

    def boundaries(self, pre: Preprocessing, e: BucketColumn) -> List[float]:
        """The run's boundaries of ``e``; DataError naming ``preprocessing.json`` when ``pre`` has none (a run
        fitted without this feature) or they are not strictly ascending finite numbers (an edited file)."""
        state = pre.fitted.get(e.feature)
        if not state or state.get("kind") != self.section:
            raise DataError(f"fitted preprocessing has no bucket boundaries for feature '{e.feature}'")
        b = state.get("boundaries")
        ok = isinstance(b, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b)
        if not ok or not all(math.isfinite(x) for x in b) or any(b[j] <= b[j - 1] for j in range(1, len(b))):
            raise DataError(f"preprocessing.json: fitted.{e.feature}.boundaries must be strictly ascending finite "
                            f"numbers, got {b!r} (the file was edited; use the one the run saved)")
        return [float(x) for x in b]

    def schema(self, entries: Sequence[BucketColumn], pre: Preprocessing, spec: SpecView) -> List[SchemaFeature]:
        """One id feature per column, of ``len(boundaries) + 2`` rows (the missing-value row and the ranges)."""
        return [SparseFeature(e.feature, len(self.boundaries(pre, e)) + 2, table=e.table, pooling=e.pooling)
                for e in entries]

    def unfitted_schema(self, entries: Sequence[BucketColumn], spec: SpecView) -> List[SchemaFeature]:
        """The id features with tables of size 1 (sizes come from fitting)."""
        return [SparseFeature(e.feature, 1, table=e.table, pooling=e.pooling) for e in entries]


BUCKETS = register_kind(BucketKind())
