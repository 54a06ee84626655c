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
        if len(rows) == 0:
            return
        if not self.skip:
            i = int(rows[0])
            raise DataError(
                f"{self.chunk.where(i)} column '{column}': {reason} (value {values[i]!r}); "
                f"{len(rows)} such row(s) in this chunk. Set on_bad_rows: skip to drop and count them."
            )
        new = rows[~self.bad[rows]]
        self.bad[rows] = True
        key = f"{column}: {reason}"
        self.counts[key] = self.counts.get(key, 0) + int(len(new))
