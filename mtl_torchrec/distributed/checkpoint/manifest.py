"""The checkpoint manifest: size and sha256 of every file of a checkpoint folder.

Each rank hashes the files it wrote; rank 0 writes ``manifest.json`` last (before the folder is
renamed into place). Loading verifies the manifest first: rank 0 hashes, every rank gets the
verdict (:func:`verify_collective`), and any damaged or missing file is named. A checkpoint written
before manifests existed loads with a one-line warning.

Example::

    write_manifest(ckpt)            # hashes every file of the folder now
    verify_checkpoint(ckpt)         # True; CheckpointError naming a damaged or missing file
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

from mtl_torchrec.core.errors import CheckpointError
from mtl_torchrec.core.io import write_json
from mtl_torchrec.distributed.checkpoint.safe_load import read_json_file
from mtl_torchrec.distributed.collective import broadcast_from_main, rank

META = "meta.json"
MANIFEST = "manifest.json"
# The file DCP's coordinator (rank 0) writes its pickled Metadata to.
DCP_METADATA = ".metadata"
MANIFEST_FORMAT = "mtl_torchrec checkpoint manifest"
MANIFEST_VERSION = 1

_log = logging.getLogger(__name__)


def _sha256(path: Path) -> Dict[str, Any]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)  # releases the GIL: files hash in parallel threads
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


def hash_files(root: Path, names: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """``{name: {"bytes", "sha256"}}`` of files under ``root`` (POSIX relative names), hashed by a
    few threads."""
    names = sorted(set(names))
    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1, 8)) as pool:
        digests = list(pool.map(lambda n: _sha256(root / n), names))
    return dict(zip(names, digests))


def write_manifest(path: Union[str, Path], files: Optional[Dict[str, Dict[str, Any]]] = None) -> None:
    """Writes ``path/manifest.json``; ``files`` as from :func:`hash_files`, by default every file
    of the folder (except the manifest) hashed now."""
    path = Path(path)
    if files is None:
        names = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != MANIFEST]
        files = hash_files(path, names)
    write_json(path / MANIFEST, {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "algorithm": "sha256",
                                 "files": dict(sorted(files.items()))})


def _manifest_entries(path: Path) -> Dict[str, Dict[str, Any]]:
    manifest_file = path / MANIFEST
    manifest = read_json_file(manifest_file, "checkpoint manifest")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
        raise CheckpointError(f"{manifest_file}: not a checkpoint manifest (no '{MANIFEST_FORMAT}' format and file list)")
    if manifest.get("version") != MANIFEST_VERSION or manifest.get("algorithm") != "sha256":
        raise CheckpointError(f"{manifest_file}: manifest version {manifest.get('version')} / "
                              f"{manifest.get('algorithm')} is not supported (this version reads {MANIFEST_VERSION} / sha256)")
    for name, entry in files.items():
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts or name == MANIFEST:
            raise CheckpointError(f"{manifest_file}: lists '{name}', which is not a file of the checkpoint folder")
        if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)):
            raise CheckpointError(f"{manifest_file}: entry '{name}' lacks its bytes and sha256")
    for required in (META, DCP_METADATA):
        if required not in files:
            raise CheckpointError(f"{manifest_file}: does not list {required}")
    return files


def verify_checkpoint(path: Union[str, Path]) -> bool:
    """Checks every file that ``path/manifest.json`` lists: present, of its size and sha256.

    Returns False (checks nothing) for a checkpoint written before manifests existed. Raises
    :class:`CheckpointError` naming each missing or damaged file (or a garbled manifest). Files
    the manifest does not list are never read by :func:`load_checkpoint`.
    """
    path = Path(path)
    if not (path / MANIFEST).exists():
        return False
    files = _manifest_entries(path)
    problems: List[str] = []
    present: List[str] = []
    for name, entry in files.items():
        f = path / name
        if not f.is_file():
            problems.append(f"missing file {f}")
        elif f.stat().st_size != entry["bytes"]:
            problems.append(f"damaged file {f} ({f.stat().st_size} bytes, the manifest says {entry['bytes']})")
        else:
            present.append(name)
    try:
        digests = hash_files(path, present)
    except OSError as e:
        raise CheckpointError(f"{e.filename}: cannot be read: {e.strerror or e}") from None
    for name in present:
        if digests[name]["sha256"] != files[name]["sha256"]:
            problems.append(f"damaged file {path / name} (its sha256 differs from {MANIFEST})")
    if problems:
        shown = problems[:5] + ([f"and {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise CheckpointError(f"{path}: checkpoint is damaged: " + "; ".join(shown))
    return True


def verify_collective(path: Path) -> None:
    """Rank 0 verifies ``path`` against its manifest and every rank raises the same
    :class:`CheckpointError` if it fails (so files are hashed once, not once per rank)."""
    error: Optional[str] = None
    if rank() == 0:
        try:
            if not verify_checkpoint(path):
                _log.warning("%s: no %s (written before checkpoints had checksums): its files are not verified",
                             path, MANIFEST)
        except CheckpointError as e:
            error = str(e)
    error = broadcast_from_main(error)
    if error is not None:
        raise CheckpointError(error)
