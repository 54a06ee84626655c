"""Process groups, sharding plans and DistributedModelParallel wrapping.

``row_wise`` and ``table_row_wise`` are refused by TorchRec's planner on CPU, so every fixed
strategy is built by hand with ``construct_module_sharding_plan``; ``planner`` asks
``EmbeddingShardingPlanner`` to choose. Managed-collision tables (``vocab: zch``, TorchRec's
``ManagedCollisionEmbeddingBagCollection``) are always sharded row-wise, the one sharding type
TorchRec's MC sharder has (each rank remaps the keys of its block of the key range to its rows).

Models built elsewhere (their own EBCs, planner and DMP call) that hold a
:class:`~mtl_torchrec.modules.frozen_ebc.FrozenEmbeddingBagCollection` shard with
:func:`default_sharders` (TorchRec's defaults plus the frozen-table sharder) and may check a
sharder list with :func:`check_sharders`.

Example::

    ctx = init_distributed()                      # torchrun env, or a 1-process group
    dmp = shard_module(train_module, ctx, strategy="row_wise", sparse_optimizer="rowwise_adagrad",
                       sparse_lr=0.05)
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.mc_embeddingbag import (
    ManagedCollisionEmbeddingBagCollectionSharder,
    ShardedManagedCollisionEmbeddingBagCollection,
)
from torchrec.distributed.model_parallel import DataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.utils import sharder_name
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    get_default_sharders,
    row_wise,
    table_row_wise,
    table_wise,
)
from torchrec.distributed.types import ModuleSharder, ParameterSharding, ShardingEnv, ShardingPlan, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection

from mtl_torchrec.config import SHARDING_STRATEGIES, SPARSE_OPTIMIZERS
from mtl_torchrec.distributed.context import DistContext
from mtl_torchrec.modules.frozen_ebc import (
    FrozenEmbeddingBagCollection,
    FrozenEmbeddingBagCollectionSharder,
)

# FBGEMM's fused optimizer for each name of SPARSE_OPTIMIZERS (train.sparse_optimizer).
EMB_OPTIM_TYPES: Dict[str, EmbOptimType] = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "sgd": EmbOptimType.EXACT_SGD,
}


class SequenceTableSharder(EmbeddingCollectionSharder):
    """TorchRec's ``EmbeddingCollection`` sharder (sequence tables, :mod:`mtl_torchrec.model.sequence`)
    without ``data_parallel``: with torchrec 1.8 a replicated sequence table looks up the first
    features of the batch's KJT rather than its own (wrong shapes whenever other features come
    first), so the planner must not pick it. :func:`hand_plan` shards sequence tables row-wise where
    a strategy would replicate them (``data_parallel``) or has no sequence form (``table_row_wise``)."""

    def sharding_types(self, compute_device_type: str) -> List[str]:
        """The parent's sharding types less ``data_parallel``."""
        return [t for t in super().sharding_types(compute_device_type) if t != ShardingType.DATA_PARALLEL.value]


# Strategies that a sequence table (an EmbeddingCollection) takes row-wise instead (see SequenceTableSharder).
SEQUENCE_ROW_WISE = ("data_parallel", "table_row_wise")


def make_sharders(sparse_optimizer: str, sparse_lr: float, extra: Optional[List[ModuleSharder]] = None) -> List[ModuleSharder]:
    """EBC, EC (sequence table, :mod:`mtl_torchrec.model.sequence`) and managed-collision EBC
    (``vocab: zch``) sharders whose fused kernels apply the sparse optimizer inside the backward
    pass, and the frozen-table sharder."""
    if sparse_optimizer not in EMB_OPTIM_TYPES:
        raise ValueError(f"train.sparse_optimizer: unknown '{sparse_optimizer}' (known: {list(SPARSE_OPTIMIZERS)})")
    fused: Dict[str, Any] = {
        "optimizer": EMB_OPTIM_TYPES[sparse_optimizer],
        "learning_rate": sparse_lr,
        "eps": 1e-8,
    }
    return list(extra or []) + [FrozenEmbeddingBagCollectionSharder(), EmbeddingBagCollectionSharder(fused_params=fused),
                                SequenceTableSharder(fused_params=dict(fused)), managed_sharder(fused)]


class CpuShardedManagedCollisionEBC(ShardedManagedCollisionEmbeddingBagCollection):
    """TorchRec's sharded managed-collision EBC on CPU, where an evicted key's row passes to the key
    that takes its slot as it is (weights and optimizer state), as in TorchRec's unsharded
    ``ManagedCollisionEmbeddingBagCollection`` (whose ``evict`` does nothing).

    The sharded module resets evicted rows with fbgemm's ``reset_weight_momentum``, which has no CPU
    kernel (``NotImplementedError: Could not run 'fbgemm::reset_weight_momentum' with arguments from
    the 'CPU' backend``) and is called at the first step that admits a key; on GPU TorchRec's module
    is used unchanged."""

    def _evict(self, evictions_per_table: Dict[str, Optional[torch.Tensor]]) -> None:
        """Leaves the rows of evicted keys as they are (see the class docstring)."""
        return None


class ManagedCollisionSharder(ManagedCollisionEmbeddingBagCollectionSharder):
    """TorchRec's managed-collision EBC sharder (row-wise only); on CPU it offers row-wise to the
    planner too and builds :class:`CpuShardedManagedCollisionEBC`."""

    def sharding_types(self, compute_device_type: str) -> List[str]:
        """Row-wise, also on CPU: TorchRec's sharder offers the intersection of its EBC sharder's types
        and the MC sharder's (row-wise only), and the EBC sharder lists row-wise for GPUs only, which
        leaves the planner nothing on CPU; the row-wise EBC runs on CPU (the hand plans use it)."""
        return list(self._mc_sharder.sharding_types(compute_device_type))

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> List[str]:
        """TorchRec's MC kernels that its EBC sharder offers on ``compute_device_type`` (the MC sharder
        lists UVM and key-value kernels whatever the device, which the planner refuses on CPU)."""
        own = super().compute_kernels(sharding_type, compute_device_type)
        usable = set(self._e_sharder.compute_kernels(sharding_type, compute_device_type))
        return [k for k in own if k in usable]

    def shard(self, module: ManagedCollisionEmbeddingBagCollection, params: Dict[str, ParameterSharding],
              env: ShardingEnv, device: Optional[torch.device] = None,
              module_fqn: Optional[str] = None) -> ShardedManagedCollisionEmbeddingBagCollection:
        """TorchRec's sharded module, or its CPU form on a CPU ``device``."""
        if device is None or device.type != "cpu":
            return super().shard(module, params, env, device, module_fqn)
        return CpuShardedManagedCollisionEBC(module, params, ebc_sharder=self._e_sharder,  # type: ignore[arg-type]
                                             mc_sharder=self._mc_sharder, env=env, device=device)


def managed_sharder(fused_params: Optional[Dict[str, Any]] = None) -> ModuleSharder:
    """The sharder of ``ManagedCollisionEmbeddingBagCollection`` (``vocab: zch`` tables, row-wise
    only: :class:`ManagedCollisionSharder`), its EBC sharder with ``fused_params``."""
    ebc = EmbeddingBagCollectionSharder(fused_params=dict(fused_params)) if fused_params is not None else None
    return ManagedCollisionSharder(ebc_sharder=ebc)


def default_sharders(fused_params: Optional[Dict[str, Any]] = None) -> List[ModuleSharder]:
    """TorchRec's ``get_default_sharders()`` plus :class:`FrozenEmbeddingBagCollectionSharder`, for
    ``DistributedModelParallel(..., sharders=default_sharders())`` and the planner.

    DMP picks a sharder by the module's exact type, so without ours a frozen (text) table is not
    sharded at all: it stays a plain module, replicated on every rank and trained by DDP's
    optimizer path. ``fused_params`` (e.g. ``{"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "learning_rate": 0.05}``) configure the plain ``EmbeddingBagCollection`` sharder's fused
    optimizer, and those of the ``EmbeddingCollection`` sharder (sequence tables; TorchRec's is
    replaced by :class:`SequenceTableSharder`) too; the frozen sharder always keeps its learning rate 0.

    Example::

        dmp = DistributedModelParallel(model, device=device, sharders=default_sharders())
    """
    stock = list(get_default_sharders())
    if fused_params is not None:
        stock = [s for s in stock if type(s) is not EmbeddingBagCollectionSharder]
        stock.insert(0, EmbeddingBagCollectionSharder(fused_params=dict(fused_params)))
    # The sequence-table sharder replaces TorchRec's EC sharder (see SequenceTableSharder), with
    # ``fused_params`` when given, else the stock sharder's own.
    def sequence(s: ModuleSharder) -> ModuleSharder:
        own = fused_params if fused_params is not None else getattr(s, "fused_params", None)
        return SequenceTableSharder(fused_params=dict(own) if own is not None else None)

    stock = [sequence(s) if type(s) is EmbeddingCollectionSharder else s for s in stock]
    # The managed-collision EBC's (vocab: zch), with ``fused_params`` when given.
    stock = [s for s in stock if not isinstance(s, ManagedCollisionEmbeddingBagCollectionSharder)]
    stock.append(managed_sharder(fused_params))
    return [FrozenEmbeddingBagCollectionSharder(), *stock]


def check_sharders(module: nn.Module, sharders: List[ModuleSharder]) -> None:
    """Raises ValueError naming the first :class:`FrozenEmbeddingBagCollection` in ``module``
    (by its path, e.g. ``model.feature_modules.title.table``) when ``sharders`` has no sharder for
    it: TorchRec's DMP would silently leave that table unsharded and copied on every rank.
    Call it before wrapping a model in DMP, or pass :func:`default_sharders`."""
    covered = {sharder_name(s.module_type) for s in sharders}
    for path, m in module.named_modules():
        if isinstance(m, FrozenEmbeddingBagCollection) and sharder_name(type(m)) not in covered:
            raise ValueError(
                f"{path or '<root module>'}: a {type(m).__name__} but no sharder for it among the sharders "
                f"({sorted(covered)}); DistributedModelParallel would leave this frozen table unsharded and "
                "copied on every rank. Pass mtl_torchrec.distributed.sharding.default_sharders(), or add "
                "mtl_torchrec.modules.frozen_ebc.FrozenEmbeddingBagCollectionSharder() to the list"
            )


def _table_modules(module: nn.Module) -> Dict[str, Any]:
    """Path -> (collection, its table configs) of every EBC, EC (sequence tables) and managed-collision
    EBC in ``module`` (not the EBC inside the latter: DMP shards the pair as one module)."""
    found: Dict[str, Any] = {}
    managed = [name for name, m in module.named_modules() if isinstance(m, ManagedCollisionEmbeddingBagCollection)]
    for name, m in module.named_modules():
        if any(name.startswith(f"{p}.") for p in managed):
            continue
        if isinstance(m, ManagedCollisionEmbeddingBagCollection):
            found[name] = (m, m._managed_collision_collection.embedding_configs())
        elif isinstance(m, EmbeddingBagCollection):
            found[name] = (m, m.embedding_bag_configs())
        elif isinstance(m, EmbeddingCollection):
            found[name] = (m, m.embedding_configs())
    return found


def hand_plan(module: nn.Module, strategy: str, world_size: int, local_world_size: int, device_type: str) -> ShardingPlan:
    """The same strategy for every table of every EBC and EC in ``module``; tables spread
    round-robin over ranks for table-wise placement (over hosts for ``table_row_wise``). Sequence
    tables (EC) are sharded row-wise under ``data_parallel`` and ``table_row_wise`` (see
    :class:`SequenceTableSharder`), managed-collision tables row-wise under every strategy."""
    kernel = EmbeddingComputeKernel.FUSED.value
    plan: Dict[str, Any] = {}
    counter = 0
    for path, (ebc, configs) in _table_modules(module).items():
        per_table = {}
        sequence = isinstance(ebc, EmbeddingCollection)
        managed = isinstance(ebc, ManagedCollisionEmbeddingBagCollection)
        for cfg in configs:
            if managed or (sequence and strategy in SEQUENCE_ROW_WISE):
                gen = row_wise(compute_kernel=kernel)
            elif strategy == "table_wise":
                gen = table_wise(rank=counter % world_size, compute_kernel=kernel)
            elif strategy == "row_wise":
                gen = row_wise(compute_kernel=kernel)
            elif strategy == "column_wise":
                gen = column_wise(ranks=list(range(world_size)), compute_kernel=kernel)
            elif strategy == "table_column_wise":
                gen = column_wise(ranks=[counter % world_size] * 2, compute_kernel=kernel)
            elif strategy == "table_row_wise":
                gen = _with_kernel(table_row_wise(host_index=counter % max(1, world_size // local_world_size)), kernel)
            elif strategy == "data_parallel":
                gen = data_parallel()
            else:
                raise ValueError(f"train.sharding: unknown strategy '{strategy}' (known: {list(SHARDING_STRATEGIES)})")
            per_table[cfg.name] = gen
            counter += 1
        sharder = SequenceTableSharder() if sequence else managed_sharder() if managed else _frozen_sharder(ebc)
        plan[path] = construct_module_sharding_plan(
            ebc, per_table, sharder=sharder,
            local_size=local_world_size, world_size=world_size, device_type=device_type,
        )
    return ShardingPlan(plan=plan)


def _plan_managed_row_wise(plan: ShardingPlan, module: nn.Module, ctx: DistContext) -> None:
    """Puts every managed-collision EBC of ``module`` into ``plan`` row-wise (in place), replacing what
    the planner planned inside it."""
    managed = [p for p, (m, _) in _table_modules(module).items() if isinstance(m, ManagedCollisionEmbeddingBagCollection)]
    if not managed:
        return
    rows = hand_plan(module, "row_wise", ctx.world_size, ctx.local_world_size, ctx.device.type).plan
    for path in list(plan.plan):
        if any(path == p or path.startswith(f"{p}.") for p in managed):
            del plan.plan[path]
    for path in managed:
        plan.plan[path] = rows[path]


def _with_kernel(gen: Any, kernel: str) -> Any:
    """``gen`` with its compute kernel set: TorchRec's ``table_row_wise`` takes none and would
    pick the dense kernel, whose tables the fused sparse optimizer never updates."""

    def generate(*args: Any, **kwargs: Any) -> ParameterSharding:
        sharding = gen(*args, **kwargs)
        sharding.compute_kernel = kernel
        return sharding

    return generate


class SingleRankDataParallel(DataParallelWrapper):
    """DMP's wrapper for the unsharded (dense) part on a one-rank group: moves it to the device
    and leaves it unwrapped. DDP over one rank averages nothing but still copies every gradient
    into its buckets and runs a one-process all-reduce each step; the state dict is the same
    (:data:`~mtl_torchrec.distributed.state.WRAPPER_PREFIXES` covers both forms).

    Example::

        DistributedModelParallel(module, env, device, plan=plan, data_parallel_wrapper=SingleRankDataParallel())
    """

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        """Moves ``dmp``'s unsharded parameters to ``device``; ValueError for more than one rank."""
        if env.world_size != 1:
            raise ValueError(f"SingleRankDataParallel is for one rank; this group has {env.world_size}")
        dmp.module.to(device)


def _frozen_sharder(ebc: EmbeddingBagCollection) -> Optional[ModuleSharder]:
    """The sharder of frozen (text) tables; None lets TorchRec pick its default for plain EBCs."""
    return FrozenEmbeddingBagCollectionSharder() if isinstance(ebc, FrozenEmbeddingBagCollection) else None


def column_split_ok(module: nn.Module, world_size: int) -> None:
    """Checks that column-wise sharding can split every table of ``module`` over ``world_size`` ranks.

    Raises ValueError naming the first table whose ``embedding_dim`` is not divisible by
    ``2 * world_size`` (any width passes with one rank).
    """
    for _, configs in _table_modules(module).values():
        for cfg in configs:
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
    """Wraps ``module`` in DMP: embedding tables sharded with fused optimizers, the rest DDP (on
    one rank the rest stays unwrapped: :class:`SingleRankDataParallel`).

    ``strategy`` is a ``train.sharding`` name (``planner`` lets TorchRec's planner choose);
    ``sparse_optimizer`` and ``sparse_lr`` configure the fused table optimizer. A collective:
    every rank calls it. Raises ValueError naming the ``train.*`` key for an unknown optimizer or
    strategy, or a table width that column-wise sharding cannot split.
    """
    sharders = make_sharders(sparse_optimizer, sparse_lr, extra_sharders)
    check_sharders(module, sharders)
    pg = dist.GroupMember.WORLD
    if strategy == "planner":
        topology = Topology(
            world_size=ctx.world_size, compute_device=ctx.device.type, local_world_size=ctx.local_world_size
        )
        # Managed-collision tables are planned row-wise by hand: TorchRec's planner refuses their MCH
        # module's one input bucket on several ranks ("uneven buckets per rank").
        planned = [s for s in sharders if not isinstance(s, ManagedCollisionEmbeddingBagCollectionSharder)]
        plan = EmbeddingShardingPlanner(topology=topology).collective_plan(module, planned, pg)
        _plan_managed_row_wise(plan, module, ctx)
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
        data_parallel_wrapper=SingleRankDataParallel() if ctx.world_size == 1 else None,
    )
