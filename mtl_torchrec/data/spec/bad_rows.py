"""``on_bad_rows``: stop at the first bad row of a chunk (``error``) or drop and count bad rows (``skip``)."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.data.spec.reading import Chunk


class BadRows:
    """Collects the bad rows of one chunk; raises at the first one unless ``skip``.

    ``bad`` is the chunk's boolean row mask of rows flagged so far. ``counts`` (shared across
    chunks) maps ``"<column>: <reason>"`` to the number of rows dropped for it; a row flagged
    for several reasons counts once, under the first.
    """

    def __init__(self, chunk: Chunk, skip: bool, counts: Dict[str, int]) -> None:
        self.chunk = chunk
        self.skip = skip
        self.counts = counts
        self.bad = np.zeros(len(chunk.frame), dtype=bool)

    def flag(self, rows: np.ndarray, column: str, reason: str, values: Any) -> None:
        """Marks ``rows`` (a boolean mask or row indices) bad because of ``column``.

        Without ``skip``, raises DataError naming the file, line and column of the first such row
        with its value (``values[i]``) and the count of such rows in the chunk.
        """
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows
        if len(rows):
            i = int(rows[0])
            self._refuse_or_count(rows, f"column '{column}': {reason} (value {values[i]!r})", f"{column}: {reason}")

    def flag_field_counts(self) -> None:
        """Marks CSV records whose field count is not the header's (``chunk.fields`` vs
        ``chunk.expected_fields``; nothing for Parquet). Run before any column is parsed: such a
        row's cells may belong to other columns. Without ``skip``, raises DataError naming the file
        line, e.g. ``data.csv line 3: 43 fields, expected 42``."""
        fields = self.chunk.fields
        if fields is None:
            return
        expected = self.chunk.expected_fields
        rows = np.flatnonzero(fields != expected)
        if len(rows):
            first = f"{int(fields[int(rows[0])])} fields, expected {expected}"
            self._refuse_or_count(rows, first, f"row: wrong number of fields (expected {expected})", sep=": ")

    def _refuse_or_count(self, rows: np.ndarray, problem: str, key: str, sep: str = " ") -> None:
        """Without ``skip``, DataError naming the first row's place and ``problem`` and how many rows
        of the chunk have it; with ``skip``, the rows are dropped and counted under ``key``."""
        if not self.skip:
            raise DataError(
                f"{self.chunk.where(int(rows[0]))}{sep}{problem}; {len(rows)} such row(s) in this chunk. "
                f"Set on_bad_rows: skip to drop and count them."
            )
        self._count(rows, key)

    def _count(self, rows: np.ndarray, key: str) -> None:
        new = rows[~self.bad[rows]]
        self.bad[rows] = True
        if len(new):
            self.counts[key] = self.counts.get(key, 0) + int(len(new))
