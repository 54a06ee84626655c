"""Where a run directory keeps its checkpoints, and which one a name or pointer means.

``run_dir/checkpoints/step_NNNNNN/`` are complete checkpoints; ``latest`` and ``best`` are text
files naming one (replaced atomically); ``.tmp-step_N`` folders are saves in progress, never
pointed at. A pointer holds one ``step_NNNNNN`` line, never a path, so it cannot point outside
``checkpoints/``.

Example::

    ckpt = latest_checkpoint(run_dir)                 # run_dir/checkpoints/step_000120, or None
    ckpt = choose_checkpoint(run_dir, "best")         # FileNotFoundError naming what there is
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from mtl_torchrec.core.errors import CheckpointError
from mtl_torchrec.core.io import atomic_write_text
from mtl_torchrec.distributed.checkpoint.manifest import META
from mtl_torchrec.distributed.checkpoint.safe_load import one_line, read_json_file

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"

_log = logging.getLogger(__name__)
_STEP_NAME = re.compile(r"step_(\d{6,})")


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a complete checkpoint folder (it has ``meta.json``, written last but
    for the manifest, which the rename waits for)."""
    return (Path(path) / META).is_file()


def step_name(step: int) -> str:
    """The folder name of the checkpoint at ``step``: ``step_000123``."""
    return f"step_{step:06d}"


def list_checkpoints(run_dir: Union[str, Path]) -> List[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_NAME.fullmatch(p.name) and p.is_dir() and is_checkpoint(p)]
    return sorted(found, key=lambda p: int(p.name.split("_", 1)[1]))


def _read_pointer(pointer: Path) -> str:
    """The checkpoint name in ``latest``: a CheckpointError naming the file unless it is one
    ``step_NNNNNN`` line (never a path, so it cannot point outside ``checkpoints/``)."""
    try:
        raw = pointer.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{pointer}: cannot be read ({e.strerror or e}); delete it to use the newest complete "
                              "checkpoint") from None
    name = raw.decode("utf-8", errors="replace").strip()
    if not _STEP_NAME.fullmatch(name):
        raise CheckpointError(f"{pointer}: garbled: holds {one_line(name[:60])!r}, not a checkpoint name such as "
                              f"'{step_name(120)}'; fix it or delete it to use the newest complete checkpoint")
    return name


def latest_checkpoint(run_dir: Union[str, Path]) -> Optional[Path]:
    """The checkpoint that ``run_dir/checkpoints/latest`` names, or None when the run has none.

    A ``latest`` that cannot be read or does not hold a checkpoint name is a
    :class:`CheckpointError` naming it. One that names a checkpoint which is gone (deleted by
    hand, or a crash while the same step was saved again) falls back to the newest complete
    checkpoint, with a warning.
    """
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    named: Optional[Path] = None
    if pointer.exists() or pointer.is_symlink():
        named = root / _read_pointer(pointer)
        if is_checkpoint(named):
            return named
    found = list_checkpoints(run_dir)
    if named is not None and found:
        _log.warning("%s names %s, which is not a complete checkpoint; using the newest complete one, %s",
                     pointer, named.name, found[-1].name)
    return found[-1] if found else None


def best_checkpoint(run_dir: Union[str, Path]) -> Optional[Path]:
    """The checkpoint that ``run_dir/checkpoints/best`` names (a run trained with
    ``train.select_by``), or None when there is no such pointer or it names a checkpoint that is
    gone. A garbled pointer is a :class:`CheckpointError` naming it."""
    pointer = Path(run_dir) / CHECKPOINTS / BEST
    if not (pointer.exists() or pointer.is_symlink()):
        return None
    named = pointer.parent / _read_pointer(pointer)
    return named if is_checkpoint(named) else None


def set_best_checkpoint(run_dir: Union[str, Path], step: int) -> None:
    """Points ``run_dir/checkpoints/best`` at ``step_<step>`` (atomically; rank 0 only, no collective)."""
    atomic_write_text(Path(run_dir) / CHECKPOINTS / BEST, step_name(step) + "\n")


def choose_checkpoint(run_dir: Union[str, Path], which: str) -> Path:
    """The checkpoint of a run that ``which`` names: ``latest``, ``best``, or a step (``step_120``,
    ``step_000120`` or ``120``).

    Raises FileNotFoundError naming ``which`` and the run's checkpoints when there is none such,
    :class:`CheckpointError` for a garbled pointer.
    """
    run_dir = Path(run_dir)
    available = [p.name for p in list_checkpoints(run_dir)]
    found: Optional[Path]
    if which == LATEST:
        found = latest_checkpoint(run_dir)
    elif which == BEST:
        found = best_checkpoint(run_dir)
        if found is None:
            raise FileNotFoundError(f"{run_dir}: has no best checkpoint (trained without train.select_by); "
                                    f"its checkpoints: {available}")
    else:
        digits = which[len("step_"):] if which.startswith("step_") else which
        if not digits.isdigit():
            raise FileNotFoundError(f"'{which}' is not latest, best or step_N; {run_dir} has {available}")
        found = run_dir / CHECKPOINTS / step_name(int(digits))
        found = found if is_checkpoint(found) else None
    if found is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint '{which}' (its checkpoints: {available})")
    return found


def resolve_checkpoint(path: Union[str, Path]) -> Path:
    """A checkpoint folder from a checkpoint folder, a run directory or its ``checkpoints/``.

    Raises FileNotFoundError when there is none, :class:`CheckpointError` for a garbled
    ``latest`` pointer (see :func:`latest_checkpoint`).
    """
    path = Path(path)
    if (path / META).is_file():
        return path
    run_dir = path.parent if path.name == CHECKPOINTS else path
    found = latest_checkpoint(run_dir)
    if found is None:
        raise FileNotFoundError(f"{path}: no complete checkpoint here (no {META}, no {CHECKPOINTS}/{LATEST})")
    return found


def read_checkpoint_meta(path: Path) -> Dict[str, Any]:
    """The ``meta.json`` of the checkpoint folder ``path`` as a JSON object (a CheckpointError
    naming the file otherwise); not verified against the manifest."""
    meta = read_json_file(path / META, "checkpoint meta.json")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / META}: not a checkpoint meta.json (a JSON {type(meta).__name__}, not an object)")
    return meta


def read_meta(path: Union[str, Path]) -> Dict[str, Any]:
    """The ``meta.json`` of a checkpoint (or of a run's latest), parsed as JSON only and not
    verified against the manifest (:func:`load_checkpoint` verifies)."""
    return read_checkpoint_meta(resolve_checkpoint(path))
