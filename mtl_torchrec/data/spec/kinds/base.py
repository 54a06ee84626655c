"""What a feature kind is: the stages of a data spec's life that each kind takes part in, and the
registry that the spec reader, the fitting pass, the chunk conversion and the schema iterate.

A kind owns one section of the YAML spec (``sparse:``, ``dense:``, ``text:``, ``buckets:``, ...): the
dataclass of one entry, its checks, what it fits on the training split, the row checks of a chunk,
the conversion of a chunk's good rows into table columns (training, ``evaluate``, ``predict`` and
export all go through it), and the features it adds to the :class:`~mtl_torchrec.data.schema.Schema`
(which is what the model builder, the sharding planner and the export read: an id feature is an
embedding table, a dense feature a column of ``Batch.dense``).

Every stage works on a whole section at once (``entries``: the section's entries in spec order,
``key(i)``: the dotted key of entry ``i``), so that kinds whose entries depend on each other (a
behaviour sequence sharing its candidate's vocabulary) need no extra hook.

Example (a kind in its own module; the whole of what adding one takes besides its tests)::

    @FEATURE_KINDS.register("flags")
    class FlagKind(FeatureKind):
        section = "flags"
        entry = FlagColumn                           # a dataclass with column / name fields
        def check(self, entries, chunk, bad, spec): ...   # parse, flag bad rows
        def convert(self, entries, values, ctx): ...      # feature -> column of the good rows
        def schema(self, entries, pre, spec): ...         # [SparseFeature(...)] or [DenseFeature(...)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from mtl_torchrec.core.registry import Registry
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.schema import DenseFeature, SparseFeature
from mtl_torchrec.data.spec.bad_rows import BadRows
from mtl_torchrec.data.spec.reading import Chunk
from mtl_torchrec.data.spec.view import SpecView

# A feature's entry in the schema: an id feature (an embedding table) or a dense column.
SchemaFeature = Union[SparseFeature, DenseFeature]


class OovCounts:
    """Tokens and unknown tokens (id 0 though present) per split and feature, summed over chunks."""

    def __init__(self) -> None:
        self.counts: Dict[str, Dict[str, List[int]]] = {}

    def add(self, feature: str, split_rows: Dict[str, np.ndarray], keys: np.ndarray, ids: np.ndarray,
            lengths: Optional[np.ndarray]) -> None:
        """Counts one chunk: ``keys`` (None = missing) and ``ids`` per token, ``lengths`` tokens per
        row (None: one per row), ``split_rows`` the row indices of each split."""
        present = ~np.asarray(pd.isna(keys), dtype=bool)
        unknown = present & (ids == 0)
        if lengths is not None:
            row = np.repeat(np.arange(len(lengths)), lengths)
            present = np.bincount(row, weights=present, minlength=len(lengths))
            unknown = np.bincount(row, weights=unknown, minlength=len(lengths))
        for name, rows in split_rows.items():
            c = self.counts.setdefault(name, {}).setdefault(feature, [0, 0])
            c[0] += int(present[rows].sum())
            c[1] += int(unknown[rows].sum())

    def stats(self) -> Dict[str, Dict[str, Dict[str, Any]]]:
        """``{split: {feature: {"tokens": n, "unknown": k, "rate": k / n (None without tokens)}}}``."""
        return {split: {f: {"tokens": n, "unknown": k, "rate": k / n if n else None} for f, (n, k) in feats.items()}
                for split, feats in self.counts.items()}


@dataclass
class ConvertContext:
    """What a kind's :meth:`FeatureKind.convert` sees of one chunk.

    ``frame``: the chunk's good rows (raw cells); ``rows``: their positions in ``chunk`` (for
    messages naming a file line); ``split_rows``: split name -> indices into ``frame`` of its rows;
    ``oov``: unknown-id counts to add to (None: not counted); ``state``: the kind's reader state
    (:meth:`FeatureKind.reader`); ``fitting``: whether the reader fits a run (training) or applies
    a run's fitted preprocessing (evaluation, scoring).
    """

    spec: SpecView
    pre: Preprocessing
    chunk: Chunk
    frame: pd.DataFrame
    rows: np.ndarray
    split_rows: Dict[str, np.ndarray]
    oov: Optional[OovCounts]
    state: Any
    fitting: bool


class SectionFitter:
    """The first pass of one kind over the training split: :meth:`update` per chunk, then
    :meth:`finish` stores what was fitted in the run's :class:`Preprocessing`."""

    def update(self, frame: pd.DataFrame, values: Mapping[str, Any], keep: np.ndarray, chunk: Chunk) -> None:
        """One chunk: ``frame`` its training split's good rows, ``values`` what :meth:`FeatureKind.check`
        parsed over every row of the chunk (feature -> values), ``keep`` which chunk rows ``frame`` holds."""

    def finish(self, pre: Preprocessing) -> None:
        """Stores the fitted state in ``pre`` (raises DataError when nothing usable was fitted)."""


class FeatureKind:
    """One kind of feature (see the module docstring). Subclasses set :attr:`section` and
    :attr:`entry` and override the stages they take part in; the defaults fit nothing, check no row
    and add no feature.

    Entries are expected to have a ``feature`` property (the name in the schema and model) and,
    when they read one file column, a ``column`` field (and optionally ``allow_label_as_feature``),
    which the defaults of :meth:`file_columns` and :meth:`layout` use.
    """

    # The YAML key of the kind's section, e.g. "dense".
    section: ClassVar[str] = ""
    # The dataclass of one entry of the section.
    entry: ClassVar[type] = object
    # Where the section stands among the kinds: the order of its features in the schema (embedding
    # tables, dense columns), the saved feature layout and the table columns. A new kind takes a
    # number above the others', so that runs saved before it keep their layout.
    position: ClassVar[int] = 1000

    def key(self, i: int) -> str:
        """The dotted key of entry ``i`` (``dense[2]``), for messages."""
        return f"{self.section}[{i}]"

    def file_columns(self, e: Any) -> List[Tuple[str, str]]:
        """``(field, file column)`` for every file column entry ``e`` reads, e.g. ``[("column", "price")]``."""
        return [("column", e.column)]

    def layout(self, e: Any) -> List[str]:
        """Entry ``e``'s line of the feature layout a run saves (:meth:`SpecView.feature_layout`)."""
        return [self.section, e.feature, e.column]

    def validate(self, entries: Sequence[Any], spec: SpecView) -> None:
        """Checks of the section's entries (and against the rest of ``spec``); raises ConfigError
        naming the dotted key. Types and unknown keys are checked before, by ``from_dict``."""

    def fitter(self, entries: Sequence[Any], spec: SpecView) -> Optional[SectionFitter]:
        """What the first pass fits for this section on the training split; None: nothing."""
        return None

    def check(self, entries: Sequence[Any], chunk: Chunk, bad: BadRows, spec: SpecView) -> Dict[str, Any]:
        """Row checks that need no fitted state: flags bad rows on ``bad`` (naming file, line and
        column) and returns feature -> values parsed over every row of the chunk (for fitting and
        :meth:`check_fitted`), or nothing."""
        return {}

    def check_fitted(self, entries: Sequence[Any], values: Dict[str, Any], pre: Preprocessing, chunk: Chunk,
                     bad: BadRows) -> Dict[str, Any]:
        """Row checks that need the fitted state (a normalised value beyond float32): flags rows on
        ``bad`` and returns the values :meth:`convert` takes (default: ``values`` unchanged)."""
        return values

    def reader(self, entries: Sequence[Any], spec: SpecView, pre: Preprocessing, fitting: bool) -> Any:
        """State kept across the chunks of one read (text rows found so far); None by default.
        Raises what setting it up raises (an unreadable item table), before any row is read."""
        return None

    def convert(self, entries: Sequence[Any], values: Dict[str, Any], ctx: ConvertContext) -> Dict[str, Any]:
        """Table column -> values of the chunk's good rows (ndarray, or
        :class:`~mtl_torchrec.data.schema.Jagged` for multi-valued ids); ``values`` from
        :meth:`check_fitted`, over every row of the chunk (take ``values[v][ctx.rows]``)."""
        return {}

    def finish_read(self, entries: Sequence[Any], state: Any, pre: Preprocessing) -> None:
        """After a fitting read's last chunk: stores what the read itself fitted (text rows) in ``pre``."""

    def schema(self, entries: Sequence[Any], pre: Preprocessing, spec: SpecView) -> List[SchemaFeature]:
        """The features the section adds to the schema, from the fitted ``pre`` (DataError when it
        lacks one)."""
        return []

    def unfitted_schema(self, entries: Sequence[Any], spec: SpecView) -> List[SchemaFeature]:
        """What :meth:`schema` will give as far as the spec alone tells (table sizes 1): for checking
        a model config against the data before any row is read. Default: nothing."""
        return []


# Feature kinds by section name.
FEATURE_KINDS: Registry[FeatureKind] = Registry("data spec section")


def register_kind(kind: FeatureKind) -> FeatureKind:
    """Registers ``kind`` under its :attr:`~FeatureKind.section`; returns it. ValueError when the
    section is empty or taken."""
    return FEATURE_KINDS.register(kind.section)(kind)


def kinds() -> List[FeatureKind]:
    """Every registered kind, by :attr:`~FeatureKind.position`."""
    return sorted((k for _, k in FEATURE_KINDS.items()), key=lambda k: k.position)
