"""Process groups, sharding plans and DistributedModelParallel wrapping.

``row_wise`` and ``table_row_wise`` are refused by TorchRec's planner on CPU, so every fixed
strategy is built by hand with ``construct_module_sharding_plan``; ``planner`` asks
``EmbeddingShardingPlanner`` to choose.

Example::

    ctx = init_distributed()                      # torchrun env, or a 1-process group
    dmp = shard_module(train_module, ctx, strategy="row_wise", sparse_optimizer="rowwise_adagrad",
                       sparse_lr=0.05)
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    row_wise,
    table_row_wise,
    table_wise,
)
from torchrec.distributed.types import ModuleSharder, ShardingEnv, ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from fbgemm_gpu.split_embedding_configs import EmbOptimType

STRATEGIES = ("planner", "table_wise", "column_wise", "row_wise", "table_column_wise", "table_row_wise", "data_parallel")

_SPARSE_OPTIMIZERS = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "sgd": EmbOptimType.EXACT_SGD,
}


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    # True when this process created the group (and so should destroy it).
    owns_group: bool

    @property
    def is_main(self) -> bool:
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
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def make_sharders(sparse_optimizer: str, sparse_lr: float, extra: Optional[List[ModuleSharder]] = None) -> List[ModuleSharder]:
    """EBC sharder whose fused kernel applies the sparse optimizer inside the backward pass."""
    if sparse_optimizer not in _SPARSE_OPTIMIZERS:
        raise ValueError(f"train.sparse_optimizer: unknown '{sparse_optimizer}' (known: {list(_SPARSE_OPTIMIZERS)})")
    fused: Dict[str, Any] = {
        "optimizer": _SPARSE_OPTIMIZERS[sparse_optimizer],
        "learning_rate": sparse_lr,
        "eps": 1e-8,
    }
    from mtl_torchrec.text.features import FrozenEmbeddingBagCollectionSharder

    return list(extra or []) + [FrozenEmbeddingBagCollectionSharder(), EmbeddingBagCollectionSharder(fused_params=fused)]


def _ebc_paths(module: nn.Module) -> Dict[str, EmbeddingBagCollection]:
    return {name: m for name, m in module.named_modules() if isinstance(m, EmbeddingBagCollection)}


def hand_plan(module: nn.Module, strategy: str, world_size: int, local_world_size: int, device_type: str) -> ShardingPlan:
    """The same strategy for every table of every EBC in ``module``; tables spread round-robin
    over ranks for table-wise placement."""
    kernel = EmbeddingComputeKernel.FUSED.value
    plan: Dict[str, Any] = {}
    counter = 0
    for path, ebc in _ebc_paths(module).items():
        per_table = {}
        for cfg in ebc.embedding_bag_configs():
            if strategy == "table_wise":
                gen = table_wise(rank=counter % world_size, compute_kernel=kernel)
            elif strategy == "row_wise":
                gen = row_wise(compute_kernel=kernel)
            elif strategy == "column_wise":
                gen = column_wise(ranks=list(range(world_size)), compute_kernel=kernel)
            elif strategy == "table_column_wise":
                gen = column_wise(ranks=[counter % world_size] * 2, compute_kernel=kernel)
            elif strategy == "table_row_wise":
                gen = table_row_wise(host_index=0, compute_kernel=kernel)
            elif strategy == "data_parallel":
                gen = data_parallel()
            else:
                raise ValueError(f"train.sharding: unknown strategy '{strategy}' (known: {list(STRATEGIES)})")
            per_table[cfg.name] = gen
            counter += 1
        plan[path] = construct_module_sharding_plan(
            ebc, per_table, sharder=_frozen_sharder(ebc), local_size=local_world_size, world_size=world_size,
            device_type=device_type,
        )
    return ShardingPlan(plan=plan)


def _frozen_sharder(ebc: EmbeddingBagCollection) -> Optional[ModuleSharder]:
    """The sharder of frozen (text) tables; None lets TorchRec pick its default for plain EBCs."""
    from mtl_torchrec.text.features import FrozenEmbeddingBagCollection, FrozenEmbeddingBagCollectionSharder

    return FrozenEmbeddingBagCollectionSharder() if isinstance(ebc, FrozenEmbeddingBagCollection) else None


def column_split_ok(module: nn.Module, world_size: int) -> None:
    for ebc in _ebc_paths(module).values():
        for cfg in ebc.embedding_bag_configs():
            if cfg.embedding_dim % (2 * world_size if world_size > 1 else 1):
                raise ValueError(
                    f"column-wise sharding of table '{cfg.name}' needs embedding_dim divisible by {2 * world_size}"
                )


def shard_module(
    module: nn.Module,
    ctx: DistContext,
    strategy: str = "planner",
    sparse_optimizer: str = "rowwise_adagrad",
    sparse_lr: float = 0.05,
    extra_sharders: Optional[List[ModuleSharder]] = None,
) -> DistributedModelParallel:
    """Wraps ``module`` in DMP: embedding tables sharded with fused optimizers, the rest DDP."""
    sharders = make_sharders(sparse_optimizer, sparse_lr, extra_sharders)
    pg = dist.GroupMember.WORLD
    if strategy == "planner":
        topology = Topology(
            world_size=ctx.world_size, compute_device=ctx.device.type, local_world_size=ctx.local_world_size
        )
        plan = EmbeddingShardingPlanner(topology=topology).collective_plan(module, sharders, pg)
    else:
        if strategy in ("column_wise", "table_column_wise"):
            column_split_ok(module, ctx.world_size)
        plan = hand_plan(module, strategy, ctx.world_size, ctx.local_world_size, ctx.device.type)
    return DistributedModelParallel(
        module=module,
        env=ShardingEnv.from_process_group(pg),
        device=ctx.device,
        plan=plan,
        sharders=sharders,
    )


def make_optimizer(
    dmp: DistributedModelParallel, name: str, lr: float, balance_lr: Optional[float] = None
) -> CombinedOptimizer:
    """The fused sparse optimizer (already inside DMP) combined with a dense one for the rest.

    With ``balance_lr``, the loss balancer's parameters (those under the train module's
    ``balancer``) get their own optimizer of the same kind at that rate, and the dense optimizer
    leaves them out. Both are unnamed in the combination, so optimizer state keys stay the
    parameters' names either way.

    Example::

        opt = make_optimizer(dmp, "adam", 1e-3, balance_lr=0.025)
    """
    if name == "adam":
        make = torch.optim.Adam
    elif name == "adagrad":
        make = torch.optim.Adagrad
    elif name == "sgd":
        make = torch.optim.SGD
    else:
        raise ValueError(f"train.dense_optimizer: unknown '{name}'")
    dense_params = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    balance_params: Dict[str, nn.Parameter] = {}
    if balance_lr is not None:
        if not balance_lr > 0:
            raise ValueError(f"train.balance.lr: must be positive, got {balance_lr}")
        balance_params = {k: p for k, p in dense_params.items() if _plain_key(k).startswith("balancer.")}
        dense_params = {k: p for k, p in dense_params.items() if k not in balance_params}
    parts = [dmp.fused_optimizer, KeyedOptimizerWrapper(dense_params, lambda params: make(params, lr=lr))]
    if balance_params:
        parts.append(KeyedOptimizerWrapper(balance_params, lambda params: make(params, lr=balance_lr)))
    return CombinedOptimizer(parts)


def copy_unsharded_state(dmp: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Loads a plain (unsharded) state dict into a DMP model, copying each rank's shards.

    Keys are matched after removing DMP/DDP wrapper prefixes.
    """
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    own = dmp.state_dict()
    with torch.no_grad():
        for key, target in own.items():
            src_key = _plain_key(key)
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
                from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

                shape, offset = compute_local_shape_and_global_offset(
                    target.shape, target.device_mesh, target.placements
                )
                idx = tuple(slice(o, o + s) for o, s in zip(offset, shape))
                local.copy_(full[idx])
            else:
                target.copy_(src)


def _plain_key(key: str) -> str:
    for prefix in ("_dmp_wrapped_module.", "module."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key
