"""Per-rank RNG state files (``rng/rank_NNNNN.json``): torch, numpy and python generators as JSON.

A run resumed on the same world size continues every rank's random streams exactly.

Example::

    write_json(rng_file(ckpt, rank), rng_state())
    set_rng_state(read_rng_state(ckpt, rank))
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from mtl_torchrec.core.errors import CheckpointError
from mtl_torchrec.distributed.checkpoint.safe_load import read_json_file


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
