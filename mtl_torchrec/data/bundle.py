"""What every data source produces: a schema, its splits, text tables, slices and fitted preprocessing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import IterableDataset

from mtl_torchrec.data.loader import BatchDataset
from mtl_torchrec.data.schema import ColumnTable, Schema, SparseFeature


@dataclass
class TextTable:
    """The frozen table behind one text feature: row ``r`` holds ``texts[r]`` (row 0: no text).

    ``kind`` is ``item`` (an item table), ``row`` (each data row's own text) or ``key`` (vectors from
    the keyed store ``store``, looked up by ``keys``); see :mod:`mtl_torchrec.data.texts`.
    """

    feature: str
    kind: str
    # Raw item key (or text hash) of each row; None for row 0.
    keys: List[Optional[str]]
    # Text of each row (None: no text); None altogether for a keyed store (``store`` has the vectors)
    # or when a fitted run's table is reused (the checkpoint has the vectors).
    texts: Optional[List[Optional[str]]] = None
    store: Optional[str] = None
    # The row column holding the raw keys (kinds item and key).
    key_column: Optional[str] = None
    # The key column a keyed store must have been built from (default: ``key_column``).
    store_key: Optional[str] = None

    @property
    def num_rows(self) -> int:
        """Rows of the table, row 0 included."""
        return len(self.keys)


@dataclass
class DataBundle:
    """A loaded data set: ``schema``, ``splits`` (name -> :class:`ColumnTable`), the table of each
    text feature, named row masks per split, and the fitted preprocessing (``source: spec``).

    ``validate()`` raises :class:`DataError` naming the split, column and first bad row.
    """

    schema: Schema
    splits: Dict[str, ColumnTable]
    # Text feature name -> its table rows (the feature's ids index them); empty without text features.
    texts: Dict[str, TextTable] = field(default_factory=dict)
    # Named boolean row masks per split for sliced reports, e.g. {"test": {"cold_items": mask}}.
    slices: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    # Fitted preprocessing (vocabularies, normalisers) with save(dir) / load(dir); None when the
    # source needs none. The train command saves it in the run directory.
    preprocessing: Optional[Any] = None
    # Where rows came from, for messages: (split, row indices) -> "<file> line <n>" per row (None
    # where unknown); set by sources that read files (data specs), which may read them again to answer.
    row_origin: Optional[Callable[[str, Sequence[int]], List[Optional[str]]]] = None
    # The training split streamed from its files (data/spec/train_stream.py: ``data.shuffle_buffer``);
    # ``splits["train"]`` is then empty. None: the training split is in ``splits``.
    train_stream: Optional[Any] = None

    @property
    def train_rows(self) -> int:
        """Rows of the training split: streamed (:attr:`train_stream`) or in ``splits["train"]`` (0 without one)."""
        if self.train_stream is not None:
            return int(self.train_stream.train_rows)
        train = self.splits.get("train")
        return len(train) if train is not None else 0

    def train_batches(self, batch_size: int, seed: int, rank: int, world_size: int) -> IterableDataset:
        """This rank's training batches (epoch 0; ``set_epoch`` selects others): streamed from the
        files when :attr:`train_stream` is set, else a :class:`~mtl_torchrec.data.loader.BatchDataset`
        over ``splits["train"]``. Both give every rank the same number of batches per epoch."""
        if self.train_stream is not None:
            return self.train_stream.dataset(self.schema, batch_size, seed, rank, world_size)
        return BatchDataset(self.splits["train"], self.schema, batch_size, shuffle=True, seed=seed, rank=rank,
                            world_size=world_size)

    def without_text(self) -> "DataBundle":
        """The same data without its text features (schema, columns and tables), for models that do
        not read them: batches then carry no unused text ids."""
        if not self.texts:
            return self
        names = set(self.texts)
        schema = dataclasses.replace(self.schema, sparse=[f for f in self.schema.sparse if f.name not in names])
        splits = {k: ColumnTable({c: v for c, v in t.columns.items() if c not in names}) for k, t in self.splits.items()}
        return dataclasses.replace(self, schema=schema, splits=splits, texts={})

    def validate(self) -> None:
        """Checks every split against the schema; DataError naming the split, column and first bad row."""
        for name, table in self.splits.items():
            self.schema.validate(table, source=f"{name} split")


def item_text_feature(
    schema: Schema, splits: Dict[str, ColumnTable], item_column: str, texts: Sequence[Optional[str]],
    feature: str = "item_text",
) -> Tuple[Schema, Dict[str, ColumnTable], Dict[str, TextTable]]:
    """Adds a text feature for sources whose item ids index their item texts directly (``texts[i]``
    is item ``i``'s text): the feature's id is ``item id + 1`` (row 0: no text), so every item, seen
    in training or not, reads its own text. Returns the new schema, splits and ``texts``."""
    table = TextTable(feature=feature, kind="item", keys=[None] + [str(i) for i in range(len(texts))],
                      texts=[None] + list(texts), key_column=item_column)
    sparse = list(schema.sparse) + [SparseFeature(feature, table.num_rows, kind="text")]
    new_splits = {name: ColumnTable({**t.columns, feature: np.asarray(t[item_column], dtype=np.int64) + 1})
                  for name, t in splits.items()}
    return dataclasses.replace(schema, sparse=sparse), new_splits, {feature: table}
