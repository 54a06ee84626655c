"""Where every CSV record starts and how many fields it has, read beside pandas' fast C parser.

pandas reads only the spec's columns and so cannot report a row with a field too many (the rest
is cut off, shifting nothing it reads but hiding a broken row) or too few (padded with empty
cells), and its row numbers skip blank lines and lines inside quoted cells. This module walks the
same file once more, in step with pandas' chunks, and gives each data record its real 1-based file
line and its field count.

Two ways of walking, chosen per block of the file:

* bytes: for files in an ASCII-compatible encoding with ``\\n`` (or ``\\r\\n``) line ends, records
  end at line ends and fields at separators that are not inside quotes (an odd number of quote
  characters before them), counted with numpy: about a tenth of pandas' own reading time. This
  holds while every quote character opens or closes a field or is doubled inside one;
* the :mod:`csv` module from the first block where that fails (a quote inside an unquoted cell,
  an opening quote after a space, a bare ``\\r`` line end) on: it follows quoting as pandas' C
  parser does, at about the speed of pandas itself.

Both skip the lines pandas skips: empty lines and lines of only spaces and tabs (unless the
separator is one of those).

Example::

    header = read_header("data.csv", CsvOptions())     # names, header line, expected field count
    records = RecordIndex("data.csv", CsvOptions(), skip=1)
    lines, fields = records.take(200_000)              # one pandas chunk's rows
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.spec.sections import CsvOptions

# pandas' default quote character (the spec has no option for another one).
QUOTE = '"'
# Encodings in which the separator, quote and line-end bytes are single ASCII bytes that never occur
# inside another character, so bytes can be counted without decoding.
_BYTE_SAFE = {"utf-8", "utf-8-sig", "ascii", "latin-1", "iso8859-1", "cp1252", "iso8859-15"}
_BLOCK = 1 << 20
# Records handed over per batch by the csv-module walk.
_BATCH = 1 << 16


@dataclass
class Header:
    """The columns of a CSV file: ``names`` (from its header row, or ``csv.names``), the 1-based
    ``line`` of the header row (0 without one) and ``fields``, the field count every record must have."""

    names: List[str]
    line: int
    fields: int


def decode_error(path: str, encoding: str) -> DataError:
    """A DataError naming the file line and byte offset of the first byte sequence of ``path`` that
    is not valid ``encoding`` (called after a UnicodeDecodeError, so the file is read only then)."""
    offset, line, pending = 0, 1, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(_BLOCK)
            buf = pending + block
            try:
                buf.decode(encoding)
                pending = b""
            except UnicodeDecodeError as e:
                # A character cut at the block's end is completed by the next block.
                if block and e.end == len(buf) and len(buf) - e.start < 4:
                    pending = buf[e.start:]
                    buf = buf[: e.start]
                else:
                    at = offset + e.start
                    line += buf[: e.start].count(b"\n")
                    return DataError(
                        f"{path} line {line}: not valid {encoding} text at byte offset {at} "
                        f"(byte 0x{buf[e.start]:02x}); set csv.encoding to the file's encoding (e.g. latin-1)"
                    )
            line += buf.count(b"\n")
            offset += len(buf)
            if not block:
                return DataError(f"{path}: not valid {encoding} text")


def _blank(line: str, separator: str) -> bool:
    """Whether pandas' C parser skips ``line`` as blank: empty or only spaces/tabs (that are not the separator)."""
    ws = "".join(c for c in " \t\r\n" if c != separator)
    return line.strip(ws) == ""


def csv_records(text: io.TextIOBase, o: CsvOptions, first_line: int = 1) -> Iterator[Tuple[int, List[str]]]:
    """(file line, fields) of each record of ``text`` (which starts on line ``first_line``), parsed
    by the csv module as pandas' C parser does with the spec's options; blank lines are skipped.
    Raises csv.Error for malformed quoting and UnicodeDecodeError for undecodable text."""
    last = [""]

    def lines() -> Iterator[str]:
        for ln in text:
            last[0] = ln
            yield ln

    reader = csv.reader(lines(), delimiter=o.separator, quotechar=QUOTE, doublequote=True,
                        skipinitialspace=o.skip_initial_space, strict=False)
    before = 0
    for row in reader:
        one_line = reader.line_num == before + 1
        if row and not (len(row) == 1 and one_line and _blank(last[0], o.separator)):
            yield first_line + before, row
        before = reader.line_num


def read_header(path: str, o: CsvOptions) -> Optional[Header]:
    """The columns of ``path``: its first non-blank record (the header row with ``csv.header``,
    else the first data row, whose field count must equal ``len(csv.names)``). None for a file with
    no record at all. Raises DataError for text that is not valid ``csv.encoding`` or malformed
    quoting, ConfigError when ``csv.names`` does not match the first record's field count.
    """
    try:
        with open(path, encoding=o.encoding, newline="") as text:
            first = next(csv_records(text, o), None)
    except UnicodeDecodeError:
        raise decode_error(path, o.encoding) from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV in the first record: {e}") from None
    if first is None:
        return None
    line, row = first
    if row[0].startswith("\ufeff"):
        # A UTF-8 byte order mark is not part of the first name (pandas drops it too).
        row[0] = row[0][1:]
    if o.header:
        return Header(names=row, line=line, fields=len(row))
    names = list(o.names or [])
    if len(names) != len(row):
        word = "few" if len(names) < len(row) else "many"
        raise ConfigError(f"csv.names: too {word} names ({len(names)}) for {path}, whose line {line} has "
                          f"{len(row)} fields")
    return Header(names=names, line=0, fields=len(names))


def _quotes_at_field_edges(a: np.ndarray, quotes: np.ndarray, sep: int) -> bool:
    """Whether every quote character (positions ``quotes`` in ``a``, which starts outside quotes)
    opens a field (after a separator or a line end), closes one (before a separator or a line end)
    or is doubled inside a quoted field: then a separator or line end lies inside quotes exactly
    when an odd number of quotes precedes it, as pandas' C parser reads it."""
    opens, closes = quotes[0::2], quotes[1::2]
    ok = (opens == 0) | np.isin(a[np.maximum(opens - 1, 0)], [sep, 10, 13])
    ok[1:] |= opens[1:] == closes[: len(opens) - 1] + 1  # "" inside a quoted field
    after = np.minimum(closes + 1, len(a) - 1)
    ok_close = (closes + 1 == len(a)) | np.isin(a[after], [sep, 10, 13, ord(QUOTE)])
    return bool(ok.all() and ok_close.all())


class RecordIndex:
    """The (file line, field count) of each data record of a CSV file, in file order.

    ``skip`` records (the header row) are passed over first; ``expected`` (the header's field count)
    only speeds up the common case. :meth:`take` hands over the next ``n``
    records, as pandas' next chunk holds them; :meth:`left` says whether any record is left. Raises
    DataError for text that is not valid ``csv.encoding``.
    """

    def __init__(self, path: str, o: CsvOptions, skip: int = 0, expected: int = 0) -> None:
        self.path = path
        self.options = o
        self.expected = expected
        self._parts = self._walk()
        self._lines: List[np.ndarray] = []
        self._fields: List[np.ndarray] = []
        self._held = 0
        self._skip = skip

    def take(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """(lines, field counts) of the next ``n`` records, int64 arrays; shorter only at the file's end."""
        while self._held < n + self._skip and self._pull():
            pass
        if self._skip:
            self._drop(self._skip)
            self._skip = 0
        n = min(n, self._held)
        if not self._lines:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        lines = np.concatenate(self._lines) if len(self._lines) != 1 else self._lines[0]
        fields = np.concatenate(self._fields) if len(self._fields) != 1 else self._fields[0]
        self._lines, self._fields = [lines[n:]], [fields[n:]]
        self._held -= n
        return lines[:n], fields[:n]

    def left(self) -> bool:
        """Whether records are left after those taken (and after the skipped ones)."""
        while self._held <= self._skip and self._pull():
            pass
        return self._held > self._skip

    def _drop(self, n: int) -> None:
        if not self._lines:
            return
        lines, fields = np.concatenate(self._lines), np.concatenate(self._fields)
        self._lines, self._fields = [lines[n:]], [fields[n:]]
        self._held -= min(n, len(lines))

    def _pull(self) -> bool:
        part = next(self._parts, None)
        if part is None:
            return False
        self._lines.append(part[0])
        self._fields.append(part[1])
        self._held += len(part[0])
        return True

    def _walk(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        o = self.options
        try:
            name = codecs.lookup(o.encoding).name
        except LookupError:
            name = ""
        start, first_line = 0, 1
        if name in _BYTE_SAFE and len(o.separator) == 1 and ord(o.separator) < 128:
            start, first_line = yield from self._walk_bytes()
            if start < 0:
                return
        yield from self._walk_csv(start, first_line)

    def _walk_bytes(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Counts records and separators block by block; returns (-1, 0) at the end of the file, or
        (byte offset, line) of the first record of a block the csv module has to read instead."""
        offset, line, rest = 0, 1, b""
        with open(self.path, "rb") as f:
            while True:
                block = f.read(_BLOCK)
                buf = rest + block
                if not buf:
                    return -1, 0
                end = buf.rfind(b"\n") + 1 if block else len(buf)
                part = buf[:end]
                if b"\r" in part and part.count(b"\r") != part.count(b"\r\n"):
                    return offset, line  # a bare \r ends a line for pandas
                found = self._block_records(part, at_end=not block) if part else None
                if found is None and (not block or part):
                    return offset, line
                used = 0
                if found is not None:
                    numbers, fields, used, lines = found
                    if len(numbers):
                        yield numbers + line, fields
                    offset += used
                    line += lines
                rest = buf[used:]
                if not block:
                    return (-1, 0) if not rest else (offset, line)

    def _block_records(self, part: bytes, at_end: bool) -> Optional[Tuple[np.ndarray, np.ndarray, int, int]]:
        """The records of ``part`` (bytes from a record start to a line end, or to the file's end
        when ``at_end``) that end in it: (line offsets, field counts, bytes used, lines used).
        None when its quote characters are not all at the start or end of a field: pandas then
        reads them as text, which only the csv module follows."""
        sep = ord(self.options.separator)
        a = np.frombuffer(part, dtype=np.uint8)
        newlines = np.flatnonzero(a == 10)
        ends = newlines if not at_end or (len(a) and a[-1] == 10) else np.append(newlines, len(a))
        seps = np.flatnonzero(a == sep)
        is_quote = a == ord(QUOTE)
        quotes = np.flatnonzero(is_quote)
        if len(quotes):
            if not _quotes_at_field_edges(a, quotes, sep) or (at_end and len(quotes) % 2):
                return None
            # Quoted separators and line ends (an odd number of quotes before them) are text.
            # Only the parity counts, and 256 is even: a wrapping uint8 count is exact and cheapest.
            before = np.cumsum(is_quote, dtype=np.uint8)
            ends = ends[(before[np.minimum(ends, len(a) - 1)] & 1) == 0]
            seps = seps[(before[seps] & 1) == 0]
        if len(ends) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0, 0
        used = int(ends[-1]) + 1 if ends[-1] < len(a) else len(a)
        seps = seps[seps < used]
        starts = np.concatenate(([0], ends[:-1] + 1))
        fields = self._line_fields(seps, ends)
        ws = [b for b in (32, 9) if b != sep]
        blank = (fields == 1) & self._blank_lines(a, starts, ends, fields == 1, ws)
        numbers = np.searchsorted(newlines, starts).astype(np.int64)
        lines = int(np.searchsorted(newlines, used))
        return numbers[~blank], fields[~blank].astype(np.int64), used, lines

    def _line_fields(self, seps: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Fields per line: separators (positions ``seps``) before each line end ``ends``, plus one."""
        n, per = len(ends), self.expected - 1
        if per > 0 and len(seps) == per * n:
            # The common case, checked in linear time: every line holds exactly ``per`` separators.
            grid = seps.reshape(n, per)
            if (grid[:, -1] < ends).all() and (grid[1:, 0] > ends[:-1]).all():
                return np.full(n, self.expected, dtype=np.int64)
        return np.diff(np.searchsorted(seps, ends), prepend=0) + 1

    @staticmethod
    def _blank_lines(a: np.ndarray, starts: np.ndarray, ends: np.ndarray, single: np.ndarray,
                     ws: List[int]) -> np.ndarray:
        """Of the lines ``[starts, ends)`` of ``a`` with one field (``single``), those holding only
        whitespace bytes ``ws`` and ``\\r``, which pandas skips."""
        out = np.zeros(len(starts), dtype=bool)
        if not single.any():
            return out
        content = np.ones(len(a), dtype=bool)
        for b in (*ws, 13, 10):
            content &= a != b
        before = np.zeros(len(a) + 1, dtype=np.int32)
        np.cumsum(content, out=before[1:])
        out[single] = (before[ends] - before[starts])[single] == 0
        return out

    def _walk_csv(self, start: int, first_line: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Parses from byte ``start`` (a line start, on file line ``first_line``) with the csv module."""
        o = self.options
        lines: List[int] = []
        fields: List[int] = []
        try:
            with open(self.path, "rb") as raw:
                raw.seek(start)
                text = io.TextIOWrapper(raw, encoding=o.encoding, newline="")
                for line, row in csv_records(text, o, first_line):
                    lines.append(line)
                    fields.append(len(row))
                    if len(lines) == _BATCH:
                        yield np.array(lines, dtype=np.int64), np.array(fields, dtype=np.int64)
                        lines, fields = [], []
        except UnicodeDecodeError:
            raise decode_error(self.path, o.encoding) from None
        except csv.Error as e:
            at = f" line {lines[-1]}" if lines else ""
            raise DataError(f"{self.path}: malformed CSV after{at}: {e}") from None
        if lines:
            yield np.array(lines, dtype=np.int64), np.array(fields, dtype=np.int64)
