"""Warm start (``train.init_from``): a new model begins from a previous run's checkpoint where
the two agree.

Every state tensor of the model (embedding tables, dense layers, buffers, the balancer) is
matched by name against the checkpoint's ``meta.json`` description:

- same name and global shape: **loaded** (tables under any sharding plan and rank count; DCP
  reshards);
- an embedding table with more rows now and the same width: **grown**: the saved rows are
  copied into the first rows and the new rows keep their fresh initialisation (ids appended to a
  vocabulary keep their rows);
- only in the model, or another shape: **re-initialised** (left as built);
- only in the checkpoint (a removed task, ...): **ignored**.

Only model tensors are read: the optimizer state, training position and RNG start fresh.
The checkpoint goes through the same trusted path as a resume (sha256 manifest first, DCP's
metadata through the restricted unpickler, tensors only).

Example::

    ckpt = resolve_init_from("runs/base")              # its latest checkpoint
    report = warm_start(ckpt, dmp)                     # collective: every rank calls it
    report["reinitialised"]   # [{"key": "model.towers.towers.ctr.head.weight", "reason": "new"}, ...]
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Union

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from mtl_torchrec.core.errors import CheckpointError, ConfigError
from mtl_torchrec.distributed.checkpoint.manifest import META, verify_collective
from mtl_torchrec.distributed.checkpoint.run_dir import CHECKPOINTS, is_checkpoint, latest_checkpoint
from mtl_torchrec.distributed.checkpoint.safe_load import SafeFileSystemReader, read_json_file
from mtl_torchrec.distributed.checkpoint.state_tree import global_shapes
from mtl_torchrec.distributed.state import copy_leading_rows

KEY = "train.init_from"


def resolve_init_from(value: Union[str, Path]) -> Path:
    """The checkpoint folder ``train.init_from`` names: a checkpoint folder, ``RUN_DIR/step_N``
    (for ``RUN_DIR/checkpoints/step_N``) or a run directory (its latest checkpoint).

    Raises ConfigError naming ``train.init_from`` when the path does not exist or holds no
    checkpoint (also for a garbled ``latest`` pointer). Reads no tensors.
    """
    path = Path(value)
    if not path.exists() and is_checkpoint(path.parent / CHECKPOINTS / path.name):
        return path.parent / CHECKPOINTS / path.name
    if not path.exists():
        raise ConfigError(f"{KEY}: '{value}' does not exist")
    if is_checkpoint(path):
        return path
    try:
        found = latest_checkpoint(path.parent if path.name == CHECKPOINTS else path)
    except CheckpointError as e:
        raise ConfigError(f"{KEY}: {e}") from None
    if found is None:
        raise ConfigError(
            f"{KEY}: '{value}' is not a run directory or checkpoint (no {CHECKPOINTS}/ with a complete "
            f"checkpoint, no {META})"
        )
    return found


def _is_table(key: str) -> bool:
    # EBC tables, and EC (sequence) tables: ``<path>.embedding.embeddings.<table>.weight``.
    return (".embedding_bags." in key or ".embedding.embeddings." in key) and key.endswith(".weight")


def _owner(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def plan_warm_start(saved: Dict[str, List[int]], current: Dict[str, List[int]]) -> Dict[str, Any]:
    """Sorts state keys by their global shapes (``{key: shape}`` of the checkpoint and of the
    model) into ``loaded``, ``grown``, ``reinitialised`` and ``ignored`` (see the module docstring).

    A module is loaded whole or not at all: when one of its tensors is new or changed shape (a
    tower grown wider), its other tensors (the bias of that layer) stay as initialised too.
    """
    plan: Dict[str, Any] = {"loaded": [], "grown": [], "reinitialised": [], "ignored": sorted(set(saved) - set(current))}
    for key in sorted(current):
        shape = current[key]
        if key not in saved:
            plan["reinitialised"].append({"key": key, "reason": "new"})
        elif saved[key] == shape:
            plan["loaded"].append(key)
        elif _is_table(key) and len(shape) == 2 and saved[key][1] == shape[1] and saved[key][0] < shape[0]:
            plan["grown"].append({"key": key, "rows_loaded": saved[key][0], "rows": shape[0]})
        else:
            plan["reinitialised"].append({"key": key, "reason": f"shape {saved[key]} in the checkpoint, {shape} in the model"})
    changed = {_owner(r["key"]) for r in plan["reinitialised"]}
    partial = [k for k in plan["loaded"] if _owner(k) in changed]
    plan["loaded"] = [k for k in plan["loaded"] if _owner(k) not in changed]
    plan["reinitialised"] = sorted(
        plan["reinitialised"] + [{"key": k, "reason": f"another tensor of '{_owner(k)}' is new or changed shape"} for k in partial],
        key=lambda r: r["key"],
    )
    return plan


def warm_start(checkpoint: Union[str, Path], model: nn.Module) -> Dict[str, Any]:
    """Loads what matches of ``checkpoint`` (a folder from :func:`resolve_init_from`) into
    ``model`` (DMP-sharded under any plan, or plain) in place; returns the report
    ``{"checkpoint", "loaded", "grown", "reinitialised", "ignored"}`` (:func:`plan_warm_start`).

    Collective: every rank calls it. Raises CheckpointError naming a damaged or missing file of
    the checkpoint, or a ``meta.json`` without the model description.
    """
    path = Path(checkpoint)
    verify_collective(path)
    meta = read_json_file(path / META, "checkpoint meta.json")
    saved = meta.get("model", {}).get("shapes") if isinstance(meta, dict) and isinstance(meta.get("model"), dict) else None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path / META}: has no model description ('model.shapes')")
    own = model.state_dict()
    plan = plan_warm_start(saved, global_shapes(own))
    targets: Dict[str, Any] = {k: own[k] for k in plan["loaded"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ShardedTensor's deprecation notice
        # Grown tables come in whole at their saved size (on every rank), then go row by row.
        old_tables = {g["key"]: torch.empty(saved[g["key"]], dtype=own[g["key"]].dtype) for g in plan["grown"]}
        targets.update(old_tables)
        if targets:
            reader = SafeFileSystemReader(str(path))
            reader.read_metadata()  # a plain CheckpointError on anything but tensors
            dcp.load({"model": targets}, checkpoint_id=str(path), storage_reader=reader)
        # DCP filled the state tensors in place; loading them back also covers modules whose
        # state_dict() returns copies.
        model.load_state_dict({k: own[k] for k in own}, strict=True)
    if old_tables:
        state = model.state_dict()
        for key, old in old_tables.items():
            copy_leading_rows(state[key], old)
    return {"checkpoint": str(path), **plan}


def format_report(report: Dict[str, Any], limit: int = 30) -> str:
    """The report as lines for the console: counts, then every grown, re-initialised and ignored
    key (at most ``limit`` lines of them)."""
    lines = [
        f"warm start from {report['checkpoint']}: loaded {len(report['loaded'])} tensors, grown {len(report['grown'])}, "
        f"re-initialised {len(report['reinitialised'])}, ignored {len(report['ignored'])}"
    ]
    detail = [f"  grown          {g['key']} ({g['rows_loaded']} of {g['rows']} rows loaded)" for g in report["grown"]]
    detail += [f"  re-initialised {r['key']} ({r['reason']})" for r in report["reinitialised"]]
    detail += [f"  ignored        {k} (not in the model)" for k in report["ignored"]]
    if len(detail) > limit:
        detail = detail[:limit] + [f"  ... and {len(detail) - limit} more (see warm_start.json)"]
    return "\n".join(lines + detail)
