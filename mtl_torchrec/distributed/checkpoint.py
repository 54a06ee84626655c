"""Checkpoints with ``torch.distributed.checkpoint`` (DCP).

Sharded tables are written by the ranks that own them and can be read back under another
sharding plan or rank count (DCP reshards on load). Only tensors go through DCP; every other
value (optimizer hyper-parameters, training position, the config) is plain JSON in
``meta.json``, and DCP's own ``.metadata`` file is read with an allow-list unpickler, so loading
a checkpoint never runs code from it.

Layout of a run directory::

    run_dir/
      config.yaml
      checkpoints/
        latest                  # text file: "step_000120" (replaced atomically)
        step_000100/            # one complete checkpoint
          .metadata, __0_0.distcp, ...   # DCP: model (incl. sharded tables) + optimizer tensors
          meta.json             # train state, world size, tables/tasks/shapes, non-tensor state
          rng/rank_00000.json   # per-rank torch/numpy/python RNG states
        step_000120/
        .tmp-step_000140/       # a save in progress (or interrupted): never pointed at

A checkpoint is written under ``.tmp-step_N``, renamed to ``step_N`` by rank 0 after every rank
has finished, and only then does ``latest`` move; so a crash at any moment leaves ``latest``
naming a complete checkpoint. The newest ``keep`` checkpoints are kept.

Example::

    path = save_run_checkpoint(run_dir, step=100, model=dmp, optimizer=opt, meta={"epoch": 0})
    ckpt = latest_checkpoint(run_dir)            # run_dir/checkpoints/step_000100
    meta = load_checkpoint(ckpt, dmp, opt)       # also accepts run_dir itself
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

from mtl_torchrec.core.errors import CheckpointError
from mtl_torchrec.core.io import atomic_write_text, write_json

CHECKPOINTS = "checkpoints"
LATEST = "latest"
META = "meta.json"


# ----------------------------------------------------------------------------- safe reading


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` but refuses every global outside a short allow-list."""

    _ALLOWED_MODULES = ("torch.distributed.checkpoint.",)
    _ALLOWED = {
        ("torch", "Size"),
        ("torch", "float32"), ("torch", "float64"), ("torch", "float16"), ("torch", "bfloat16"),
        ("torch", "int64"), ("torch", "int32"), ("torch", "int16"), ("torch", "int8"), ("torch", "uint8"),
        ("torch", "bool"), ("torch", "strided"), ("torch", "contiguous_format"),
        ("torch", "channels_last"), ("torch", "preserve_format"), ("torch", "channels_last_3d"),
        ("torch.serialization", "_get_layout"),  # maps a layout name such as "torch.strided" back
        ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),  # the checkpoint id DCP records
        ("collections", "OrderedDict"),
        ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED or module.startswith(self._ALLOWED_MODULES):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which is not allowed")


class SafeFileSystemReader(FileSystemReader):
    """DCP reader that unpickles nothing but DCP's own metadata classes and refuses byte items
    (which DCP would restore with ``torch.load(weights_only=False)``); tensors are read by DCP with
    ``weights_only=True``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            try:
                metadata = _MetadataUnpickler(f).load()
            except pickle.UnpicklingError as e:
                raise CheckpointError(f"{self.path}: {e}") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{self.path}: .metadata is not DCP metadata")
        for fqn, md in metadata.state_dict_metadata.items():
            if isinstance(md, BytesStorageMetadata):
                raise CheckpointError(f"{self.path}: entry '{fqn}' is a pickled object; only tensors are loaded")
        from torch.distributed.checkpoint.metadata import StorageMeta

        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


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
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    tables: Dict[str, Any] = {}
    for m in module.modules():
        configs = None
        if isinstance(m, EmbeddingBagCollection):
            configs = m.embedding_bag_configs()
        elif hasattr(m, "_embedding_bag_configs"):  # the sharded EBC keeps its configs here
            configs = m._embedding_bag_configs
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


def set_rng_state(state: Dict[str, Any]) -> None:
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


def _state(model: nn.Module, optimizer: Optional[Any]) -> Dict[str, Any]:
    state: Dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return state


def _write(
    path: Path,
    model: nn.Module,
    optimizer: Optional[Any],
    meta: Dict[str, Any],
    after_shards: Optional[Callable[[Path], None]] = None,
) -> None:
    """Every rank writes its shards and RNG state into ``path``; rank 0 writes meta.json last.

    ``after_shards(path)`` runs on every rank once its shards are on disk, before anything marks
    the checkpoint complete (fault-tolerance tests stop a rank there).
    """
    tensors, rest = split_state(_state(model, optimizer))
    dcp.save(tensors, checkpoint_id=str(path))
    if after_shards is not None:
        after_shards(path)
    write_json(path / "rng" / f"rank_{_rank():05d}.json", rng_state())
    _barrier()
    if _rank() == 0:
        full = {
            **meta,
            "world_size": _world(),
            "model": describe_module(model),
            "non_tensor_state": rest,
        }
        write_json(path / META, full)


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
    """A checkpoint folder from a checkpoint folder, a run directory or its ``checkpoints/``."""
    path = Path(path)
    if (path / META).is_file():
        return path
    run_dir = path.parent if path.name == CHECKPOINTS else path
    found = latest_checkpoint(run_dir)
    if found is None:
        raise FileNotFoundError(f"{path}: no complete checkpoint here (no {META}, no {CHECKPOINTS}/{LATEST})")
    return found


def read_meta(path: Union[str, Path]) -> Dict[str, Any]:
    return json.loads((resolve_checkpoint(path) / META).read_text(encoding="utf-8"))


def load_checkpoint(
    path: Union[str, Path],
    model: nn.Module,
    optimizer: Optional[Any] = None,
    restore_rng: bool = False,
    check: bool = True,
) -> Dict[str, Any]:
    """Loads model (and optimizer) state in place, resharding as needed; returns ``meta.json``.

    ``path`` is a checkpoint folder or a run directory (its latest checkpoint). ``model`` may be
    sharded (DMP, any plan and rank count) or a plain unsharded module. With ``check`` the saved
    tables, tasks and tensor shapes are compared first and any difference is a
    :class:`CheckpointError` naming it. ``restore_rng`` sets this rank's RNG states when the
    checkpoint has them for this rank and the same world size.
    """
    path = resolve_checkpoint(path)
    meta = json.loads((path / META).read_text(encoding="utf-8"))
    if check:
        check_compatible(meta.get("model", {}), describe_module(model), path)
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
        optimizer.load_state_dict(opt_state)
    if restore_rng and meta.get("world_size") == _world():
        rng_file = path / "rng" / f"rank_{_rank():05d}.json"
        if rng_file.is_file():
            set_rng_state(json.loads(rng_file.read_text(encoding="utf-8")))
    return meta


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / META).is_file()


# ----------------------------------------------------------------------------- run directories


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(run_dir: Union[str, Path]) -> List[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and is_checkpoint(p)]
    return sorted(found, key=lambda p: int(p.name.split("_", 1)[1]))


def latest_checkpoint(run_dir: Union[str, Path]) -> Optional[Path]:
    """The checkpoint that ``run_dir/checkpoints/latest`` names, or None when the run has none."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text(encoding="utf-8").strip()
        if is_checkpoint(target):
            return target
    # The pointer is written after the rename, so this only matters if it was deleted by hand.
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_run_checkpoint(
    run_dir: Union[str, Path],
    step: int,
    model: nn.Module,
    optimizer: Optional[Any],
    meta: Dict[str, Any],
    keep: int = 3,
    after_shards: Optional[Callable[[Path], None]] = None,
) -> Path:
    """Atomically adds ``run_dir/checkpoints/step_<step>`` and moves ``latest`` to it; keeps the
    newest ``keep`` checkpoints (0 keeps all). Collective: every rank calls it. ``after_shards``:
    see :func:`_write`."""
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
        if keep > 0:
            for old in list_checkpoints(run_dir)[:-keep]:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final
