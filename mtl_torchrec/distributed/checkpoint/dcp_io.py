"""Saving and loading checkpoints with ``torch.distributed.checkpoint`` (DCP).

Sharded tables are written by the ranks that own them and can be read back under another
sharding plan or rank count (DCP reshards on load). A run checkpoint is written under
``.tmp-step_N``; each rank hashes the files it wrote, rank 0 gathers the hashes, writes
``meta.json`` and then ``manifest.json``, renames the folder to ``step_N`` and only then moves
``latest``; so a crash at any moment leaves ``latest`` naming a complete checkpoint. The newest
``keep`` checkpoints are kept, and the one ``best`` names is never deleted by that rotation.

Example::

    path = save_run_checkpoint(run_dir, step=100, model=dmp, optimizer=opt, meta={"epoch": 0})
    meta = load_checkpoint(path, dmp, opt)       # also accepts run_dir itself
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata

from mtl_torchrec.core.errors import CheckpointError
from mtl_torchrec.core.io import atomic_write_text, write_json
from mtl_torchrec.distributed.checkpoint.manifest import (
    DCP_METADATA,
    META,
    hash_files,
    verify_collective,
    write_manifest,
)
from mtl_torchrec.distributed.checkpoint.rng import read_rng_state, rng_file, rng_state, set_rng_state
from mtl_torchrec.distributed.checkpoint.run_dir import (
    CHECKPOINTS,
    LATEST,
    best_checkpoint,
    list_checkpoints,
    read_checkpoint_meta,
    resolve_checkpoint,
    set_best_checkpoint,
    step_name,
)
from mtl_torchrec.distributed.checkpoint.safe_load import SafeFileSystemReader
from mtl_torchrec.distributed.checkpoint.state_tree import check_compatible, describe_module, merge_state, split_state
from mtl_torchrec.distributed.collective import barrier, gather_to_main, rank, world_size


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
    rng = rng_file(path, rank())
    write_json(rng, rng_state())
    mine = hash_files(path, [*writer.written, rng.relative_to(path).as_posix()])
    gathered = gather_to_main(mine)
    if rank() == 0:
        full = {
            **meta,
            "world_size": world_size(),
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
    barrier()


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
    meta = read_checkpoint_meta(path)
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
    model.load_state_dict(merge_state(tensors["model"], non_tensor.get("model")))
    if optimizer is not None:
        opt_state = merge_state(tensors.get("optimizer"), non_tensor.get("optimizer")) or {"state": {}}
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
    if restore_rng and meta.get("world_size") == world_size():
        state = read_rng_state(path, rank())
        if state is not None:
            set_rng_state(state)
    return meta


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
    if rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a save that was interrupted
        tmp.mkdir()
    barrier()
    _write(tmp, model, optimizer, {**meta, "step": step}, after_shards)
    if rank() == 0:
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
    barrier()
    return final
