"""Where evaluation's rows come from: a loaded :class:`~mtl_torchrec.data.bundle.DataBundle`'s split
(built-in sources, the trainer's validation) or a data spec's files streamed chunk by chunk
(:class:`~mtl_torchrec.data.spec.stream.SplitStream`). Both hand the split's rows to the same
scoring (:func:`~mtl_torchrec.eval.scoring.score_rows`) as a sequence of tables, and give the same
slices, statistics and notes once the rows are read.

A streamed split keeps per row only the slice membership (a boolean per data slice, an int32 code
per top-value data slice) and the ids of the ``--slice`` columns. The ESMM/AITM label checks give
the messages they give on the whole split: labels that can be refused are read in a first pass,
before any model is built, and derived labels are set on each piece before it is scored.

Example::

    source = StreamSource(spec, pre, "test", cfg.model.tasks, text=True, slice_columns=["device"])
    module = build_train_module(cfg.model, source.model_data, ...)
    scored = score_rows(module, module.tasks, source.tables(), source.model_data.schema, ctx, 4096)
    report = source.finish()        # SplitReport: slices, stats, notes (DataError for ESMM labels)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.schema import ColumnTable, Schema
from mtl_torchrec.data.spec import ALL_SPLIT, DataSpec
from mtl_torchrec.data.spec.build import spec_split_names
from mtl_torchrec.data.spec.stream import SplitPiece, SplitStream
from mtl_torchrec.model.esmm import LabelCheck, check_esmm_labels


def resolve_split(names: Sequence[str], split: str) -> str:
    """``split`` if the data has it (``names``: its splits), else ``all`` when that is the data's
    only split (a spec without a split rule); ConfigError naming ``--split`` otherwise.
    """
    if split in names:
        return split
    if set(names) == {ALL_SPLIT}:
        # A spec without a split rule: every row is evaluation data.
        return ALL_SPLIT
    raise ConfigError(f"--split: '{split}' not in the data (splits: {sorted(names)})")


def check_slice_column(schema: Schema, column: str) -> None:
    """ConfigError naming ``--slice`` and the columns it takes (the single-valued sparse features)
    unless ``column`` is one of them; a multi-valued one (tags, a behaviour sequence: several ids per
    row) is refused as such."""
    choices = [f.name for f in schema.sparse if not f.multi_valued]
    if any(f.multi_valued for f in schema.sparse if f.name == column):
        raise ConfigError(f"--slice: '{column}' is multi-valued (several ids per row) and cannot be sliced; slices "
                          f"need one value per row: choose from {choices}")
    if column not in choices:
        raise ConfigError(f"--slice: '{column}' is not a categorical (sparse) column; choose from {choices}")


def top_value_slices(ids: np.ndarray, column: str, pre: Optional[Preprocessing],
                     top: int = 10) -> Dict[str, np.ndarray]:
    """One row mask per most frequent id of ``ids`` (a single-valued sparse column's ids over the
    split), ``"column=value"``, named by the raw token where the run's vocabulary has one (``pre``);
    ties in id order."""
    vocab = pre.vocabs.get(column) if pre is not None else None
    values, counts = np.unique(ids, return_counts=True)
    out: Dict[str, np.ndarray] = {}
    for v in values[np.argsort(-counts, kind="stable")][:top]:
        if vocab is not None and vocab.mode in ("build", "file"):
            name = vocab.tokens[v - 1] if v > 0 else "<out of vocabulary>"
        else:
            name = str(int(v))
        out[f"{column}={name}"] = ids == v
    return out


def column_slices(bundle: DataBundle, table: ColumnTable, column: str, top: int = 10) -> Dict[str, np.ndarray]:
    """One row mask per most frequent id of a single-valued sparse column (``"column=value"``),
    named by the raw token where the run's vocabulary has one. Raises ConfigError naming ``--slice``
    and the columns it takes for any other column (:func:`check_slice_column`)."""
    check_slice_column(bundle.schema, column)
    return top_value_slices(np.asarray(table[column]), column, bundle.preprocessing, top)


def split_slices(
    bundle: DataBundle, split: str, slice_columns: Sequence[str] = (), slice_top: int = 10
) -> Dict[str, np.ndarray]:
    """The data's own slices of ``split`` plus the ``slice_top`` most frequent values of each column."""
    table = bundle.splits[split]
    slices = {k: np.asarray(v, dtype=bool) for k, v in bundle.slices.get(split, {}).items()}
    for column in slice_columns:
        slices.update(column_slices(bundle, table, column, slice_top))
    for name, mask in slices.items():
        if len(mask) != len(table):
            raise DataError(f"slice '{name}' has {len(mask)} rows but split '{split}' has {len(table)}")
    return slices


@dataclass
class SplitReport:
    """What is known once a split's rows are read: its ``slices`` (name -> row mask), the data
    ``stats`` (the preprocessing's statistics of the data read; ``{}`` without preprocessing) and
    the ``notes`` of derived ESMM labels."""

    slices: Dict[str, np.ndarray]
    stats: Dict[str, Any]
    notes: List[str]


class EvalSource:
    """The evaluated split of some data: ``model_data`` (the schema and text tables the model is
    built from), ``split`` (its resolved name), :meth:`tables` (its rows, as consecutive tables) and
    :meth:`finish` (its :class:`SplitReport`, once the tables are read)."""

    model_data: DataBundle
    split: str
    # The split's rows when known before reading (sizes the progress bar).
    total_rows: Optional[int] = None

    def tables(self) -> Iterator[ColumnTable]:
        """The split's rows, in order."""
        raise NotImplementedError

    def finish(self) -> SplitReport:
        """The split's slices, statistics and notes (after :meth:`tables` is read)."""
        raise NotImplementedError


class BundleSource(EvalSource):
    """A split of a loaded bundle, given as one table. ESMM labels are checked (and derived) and
    slices computed when it is made, before any model is built.

    Raises ConfigError for ``split`` (see :func:`resolve_split`) or a ``--slice`` column, DataError
    for ESMM labels (:func:`~mtl_torchrec.model.esmm.check_esmm_labels`).
    """

    def __init__(self, bundle: DataBundle, split: str, tasks: Sequence[Any], slice_columns: Sequence[str] = (),
                 slice_top: int = 10) -> None:
        self.model_data = bundle
        self.split = resolve_split(list(bundle.splits), split)
        self.notes = check_esmm_labels(bundle, tasks, [self.split])
        self.slices = split_slices(bundle, self.split, slice_columns, slice_top)
        self.total_rows = len(bundle.splits[self.split])

    def tables(self) -> Iterator[ColumnTable]:
        """The split's table."""
        yield self.model_data.splits[self.split]

    def finish(self) -> SplitReport:
        """The slices and notes found when the source was made, and the bundle's statistics."""
        pre = self.model_data.preprocessing
        return SplitReport(self.slices, pre.stats if pre is not None else {}, self.notes)


class StreamSource(EvalSource):
    """A split of a data spec's files, read chunk by chunk (see the module docstring).

    Args:
        spec: the data spec to read.
        pre: the run's fitted preprocessing.
        split: the split to evaluate (see :func:`resolve_split`).
        tasks: ``model.tasks`` entries, for the ESMM/AITM label checks.
        text: whether the model reads the text features (see :class:`SplitStream`).
        slice_columns: ``--slice`` columns; ``slice_top`` values each.
        check_layout: see :class:`SplitStream`.

    Raises, before any row is scored, ConfigError for ``split`` or a ``--slice`` column, what
    :class:`SplitStream` raises, and DataError for ESMM/AITM labels that would be refused (read in a
    first pass over the files, only for runs with such tasks), as
    :func:`~mtl_torchrec.model.esmm.check_esmm_labels` words it.
    """

    def __init__(self, spec: DataSpec, pre: Preprocessing, split: str, tasks: Sequence[Any], text: bool = True,
                 slice_columns: Sequence[str] = (), slice_top: int = 10, check_layout: bool = True) -> None:
        self.split = resolve_split(spec_split_names(spec), split)
        self.stream = SplitStream(spec, pre, self.split, text=text, check_layout=check_layout)
        self.model_data = self.stream.model_data
        schema = self.model_data.schema
        for column in slice_columns:
            check_slice_column(schema, column)
        self.slice_top = slice_top
        labels = {lab.task: lab.column_name for lab in schema.labels}
        self.check = LabelCheck(tasks, labels)
        if self.check.may_fail():
            # Wrong ESMM/AITM labels are refused before any model is built, as for a loaded split:
            # a first pass reads the split's labels alone.
            first = LabelCheck(tasks, {lab.task: lab.task for lab in schema.labels})
            start = 0
            for piece in self.stream.label_pieces():
                first.check(self.split, piece.table, start, origin=_origin(piece))
                start += len(piece.table)
            first.finish()
        # The ids of each --slice column over the split (8 bytes a row each).
        self.ids: Dict[str, List[np.ndarray]] = {c: [] for c in dict.fromkeys(slice_columns)}
        self.rows = 0

    def tables(self) -> Iterator[ColumnTable]:
        """The split's rows of each chunk, labels checked first. Once a label check has failed,
        the rest is read (to count the bad rows) but no longer handed on."""
        for piece in self.stream.pieces():
            self.check.check(self.split, piece.table, self.rows, origin=_origin(piece))
            self.rows += len(piece.table)
            for column, parts in self.ids.items():
                parts.append(np.asarray(piece.table[column]))
            if not self.check.failed:
                yield piece.table

    def finish(self) -> SplitReport:
        """The split's slices (the spec's, then each ``--slice`` column's top values), the statistics
        of the files read and the ESMM notes; DataError for ESMM/AITM labels
        (:meth:`LabelCheck.finish`)."""
        notes = self.check.finish()
        slices = {k: np.asarray(v, dtype=bool) for k, v in self.stream.slice_masks().items()}
        pre = self.model_data.preprocessing
        for column, parts in self.ids.items():
            ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            slices.update(top_value_slices(ids, column, pre, self.slice_top))
        return SplitReport(slices, self.stream.stats(), notes)


def _origin(piece: SplitPiece) -> Any:
    """The file line of table rows of ``piece``, for label messages."""
    return lambda rows: [piece.where(r) for r in rows]
