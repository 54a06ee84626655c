"""Copying plain (unsharded) state into a DMP-wrapped model, and the key helpers it needs.

Example::

    dmp = shard_module(train_module, ctx)
    copy_unsharded_state(dmp, plain_module.state_dict())
    load_text_tables(dmp)        # text vectors back into their freshly allocated shards
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from mtl_torchrec.modules.text_feature import TextFeature

WRAPPER_PREFIXES = ("_dmp_wrapped_module.", "module.")


def plain_key(key: str) -> str:
    """``key`` without DMP/DDP wrapper prefixes: the name the unwrapped module gives the same tensor."""
    for prefix in WRAPPER_PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def copy_unsharded_state(dmp: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Loads a plain (unsharded) state dict into a DMP model, copying each rank's shards.

    Keys are matched after removing DMP/DDP wrapper prefixes.
    """
    own = dmp.state_dict()
    with torch.no_grad():
        for key, target in own.items():
            src_key = plain_key(key)
            if src_key not in state:
                continue
            src = state[src_key]
            if isinstance(target, ShardedTensor):
                for shard in target.local_shards():
                    offs = shard.metadata.shard_offsets
                    sizes = shard.metadata.shard_sizes
                    idx = tuple(slice(o, o + s) for o, s in zip(offs, sizes))
                    shard.tensor.copy_(src[idx])
            elif isinstance(target, DTensor):
                local = target.to_local()
                full = src
                # DTensor shards here are row or column slices described by the placement offsets.
                shape, offset = compute_local_shape_and_global_offset(
                    target.shape, target.device_mesh, target.placements
                )
                idx = tuple(slice(o, o + s) for o, s in zip(offset, shape))
                local.copy_(full[idx])
            else:
                target.copy_(src)


def _local_blocks(target: Any) -> List[Tuple[torch.Tensor, List[int]]]:
    """``(local tensor, global offsets)`` of each block of ``target`` this rank holds."""
    if isinstance(target, ShardedTensor):
        return [(s.tensor, list(s.metadata.shard_offsets)) for s in target.local_shards()]
    if isinstance(target, DTensor):
        _, offset = compute_local_shape_and_global_offset(target.shape, target.device_mesh, target.placements)
        return [(target.to_local(), list(offset))]
    return [(target, [0] * target.dim())]


def copy_leading_rows(target: Any, src: torch.Tensor) -> int:
    """Copies the plain 2-D ``src`` into the first ``src.shape[0]`` rows of ``target`` (a plain
    tensor, ShardedTensor or DTensor of the same width and at least as many rows), into whatever
    part of them this rank holds; the other rows are left as they are. Returns how many elements
    this rank wrote."""
    written = 0
    with torch.no_grad():
        for local, (row0, col0) in _local_blocks(target):
            rows = min(local.shape[0], src.shape[0] - row0)
            if rows <= 0:
                continue
            local[:rows].copy_(src[row0: row0 + rows, col0: col0 + local.shape[1]])
            written += rows * local.shape[1]
    return written


def load_text_tables(module: nn.Module) -> int:
    """Copies each :class:`TextFeature`'s initial vectors into its (possibly sharded) table.

    Call once after DMP wrapping: sharding allocates fresh table storage. Returns how many tables
    were filled.
    """
    state: Dict[str, torch.Tensor] = {}
    for name, m in module.named_modules():
        if isinstance(m, TextFeature) and m.initial_weights is not None:
            prefix = plain_key(name + ".") if name else ""
            state[f"{prefix}table.embedding_bags.{m.table_name}.weight"] = m.initial_weights
    if state:
        copy_unsharded_state(module, state)
    return len(state)
