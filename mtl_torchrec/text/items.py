"""Item texts from a table file: one id column and one or more text columns joined by a template.

Example::

    texts = read_item_texts("items.csv", id_column="item_id", text_columns=["title", "genres"],
                            template="{title}. Genres: {genres}.")
    texts[42]          # "Toy Story. Genres: Animation|Comedy."
"""

from __future__ import annotations

import io
import string
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from mtl_torchrec.core.errors import DataError

if TYPE_CHECKING:
    import pandas


def _read_frame(path: Path) -> pandas.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"{path}: item file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path).astype(str)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if suffix in (".jsonl", ".json"):
        return pd.read_json(io.StringIO(text), lines=suffix == ".jsonl", dtype=False).fillna("").astype(str)
    sep = "\t" if suffix in (".tsv", ".tab") else ","
    return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)


def read_item_texts(
    path: str,
    id_column: str,
    text_columns: Sequence[str],
    template: Optional[str] = None,
) -> Dict[int, Optional[str]]:
    """``{item id: text}`` from a CSV/TSV/JSONL/Parquet file.

    ``template`` is a ``str.format`` pattern over the text columns (default: the columns joined
    by ". "). Rows whose text columns are all empty have no text (``None``).
    """
    p = Path(path)
    frame = _read_frame(p)
    columns = list(text_columns)
    if not columns:
        raise DataError(f"{p}: at least one text column is required")
    missing = [c for c in [id_column] + columns if c not in frame.columns]
    if missing:
        raise DataError(f"{p}: missing column(s) {missing}; present: {list(frame.columns)}")
    if template is not None:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        unknown = sorted(used - set(columns))
        if unknown:
            raise DataError(f"template: field(s) {unknown} are not among the text columns {columns}")
    out: Dict[int, Optional[str]] = {}
    # Header is line 1 for CSV; data rows start at line 2.
    offset = 1 if p.suffix.lower() == ".parquet" or p.suffix.lower() in (".jsonl", ".json") else 2
    ids: List[str] = frame[id_column].tolist()
    for row, raw_id in enumerate(ids):
        try:
            item = int(str(raw_id).strip())
        except ValueError:
            raise DataError(f"{p}: row {row + offset}: column '{id_column}': {raw_id!r} is not an integer id") from None
        if item < 0:
            raise DataError(f"{p}: row {row + offset}: column '{id_column}': id {item} is negative")
        if item in out:
            raise DataError(f"{p}: row {row + offset}: column '{id_column}': duplicate id {item}")
        values = {c: str(frame[c].iloc[row]).strip() for c in columns}
        if not any(values.values()):
            out[item] = None
        elif template is None:
            out[item] = ". ".join(v for v in values.values() if v)
        else:
            out[item] = template.format(**values)
    return out
