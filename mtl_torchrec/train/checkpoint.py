"""Checkpoints with ``torch.distributed.checkpoint`` (DCP): sharded tables are saved by their
owners and can be loaded back under another plan or rank count.

Example::

    save_checkpoint(run_dir / "checkpoint", dmp, optimizer, {"step": 100})
    meta = load_checkpoint(run_dir / "checkpoint", dmp, optimizer)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional


import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from mtl_torchrec.utils import write_json


def _state(model: nn.Module, optimizer: Optional[Any]) -> Dict[str, Any]:
    state: Dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return state


def save_checkpoint(path: Path, model: nn.Module, optimizer: Optional[Any], meta: Dict[str, Any]) -> None:
    """Writes a DCP checkpoint folder plus ``meta.json`` (small, plain JSON, written last)."""
    path = Path(path)
    dcp.save(_state(model, optimizer), checkpoint_id=str(path))
    if not dist.is_initialized() or dist.get_rank() == 0:
        write_json(path / "meta.json", meta)
    if dist.is_initialized():
        dist.barrier()


def load_checkpoint(path: Path, model: nn.Module, optimizer: Optional[Any] = None) -> Dict[str, Any]:
    """Loads model (and optimizer) state in place; returns the checkpoint's ``meta.json``."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no meta.json)")
    state = _state(model, optimizer)
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return json.loads(meta_file.read_text(encoding="utf-8"))


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / "meta.json").is_file()



