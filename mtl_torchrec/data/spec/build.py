"""The second pass: every chunk converted with the fitted preprocessing (:class:`SpecReader`) into one
column table per split, plus item texts and slices, as a :class:`DataBundle`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.preprocessing import Preprocessing, skipped_rows_warnings
from mtl_torchrec.data.schema import ColumnTable, Jagged, Schema
from mtl_torchrec.data.spec.data_spec import DataSpec
from mtl_torchrec.data.spec.fitting import fit_preprocessing, group_column, schema_for, weight_column
from mtl_torchrec.data.spec.kinds import TEXT, ConvertContext, OovCounts, TextParts, kinds
from mtl_torchrec.data.spec.reading import Chunk, iter_chunks
from mtl_torchrec.data.spec.rows import ChunkValues, check_chunk
from mtl_torchrec.data.spec.sections import ALL_SPLIT, SPLITS
from mtl_torchrec.data.tokens import canonical_tokens, stable_hash


class SplitParts:
    """The converted columns of one split, chunk by chunk."""

    def __init__(self) -> None:
        self.parts: Dict[str, List[Any]] = {}

    def add(self, name: str, value: Any) -> None:
        """Appends one chunk's rows of column ``name`` (ndarray or :class:`Jagged`)."""
        self.parts.setdefault(name, []).append(value)

    def table(self) -> ColumnTable:
        """The parts joined into one table (multi-valued id features as :class:`Jagged`)."""
        cols: Dict[str, Any] = {}
        for name, parts in self.parts.items():
            if isinstance(parts[0], Jagged):
                cols[name] = Jagged(np.concatenate([p.values for p in parts]), np.concatenate([p.lengths for p in parts]))
            else:
                cols[name] = np.concatenate(parts)
        return ColumnTable(cols)


class ConvertedChunk(NamedTuple):
    """One chunk of a spec's files after :func:`convert_chunk`: ``chunk`` (the raw rows read, with
    their file positions), ``columns`` (table column -> values of its good rows), ``split_rows``
    (split name -> the indices of its rows among the good rows; only splits with rows, in sorted
    order) and ``keep`` (which rows of ``chunk`` are good)."""

    chunk: Chunk
    columns: Dict[str, Any]
    split_rows: Dict[str, np.ndarray]
    keep: np.ndarray

    def slice_tokens(self, spec: DataSpec, rows: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """Slice column -> the raw id token (:func:`canonical_tokens`) of each good row (of the good
        rows ``rows`` only, when given), for :class:`SliceRows`."""
        if not spec.slices:
            return {}
        frame = self.chunk.frame[self.keep]
        frame = frame if rows is None else frame.iloc[rows]
        return {sl.column: canonical_tokens(frame[spec.raw_column_of(sl.column)]) for sl in spec.slices}


def spec_split_names(spec: DataSpec) -> List[str]:
    """The splits a spec's files give: train, val and test with a split rule or per-split files
    (possibly empty), else :data:`ALL_SPLIT` alone."""
    return list(SPLITS) if (spec.split is not None or isinstance(spec.files, dict)) else [ALL_SPLIT]


def take_rows(columns: Dict[str, Any], rows: np.ndarray) -> Dict[str, Any]:
    """The rows ``rows`` of every column (ndarray or :class:`Jagged`)."""
    return {name: v.take(rows) if isinstance(v, Jagged) else v[rows] for name, v in columns.items()}


def reader_states(spec: DataSpec, pre: Preprocessing, fitting: bool) -> Dict[str, Any]:
    """Each feature kind's state across the chunks of one read, by section
    (:meth:`~mtl_torchrec.data.spec.kinds.FeatureKind.reader`: text rows, a fit's behaviour-sequence
    counts), for :func:`convert_chunk`. Raises what setting one up raises (an unreadable item table)."""
    return {kind.section: kind.reader(spec.entries(kind), spec, pre, fitting) for kind in kinds()}


class SpecReader:
    """A spec's files read chunk by chunk and converted with a preprocessing (:func:`convert_chunk`),
    counting what :func:`build_bundle` reports: rows read, rows per split, skipped bad rows, unknown
    ids per split and feature, changed item texts (:meth:`stats`).

    Args:
        spec: the data spec.
        preprocessing: a run's fitted preprocessing (evaluation and serving: never refitted; its
            feature layout is checked against ``spec`` first, unless ``check_layout`` is False);
            None fits it on the training split first (a first pass over the files).

    Raises what :func:`check_feature_layout`, :func:`fit_preprocessing` and :class:`TextParts` raise.
    """

    def __init__(self, spec: DataSpec, preprocessing: Optional[Preprocessing] = None,
                 check_layout: bool = True) -> None:
        self.spec = spec
        self.fitted = preprocessing is None
        if preprocessing is not None and check_layout:
            check_feature_layout(spec, preprocessing)
        self.pre: Preprocessing = fit_preprocessing(spec) if preprocessing is None else preprocessing
        self.states = reader_states(spec, self.pre, self.fitted)
        self.texts: TextParts = self.states[TEXT.section]
        self.skipped: Dict[str, int] = {}
        self.oov = OovCounts()
        self.rows_read = 0
        # Good rows per split, splits in the order they first appear.
        self.rows_per_split: Dict[str, int] = {}

    def split_names(self) -> List[str]:
        """The splits the files give (:func:`spec_split_names`)."""
        return spec_split_names(self.spec)

    def chunks(self) -> Iterator[ConvertedChunk]:
        """Every chunk of the files, converted (``chunk_rows`` rows each). Raises what
        :func:`iter_chunks` and :func:`convert_chunk` raise, when reading reaches the chunk."""
        for chunk in iter_chunks(self.spec):
            self.rows_read += len(chunk.frame)
            converted, split, keep = convert_chunk(self.spec, self.pre, chunk, self.states, self.skipped, self.oov,
                                                   fitting=self.fitted)
            split_rows = {str(name): np.flatnonzero(split == name) for name in np.unique(split)}
            for name, rows in split_rows.items():
                self.rows_per_split[name] = self.rows_per_split.get(name, 0) + len(rows)
            yield ConvertedChunk(chunk, converted, split_rows, keep)

    def stats(self) -> Dict[str, Any]:
        """The preprocessing's statistics updated with the files read so far: ``rows_read``,
        ``rows_per_split`` (every split of :meth:`split_names`, 0 where empty), ``skipped_rows``,
        ``skipped_by_reason``, ``oov`` (see :func:`build_bundle`) and ``text_changed`` when item
        texts differ from the run's."""
        rows_per_split = dict(self.rows_per_split)
        for name in self.split_names():
            rows_per_split.setdefault(name, 0)
        stats = dict(self.pre.stats)
        stats.update({
            "rows_read": self.rows_read,
            "rows_per_split": rows_per_split,
            "skipped_rows": sum(self.skipped.values()),
            "skipped_by_reason": self.skipped,
            "oov": self.oov.stats(),
        })
        if self.texts.changed:
            stats["text_changed"] = self.texts.changed
        return stats


def build_bundle(spec: DataSpec, preprocessing: Optional[Preprocessing] = None,
                 on_chunk: Optional[Callable[[ConvertedChunk], None]] = None,
                 drop_splits: Sequence[str] = ()) -> DataBundle:
    """Converts the spec's files to a :class:`~mtl_torchrec.data.bundle.DataBundle`.

    ``on_chunk`` (optional) sees every converted chunk; the rows of ``drop_splits`` are converted
    and counted but not kept (their tables are empty: a streamed training split).

    Fits preprocessing on the training split unless ``preprocessing`` is given (evaluation and
    serving reuse the run's fitted mapping). Bad rows raise or, with ``on_bad_rows: skip``, are
    dropped and counted in ``bundle.preprocessing.stats["skipped_rows"]``. A spec with a split rule
    or per-split files always yields train, val and test (possibly empty); one without yields
    :data:`ALL_SPLIT`. ``stats["oov"][split][feature]`` counts the tokens of each build/file
    vocabulary feature and those unknown to it (``rate``: their share); a fit also keeps the train
    split's rates as ``stats["train_oov"]``, the reference later data is compared with. The
    bundle's ``row_origin`` names the file line of a split's row; its ``texts`` hold each text
    feature's table (``stats["oov"]`` counts text keys unknown to a fitted run's rows too). A fit
    checks behaviour sequences on the training rows (:mod:`~mtl_torchrec.data.spec.sequences`):
    ``stats["sequences"]`` holds their counts, ``stats["warnings"]`` lines for the user (with the
    rows ``on_bad_rows: skip`` dropped, :func:`~mtl_torchrec.data.preprocessing.skipped_rows_warnings`). Raises
    what :func:`fit_preprocessing` and :func:`iter_chunks` raise, ConfigError or DataError for an
    unusable item table (``text[i].items``), and DataError for a bad row (without skip; a normalised
    dense value beyond float32 included), an item key missing from its item table, or (fitting) a
    history empty on every training row or whose ids are mostly unknown.
    """
    reader = SpecReader(spec, preprocessing)
    pre, fitted = reader.pre, reader.fitted
    builders: Dict[str, SplitParts] = {}
    slice_rows: Dict[str, SliceRows] = {}
    for part in reader.chunks():
        if on_chunk is not None:
            on_chunk(part)
        tokens = part.slice_tokens(spec)
        for name, rows in part.split_rows.items():
            if name in drop_splits:
                continue
            b = builders.setdefault(name, SplitParts())
            columns = take_rows(part.columns, rows)
            for col, v in columns.items():
                b.add(col, v)
            slice_rows.setdefault(name, SliceRows(spec, pre)).add({c: t[rows] for c, t in tokens.items()}, columns)
    if fitted:
        for kind in kinds():
            kind.finish_read(spec.entries(kind), reader.states[kind.section], pre)
    schema = schema_for(spec, pre)
    splits = {name: b.table() for name, b in builders.items()}
    for name in reader.split_names():
        splits.setdefault(name, empty_table(schema))
    slices = {name: sl.masks() for name, sl in slice_rows.items()}
    stats = reader.stats()
    if fitted:
        stats["train_oov"] = {f: c["rate"] for f, c in stats["oov"].get("train", {}).items()}
        stats["warnings"] = list(stats.get("warnings") or []) + skipped_rows_warnings(stats["skipped_by_reason"])
        pre.stats = stats
    out_pre = dataclasses.replace(pre, stats=stats)
    return DataBundle(schema=schema, splits=splits, texts=reader.texts.tables(), slices=slices, preprocessing=out_pre,
                      row_origin=functools.partial(locate_rows, spec, pre))


def check_feature_layout(spec: DataSpec, pre: Preprocessing) -> None:
    """Checks that ``spec`` builds the model's inputs from the same features and columns, in the same
    order, as the spec ``pre`` was fitted on (its saved layout; runs saved without one pass).

    Raises DataError naming the first entry that differs: an edited spec (a reordered ``sparse:``
    list, another column) would otherwise feed other values to the trained tables without a word.
    """
    if not pre.features:
        return
    now = spec.feature_layout()
    if now == pre.features:
        return
    for i, (a, b) in enumerate(zip(pre.features + [None] * len(now), now + [None] * len(pre.features))):
        if a != b:
            raise DataError(
                f"data spec: its features differ from those the run was trained on (entry {i}: trained "
                f"{a}, now {b}); restore the spec the run was trained with"
            )


def convert_chunk(spec: DataSpec, pre: Preprocessing, chunk: Chunk, states: Dict[str, Any], skipped: Dict[str, int],
                  oov: Optional[OovCounts] = None, fitting: bool = False,
                  ) -> Tuple[Dict[str, Any], np.ndarray, np.ndarray]:
    """One chunk mapped with the fitted ``pre`` exactly as training maps it: ``(columns, split, keep)``.

    ``columns``: table column -> values of the chunk's good rows (each feature kind's columns:
    sparse ids, :class:`Jagged` for multi-valued ones, text rows, normalised dense values, bucket
    ids; then the labels and weights of the spec's labels, group ids); ``split``: each good row's
    split; ``keep``: which of the chunk's rows are good. ``states``: each kind's reader state by
    section (:meth:`~mtl_torchrec.data.spec.kinds.FeatureKind.reader`); ``fitting``: whether the read
    fits a run. A spec without labels (or without a split rule) converts too: that is how rows
    without labels are scored (:mod:`mtl_torchrec.data.spec.features`). Bad rows raise DataError
    naming file, line and column, or with ``on_bad_rows: skip`` are dropped and counted in
    ``skipped``; ``oov`` (optional) counts unknown ids per split.
    """
    checked, values = checked_chunk(spec, pre, chunk, spec.on_bad_rows == "skip", skipped)
    keep = ~checked.bad.bad
    frame = chunk.frame[keep]
    split = checked.split[keep]
    converted: Dict[str, Any] = {}
    split_rows = {str(name): np.flatnonzero(split == name) for name in np.unique(split)}
    for kind in kinds():
        entries = spec.entries(kind)
        if not entries:
            continue
        ctx = ConvertContext(spec, pre, chunk, frame, np.flatnonzero(keep), split_rows, oov, states.get(kind.section),
                             fitting)
        converted.update(kind.convert(entries, values[kind.section], ctx))
    for task, y in checked.labels.items():
        converted[task] = y[keep]
    for task, w in checked.weights.items():
        converted[weight_column(task)] = w[keep]
    if spec.group:
        # Canonical text: the same groups (and GAUC) from a CSV or a Parquet file of int or float keys.
        h = stable_hash(canonical_tokens(frame[spec.group]))
        converted[group_column(spec.group)] = (h >> np.uint64(1)).astype(np.int64)
    return converted, split, keep


def checked_chunk(spec: DataSpec, pre: Preprocessing, chunk: Chunk, skip: bool,
                  counts: Dict[str, int]) -> Tuple[ChunkValues, Dict[str, Dict[str, Any]]]:
    """:func:`check_chunk` plus each feature kind's checks against the fitted ``pre``
    (:meth:`~mtl_torchrec.data.spec.kinds.FeatureKind.check_fitted`: a dense value whose normalised
    form overflows float32 is a bad row, say). Returns the checks and section -> feature -> the
    values the kind converts (all rows of the chunk)."""
    checked = check_chunk(spec, chunk, skip, counts)
    values: Dict[str, Dict[str, Any]] = {}
    for kind in kinds():
        entries = spec.entries(kind)
        parsed = checked.features[kind.section]
        values[kind.section] = kind.check_fitted(entries, parsed, pre, chunk, checked.bad) if entries else parsed
    return checked, values


def locate_rows(spec: DataSpec, pre: Preprocessing, split: str, rows: Sequence[int]) -> List[Optional[str]]:
    """``"<file> line <n>"`` (or ``row`` for Parquet) of rows ``rows`` of split ``split`` of the
    bundle :func:`build_bundle` made from ``spec`` and ``pre``, None for a row the files do not
    reach. Reads the files again (for messages about a few rows)."""
    pending = sorted({int(r) for r in rows})
    found: Dict[int, str] = {}
    seen = 0
    for chunk in iter_chunks(spec):
        if not pending:
            break
        checked, _ = checked_chunk(spec, pre, chunk, spec.on_bad_rows == "skip", {})
        here = np.flatnonzero(~checked.bad.bad & (checked.split == split))
        while pending and pending[0] < seen + len(here):
            r = pending.pop(0)
            found[r] = chunk.where(int(here[r - seen]))
        seen += len(here)
    return [found.get(int(r)) for r in rows]


def empty_table(schema: Schema) -> ColumnTable:
    """A table of ``schema``'s columns with no rows (a split the files left empty)."""
    cols: Dict[str, Any] = {}
    for f in schema.sparse:
        cols[f.name] = Jagged(np.zeros(0), np.zeros(0)) if f.multi_valued else np.zeros(0, dtype=np.int64)
    for d in schema.dense:
        cols[d.name] = np.zeros(0, dtype=np.float32)
    for lab in schema.labels:
        cols[lab.column_name] = np.zeros(0, dtype=np.float32)
        if lab.weight:
            cols[lab.weight] = np.zeros(0, dtype=np.float32)
    if schema.group:
        cols[schema.group] = np.zeros(0, dtype=np.int64)
    return ColumnTable(cols)


class SliceRows:
    """The slices of one split (``spec.slices``), chunk by chunk, in a few bytes per row: a
    ``cold_warm`` slice keeps one boolean per row (its raw key never seen in the training split),
    a ``top`` slice an int32 code per row of the raw value (each distinct value is kept once).

    Example::

        rows = SliceRows(spec, pre)
        rows.add(tokens, columns)    # per chunk: slice column -> raw tokens, converted columns of the rows
        rows.masks()                 # {"item=cold": bool mask, "item=warm": ..., "device=phone": ...}
    """

    def __init__(self, spec: DataSpec, pre: Preprocessing) -> None:
        self.spec = spec
        self.pre = pre
        self.cold: Dict[str, List[np.ndarray]] = {}
        self.codes: Dict[str, List[np.ndarray]] = {}
        # Raw value -> code, per top-value column, in order of first appearance.
        self.values: Dict[str, Dict[str, int]] = {}

    def add(self, tokens: Dict[str, np.ndarray], columns: Dict[str, Any]) -> None:
        """Appends rows: ``tokens`` (slice column -> :func:`canonical_tokens` of each row's raw value)
        and ``columns`` (the converted columns of the same rows)."""
        for sl in self.spec.slices:
            raw = tokens[sl.column]
            if sl.cold_warm:
                if sl.column in self.pre.seen:
                    cold = ~pd.Series(raw, dtype=object).isin(self.pre.seen[sl.column]).to_numpy(dtype=bool)
                else:
                    # A run saved before cold/warm keys were kept: OOV of a fitted vocabulary is the best guess.
                    cold = np.asarray(columns[sl.column]) == 0
                self.cold.setdefault(sl.column, []).append(cold)
                continue
            codes, uniques = pd.factorize(raw)
            known = self.values.setdefault(sl.column, {})
            mapping = np.array([known.setdefault(v, len(known)) for v in uniques] + [-1], dtype=np.int32)
            # factorize marks a missing value (None) with -1, which the appended entry keeps -1.
            self.codes.setdefault(sl.column, []).append(mapping[codes])

    def masks(self) -> Dict[str, np.ndarray]:
        """Named row masks: ``<column>=cold`` / ``=warm`` and ``<column>=<value>`` for the ``top``
        most frequent raw values (ties in the order pandas' ``value_counts`` gives)."""
        out: Dict[str, np.ndarray] = {}
        for sl in self.spec.slices:
            if sl.cold_warm:
                parts = self.cold.get(sl.column)
                cold = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
                out[f"{sl.column}=cold"] = cold
                out[f"{sl.column}=warm"] = ~cold
                continue
            # The raw values rebuilt from their codes (None for a missing one): the same array, and
            # so the same counts and order, as when every row's value was kept.
            known = list(self.values.get(sl.column, {}))
            values = np.empty(len(known) + 1, dtype=object)
            values[: len(known)] = known
            values[-1] = None
            parts = self.codes.get(sl.column)
            raw = values[np.concatenate(parts)] if parts else np.zeros(0, dtype=object)
            top = pd.Series(raw).value_counts().index[: sl.top]
            for v in top:
                out[f"{sl.column}={v}"] = raw == v
        return out
