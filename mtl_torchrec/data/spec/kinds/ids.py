"""Id features (``sparse:``): a column of raw ids, single or multi-valued, mapped to the rows of an
embedding table by one explicit vocabulary mode (:mod:`mtl_torchrec.data.vocabulary`), behaviour
sequences (``vocab: shared`` / ``max_length``) included.

The kind fits ``build`` vocabularies on the training split's token counts (``file``, ``hash``,
``identity`` and ``zch`` need no pass; ``shared`` takes its owner's), flags bad cells (an identity id out of
range, a history element that holds no id, a multi-valued column of numbers), converts a chunk to
int64 ids (a :class:`~mtl_torchrec.data.schema.Jagged` column when multi-valued), counts unknown
ids per split, and checks the training rows' behaviour sequences
(:mod:`~mtl_torchrec.data.spec.sequences`). Each feature is one embedding table of the schema
(shared by a history and its candidate).

Example::

    sparse:
      - {column: user_id, vocab: build, min_count: 2}
      - {column: genres, separator: "|", vocab: file, vocab_file: genres.txt}
      - {column: history, separator: "|", vocab: shared, shared_with: item_id, max_length: 50}
      - {column: item_id, vocab: zch, zch: {size: 100000, eviction: lru}}

``vocab: zch`` has no vocabulary at all: each token becomes a stable 63-bit key
(:func:`~mtl_torchrec.data.vocabulary.managed_keys`) and the model maps keys to table rows with
TorchRec's managed-collision modules (the schema's
:class:`~mtl_torchrec.data.schema.ManagedCollision`, built by :mod:`mtl_torchrec.model.builder`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.schema import Jagged, ManagedCollision, SparseFeature
from mtl_torchrec.data.spec.bad_rows import BadRows
from mtl_torchrec.data.spec.kinds.base import ConvertContext, FeatureKind, SchemaFeature, SectionFitter, register_kind
from mtl_torchrec.data.spec.reading import Chunk
from mtl_torchrec.data.spec.sequences import SequenceCounts
from mtl_torchrec.data.spec.view import SpecView
from mtl_torchrec.data.tokens import canonical_tokens
from mtl_torchrec.data.vocabulary import Vocabulary


@dataclass
class SparseColumn:
    """``sparse[i]``: an id column mapped to embedding rows by one explicit vocabulary mode.

    ``build`` fits tokens seen ``min_count`` times in training, ``file`` reads ``vocab_file``,
    ``hash`` hashes into ``hash_buckets``, ``identity`` takes integer ids in ``[0, num_embeddings)``
    (see :mod:`mtl_torchrec.data.preprocessing`), ``zch`` gives each token a 63-bit key that the
    model maps to one of ``zch.size`` rows (TorchRec's managed collisions, settings in ``zch``);
    ``shared`` uses the vocabulary and the table of the
    feature ``shared_with`` (fitted on that feature's tokens only), e.g. a behaviour sequence of the
    candidate item's ids: the same raw key gets the same row in both, an unknown one row 0 in both.

    A behaviour sequence is a multi-valued column (``separator`` in CSV, or a Parquet list column)
    whose ids are ordered **oldest first, most recent last**; ``max_length`` keeps each row's
    ``max_length`` most recent (last) ids. An empty element (``"5||7"``) or a null in a Parquet list
    of a ``shared`` or ``max_length`` column is a bad row. A multi-valued column is a list column or
    text (its cells split at ``separator``); a column of numbers is refused. The training-split checks
    of a history (its unknown ids against the candidate's, all rows empty, the row's own candidate in
    it) are in :mod:`mtl_torchrec.data.spec.sequences`.
    """

    column: str
    vocab: Literal["build", "file", "hash", "identity", "shared", "zch"]
    # Feature name in the model (default: the column name).
    name: Optional[str] = None
    # Multi-valued cell, e.g. "a|b|c" with separator "|".
    separator: Optional[str] = None
    min_count: int = 1
    vocab_file: Optional[str] = None
    hash_buckets: int = 0
    num_embeddings: int = 0
    table: Optional[str] = None
    pooling: Literal["sum", "mean"] = "sum"
    # The column is also a label column: allowed only when set (it gives the model the answer).
    allow_label_as_feature: bool = False
    # vocab: shared: the feature whose vocabulary and table this one uses.
    shared_with: Optional[str] = None
    # Multi-valued: keep each row's max_length last (most recent) ids; none: every id.
    max_length: Optional[int] = None
    # vocab: shared history: most of its training ids unknown to the shared vocabulary (and far more
    # than the candidate's own) is refused unless set (ids in another form than the candidate's).
    allow_unknown_ids: bool = False
    # vocab: zch: the table size and eviction policy of the model's managed-collision module.
    zch: Optional[ManagedCollision] = None

    @property
    def feature(self) -> str:
        """The feature name in the schema and model."""
        return self.name or self.column

    @property
    def ordered(self) -> bool:
        """Whether the column is a behaviour sequence (``shared`` vocabulary or ``max_length``), whose
        elements are checked one by one (an empty one is a bad row)."""
        return self.separator is not None and (self.vocab == "shared" or self.max_length is not None)


def check_sparse_column(column: SparseColumn, key: str) -> None:
    """``sparse[i]`` (``key``): the settings its vocabulary mode needs; raises ConfigError naming the field."""
    if column.vocab == "file" and not column.vocab_file:
        raise ConfigError(f"{key}.vocab_file: required with vocab: file")
    if column.vocab == "hash" and column.hash_buckets < 2:
        raise ConfigError(f"{key}.hash_buckets: required (>= 2) with vocab: hash")
    if column.vocab == "identity" and column.num_embeddings < 1:
        raise ConfigError(f"{key}.num_embeddings: required (>= 1) with vocab: identity")
    if column.vocab == "build" and column.min_count < 1:
        raise ConfigError(f"{key}.min_count: must be >= 1")
    if column.vocab == "zch":
        check_managed_collision(column.zch, f"{key}.zch")
    elif column.zch is not None:
        raise ConfigError(f"{key}.zch: only with vocab: zch")
    if column.vocab == "identity" and column.separator:
        raise ConfigError(f"{key}.separator: multi-valued columns need a vocabulary, not identity")
    if column.vocab == "shared" and not column.shared_with:
        raise ConfigError(f"{key}.shared_with: required with vocab: shared (the feature whose vocabulary it uses)")
    if column.shared_with is not None and column.vocab != "shared":
        raise ConfigError(f"{key}.shared_with: only with vocab: shared")
    if column.allow_unknown_ids and (column.vocab != "shared" or column.separator is None):
        raise ConfigError(f"{key}.allow_unknown_ids: only for a behaviour sequence (vocab: shared with a separator)")
    if column.max_length is not None:
        if column.separator is None:
            raise ConfigError(f"{key}.max_length: only for multi-valued columns (give a separator)")
        if column.max_length < 1:
            raise ConfigError(f"{key}.max_length: must be >= 1, got {column.max_length}")


def check_managed_collision(zch: Optional[ManagedCollision], key: str) -> None:
    """``sparse[i].zch`` (``key``) of a ``vocab: zch`` column: present, ``size >= 2`` (one row for keys
    not in the table, at least one for an id) and ``eviction_interval >= 1``; raises ConfigError
    naming the field. The eviction policy's name is checked by the spec reader (``from_dict``)."""
    if zch is None:
        raise ConfigError(f"{key}: required with vocab: zch, e.g. zch: {{size: 100000, eviction: lfu}}")
    if zch.size < 2:
        raise ConfigError(f"{key}.size: must be >= 2 (the last row is shared by ids not in the table), got {zch.size}")
    if zch.eviction_interval < 1:
        raise ConfigError(f"{key}.eviction_interval: must be >= 1 (training steps), got {zch.eviction_interval}")


def check_shared_vocabularies(sparse: Sequence[SparseColumn]) -> None:
    """``sparse[i].shared_with``: names another sparse feature that has a vocabulary of its own (not
    ``shared``), and ``sparse[i].table`` (if given) is that feature's table; raises ConfigError naming
    the key."""
    by_feature = {s.feature: s for s in sparse}
    for i, s in enumerate(sparse):
        if s.vocab != "shared":
            continue
        key = f"sparse[{i}]"
        owner = by_feature.get(str(s.shared_with))
        if owner is None or owner is s:
            raise ConfigError(f"{key}.shared_with: '{s.shared_with}' is not another sparse feature of the spec "
                              f"(sparse features: {[c.feature for c in sparse]})")
        if owner.vocab == "shared":
            raise ConfigError(f"{key}.shared_with: '{owner.feature}' shares a vocabulary itself; name the feature "
                              f"that owns it ('{owner.shared_with}')")
        if owner.vocab == "zch":
            raise ConfigError(f"{key}.shared_with: '{owner.feature}' has vocab: zch, whose managed-collision table "
                              f"is not shared with another feature; give this one its own vocab: zch")
        table = owner.table or owner.feature
        if s.table is not None and s.table != table:
            raise ConfigError(f"{key}.table: '{s.table}', but a shared vocabulary means the table of "
                              f"'{owner.feature}' ('{table}'); leave table out")


def check_managed_tables(sparse: Sequence[SparseColumn]) -> None:
    """A ``vocab: zch`` feature's table holds that feature alone (its managed-collision module maps
    one feature's keys): ``sparse[i].table`` naming another feature's table, or a table another
    feature names, raises ConfigError naming the key."""
    tables: Dict[str, List[int]] = {}
    for i, s in enumerate(sparse):
        if s.vocab != "shared":
            tables.setdefault(s.table or s.feature, []).append(i)
    for i, s in enumerate(sparse):
        users = tables.get(s.table or s.feature, [])
        if s.vocab == "zch" and len(users) > 1:
            other = sparse[next(j for j in users if j != i)]
            raise ConfigError(f"sparse[{i}].table: '{s.table or s.feature}' is also the table of '{other.feature}'; a "
                              f"vocab: zch feature needs a table of its own")


def sparse_tokens(column: SparseColumn, frame: pd.DataFrame) -> Tuple[Any, Optional[np.ndarray]]:
    """The raw tokens of ``column``, for :meth:`Vocabulary.lookup` (which puts them in its token form).

    Single-valued: the column itself (a Series, one value per row, of the file's type) and no
    lengths. Multi-valued (with a ``separator``): every row's stripped, non-empty tokens in row
    order (object array of str), and the number of tokens per row (0 for a missing cell); a cell
    holding a list (a Parquet list column) gives its elements as they are (missing ones dropped
    here, flagged by :func:`sequence_problems`). With ``max_length``, only each row's last
    ``max_length`` tokens (the most recent ones)."""
    raw = frame[column.column]
    if column.separator is None:
        return raw.reset_index(drop=True), None
    parts = _cell_lists(raw, column.separator).map(lambda xs: [x for x in xs if not _missing_element(x)])
    if column.max_length is not None:
        n = column.max_length
        parts = parts.map(lambda xs: xs[-n:])
    lengths = parts.map(len).to_numpy(dtype=np.int64)
    flat = np.empty(int(lengths.sum()), dtype=object)
    flat[:] = [t for xs in parts for t in xs]
    return flat, lengths


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _missing_element(value: Any) -> bool:
    """A list element that holds no id: None/NaN, or text that is empty after stripping."""
    if isinstance(value, str):
        return not value
    return bool(pd.isna(value)) if not _is_list(value) else False


def _cell_lists(raw: pd.Series, separator: str) -> pd.Series:
    """Each cell of a multi-valued column as a list: a list cell's elements, a text cell split at
    ``separator`` with each part stripped (empty parts kept as ""), a missing cell as []."""

    def split(value: Any) -> List[Any]:
        if _is_list(value):
            return list(value)
        if value is None or (not isinstance(value, str) and bool(pd.isna(value))) or value == "":
            return []
        return [t.strip() for t in str(value).split(separator)]

    return raw.reset_index(drop=True).map(split)


def identity_size(spec: SpecView, column: SparseColumn) -> Optional[int]:
    """The table size of the ``identity`` vocabulary that maps ``column``: its own, or that of its
    ``shared_with`` feature under ``vocab: shared``; None for any other vocabulary."""
    owner = spec.sparse_by_feature(str(column.shared_with)) if column.vocab == "shared" else column
    return owner.num_embeddings if owner.vocab == "identity" else None


def identity_element_problems(column: SparseColumn, frame: pd.DataFrame, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Rows of a multi-valued ``column`` with an element that is not an integer id in ``[0, size)``
    (every element of the cell, those ``max_length`` cuts off included, as the single-valued column
    it shares ids with is checked): ``(bad row mask, the first such element of each row)`` (None
    where the row is good). Elements that hold no id are left to :func:`sequence_problems`."""
    cells = _cell_lists(frame[column.column], str(column.separator))
    cells = cells.map(lambda xs: [x for x in xs if not _missing_element(x)])
    lengths = cells.map(len).to_numpy(dtype=np.int64)
    flat = np.empty(int(lengths.sum()), dtype=object)
    flat[:] = [x for xs in cells for x in xs]
    wrong = Vocabulary.identity(size).lookup(flat) < 0
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    first = np.full(len(lengths), None, dtype=object)
    # Reversed, so that each row's first wrong element is the one written last.
    first[row_of[wrong][::-1]] = flat[wrong][::-1]
    return np.bincount(row_of[wrong], minlength=len(lengths)) > 0, first


def _is_text_or_list(value: Any) -> bool:
    return isinstance(value, str) or _is_list(value) or _missing_element(value)


def check_multi_valued_type(column: SparseColumn, key: str, chunk: Chunk, bad: BadRows) -> None:
    """A multi-valued ``column`` (``key``: its ``sparse[i]``) must hold lists (a Parquet list column)
    or text split at its ``separator``: a column of numbers, booleans or dates (a Parquet ``int64``
    column, say) raises DataError naming the file, the column and the types it may have; single
    cells of another type in a mixed column (a DataFrame given to ``predict``) are bad rows. A column
    that is missing throughout (every cell empty) passes whatever its type."""
    values = chunk.frame[column.column]
    typed = values.dtype != object and not pd.api.types.is_string_dtype(values.dtype)
    # A column with no value at all (NaN throughout: every history empty) has no type to refuse.
    if typed and not values.isna().all():
        raise DataError(
            f"{chunk.file}: column '{column.column}' ({key}) holds {values.dtype} values; a multi-valued column "
            f"(separator {column.separator!r}) must be a list column (Parquet list<...>) or text with the ids "
            f"joined by {column.separator!r}"
        )
    if values.dtype == object:
        wrong = ~values.map(_is_text_or_list).to_numpy(dtype=bool)
        bad.flag(wrong, column.column, f"neither a list of ids nor text of ids joined by {column.separator!r}",
                 values.to_numpy(dtype=object))


def sequence_problems(column: SparseColumn, frame: pd.DataFrame) -> Tuple[np.ndarray, np.ndarray]:
    """Rows of a behaviour-sequence column (``column.ordered``) with an element that holds no id (an
    empty part of ``"5||7"``, a null in a Parquet list): ``(bad row mask, 1-based position of the first
    such element)`` per row (0 where the row is good)."""
    cells = _cell_lists(frame[column.column], str(column.separator))
    first = cells.map(lambda xs: next((k + 1 for k, x in enumerate(xs) if _missing_element(x)), 0))
    position = first.to_numpy(dtype=np.int64)
    return position > 0, position


class _VocabularyFitter(SectionFitter):
    """Token counts of the training rows of every ``vocab: build`` column, then every vocabulary."""

    def __init__(self, entries: Sequence[SparseColumn], spec: SpecView) -> None:
        self.entries = entries
        self.spec = spec
        self.counts: Dict[str, pd.Series] = {s.feature: pd.Series(dtype=np.int64) for s in entries if s.vocab == "build"}

    def update(self, frame: pd.DataFrame, values: Mapping[str, Any], keep: np.ndarray, chunk: Chunk) -> None:
        """Adds the training rows' tokens of each ``build`` column (canonical form, missing ones left out)."""
        for s in self.entries:
            if s.vocab != "build":
                continue
            tokens, _ = sparse_tokens(s, frame)
            tokens = canonical_tokens(tokens)
            tokens = tokens[~pd.isna(tokens)]
            vc = pd.Series(tokens, dtype=object).value_counts()
            self.counts[s.feature] = self.counts[s.feature].add(vc, fill_value=0)

    def finish(self, pre: Preprocessing) -> None:
        """Every column's vocabulary into ``pre.vocabs`` (a ``shared`` one is its owner's object)."""
        vocabs = {s.feature: self._vocabulary(s) for s in self.entries if s.vocab != "shared"}
        # vocab: shared: the owner's vocabulary (validate() checked that the owner has one of its own).
        vocabs.update({s.feature: vocabs[str(s.shared_with)] for s in self.entries if s.vocab == "shared"})
        pre.vocabs = {s.feature: vocabs[s.feature] for s in self.entries}

    def _vocabulary(self, column: SparseColumn) -> Vocabulary:
        if column.vocab == "build":
            counts = self.counts[column.feature]
            return Vocabulary.build({str(k): int(v) for k, v in counts.items()}, column.min_count)
        if column.vocab == "file":
            return Vocabulary.from_file(self.spec.resolve(str(column.vocab_file)))
        if column.vocab == "hash":
            return Vocabulary.hashed(column.hash_buckets)
        if column.vocab == "zch":
            return Vocabulary.managed(column.zch.size if column.zch is not None else 0)
        return Vocabulary.identity(column.num_embeddings)


class IdKind(FeatureKind):
    """The ``sparse:`` section (see the module docstring)."""

    section = "sparse"
    entry = SparseColumn
    position = 10

    def validate(self, entries: Sequence[SparseColumn], spec: SpecView) -> None:
        """The settings of each vocabulary mode, then shared vocabularies across entries."""
        for i, s in enumerate(entries):
            check_sparse_column(s, self.key(i))
        check_shared_vocabularies(entries)
        check_managed_tables(entries)

    def fitter(self, entries: Sequence[SparseColumn], spec: SpecView) -> Optional[SectionFitter]:
        """Fits the vocabularies (:class:`_VocabularyFitter`)."""
        return _VocabularyFitter(entries, spec)

    def check(self, entries: Sequence[SparseColumn], chunk: Chunk, bad: BadRows, spec: SpecView) -> Dict[str, Any]:
        """Multi-valued columns' types, behaviour-sequence elements that hold no id, and identity
        ids (of a column and of a history sharing them) outside ``[0, num_embeddings)``."""
        for i, s in enumerate(entries):
            if s.separator is not None:
                check_multi_valued_type(s, self.key(i), chunk, bad)
            if s.ordered:
                rows, _ = sequence_problems(s, chunk.frame)
                bad.flag(rows, s.column, f"behaviour sequence with an empty or null element (ids separated by "
                         f"{s.separator!r})", chunk.frame[s.column].to_numpy(dtype=object))
            size = identity_size(spec, s)
            if size is None:
                continue
            # One rule for the identity ids of a column and of the history sharing them (vocab: shared).
            shared = f" (the ids of '{s.shared_with}', vocab: shared)" if s.vocab == "shared" else ""
            if s.separator is None:
                ids = Vocabulary.identity(size).lookup(chunk.frame[s.column].to_numpy(dtype=object))
                bad.flag(ids < 0, s.column, f"not an integer id in [0, {size}){shared}",
                         chunk.frame[s.column].to_numpy())
            else:
                rows, first = identity_element_problems(s, chunk.frame, size)
                bad.flag(rows, s.column, f"an element is not an integer id in [0, {size}){shared}", first)
        return {}

    def reader(self, entries: Sequence[SparseColumn], spec: SpecView, pre: Preprocessing,
               fitting: bool) -> Optional[SequenceCounts]:
        """A fitting read counts the training rows' behaviour sequences (checked by :meth:`finish_read`)."""
        return SequenceCounts(spec) if fitting else None

    def convert(self, entries: Sequence[SparseColumn], values: Dict[str, Any], ctx: ConvertContext) -> Dict[str, Any]:
        """Ids of the good rows by each feature's vocabulary; unknown ids of ``build``/``file``
        vocabularies counted per split."""
        out: Dict[str, Any] = {}
        keys_of: Dict[str, np.ndarray] = {}
        for s in entries:
            tokens, lengths = sparse_tokens(s, ctx.frame)
            vocab = ctx.pre.vocabs[s.feature]
            if vocab.mode in ("build", "file"):
                keys = keys_of[s.feature] = vocab.keys(tokens)
                ids = vocab.lookup_keys(keys)
                if ctx.oov is not None:
                    ctx.oov.add(s.feature, ctx.split_rows, keys, ids, lengths)
            else:
                ids = vocab.lookup(tokens)
            out[s.feature] = ids if lengths is None else Jagged(ids, lengths)
        if ctx.state is not None:
            ctx.state.add(out, keys_of, ctx.split_rows.get("train", np.zeros(0, dtype=np.int64)))
        return out

    def finish_read(self, entries: Sequence[SparseColumn], state: Optional[SequenceCounts], pre: Preprocessing) -> None:
        """The training rows' behaviour-sequence checks (raises DataError); their counts and warnings
        into ``pre.stats`` (``sequences``, ``warnings``)."""
        sequence_stats = state.check() if state is not None else {}
        if sequence_stats:
            pre.stats["sequences"] = sequence_stats
            pre.stats["warnings"] = [w for c in sequence_stats.values() for w in c["warnings"]]

    def schema(self, entries: Sequence[SparseColumn], pre: Preprocessing, spec: SpecView) -> List[SchemaFeature]:
        """One id feature per column, table sizes from the fitted vocabularies (DataError when one is missing)."""
        for s in entries:
            if s.feature not in pre.vocabs:
                raise DataError(f"fitted preprocessing has no vocabulary for sparse feature '{s.feature}'")
        return list(id_features(entries, {f: v.num_embeddings for f, v in pre.vocabs.items()}))

    def unfitted_schema(self, entries: Sequence[SparseColumn], spec: SpecView) -> List[SchemaFeature]:
        """The id features with tables of size 1 (sizes come from fitting)."""
        return list(id_features(entries, {}))


def id_features(entries: Sequence[SparseColumn], sizes: Mapping[str, int]) -> List[SparseFeature]:
    """The sparse columns as the schema's id features, in spec order: multi-valued with a
    separator, a ``vocab: shared`` feature on the table of its ``shared_with`` feature; ``sizes``:
    feature -> table rows (features it lacks get 1)."""
    by_feature = {s.feature: s for s in entries}
    out = []
    for s in entries:
        table = s.table
        if s.vocab == "shared":
            owner = by_feature[str(s.shared_with)]
            table = owner.table or owner.feature
        managed = s.zch if s.vocab == "zch" else None
        size = managed.size if managed is not None else sizes.get(s.feature, 1)
        out.append(SparseFeature(s.feature, size, multi_valued=s.separator is not None,
                                 table=table, pooling=s.pooling, managed=managed))
    return out


IDS = register_kind(IdKind())
