"""The second pass: every chunk converted with the fitted preprocessing into one column table per
split, plus item texts and slices, as a :class:`DataBundle`."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.preprocessing import Preprocessing, stable_hash
from mtl_torchrec.data.schema import ColumnTable, Jagged, Schema
from mtl_torchrec.data.spec.data_spec import DataSpec
from mtl_torchrec.data.spec.fitting import fit_preprocessing, group_column, schema_for
from mtl_torchrec.data.spec.reading import iter_chunks
from mtl_torchrec.data.spec.rows import check_chunk, sparse_tokens
from mtl_torchrec.data.spec.sections import SPLITS, ItemText


class SplitParts:
    """The converted columns of one split, chunk by chunk, and the raw values of its value slices."""

    def __init__(self) -> None:
        self.parts: Dict[str, List[Any]] = {}
        self.slice_raw: Dict[str, List[np.ndarray]] = {}

    def add(self, name: str, value: Any) -> None:
        """Appends one chunk's rows of column ``name`` (ndarray or :class:`Jagged`)."""
        self.parts.setdefault(name, []).append(value)

    def table(self, spec: DataSpec) -> ColumnTable:
        """The parts joined into one table (multi-valued sparse features as :class:`Jagged`)."""
        cols: Dict[str, Any] = {}
        multi = {s.feature for s in spec.sparse if s.separator is not None}
        for name, parts in self.parts.items():
            if name in multi:
                cols[name] = Jagged(np.concatenate([p.values for p in parts]), np.concatenate([p.lengths for p in parts]))
            else:
                cols[name] = np.concatenate(parts)
        return ColumnTable(cols)


def build_bundle(spec: DataSpec, preprocessing: Optional[Preprocessing] = None) -> DataBundle:
    """Converts the spec's files to a :class:`~mtl_torchrec.data.bundle.DataBundle`.

    Fits preprocessing on the training split unless ``preprocessing`` is given (evaluation and
    serving reuse the run's fitted mapping). Bad rows raise or, with ``on_bad_rows: skip``, are
    dropped and counted in ``bundle.preprocessing.stats["skipped_rows"]``. A spec with a split rule
    or per-split files always yields train, val and test (possibly empty); one without yields
    :data:`ALL_SPLIT`. Raises what :func:`fit_preprocessing` and :func:`iter_chunks` raise, and
    DataError for a bad row (without skip) or a multi-valued ``item_text.item``.
    """
    fitted = preprocessing is None
    pre = fit_preprocessing(spec) if fitted else preprocessing
    schema = schema_for(spec, pre)
    skip = spec.on_bad_rows == "skip"
    skipped: Dict[str, int] = {}
    builders: Dict[str, SplitParts] = {}
    item_vocab = pre.vocabs[spec.item_text.item] if spec.item_text else None
    item_text: Optional[List[Optional[str]]] = [None] * item_vocab.num_embeddings if item_vocab else None
    total_rows = 0
    for chunk in iter_chunks(spec):
        total_rows += len(chunk.frame)
        checked = check_chunk(spec, chunk, skip, skipped)
        keep = ~checked.bad.bad
        frame = chunk.frame[keep]
        split = checked.split[keep]
        converted: Dict[str, Any] = {}
        for s in spec.sparse:
            tokens, lengths = sparse_tokens(s, frame)
            ids = pre.vocabs[s.feature].lookup(tokens)
            converted[s.feature] = ids if lengths is None else Jagged(ids, lengths)
        for d in spec.dense:
            converted[d.feature] = pre.normalizers[d.feature].transform(checked.dense[d.feature][keep])
        for task, y in checked.labels.items():
            converted[task] = y[keep]
        if spec.group:
            h = stable_hash(frame[spec.group].to_numpy(dtype=object))
            converted[group_column(spec.group)] = (h >> np.uint64(1)).astype(np.int64)
        raw_slices = {sl.column: frame[spec.raw_column_of(sl.column)].astype(str).to_numpy(dtype=object)
                      for sl in spec.slices if not sl.cold_warm}
        if item_text is not None:
            fill_item_text(item_text, converted[spec.item_text.item], frame, spec.item_text)
        for name in np.unique(split):
            rows = np.flatnonzero(split == name)
            b = builders.setdefault(str(name), SplitParts())
            for col, v in converted.items():
                b.add(col, v.take(rows) if isinstance(v, Jagged) else v[rows])
            for col, raw in raw_slices.items():
                b.slice_raw.setdefault(col, []).append(raw[rows])
    splits = {name: b.table(spec) for name, b in builders.items()}
    for name in SPLITS if (spec.split is not None or isinstance(spec.files, dict)) else ():
        splits.setdefault(name, empty_table(schema))
    slices = {name: split_slices(spec, splits[name], b) for name, b in builders.items()}
    stats = dict(pre.stats)
    stats.update({
        "rows_read": total_rows,
        "rows_per_split": {k: len(v) for k, v in splits.items()},
        "skipped_rows": sum(skipped.values()),
        "skipped_by_reason": skipped,
    })
    if fitted:
        pre.stats = stats
    out_pre = Preprocessing(pre.vocabs, pre.normalizers, stats)
    return DataBundle(schema=schema, splits=splits, item_text=item_text, slices=slices, preprocessing=out_pre)


def empty_table(schema: Schema) -> ColumnTable:
    """A table of ``schema``'s columns with no rows (a split the files left empty)."""
    cols: Dict[str, Any] = {}
    for f in schema.sparse:
        cols[f.name] = Jagged(np.zeros(0), np.zeros(0)) if f.multi_valued else np.zeros(0, dtype=np.int64)
    for d in schema.dense:
        cols[d.name] = np.zeros(0, dtype=np.float32)
    for lab in schema.labels:
        cols[lab.column_name] = np.zeros(0, dtype=np.float32)
    if schema.group:
        cols[schema.group] = np.zeros(0, dtype=np.int64)
    return ColumnTable(cols)


def fill_item_text(item_text: List[Optional[str]], ids: Any, frame: pd.DataFrame, spec: ItemText) -> None:
    """Sets ``item_text[id]`` for ids of ``frame`` that have no text yet: its ``spec.columns``
    joined with ``spec.separator``. The first text seen for an id wins; id 0 (OOV / missing) has no
    single item, so it gets none. Raises DataError when ``ids`` is multi-valued (:class:`Jagged`)."""
    if isinstance(ids, Jagged):
        raise DataError(f"item_text.item: '{spec.item}' must be a single-valued feature")
    parts = [frame[c].fillna("").astype(str).str.strip() for c in spec.columns]
    text = parts[0]
    for p in parts[1:]:
        text = text.str.cat(p, sep=spec.separator)
    first = pd.Series(np.arange(len(ids))).groupby(ids).first()
    values = text.to_numpy(dtype=object)
    for item, row in first.items():
        if item != 0 and item_text[item] is None:
            item_text[item] = values[row]


def split_slices(spec: DataSpec, table: ColumnTable, parts: SplitParts) -> Dict[str, np.ndarray]:
    """Named row masks of one split: ``<feature>=cold`` / ``=warm`` (id 0, i.e. unseen in training,
    or not) and ``<column>=<value>`` for the ``top`` most frequent raw values of a column."""
    out: Dict[str, np.ndarray] = {}
    for sl in spec.slices:
        if sl.cold_warm:
            ids = table[sl.column]
            cold = ids == 0
            out[f"{sl.column}=cold"] = cold
            out[f"{sl.column}=warm"] = ~cold
            continue
        raw = np.concatenate(parts.slice_raw[sl.column]) if parts.slice_raw.get(sl.column) else np.zeros(0, dtype=object)
        top = pd.Series(raw).value_counts().index[: sl.top]
        for v in top:
            out[f"{sl.column}={v}"] = raw == v
    return out
