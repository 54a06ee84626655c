"""What every data source produces: a schema, its splits, item texts, slices and fitted preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from mtl_torchrec.data.schema import ColumnTable, Schema


@dataclass
class DataBundle:
    """A loaded data set: ``schema``, ``splits`` (name -> :class:`ColumnTable`), optional item texts
    (index = item id), named row masks per split, and the fitted preprocessing (``source: spec``).

    ``validate()`` raises :class:`DataError` naming the split, column and first bad row.
    """

    schema: Schema
    splits: Dict[str, ColumnTable]
    # Text per item id (index = id) for text features; None where the data has no item text.
    item_text: Optional[List[Optional[str]]] = None
    # Named boolean row masks per split for sliced reports, e.g. {"test": {"cold_items": mask}}.
    slices: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    # Fitted preprocessing (vocabularies, normalisers) with save(dir) / load(dir); None when the
    # source needs none. The train command saves it in the run directory.
    preprocessing: Optional[Any] = None
    # Where rows came from, for messages: (split, row indices) -> "<file> line <n>" per row (None
    # where unknown); set by sources that read files (data specs), which may read them again to answer.
    row_origin: Optional[Callable[[str, Sequence[int]], List[Optional[str]]]] = None

    def validate(self) -> None:
        """Checks every split against the schema; DataError naming the split, column and first bad row."""
        for name, table in self.splits.items():
            self.schema.validate(table, source=f"{name} split")
