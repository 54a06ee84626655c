"""Texts from table columns: an item table file (key column + text columns) and per-row text composition.

Both turn one or more text columns into one text per row, with a ``str.format`` template over the
columns (``"{title}. Genres: {genres}."``) or the non-empty cells joined by a separator. A text that
is empty or blank after composition is "no text" (``None``).

Example::

    keys, texts = read_item_table("items.csv", key_column="item_id", text_columns=["title", "genres"],
                                  template="{title}. Genres: {genres}.")
    keys[0], texts[0]          # ("42", "Toy Story. Genres: Animation|Comedy.")
"""

from __future__ import annotations

import io
import string
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.tokens import value_tokens


def template_fields(template: str, columns: Sequence[str], key: str = "template") -> None:
    """Raises ConfigError naming ``key`` when ``template`` is not a valid ``str.format`` pattern over
    ``columns``: a field that is not a text column, a positional field, a format spec or conversion
    that text cannot take, or no text column at all (every row would get the same text)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(f"{key}: not a valid format pattern ({e})") from None
    used = {name for _, name, _, _ in parsed if name is not None}
    if "" in used or any(n.isdigit() for n in used):
        raise ConfigError(f"{key}: fields must be named after text columns, e.g. '{{{columns[0]}}}'")
    unknown = sorted(used - set(columns))
    if unknown:
        raise ConfigError(f"{key}: field(s) {unknown} are not among the text columns {list(columns)}")
    if not used:
        raise ConfigError(f"{key}: uses none of the text columns {list(columns)}, so every row would get the "
                          f"same text; name them in braces, e.g. '{{{columns[0]}}}'")
    try:
        template.format(**{c: "text" for c in columns})
    except (ValueError, KeyError, IndexError, AttributeError) as e:
        raise ConfigError(f"{key}: cannot be applied to text cells ({type(e).__name__}: {e})") from None


def compose_texts(
    frame: pd.DataFrame, columns: Sequence[str], template: Optional[str] = None, separator: str = " | "
) -> np.ndarray:
    """One text per row of ``frame`` (object array, None for no text).

    Cells are read as text with surrounding spaces stripped (missing cells are empty). With
    ``template`` the cells fill its fields; otherwise the non-empty cells are joined by ``separator``.
    A row whose cells are all empty has no text, whatever the template adds around them.
    """
    cells = {c: frame[c].astype(object).where(frame[c].notna(), "").astype(str).str.strip().to_numpy(dtype=object)
             for c in columns}
    n = len(frame)
    out = np.full(n, None, dtype=object)
    any_text = np.zeros(n, dtype=bool)
    for v in cells.values():
        any_text |= v != ""
    for i in np.flatnonzero(any_text):
        row = {c: cells[c][i] for c in columns}
        text = template.format(**row) if template is not None else separator.join(x for x in row.values() if x)
        out[i] = text.strip() or None
    return out


def read_frame(path: Path) -> pd.DataFrame:
    """A CSV / TSV / JSONL / Parquet file as text cells (missing cells empty).

    Raises FileNotFoundError naming the file, DataError naming the file (and line where known) for
    bytes that are not UTF-8 and for a file that cannot be parsed (empty, ragged, bad JSON, not Parquet).
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: item file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            hint = " (compressed files are not read; decompress it first)" if raw[:2] == b"\x1f\x8b" else ""
            raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start}){hint}") from None
        if not text.strip():
            raise DataError(f"{path}: empty file (a header row and one row per item are needed)")
        if suffix in (".jsonl", ".json"):
            return pd.read_json(io.StringIO(text), lines=suffix == ".jsonl", dtype=False)
        sep = "\t" if suffix in (".tsv", ".tab") else ","
        with warnings.catch_warnings():
            # A first row with more fields than the header would silently become the index, or
            # (index_col=False) lose fields with only a warning: make it the error it is.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, index_col=False)
    except DataError:
        raise
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.ParserWarning) as e:
        # pandas / pyarrow parse errors (ragged rows, unclosed quotes, bad JSON, not a Parquet file).
        raise DataError(f"{path}: cannot be read as {suffix.lstrip('.') or 'csv'}: {str(e).strip()}") from None


def read_item_table(
    path: str,
    key_column: str,
    text_columns: Sequence[str],
    template: Optional[str] = None,
    separator: str = " | ",
) -> Tuple[List[str], List[Optional[str]]]:
    """``(keys, texts)`` of an item file, in file order: each item's raw key (in the id-token form of
    :func:`~mtl_torchrec.data.tokens.value_tokens`, so ``5``, ``5.0`` and ``" 5 "`` are one
    key) and its composed text (None: no text, see :func:`compose_texts`).

    Raises FileNotFoundError, ConfigError for no text column or a template field that is not a text
    column, and DataError naming the file and line for a missing column, an empty key or a key
    given twice.
    """
    p = Path(path)
    columns = list(text_columns)
    if not columns:
        raise ConfigError(f"{p}: at least one text column is required")
    if len(set(columns)) != len(columns):
        raise ConfigError(f"{p}: a text column is given twice in {columns}")
    if template is not None:
        template_fields(template, columns)
    frame = read_frame(p)
    missing = [c for c in [key_column] + columns if c not in frame.columns]
    if missing:
        raise DataError(f"{p}: missing column(s) {missing}; present: {list(frame.columns)}")
    # CSV: the header is line 1, so row r is line r + 2; JSONL and Parquet count rows from 1.
    first = 2 if p.suffix.lower() not in (".parquet", ".jsonl", ".json") else 1
    where = "line" if first == 2 else "row"
    keys = value_tokens(frame[key_column])
    empty = np.flatnonzero(pd.isna(keys))
    if len(empty):
        raise DataError(f"{p}: {where} {int(empty[0]) + first}: column '{key_column}': empty item key")
    seen = pd.Series(keys).duplicated()
    if seen.any():
        r = int(np.flatnonzero(seen.to_numpy())[0])
        raise DataError(f"{p}: {where} {r + first}: column '{key_column}': item key {keys[r]!r} given twice")
    texts = compose_texts(frame, columns, template, separator)
    return [str(k) for k in keys], list(texts)
