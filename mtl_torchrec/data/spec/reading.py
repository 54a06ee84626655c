"""Reading a spec's files: glob expansion, format detection, and CSV/Parquet read in chunks of
``chunk_rows`` rows with the position of each chunk for error messages."""

from __future__ import annotations

import glob as globlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.spec.records import RecordIndex, decode_error, read_header
from mtl_torchrec.data.spec.sections import SPLITS
from mtl_torchrec.data.spec.view import SpecView


@dataclass
class Chunk:
    """Up to ``chunk_rows`` rows of one file (only the spec's columns, CSV cells as strings).

    ``positions`` holds each row's place in its file for messages: the 1-based file line of a CSV
    record (blank lines and lines inside quoted cells counted), the 0-based row of a Parquet file.
    For CSV, ``fields`` holds each record's field count and ``expected_fields`` the count of the
    header (or of ``csv.names``); rows with another count are bad rows.
    """

    frame: pd.DataFrame
    file: str
    positions: np.ndarray
    line_word: str
    # Position of the chunk's first row among all rows of all files (for row-hash splits).
    global_start: int
    # Split of every row of the file, when files are given per split.
    file_split: Optional[str]
    fields: Optional[np.ndarray] = None
    expected_fields: int = 0

    def where(self, i: int) -> str:
        """``"<file> line <n>"`` (CSV) or ``"<file> row <n>"`` (Parquet) of the chunk's ``i``-th row."""
        return f"{self.file} {self.line_word} {int(self.positions[i])}"


def expand_pattern(spec: SpecView, pattern: str) -> List[str]:
    """The sorted files matching ``pattern`` (relative to the spec's folder); raises
    FileNotFoundError naming the pattern when nothing matches."""
    full = pattern if Path(pattern).is_absolute() else str(Path(spec.base_dir) / pattern)
    found = sorted(globlib.glob(full))
    if not found:
        raise FileNotFoundError(f"data spec files: nothing matches '{pattern}' (looked for {full})")
    return found


def spec_files(spec: SpecView) -> List[Tuple[str, Optional[str]]]:
    """(path, split or None) for every data file, in reading order (per-split files: train, val, test)."""
    if isinstance(spec.files, dict):
        out = []
        for split in SPLITS:
            pats = spec.files.get(split)
            for pat in [pats] if isinstance(pats, str) else (pats or []):
                out += [(f, split) for f in expand_pattern(spec, pat)]
        return out
    pats = [spec.files] if isinstance(spec.files, str) else spec.files
    return [(f, None) for pat in pats for f in expand_pattern(spec, pat)]


def file_format(spec: SpecView, path: str) -> str:
    """``csv`` or ``parquet``: the spec's ``format``, else from the file name; raises ConfigError
    when the name does not tell."""
    if spec.format:
        return spec.format
    low = path.lower()
    if low.endswith((".parquet", ".pq")):
        return "parquet"
    if low.endswith((".csv", ".tsv", ".txt", ".data", ".test", ".csv.gz", ".gz")):
        return "csv"
    raise ConfigError(f"format: cannot tell the format of '{path}' from its name; set format: csv or parquet")


def iter_chunks(spec: SpecView) -> Iterator[Chunk]:
    """Chunks of the spec's columns from every file, with positions for error messages.

    Raises FileNotFoundError (a pattern matches nothing), ConfigError (unknown format, ``csv.names``
    that do not fit the file) or DataError (a file without data rows, a header that lacks a spec
    column or repeats one, text that is not valid ``csv.encoding``, malformed CSV), each when
    reading reaches that file.
    """
    columns = spec.raw_columns()
    global_start = 0
    for path, split in spec_files(spec):
        if file_format(spec, path) == "parquet":
            chunks = _parquet_chunks(spec, path, columns)
        else:
            chunks = _csv_chunks(spec, path, columns)
        for chunk in chunks:
            chunk.global_start, chunk.file_split = global_start, split
            yield chunk
            global_start += len(chunk.frame)


def file_chunks(spec: SpecView, path: str, global_start: int, split: Optional[str]) -> Iterator[Chunk]:
    """The chunks of one file as :func:`iter_chunks` gives them, its first row at ``global_start``
    among all rows of all files, ``split`` its per-split file split (for reading one file again)."""
    columns = spec.raw_columns()
    chunks = _parquet_chunks(spec, path, columns) if file_format(spec, path) == "parquet" else _csv_chunks(
        spec, path, columns)
    for chunk in chunks:
        chunk.global_start, chunk.file_split = global_start, split
        yield chunk
        global_start += len(chunk.frame)


def parquet_row_group_chunks(spec: SpecView, path: str, row_group: int, global_start: int,
                             split: Optional[str]) -> Iterator[Chunk]:
    """The chunks (``chunk_rows`` rows at most) of one row group of a Parquet file, positioned by the
    file's 0-based row, the row group's first row at ``global_start`` among all rows of all files.
    Raises DataError naming the file for a missing column, a row group the file does not have (it
    changed), or one that cannot be decoded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = spec.raw_columns()
    pf = pq.ParquetFile(path)
    have = list(pf.schema_arrow.names)
    if any(c not in have for c in columns):
        raise _missing_columns(spec, path, "its schema", columns, have)
    meta = pf.metadata
    if row_group >= meta.num_row_groups:
        raise DataError(f"{path}: has {meta.num_row_groups} row group(s), the run was fitted on one with row group "
                        f"{row_group}: the file changed since")
    first = sum(meta.row_group(i).num_rows for i in range(row_group))
    try:
        batches = list(pf.iter_batches(batch_size=spec.chunk_rows, row_groups=[row_group], columns=columns))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: row group {row_group} cannot be decoded ({type(e).__name__}: {e})") from None
    row = first
    for rb in batches:
        frame = rb.to_pandas()
        yield Chunk(frame, path, np.arange(row, row + len(frame)), "row", global_start + row - first, split)
        row += len(frame)


def _missing_columns(spec: SpecView, path: str, where: str, columns: List[str], have: List[str]) -> DataError:
    """The error for spec ``columns`` absent from a file, each named with the spec key that reads it."""
    keys = spec.column_keys()
    missing = [c for c in columns if c not in set(have)]
    named = ", ".join(f"{keys[c]}: '{c}'" for c in missing)
    return DataError(f"{path}: missing column(s) {missing} ({named}); {where} has {have}")


def _parquet_chunks(spec: SpecView, path: str, columns: List[str]) -> Iterator[Chunk]:
    """Chunks of a Parquet file, positioned by 0-based row; DataError for a missing column or no rows."""
    # Imported here so that CSV-only use never pays for loading pyarrow.
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    have = list(pf.schema_arrow.names)
    if any(c not in have for c in columns):
        raise _missing_columns(spec, path, "its schema", columns, have)
    if pf.metadata.num_rows == 0:
        raise DataError(f"{path}: no rows")
    row = 0
    for rb in pf.iter_batches(batch_size=spec.chunk_rows, columns=columns):
        frame = rb.to_pandas()
        yield Chunk(frame, path, np.arange(row, row + len(frame)), "row", 0, None)
        row += len(frame)


def _csv_chunks(spec: SpecView, path: str, columns: List[str]) -> Iterator[Chunk]:
    """Chunks of a CSV file read by pandas' C parser (cells as strings), each record with its file
    line and field count from a :class:`RecordIndex` walked in step."""
    o = spec.csv
    header = read_header(path, o)
    if header is None:
        raise DataError(f"{path}: the file is empty (no header and no rows)")
    where = f"the header (line {header.line})" if o.header else "csv.names"
    position: Dict[str, int] = {}
    for i, name in enumerate(header.names):
        if name in columns and name in position:
            key = spec.column_keys()[name]
            raise DataError(f"{path} line {header.line}: column '{name}' ({key}) appears twice in the header, "
                            f"as fields {position[name] + 1} and {i + 1}; rename one")
        position.setdefault(name, i)
    if any(c not in position for c in columns):
        raise _missing_columns(spec, path, where, columns, header.names)
    # Columns by position, not by name: pandas would rename repeated header names ("a" -> "a.1").
    wanted = sorted({position[c] for c in columns})
    reader = pd.read_csv(
        path, sep=o.separator, header=0 if o.header else None, names=[str(i) for i in range(header.fields)],
        usecols=wanted, dtype=str, keep_default_na=False, na_values=o.na_values, chunksize=spec.chunk_rows,
        encoding=o.encoding, skipinitialspace=o.skip_initial_space, index_col=False,
    )
    records = RecordIndex(path, o, skip=1 if o.header else 0, expected=header.fields)
    rename = {str(i): header.names[i] for i in wanted}
    rows = 0
    try:
        for frame in reader:
            lines, fields = records.take(len(frame))
            if len(lines) != len(frame):
                raise _unaligned(path, rows + len(lines), rows + len(frame))
            rows += len(frame)
            yield Chunk(frame.rename(columns=rename), path, lines, "line", 0, None, fields, header.fields)
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: malformed CSV: {e}") from None
    except UnicodeDecodeError:
        raise decode_error(path, o.encoding) from None
    if records.left():
        raise _unaligned(path, rows + 1, rows)
    if rows == 0:
        raise DataError(f"{path}: no data rows (only {'a header' if o.header else 'blank lines'})")


def _unaligned(path: str, walked: int, parsed: int) -> DataError:
    """pandas and the record walk disagree on where records end (unusual quoting): refuse rather
    than report wrong line numbers."""
    return DataError(f"{path}: malformed CSV: the parser found {parsed} records where a line-by-line "
                     f"reading finds {walked}; check quote characters in the file")
