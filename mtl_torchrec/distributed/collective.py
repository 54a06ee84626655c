"""Small collectives for decisions and bookkeeping, each a no-op without a process group (one process).

Example::

    verdict = broadcast_from_main(check() if rank() == 0 else None)   # rank 0's answer on every rank
"""

from __future__ import annotations

import resource
from typing import Any, List, Optional

import torch
import torch.distributed as dist


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    """Waits for every rank (nothing without a process group)."""
    if dist.is_initialized():
        dist.barrier()


def gather_to_main(obj: Any) -> List[Any]:
    """Every rank's ``obj`` on rank 0 (rank order); ``[]`` elsewhere. Rank 0 returns only once
    every rank has sent, so it doubles as a barrier for rank 0."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: Optional[List[Any]] = [None] * dist.get_world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out or []


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def peak_rss_mb() -> float:
    """The largest peak resident memory of any rank's process so far, in MiB (Linux reports KiB)."""
    peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return float(peak)
