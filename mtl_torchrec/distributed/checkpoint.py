"""Checkpoints with ``torch.distributed.checkpoint`` (DCP).

Sharded tables are written by the ranks that own them and can be read back under another
sharding plan or rank count (DCP reshards on load). Only tensors go through DCP; every other
value (optimizer hyper-parameters, training position, the config) is plain JSON in
``meta.json``, and DCP's own ``.metadata`` file is read by an unpickler that accepts only the
exact DCP metadata classes a checkpoint holds, so loading a checkpoint never runs code from it.

Layout of a run directory::

    run_dir/
      config.yaml
      checkpoints/
        latest                  # text file: "step_000120" (replaced atomically)
        best                    # the same for the best validated checkpoint (train.select_by only)
        step_000100/            # one complete checkpoint
          .metadata, __0_0.distcp, ...   # DCP: model (incl. sharded tables) + optimizer tensors
          meta.json             # train state, world size, tables/tasks/shapes, non-tensor state
          rng/rank_00000.json   # per-rank torch/numpy/python RNG states
          manifest.json         # size and sha256 of every other file of the folder
        step_000120/
        .tmp-step_000140/       # a save in progress (or interrupted): never pointed at

A checkpoint is written under ``.tmp-step_N``; each rank hashes the files it wrote, rank 0
gathers the hashes, writes ``meta.json`` and then ``manifest.json``, renames the folder to
``step_N`` and only then moves ``latest``; so a crash at any moment leaves ``latest`` naming a
complete checkpoint, and every complete checkpoint has a manifest. Loading verifies the manifest
first (rank 0 hashes, every rank gets the verdict) and names any damaged or missing file; a
checkpoint written before manifests existed loads with a one-line warning. The newest ``keep``
checkpoints are kept, and the one ``best`` names is never deleted by that rotation.

Example::

    path = save_run_checkpoint(run_dir, step=100, model=dmp, optimizer=opt, meta={"epoch": 0})
    ckpt = latest_checkpoint(run_dir)            # run_dir/checkpoints/step_000100
    meta = load_checkpoint(ckpt, dmp, opt)       # also accepts run_dir itself
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from mtl_torchrec.core.errors import CheckpointError
from mtl_torchrec.core.io import atomic_write_text, write_json

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"
META = "meta.json"
MANIFEST = "manifest.json"
# The file DCP's coordinator (rank 0) writes its pickled Metadata to.
DCP_METADATA = ".metadata"
MANIFEST_FORMAT = "mtl_torchrec checkpoint manifest"
MANIFEST_VERSION = 1

_log = logging.getLogger(__name__)
_STEP_NAME = re.compile(r"step_(\d{6,})")


# ----------------------------------------------------------------------------- safe reading


def _dcp_metadata_class(cls: type) -> Tuple[str, str]:
    return cls.__module__, cls.__qualname__


# Every global that DCP's .metadata of this project's checkpoints asks for, recorded by saving
# checkpoints under every sharding type, optimizer, balancer and text features, on 1 and 2 ranks
# (torch 2.13), plus the dtypes a state tensor can have. Exact (module, name) pairs: pickle resolves
# dotted names through attributes, so a module prefix would admit e.g. ``os.system`` reached
# through ``torch.distributed.checkpoint.metadata.os``, or any function of a DCP module.
_ALLOWED_GLOBALS: FrozenSet[Tuple[str, str]] = frozenset(
    {
        *(
            _dcp_metadata_class(c)
            for c in (
                Metadata, MetadataIndex, StorageMeta, TensorStorageMetadata, TensorProperties,
                ChunkStorageMetadata, _StorageInfo,
                # A pickled-object entry: allowed here so that the refusal below names the entry.
                BytesStorageMetadata,
            )
        ),
        ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),  # TensorProperties' state
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),  # maps a layout name such as "torch.strided" back
        # The checkpoint id DCP records; Python 3.13 pickles paths as pathlib._local (python/cpython#133789).
        ("pathlib", "PosixPath"),
        ("pathlib._local", "PosixPath"),
        *(
            ("torch", dtype)
            for dtype in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                          "uint8", "bool")
        ),
    }
)


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` escaped onto one line and cut at ``limit`` characters (a crafted pickle's names and
    error texts end up in messages)."""
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


def _allowed_objects() -> List[Any]:
    """The allowed globals that have attributes (classes, functions): pickle's BUILD opcode can
    set attributes on any object it holds, an allowed class itself included."""
    out = []
    for module, name in sorted(_ALLOWED_GLOBALS):
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # pathlib._local before Python 3.13
            continue
        if hasattr(obj, "__dict__"):
            out.append(obj)
    return out


def _attributes(objects: List[Any]) -> Dict[int, Dict[str, Any]]:
    return {id(o): dict(vars(o)) for o in objects}


def _restore_attributes(objects: List[Any], before: Dict[int, Dict[str, Any]]) -> List[str]:
    """Puts back every attribute of ``objects`` that was rebound, added or deleted since
    ``before``; returns their names."""
    changed: List[str] = []
    for obj in objects:
        was, now = before[id(obj)], dict(vars(obj))
        for key in sorted(set(was) | set(now)):
            if key in was and key in now and now[key] is was[key]:
                continue
            changed.append(_one_line(f"{getattr(obj, '__qualname__', type(obj).__name__)}.{key}"))
            if key in was:
                setattr(obj, key, was[key])
            else:
                delattr(obj, key)
    return changed


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` of ``source``: any global but the exact pairs of
    :data:`_ALLOWED_GLOBALS`, and any dotted name, is a :class:`CheckpointError` naming the file
    and the global, raised before anything is called."""

    def __init__(self, file: Any, source: Union[str, Path]) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if "." in name or (module, name) not in _ALLOWED_GLOBALS:
            raise CheckpointError(
                f"{self.source}: refused global {_one_line(f'{module}.{name}')}: DCP metadata holds only "
                "DCP's metadata classes, so this file was not written by a checkpoint save"
            )
        return super().find_class(module, name)


def read_dcp_metadata(path: Union[str, Path]) -> Metadata:
    """DCP's ``Metadata`` from the file ``path`` through :class:`_MetadataUnpickler`.

    A refused global, a file that is not DCP metadata, a pickle that sets attributes of an
    allowed class (put back at once) or a pickled-object entry is a :class:`CheckpointError`
    naming ``path``.
    """
    objects = _allowed_objects()
    before = _attributes(objects)
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f, path).load()
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - a crafted pickle can raise anything; none of it is ours
        raise CheckpointError(f"{path}: not DCP metadata ({type(e).__name__}: {_one_line(str(e))})") from None
    finally:
        changed = _restore_attributes(objects, before)
    if changed:
        raise CheckpointError(f"{path}: refused: the pickle sets {', '.join(changed)} (put back)")
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path}: not DCP metadata (a {type(metadata).__name__})")
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, BytesStorageMetadata):
            raise CheckpointError(f"{path}: entry '{_one_line(str(fqn))}' is a pickled object; only tensors are loaded")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """DCP reader that unpickles nothing but DCP's own metadata classes (:func:`read_dcp_metadata`)
    and refuses byte items (which DCP would restore with ``torch.load(weights_only=False)``);
    tensors are read by DCP with ``weights_only=True``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """DCP's metadata, read through :func:`read_dcp_metadata` (CheckpointError for anything refused)."""
        metadata = read_dcp_metadata(self._get_metadata_path(kwargs.get("rank")))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def read_json_file(path: Union[str, Path], what: str = "file") -> Any:
    """Parses a bookkeeping JSON file (meta.json, rng, manifest) as JSON only; an unreadable or
    garbled one is a :class:`CheckpointError` naming it and saying where it breaks."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing {what}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not a valid {what} (not UTF-8 text at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not a valid {what} (JSON error at line {e.lineno} column {e.colno}: {e.msg})") from None


# ----------------------------------------------------------------------------- manifest


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


def _broadcast_error(error: Optional[str]) -> Optional[str]:
    """Rank 0's verdict to every rank (no-op without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return error


def verify_collective(path: Path) -> None:
    """Rank 0 verifies ``path`` against its manifest and every rank raises the same
    :class:`CheckpointError` if it fails (so files are hashed once, not once per rank)."""
    error: Optional[str] = None
    if _rank() == 0:
        try:
            if not verify_checkpoint(path):
                _log.warning("%s: no %s (written before checkpoints had checksums): its files are not verified",
                             path, MANIFEST)
        except CheckpointError as e:
            error = str(e)
    error = _broadcast_error(error)
    if error is not None:
        raise CheckpointError(error)


# ----------------------------------------------------------------------------- state trees


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def split_state(tree: Any) -> Tuple[Any, Any]:
    """Splits a nested dict into (tensors only, JSON-able rest); lists/tuples are JSON leaves."""
    if isinstance(tree, dict):
        tensors, rest = {}, {}
        for k, v in tree.items():
            t, r = split_state(v)
            if t is not None:
                tensors[str(k)] = t
            if r is not None:
                rest[str(k)] = r
        return (tensors or None), (rest or None)
    if _is_tensor(tree):
        return tree, None
    try:
        json.dumps(tree)
    except TypeError:
        raise CheckpointError(f"cannot checkpoint a value of type {type(tree).__name__}: only tensors and JSON") from None
    return None, tree


def _merge(tensors: Any, rest: Any) -> Any:
    if rest is None:
        return tensors
    if tensors is None:
        return rest
    out = dict(tensors)
    for k, v in rest.items():
        out[k] = _merge(out.get(k), v)
    return out


def global_shapes(state: Dict[str, Any]) -> Dict[str, List[int]]:
    """Global (unsharded) shape of every tensor in a module state dict."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ShardedTensor's deprecation notice
        return {k: list(v.size()) for k, v in state.items() if _is_tensor(v)}


def describe_module(module: nn.Module) -> Dict[str, Any]:
    """What a checkpoint must agree on with the model it is loaded into: embedding tables, tasks,
    and the global shape of every state tensor."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    tables: Dict[str, Any] = {}
    for m in module.modules():
        configs = None
        if isinstance(m, EmbeddingBagCollection):
            configs = m.embedding_bag_configs()
        elif isinstance(m, EmbeddingCollection):
            configs = m.embedding_configs()
        elif hasattr(m, "_embedding_bag_configs"):  # the sharded EBC keeps its configs here
            configs = m._embedding_bag_configs
        elif hasattr(m, "_embedding_configs"):  # and the sharded EC (sequence tables) here
            configs = m._embedding_configs
        for c in configs or []:
            tables[c.name] = {
                "num_embeddings": int(c.num_embeddings),
                "embedding_dim": int(c.embedding_dim),
                "feature_names": list(c.feature_names),
            }
    tasks = []
    for m in module.modules():
        if hasattr(m, "tasks") and isinstance(m.tasks, list):
            tasks = [{"name": t.name, "type": t.type} for t in m.tasks if hasattr(t, "name")]
            break
    return {"tables": tables, "tasks": tasks, "shapes": global_shapes(module.state_dict())}


def check_compatible(saved: Dict[str, Any], current: Dict[str, Any], where: Union[str, Path]) -> None:
    """Raises :class:`CheckpointError` listing every difference between two :func:`describe_module`s."""
    diffs: List[str] = []
    st, ct = saved.get("tables", {}), current.get("tables", {})
    for name in sorted(set(st) - set(ct)):
        diffs.append(f"table '{name}' is in the checkpoint but not in the model")
    for name in sorted(set(ct) - set(st)):
        diffs.append(f"table '{name}' is in the model but not in the checkpoint")
    for name in sorted(set(st) & set(ct)):
        for key in ("num_embeddings", "embedding_dim", "feature_names"):
            if st[name].get(key) != ct[name].get(key):
                diffs.append(f"table '{name}': {key} {st[name].get(key)} in the checkpoint, {ct[name].get(key)} in the model")
    if saved.get("tasks") != current.get("tasks"):
        diffs.append(f"tasks {saved.get('tasks')} in the checkpoint, {current.get('tasks')} in the model")
    ss, cs = saved.get("shapes", {}), current.get("shapes", {})
    for k in sorted(set(ss) - set(cs)):
        diffs.append(f"state '{k}' is in the checkpoint but not in the model")
    for k in sorted(set(cs) - set(ss)):
        diffs.append(f"state '{k}' is in the model but not in the checkpoint")
    for k in sorted(set(ss) & set(cs)):
        if ss[k] != cs[k]:
            diffs.append(f"state '{k}': shape {ss[k]} in the checkpoint, {cs[k]} in the model")
    if diffs:
        shown = diffs[:20] + ([f"... and {len(diffs) - 20} more"] if len(diffs) > 20 else [])
        raise CheckpointError(f"{where}: checkpoint does not match the model:\n  " + "\n  ".join(shown))


# ----------------------------------------------------------------------------- RNG


def rng_state() -> Dict[str, Any]:
    """This process's torch / numpy / python RNG states as JSON."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def rng_file(path: Union[str, Path], rank: int) -> Path:
    """Where a checkpoint keeps ``rank``'s RNG states."""
    return Path(path) / "rng" / f"rank_{rank:05d}.json"


def read_rng_state(path: Union[str, Path], rank: int) -> Optional[Dict[str, Any]]:
    """``rank``'s saved RNG states of the checkpoint ``path`` (JSON only), None if it has none;
    a garbled file is a :class:`CheckpointError` naming it."""
    f = rng_file(path, rank)
    if not f.is_file():
        return None
    state = read_json_file(f, "RNG state file")
    if not isinstance(state, dict) or not {"torch", "numpy", "python"} <= set(state):
        raise CheckpointError(f"{f}: not an RNG state file (needs torch, numpy and python states)")
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Sets torch's, numpy's and python's global RNG states from :func:`rng_state`'s JSON."""
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# ----------------------------------------------------------------------------- save / load


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _gather_to_main(obj: Any) -> List[Any]:
    """Every rank's ``obj`` on rank 0 (rank order); ``[]`` elsewhere. Rank 0 returns only once
    every rank has sent, so it doubles as a barrier for rank 0."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: Optional[List[Any]] = [None] * dist.get_world_size() if _rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out or []


def _state(model: nn.Module, optimizer: Optional[Any]) -> Dict[str, Any]:
    state: Dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return state


class _RecordingWriter(FileSystemWriter):
    """DCP's file-system writer that remembers which files this rank wrote (its shard files, and
    ``.metadata`` on the coordinator), so that each rank hashes only its own files."""

    def __init__(self, path: Union[str, Path]) -> None:
        super().__init__(str(path))
        self.written: List[str] = []

    def write_data(self, plan: Any, planner: Any) -> Any:
        future = super().write_data(plan, planner)  # already complete: the writes are synchronous
        self.written += [r.storage_data.relative_path for r in future.wait()]
        return future

    def finish(self, metadata: Metadata, results: Any) -> None:
        super().finish(metadata, results)
        self.written.append(DCP_METADATA)


def _write(
    path: Path,
    model: nn.Module,
    optimizer: Optional[Any],
    meta: Dict[str, Any],
    after_shards: Optional[Callable[[Path], None]] = None,
) -> None:
    """Every rank writes its shards and RNG state into ``path`` and hashes them; rank 0 gathers
    the hashes, writes meta.json and then manifest.json last.

    ``after_shards(path)`` runs on every rank once its shards are on disk, before anything marks
    the checkpoint complete (fault-tolerance tests stop a rank there).
    """
    tensors, rest = split_state(_state(model, optimizer))
    writer = _RecordingWriter(path)
    dcp.save(tensors, checkpoint_id=str(path), storage_writer=writer)
    if after_shards is not None:
        after_shards(path)
    rng = rng_file(path, _rank())
    write_json(rng, rng_state())
    mine = hash_files(path, [*writer.written, rng.relative_to(path).as_posix()])
    gathered = _gather_to_main(mine)
    if _rank() == 0:
        full = {
            **meta,
            "world_size": _world(),
            "model": describe_module(model),
            "non_tensor_state": rest,
        }
        write_json(path / META, full)
        files = hash_files(path, [META])
        for part in gathered:
            files.update(part)
        write_manifest(path, files)


def save_checkpoint(path: Path, model: nn.Module, optimizer: Optional[Any], meta: Dict[str, Any]) -> None:
    """Writes a checkpoint folder at ``path`` (not atomic; see :func:`save_run_checkpoint`)."""
    path = Path(path)
    _write(path, model, optimizer, meta)
    _barrier()


def _init_optimizer_state(optimizer: Any) -> None:
    """KeyedOptimizer loads in place and refuses an uninitialised (lazy) state, so dense
    optimizers get their state created by a zero-gradient step first (no parameter changes for
    Adam/Adagrad/SGD without weight decay)."""
    parts = getattr(optimizer, "optimizers", None)
    subs = [o for _, o in parts] if parts is not None else [optimizer]
    for sub in subs:
        if hasattr(sub, "init_state") and len(sub.state) == 0 and len(sub.params) > 0:
            grads = {k: p.grad for k, p in sub.params.items()}
            sub.init_state()
            for k, p in sub.params.items():
                p.grad = grads[k]


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


def _read_meta_file(path: Path) -> Dict[str, Any]:
    meta = read_json_file(path / META, "checkpoint meta.json")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / META}: not a checkpoint meta.json (a JSON {type(meta).__name__}, not an object)")
    return meta


def read_meta(path: Union[str, Path]) -> Dict[str, Any]:
    """The ``meta.json`` of a checkpoint (or of a run's latest), parsed as JSON only and not
    verified against the manifest (:func:`load_checkpoint` verifies)."""
    return _read_meta_file(resolve_checkpoint(path))


def load_checkpoint(
    path: Union[str, Path],
    model: nn.Module,
    optimizer: Optional[Any] = None,
    restore_rng: bool = False,
    check: bool = True,
) -> Dict[str, Any]:
    """Loads model (and optimizer) state in place, resharding as needed; returns ``meta.json``.

    ``path`` is a checkpoint folder or a run directory (its latest checkpoint). ``model`` may be
    sharded (DMP, any plan and rank count) or a plain unsharded module. Collective under a process
    group: every rank calls it. Before anything is read, the files are verified against the
    checkpoint's manifest (a missing or damaged file is a :class:`CheckpointError` naming it;
    a checkpoint without a manifest loads with a warning). With ``check`` the saved tables, tasks
    and tensor shapes are compared next and any difference is a :class:`CheckpointError` naming it.
    ``restore_rng`` sets this rank's RNG states when the checkpoint has them for this rank and the
    same world size.
    """
    path = resolve_checkpoint(path)
    verify_collective(path)
    meta = _read_meta_file(path)
    if check:
        saved = meta.get("model")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{path / META}: has no model description ('model' object)")
        check_compatible(saved, describe_module(model), path)
    if optimizer is not None:
        _init_optimizer_state(optimizer)
    reader = SafeFileSystemReader(str(path))
    reader.read_metadata()  # fails here, with a plain CheckpointError, on anything but tensors
    tensors, _ = split_state(_state(model, optimizer))
    if optimizer is not None and "optimizer" not in tensors:
        tensors["optimizer"] = {}
    dcp.load(tensors, checkpoint_id=str(path), storage_reader=reader)
    non_tensor = meta.get("non_tensor_state") or {}
    model.load_state_dict(_merge(tensors["model"], non_tensor.get("model")))
    if optimizer is not None:
        opt_state = _merge(tensors.get("optimizer"), non_tensor.get("optimizer")) or {"state": {}}
        opt_state.setdefault("state", {})
        try:
            optimizer.load_state_dict(opt_state)
        except ValueError as e:
            # torch compares parameter groups by count: another grouping than the checkpoint's.
            raise CheckpointError(
                f"{path}: the optimizer's parameter groups differ from the checkpoint's ({e}); settings that add or "
                f"remove a group (model.text.adapter_lr / adapter_weight_decay, train.balance.lr) must be the same "
                f"as when it was saved (train.init_from starts from its weights with a fresh optimizer)"
            ) from None
    if restore_rng and meta.get("world_size") == _world():
        state = read_rng_state(path, _rank())
        if state is not None:
            set_rng_state(state)
    return meta


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a complete checkpoint folder (it has ``meta.json``, written last but
    for the manifest, which the rename waits for)."""
    return (Path(path) / META).is_file()


# ----------------------------------------------------------------------------- run directories


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
        raise CheckpointError(f"{pointer}: garbled: holds {_one_line(name[:60])!r}, not a checkpoint name such as "
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


def save_run_checkpoint(
    run_dir: Union[str, Path],
    step: int,
    model: nn.Module,
    optimizer: Optional[Any],
    meta: Dict[str, Any],
    keep: int = 3,
    after_shards: Optional[Callable[[Path], None]] = None,
    best: bool = False,
) -> Path:
    """Atomically adds ``run_dir/checkpoints/step_<step>`` (with its manifest) and moves
    ``latest`` to it (and ``best`` too when ``best``); keeps the newest ``keep`` checkpoints
    (0 keeps all) and always the one ``best`` names. Collective: every rank calls it.
    ``after_shards``: see :func:`_write`."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}"
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a save that was interrupted
        tmp.mkdir()
    _barrier()
    _write(tmp, model, optimizer, {**meta, "step": step}, after_shards)
    if _rank() == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(root / LATEST, final.name + "\n")
        if best:
            set_best_checkpoint(run_dir, step)
        if keep > 0:
            kept = {final, best_checkpoint(run_dir)}
            for old in list_checkpoints(run_dir)[:-keep]:
                if old not in kept:
                    shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final
