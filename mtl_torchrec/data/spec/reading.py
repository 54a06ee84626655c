"""Reading a spec's files: glob expansion, format detection, and CSV/Parquet read in chunks of
``chunk_rows`` rows with the position of each chunk for error messages."""

from __future__ import annotations

import glob as globlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pandas as pd

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.spec.data_spec import DataSpec
from mtl_torchrec.data.spec.sections import SPLITS


@dataclass
class Chunk:
    """Up to ``chunk_rows`` rows of one file (only the spec's columns, CSV cells as strings)."""

    frame: pd.DataFrame
    file: str
    # File line (CSV, 1-based) or row (Parquet, 0-based) of the chunk's first row.
    first_line: int
    line_word: str
    # Position of the chunk's first row among all rows of all files (for row-hash splits).
    global_start: int
    # Split of every row of the file, when files are given per split.
    file_split: Optional[str]

    def where(self, i: int) -> str:
        """``"<file> line <n>"`` (or ``row``) of the chunk's ``i``-th row."""
        return f"{self.file} {self.line_word} {self.first_line + i}"


def expand_pattern(spec: DataSpec, pattern: str) -> List[str]:
    """The sorted files matching ``pattern`` (relative to the spec's folder); raises
    FileNotFoundError naming the pattern when nothing matches."""
    full = pattern if Path(pattern).is_absolute() else str(Path(spec.base_dir) / pattern)
    found = sorted(globlib.glob(full))
    if not found:
        raise FileNotFoundError(f"data spec files: nothing matches '{pattern}' (looked for {full})")
    return found


def spec_files(spec: DataSpec) -> List[Tuple[str, Optional[str]]]:
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


def file_format(spec: DataSpec, path: str) -> str:
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


def iter_chunks(spec: DataSpec) -> Iterator[Chunk]:
    """Chunks of the spec's columns from every file, with positions for error messages.

    Raises FileNotFoundError (a pattern matches nothing), ConfigError (unknown format, CSV header
    options that contradict) or DataError (a file lacks a column, unreadable or malformed CSV),
    each when reading reaches that file.
    """
    columns = spec.raw_columns()
    global_start = 0
    for path, split in spec_files(spec):
        if file_format(spec, path) == "parquet":
            frames, word = _parquet_frames(spec, path, columns), "row"
        else:
            frames, word = _csv_frames(spec, path, columns), "line"
        for frame, first_line in frames:
            yield Chunk(frame, path, first_line, word, global_start, split)
            global_start += len(frame)


def _parquet_frames(spec: DataSpec, path: str, columns: List[str]) -> Iterator[Tuple[pd.DataFrame, int]]:
    """(frame, 0-based row of its first row) of a Parquet file."""
    # Imported here so that CSV-only use never pays for loading pyarrow.
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    have = set(pf.schema_arrow.names)
    missing = [c for c in columns if c not in have]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; present: {sorted(have)}")
    row = 0
    for rb in pf.iter_batches(batch_size=spec.chunk_rows, columns=columns):
        frame = rb.to_pandas()
        yield frame, row
        row += len(frame)


def _csv_frames(spec: DataSpec, path: str, columns: List[str]) -> Iterator[Tuple[pd.DataFrame, int]]:
    """(frame of strings, 1-based file line of its first row) of a CSV file."""
    o = spec.csv
    if o.header and o.names:
        raise ConfigError("csv.names: only for files without a header row (csv.header: false)")
    if not o.header and not o.names:
        raise ConfigError("csv.names: required when csv.header is false")
    try:
        header = pd.read_csv(
            path, sep=o.separator, nrows=0, header=0 if o.header else None, names=o.names,
            encoding=o.encoding, skipinitialspace=o.skip_initial_space,
        )
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: cannot read the CSV header: {e}") from None
    have = [str(c) for c in header.columns]
    missing = [c for c in columns if c not in have]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; present: {have}")
    reader = pd.read_csv(
        path, sep=o.separator, header=0 if o.header else None, names=o.names, usecols=columns,
        dtype=str, keep_default_na=False, na_values=o.na_values, chunksize=spec.chunk_rows,
        encoding=o.encoding, skipinitialspace=o.skip_initial_space,
    )
    # Line numbers assume one line per record (no newlines inside quoted cells).
    line = 2 if o.header else 1
    try:
        for frame in reader:
            yield frame, line
            line += len(frame)
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: malformed CSV: {e}") from None
