"""Language-model text features (``text:``), read through a frozen table keyed by raw keys
(:mod:`mtl_torchrec.data.texts`): an item table's text per item key, each row's own text, or an
encoded store by item key.

The kind reads item tables once (before any row), grows a table row per new text or key while a
training run reads its files (frozen afterwards: an unknown key reads row 0, "no text"), counts
keys and texts unknown to a fitted run, and adds one ``kind="text"`` table per feature to the
schema, which the model serves with its frozen text table and trainable adapter.

Example::

    text:
      - {key: item_id, items: {file: items.csv}, columns: [title, genres], template: "{title}. {genres}"}
      - {columns: [review]}           # each row's own text
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.bundle import TextTable
from mtl_torchrec.data.item_table import compose_texts, read_item_table, template_fields
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.schema import SparseFeature
from mtl_torchrec.data.spec.kinds.base import ConvertContext, FeatureKind, SchemaFeature, register_kind
from mtl_torchrec.data.spec.reading import Chunk
from mtl_torchrec.data.spec.sections import LabelColumn
from mtl_torchrec.data.spec.view import SpecView
from mtl_torchrec.data.texts import TextRows, text_key
from mtl_torchrec.data.tokens import value_tokens


@dataclass
class ItemTable:
    """``text[i].items:`` an item table file: one row per item, its key and its text columns."""

    # CSV, TSV, JSONL or Parquet (by suffix); relative to the spec's folder.
    file: str
    # The key column of the item file (default: the row column ``text[i].key``).
    key: Optional[str] = None


@dataclass
class TextFeatureSpec:
    """``text[i]``: a language-model text feature, read through a frozen table keyed by raw keys.

    One of three sources (see :mod:`mtl_torchrec.data.texts`):

    * ``items`` + ``key`` + ``columns``: the item table's text of each row's raw item key (items
      unseen in training keep their text; a key missing from the table is an error unless
      ``missing: no_text``);
    * ``columns`` alone: each row's own text (a review, a query, or an item text repeated on every
      impression: each row reads its own, so a later text never leaks into earlier rows);
    * ``store`` + ``key``: a store encoded by ``mtl-torchrec encode-text --id-column``, keyed by raw
      item key (a key the store lacks is an error naming a few).
    """

    columns: List[str] = field(default_factory=list)
    # Feature name in the model (default: ``<key>_text``, or ``<columns[0]>_text`` for per-row text).
    name: Optional[str] = None
    key: Optional[str] = None
    items: Optional[ItemTable] = None
    store: Optional[str] = None
    # The key column the store was built from (``encode-text --id-column``), when it is not named
    # like ``key``: saying so states that both columns hold the same ids.
    store_key: Optional[str] = None
    # A str.format pattern over ``columns`` ("{title}. Genres: {genres}."); else non-empty cells
    # joined by ``separator``.
    template: Optional[str] = None
    separator: str = " | "
    # A row whose key is not in the item table: an error naming the row, or the "no text" vector.
    missing: Literal["error", "no_text"] = "error"

    @property
    def kind(self) -> str:
        """``item``, ``key`` or ``row`` (see the class docstring)."""
        return "item" if self.items is not None else "key" if self.store is not None else "row"

    @property
    def feature(self) -> str:
        """The feature name in the schema and model."""
        if self.name:
            return self.name
        return f"{self.key}_text" if self.key else f"{self.columns[0] if self.columns else 'row'}_text"


def check_text_feature(text: TextFeatureSpec, key: str, labels: Sequence[LabelColumn]) -> None:
    """``text[i]`` (``key``): one of item table + key + columns, store + key, or columns alone;
    a valid template; no label column among its columns (the text would give the model the
    answer). Raises ConfigError naming the dotted key."""
    if text.items is not None and text.store is not None:
        raise ConfigError(f"{key}: give either items (an item table) or store (an encoded store), not both")
    if text.kind == "row":
        if text.key is not None:
            raise ConfigError(f"{key}.key: only with {key}.items or {key}.store; without them each row's own "
                              f"text columns are used")
        if text.missing != "error":
            raise ConfigError(f"{key}.missing: only with {key}.items (a key missing from the item table)")
    elif not text.key:
        raise ConfigError(f"{key}.key: required with {key}.{'items' if text.kind == 'item' else 'store'} "
                          f"(the row column holding the item key)")
    if text.store_key is not None and text.kind != "key":
        raise ConfigError(f"{key}.store_key: only with {key}.store")
    if text.kind == "key":
        if text.columns:
            raise ConfigError(f"{key}.columns: not with {key}.store (the store already holds the vectors)")
        if text.missing != "error":
            raise ConfigError(f"{key}.missing: only with {key}.items; a store must cover every key")
    elif not text.columns:
        raise ConfigError(f"{key}.columns: at least one text column is required")
    if len(set(text.columns)) != len(text.columns):
        raise ConfigError(f"{key}.columns: a column is given twice in {text.columns}")
    if text.template is not None:
        template_fields(text.template, text.columns, f"{key}.template")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text.feature):
        raise ConfigError(f"{key}.name: '{text.feature}' must be letters, digits and '_' (it names a module and a "
                          f"table)" if text.name else f"{key}: the feature name '{text.feature}' made from its "
                          f"column must be letters, digits and '_'; give {key}.name")
    for i, lab in enumerate(labels):
        label_columns = {lab.column} | ({lab.mask_column} if lab.mask_column else set())
        if text.kind == "row" and label_columns & set(text.columns):
            column = sorted(label_columns & set(text.columns))[0]
            raise ConfigError(f"{key}.columns: '{column}' is a label column of labels[{i}]; "
                              f"a label used as text gives the model the answer")
        if text.key is not None and text.key in label_columns:
            raise ConfigError(f"{key}.key: '{text.key}' is a label column of labels[{i}]; keying text by it "
                              f"gives the model the answer")


class TextParts:
    """The rows of every text feature while a spec's chunks are read (see :mod:`mtl_torchrec.data.texts`).

    Fitting (a training run), item tables are read once and the other kinds grow a row per new text
    or key; with a run's fitted preprocessing every mapping is frozen (unknown -> row 0, no text).
    """

    def __init__(self, spec: SpecView, pre: Preprocessing, fitted: bool) -> None:
        self.spec = spec
        self.rows_of: Dict[str, TextRows] = {}
        self.texts_of: Dict[str, Optional[List[Optional[str]]]] = {}
        self.item_files: Dict[str, str] = {}
        # Keys of each item table as read now (at evaluation: keys the run lacks but the table has
        # are new items, not errors).
        self.item_keys: Dict[str, set] = {}
        # Item-table rows whose text differs from the one the run encoded (evaluation only).
        self.changed: Dict[str, int] = {}
        for i, t in enumerate(spec.text):
            text_of: Optional[List[Optional[str]]] = None
            if t.kind == "item":
                assert t.items is not None and t.key is not None
                path = spec.resolve(t.items.file)
                self.item_files[t.feature] = path
                try:
                    keys, item_texts = read_item_table(path, t.items.key or t.key, t.columns, t.template, t.separator)
                except (ConfigError, DataError) as e:
                    raise type(e)(f"text[{i}].items: {e}") from None
                except FileNotFoundError:
                    raise ConfigError(f"text[{i}].items.file: {path} not found") from None
                self.item_keys[t.feature] = set(keys)
            if not fitted:
                saved = pre.texts.get(t.feature)
                if saved is None:
                    raise DataError(f"text[{i}]: the run has no text feature '{t.feature}' (its text features: "
                                    f"{sorted(pre.texts)})")
                if saved.kind != t.kind:
                    raise DataError(f"text[{i}]: the run's text feature '{t.feature}' is of kind '{saved.kind}', this "
                                    f"spec declares kind '{t.kind}' (item table / row / store)")
                self.rows_of[t.feature] = saved.frozen_copy()
                if t.kind == "item" and saved.hashes:
                    now = {k: text_key(x) or "" for k, x in zip(keys, item_texts)}
                    self.changed[t.feature] = sum(1 for k, h in zip(saved.keys, saved.hashes)
                                                  if k in now and now[k] != h)
                # The run's checkpoint holds the vectors: nothing is encoded again.
            elif t.kind == "item":
                self.rows_of[t.feature] = TextRows("item", keys, frozen=True,
                                                   hashes=[text_key(x) or "" for x in item_texts])
                text_of = [None] + item_texts
            else:
                self.rows_of[t.feature] = TextRows(t.kind)
                text_of = [None] if t.kind == "row" else None
            self.texts_of[t.feature] = text_of

    def rows(self, index: int, t: TextFeatureSpec, frame: pd.DataFrame, chunk: Chunk,
             chunk_rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(keys, rows, unknown)`` of the chunk's good rows ``frame`` (``chunk_rows``: their
        positions in the chunk, for messages). Raises DataError naming the file line of the first
        row whose item key is missing from the item table (unless ``missing: no_text``)."""
        rows_of = self.rows_of[t.feature]
        if t.kind == "row":
            texts = compose_texts(frame, t.columns, t.template, t.separator)
            keys = np.array([text_key(x) for x in texts], dtype=object)
        else:
            assert t.key is not None
            keys = value_tokens(frame[t.key])
        before = rows_of.num_rows
        rows, unknown = rows_of.lookup(keys)
        text_of = self.texts_of[t.feature]
        if t.kind == "row" and text_of is not None and rows_of.num_rows > before:
            new = rows >= before
            first = pd.Series(np.flatnonzero(new)).groupby(rows[new]).first()
            text_of.extend(texts[first.to_numpy()])
        not_in_table = unknown
        if t.kind == "item" and unknown.any():
            # At evaluation, an item the current table has but the run lacks is a new item: no text.
            table_keys = self.item_keys[t.feature]
            not_in_table = unknown & np.array([k not in table_keys for k in keys], dtype=bool)
        if t.kind == "item" and t.missing == "error" and not_in_table.any():
            bad = np.flatnonzero(not_in_table)
            raise DataError(
                f"{chunk.where(int(chunk_rows[bad[0]]))} column '{t.key}' (text[{index}].key): item key "
                f"{keys[bad[0]]!r} is not in the item table {self.item_files[t.feature]} ({len(bad)} such rows in "
                f"this chunk); add it, or set text[{index}].missing: no_text to serve such rows the no-text vector"
            )
        return keys, rows, unknown

    def tables(self) -> Dict[str, TextTable]:
        """The :class:`TextTable` of each text feature, for the model's text modules."""
        out: Dict[str, TextTable] = {}
        for t in self.spec.text:
            rows_of = self.rows_of[t.feature]
            out[t.feature] = TextTable(
                feature=t.feature, kind=t.kind, keys=[None] + list(rows_of.keys), texts=self.texts_of[t.feature],
                store=self.spec.resolve(t.store) if t.store else None,
                key_column=t.key, store_key=t.store_key or t.key,
            )
        return out


class TextKind(FeatureKind):
    """The ``text:`` section (see the module docstring)."""

    section = "text"
    entry = TextFeatureSpec
    position = 30

    def file_columns(self, e: TextFeatureSpec) -> List[Tuple[str, str]]:
        """The key column, and each row's own text columns (item tables and stores are other files)."""
        out = [("key", e.key)] if e.key else []
        return out + ([(f"columns[{j}]", c) for j, c in enumerate(e.columns)] if e.kind == "row" else [])

    def layout(self, e: TextFeatureSpec) -> List[str]:
        """``["text", feature]``: what the run's table rows are keyed by is in its text rows."""
        return ["text", e.feature]

    def validate(self, entries: Sequence[TextFeatureSpec], spec: SpecView) -> None:
        """Each entry's source, template, name and label columns (:func:`check_text_feature`)."""
        for i, t in enumerate(entries):
            check_text_feature(t, self.key(i), spec.labels)

    def reader(self, entries: Sequence[TextFeatureSpec], spec: SpecView, pre: Preprocessing,
               fitting: bool) -> TextParts:
        """The rows of every text feature (:class:`TextParts`; reads the item tables now)."""
        return TextParts(spec, pre, fitting)

    def convert(self, entries: Sequence[TextFeatureSpec], values: Dict[str, Any], ctx: ConvertContext) -> Dict[str, Any]:
        """Each good row's text-table row; keys unknown to a fitted run counted per split."""
        out: Dict[str, Any] = {}
        for i, t in enumerate(entries):
            keys, rows, unknown = ctx.state.rows(i, t, ctx.frame, ctx.chunk, ctx.rows)
            if ctx.oov is not None:
                ctx.oov.add(t.feature, ctx.split_rows, keys, np.where(unknown, 0, 1), None)
            out[t.feature] = rows
        return out

    def finish_read(self, entries: Sequence[TextFeatureSpec], state: TextParts, pre: Preprocessing) -> None:
        """The rows the training read found, frozen into ``pre.texts``."""
        pre.texts = {t.feature: state.rows_of[t.feature] for t in entries}

    def schema(self, entries: Sequence[TextFeatureSpec], pre: Preprocessing, spec: SpecView) -> List[SchemaFeature]:
        """One ``kind="text"`` table per feature, of the run's text rows (DataError when ``pre`` lacks one)."""
        out: List[SchemaFeature] = []
        for t in entries:
            if t.feature not in pre.texts:
                raise DataError(f"fitted preprocessing has no text rows for text feature '{t.feature}'")
            out.append(SparseFeature(t.feature, pre.texts[t.feature].num_rows, kind="text"))
        return out


TEXT = register_kind(TextKind())
