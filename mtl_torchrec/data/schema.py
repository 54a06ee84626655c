"""Column roles and in-memory columnar tables.

A :class:`Schema` says what each column is for: a sparse id feature (single or multi-valued,
with its table size), a dense numeric feature, a task label, the group column (e.g. user, for
GAUC) and item text. A :class:`ColumnTable` holds the columns as numpy arrays;
:meth:`Schema.validate` checks a table against the schema and raises one :class:`DataError` that
names the source, column and first bad row.

Example::

    schema = Schema(
        sparse=[SparseFeature("user_id", 100), SparseFeature("tags", 50, multi_valued=True)],
        dense=[DenseFeature("price")],
        labels=[LabelSpec("click", "binary")],
        group="user_id",
    )
    table = ColumnTable({
        "user_id": np.array([0, 7]), "tags": Jagged.from_lists([[1, 2], []]),
        "price": np.array([0.1, -0.3], dtype=np.float32), "click": np.array([1.0, 0.0]),
    })
    schema.validate(table, source="example")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Literal, Optional, Sequence, Union

import numpy as np

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.data.label_kinds import LABEL_KINDS

# Eviction policies of TorchRec's MCH managed-collision module (torchrec.modules.mc_modules): LFU
# keeps the most frequent ids, LRU the most recently seen, distance_lfu weighs counts by recency.
EVICTION_POLICIES = ("lfu", "lru", "distance_lfu")


@dataclass
class ManagedCollision:
    """How the model maps an id feature's 63-bit keys to table rows (``vocab: zch``): TorchRec's
    managed-collision (MCH) module keeps up to ``size - 1`` distinct keys, each on a row of its
    own; the last row is shared by every key not (yet) in the table. Every ``eviction_interval``
    training steps the keys seen since are merged in, evicting by ``eviction`` when the table is
    full (:data:`EVICTION_POLICIES`). Evaluation and scoring look up only (no insertion).

    Example::

        SparseFeature("user_id", 100_000, managed=ManagedCollision(100_000, "lru"))
    """

    size: int
    eviction: Literal["lfu", "lru", "distance_lfu"] = "lfu"
    eviction_interval: int = 1


@dataclass
class SparseFeature:
    """An id feature looked up in an embedding table of ``num_embeddings`` rows.

    With ``managed`` set (``vocab: zch``), the feature's ids are 63-bit keys (any int64 ``>= 0``)
    that the model remaps to the table's rows itself (:class:`ManagedCollision`).
    """

    name: str
    num_embeddings: int
    multi_valued: bool = False
    # Several features may share one table (e.g. item_id and clicked_items).
    table: Optional[str] = None
    pooling: Literal["sum", "mean"] = "sum"
    # "text": ids are rows of a frozen text table (data/texts.py), served by a text feature module,
    # not an id embedding.
    kind: Literal["id", "text"] = "id"
    # Keys remapped to rows inside the model (vocab: zch); None: ids already are rows.
    managed: Optional[ManagedCollision] = None

    @property
    def table_name(self) -> str:
        """The embedding table's name: ``table``, else the feature's own name."""
        return self.table or self.name


@dataclass
class DenseFeature:
    """A numeric feature: one column of ``Batch.dense``."""

    name: str


@dataclass
class LabelSpec:
    """A task label. Rows whose label is NaN have no label for that task (masked out).

    ``weight`` names the table column of per-row sample weights for the task (float, finite,
    ``>= 0``; weight 2 counts a row twice in the loss and every metric); None: every row weighs 1.
    """

    task: str
    # The label kind, a LABEL_KINDS name (data/label_kinds.py): "binary" | "regression".
    type: str
    column: Optional[str] = None
    # If False, a missing (NaN) label is an error rather than a masked row.
    maskable: bool = False
    weight: Optional[str] = None

    @property
    def column_name(self) -> str:
        """The label's column: ``column``, else the task name."""
        return self.column or self.task


def impression_labels() -> List["LabelSpec"]:
    """The label set of impression data: click, conversion (click AND convert) and a rating that
    exists only on some rows (maskable)."""
    return [
        LabelSpec("click", "binary"),
        LabelSpec("conversion", "binary"),
        LabelSpec("rating", "regression", maskable=True),
    ]


@dataclass
class Jagged:
    """A multi-valued column: ``values`` of all rows back to back, ``lengths`` per row."""

    values: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.int64)
        self.lengths = np.asarray(self.lengths, dtype=np.int64)
        self.offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])
        if self.offsets[-1] != len(self.values):
            raise DataError(
                f"jagged column: lengths sum to {self.offsets[-1]} but there are {len(self.values)} values"
            )

    @staticmethod
    def from_lists(rows: Iterable[Sequence[int]]) -> "Jagged":
        """A column from one list of ids per row."""
        rows = list(rows)
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        values = np.fromiter((v for r in rows for v in r), dtype=np.int64, count=int(lengths.sum()))
        return Jagged(values, lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, rows: np.ndarray) -> "Jagged":
        """The sub-column of ``rows`` (in that order)."""
        lengths = self.lengths[rows]
        starts = self.offsets[rows]
        total = int(lengths.sum())
        # Vectorised gather of variable-length runs: position within run + run start.
        run_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
        idx = np.repeat(starts, lengths) + (np.arange(total) - run_start)
        return Jagged(self.values[idx], lengths)


Column = Union[np.ndarray, Jagged]


class ColumnTable:
    """Named columns of equal length: numpy arrays, or :class:`Jagged` for multi-valued ids."""

    def __init__(self, columns: Dict[str, Column]) -> None:
        self.columns: Dict[str, Column] = dict(columns)
        lengths = {k: len(v) for k, v in self.columns.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"columns have different lengths: {lengths}")
        self.num_rows = next(iter(lengths.values())) if lengths else 0

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, name: str) -> Column:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def take(self, rows: np.ndarray) -> "ColumnTable":
        """The rows ``rows`` of every column, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return ColumnTable(
            {k: (v.take(rows) if isinstance(v, Jagged) else v[rows]) for k, v in self.columns.items()}
        )

    @staticmethod
    def concat(tables: Sequence["ColumnTable"]) -> "ColumnTable":
        """The rows of ``tables`` back to back (every table has the same columns; at least one
        table). One table is returned as it is, not copied."""
        if len(tables) == 1:
            return tables[0]
        cols: Dict[str, Column] = {}
        for name, first in tables[0].columns.items():
            if isinstance(first, Jagged):
                parts = [t[name] for t in tables]
                cols[name] = Jagged(np.concatenate([p.values for p in parts]),
                                    np.concatenate([p.lengths for p in parts]))
            else:
                cols[name] = np.concatenate([t[name] for t in tables])
        return ColumnTable(cols)


@dataclass
class Schema:
    """The role of every column: sparse id features, dense features, task labels, and the optional
    group column (e.g. the user, for GAUC). Text features are sparse features of ``kind="text"``.

    Raises DataError when a column has two roles, two labels share a task name, a sparse feature has
    ``num_embeddings <= 0``, or features sharing a table disagree on its size.
    """

    sparse: List[SparseFeature]
    dense: List[DenseFeature]
    labels: List[LabelSpec]
    group: Optional[str] = None

    def __post_init__(self) -> None:
        seen: Dict[str, str] = {}
        for role, names in (
            ("sparse", [f.name for f in self.sparse]),
            ("dense", [f.name for f in self.dense]),
            ("label", [lab.column_name for lab in self.labels]),
            ("weight", [lab.weight for lab in self.labels if lab.weight]),
        ):
            for n in names:
                if n in seen:
                    raise DataError(f"schema: column '{n}' has two roles ({seen[n]} and {role})")
                seen[n] = role
        tasks = [lab.task for lab in self.labels]
        if len(set(tasks)) != len(tasks):
            raise DataError(f"schema: duplicate task names in {tasks}")
        sizes: Dict[str, int] = {}
        for f in self.sparse:
            if f.num_embeddings <= 0:
                raise DataError(f"schema: sparse feature '{f.name}' needs num_embeddings > 0")
            if f.managed is not None and f.managed.size != f.num_embeddings:
                raise DataError(f"schema: sparse feature '{f.name}' has {f.num_embeddings} rows but a managed-collision "
                                f"table of {f.managed.size}")
            prev = sizes.setdefault(f.table_name, f.num_embeddings)
            if prev != f.num_embeddings:
                raise DataError(f"schema: features sharing table '{f.table_name}' disagree on its size")

    @property
    def sparse_names(self) -> List[str]:
        """Names of the sparse features, in order."""
        return [f.name for f in self.sparse]

    @property
    def id_features(self) -> List[SparseFeature]:
        """The sparse features with id embeddings (``kind="id"``), in order."""
        return [f for f in self.sparse if f.kind == "id"]

    @property
    def text_features(self) -> List[SparseFeature]:
        """The text features (``kind="text"``), in order."""
        return [f for f in self.sparse if f.kind == "text"]

    @property
    def dense_names(self) -> List[str]:
        """Names of the dense features, in the order of ``Batch.dense``'s columns."""
        return [f.name for f in self.dense]

    @property
    def tasks(self) -> List[str]:
        """Task names, in label order."""
        return [lab.task for lab in self.labels]

    def label(self, task: str) -> LabelSpec:
        """The label of ``task``; KeyError when there is none."""
        for lab in self.labels:
            if lab.task == task:
                return lab
        raise KeyError(task)

    def validate(self, table: ColumnTable, source: str = "data") -> None:
        """Raises :class:`DataError` at the first problem, naming source, column and row."""
        required = self.sparse_names + self.dense_names + [lab.column_name for lab in self.labels]
        required += [lab.weight for lab in self.labels if lab.weight]
        if self.group:
            required.append(self.group)
        missing = [c for c in required if c not in table]
        if missing:
            raise DataError(f"{source}: missing column(s) {missing}; present: {sorted(table.columns)}")
        for f in self.sparse:
            col = table[f.name]
            if f.multi_valued != isinstance(col, Jagged):
                kind = "multi-valued" if f.multi_valued else "single-valued"
                raise DataError(f"{source}: column '{f.name}' should be {kind} per the schema")
            values = col.values if isinstance(col, Jagged) else col
            if not np.issubdtype(values.dtype, np.integer):
                raise DataError(f"{source}: column '{f.name}' must hold integer ids, got dtype {values.dtype}")
            # Managed-collision keys are any int64 >= 0: the model maps them to rows.
            bad = np.flatnonzero((values < 0) | (values >= f.num_embeddings)) if f.managed is None else \
                np.flatnonzero(values < 0)
            if len(bad):
                i = int(bad[0])
                row = int(np.searchsorted(col.offsets, i, side="right") - 1) if isinstance(col, Jagged) else i
                where = f"outside the table [0, {f.num_embeddings})" if f.managed is None else "a negative key"
                raise DataError(
                    f"{source}: column '{f.name}' row {row}: id {int(values[i])} is {where} ({len(bad)} such values)"
                )
        for d in self.dense_names:
            col = table[d]
            if isinstance(col, Jagged) or not np.issubdtype(col.dtype, np.number):
                raise DataError(f"{source}: dense column '{d}' must be numeric")
            bad = np.flatnonzero(~np.isfinite(col))
            if len(bad):
                raise DataError(f"{source}: dense column '{d}' row {int(bad[0])}: value {col[bad[0]]} is not finite")
        for lab in self.labels:
            col = table[lab.column_name]
            if isinstance(col, Jagged) or not np.issubdtype(col.dtype, np.number):
                raise DataError(f"{source}: label column '{lab.column_name}' must be numeric")
            nan = np.isnan(col.astype(np.float64))
            if nan.any() and not lab.maskable:
                raise DataError(
                    f"{source}: label column '{lab.column_name}' row {int(np.flatnonzero(nan)[0])} is NaN, "
                    f"but task '{lab.task}' is not maskable ({int(nan.sum())} such rows)"
                )
            kind = LABEL_KINDS.get(lab.type)
            bad = np.flatnonzero(~kind.valid(col[~nan]))
            if len(bad):
                row = int(np.flatnonzero(~nan)[bad[0]])
                raise DataError(
                    f"{source}: label column '{lab.column_name}' row {row}: {lab.type} label must be "
                    f"{kind.value_rule}, got {col[row]}"
                )
            if lab.weight:
                self._validate_weights(table, lab, source)
        if self.group:
            col = table[self.group]
            if isinstance(col, Jagged) or not np.issubdtype(col.dtype, np.integer):
                raise DataError(f"{source}: group column '{self.group}' must hold integer ids")

    @staticmethod
    def _validate_weights(table: ColumnTable, lab: LabelSpec, source: str) -> None:
        """DataError unless ``lab``'s weight column is numeric, finite and ``>= 0`` on every row."""
        col = table[lab.weight]
        if isinstance(col, Jagged) or not np.issubdtype(col.dtype, np.number):
            raise DataError(f"{source}: weight column '{lab.weight}' of task '{lab.task}' must be numeric")
        w = col.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
        if len(bad):
            raise DataError(
                f"{source}: weight column '{lab.weight}' row {int(bad[0])}: sample weight {col[bad[0]]} of task "
                f"'{lab.task}' must be a finite number >= 0 ({len(bad)} such rows)"
            )
