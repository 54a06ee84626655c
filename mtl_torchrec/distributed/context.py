"""The process group a job runs in: torchrun's environment, or a one-process group of its own.

Example::

    ctx = init_distributed()     # NCCL with one GPU per local rank under CUDA, gloo on CPU
    ...
    close_distributed(ctx)
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """Rank, world size and device of this process; ``owns_group`` when it created the group."""

    rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    # True when this process created the group (and so should destroy it).
    owns_group: bool

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the rank that writes files and reports)."""
        return self.rank == 0


def init_distributed(backend: Optional[str] = None) -> DistContext:
    """Joins the torchrun process group from the environment, or makes a 1-process one.

    Uses NCCL with one GPU per local rank when CUDA is available, gloo on CPU.
    """
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    backend = backend or ("nccl" if use_cuda else "gloo")
    owns = False
    if not dist.is_initialized():
        owns = True
        if "RANK" in os.environ and "MASTER_ADDR" in os.environ and "TORCHELASTIC_RESTART_COUNT" in os.environ:
            # torchrun keeps one rendezvous store across worker restarts, so a restarted group
            # would read the previous attempt's gloo/NCCL addresses; a per-attempt prefix avoids it.
            store, rank, world = next(dist.rendezvous("env://"))
            attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
            store = dist.PrefixStore(f"mtl_torchrec/attempt_{attempt}", store)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
        elif "RANK" in os.environ and "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend=backend)
        else:
            store_file = tempfile.NamedTemporaryFile(prefix="mtl_torchrec_pg_", delete=False).name
            dist.init_process_group(backend=backend, init_method=f"file://{store_file}", rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistContext(rank, world, local_world, device, owns)


def close_distributed(ctx: DistContext) -> None:
    """Destroys the process group if :func:`init_distributed` created it (torchrun's stays)."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
