"""Small shared helpers: atomic file writes and JSON output (valid JSON: undefined numbers as ``null``)."""

from __future__ import annotations

import json
import math
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

PathLike = Union[str, Path]


def _create_beside(target: Path) -> Path:
    """Creates a new empty file with a unique hidden name beside ``target`` and returns its path.

    ``O_CREAT | O_EXCL`` with mode 0666 gives the file the permissions a plain ``open(path, "w")``
    would (0666 minus the process umask), unlike ``tempfile.mkstemp``'s fixed 0600, so the renamed
    result is as readable to teammates as any other file the user writes; it also never reads or
    changes the umask, which is process-wide and would race with other threads.
    """
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{target}: could not create a unique temporary file beside it")


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it over ``path`` only if the block succeeds.

    Readers never see a half-written file: either the old content or the complete new one. The
    result has the mode a plain ``open()`` would give it (0666 & ~umask: 0644 under umask 022).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_beside(target)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_path`), fsynced before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` as UTF-8, atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_ready(obj: Any) -> Any:
    """``obj`` with every float that is not finite (NaN, an undefined metric such as the AUC of a
    one-class split; +-inf) replaced by None, through nested dicts, lists and tuples (as lists).
    JSON has no NaN: Python's ``json`` would write a bare ``NaN`` that strict readers (``jq``,
    JavaScript, most other languages) refuse; ``null`` is what every reader takes."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def json_text(obj: Any, indent: Optional[int] = 2) -> str:
    """``obj`` as valid JSON text (see :func:`json_ready`: undefined numbers are ``null``), indented by
    ``indent`` (None: one line). Raises TypeError for a value JSON cannot hold."""
    return json.dumps(json_ready(obj), indent=indent, sort_keys=False, allow_nan=False)


def write_json(path: PathLike, obj: Any) -> None:
    """Writes ``obj`` to ``path`` as indented JSON with a final newline, atomically; the one writer of
    every JSON file the package makes, so each is valid JSON (:func:`json_text`: NaN as ``null``)."""
    atomic_write_text(path, json_text(obj) + "\n")
