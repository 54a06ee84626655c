"""The optimizers of a DMP model: fused sparse (inside DMP) combined with dense torch optimizers.

Example::

    opt = make_optimizer(dmp, "adam", 1e-3, sparse_optimizer="rowwise_adagrad", sparse_lr=0.05, balance_lr=0.025)
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torchrec.distributed.embedding import ShardedEmbeddingCollection
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from mtl_torchrec.config import DENSE_OPTIMIZERS, SPARSE_OPTIMIZERS
from mtl_torchrec.distributed.state import plain_key
from mtl_torchrec.modules.frozen_ebc import ShardedFrozenEmbeddingBagCollection


def fused(cls: Callable[..., torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    """``cls`` with ``fused=True``: torch's one-kernel update over all parameters (CPU and CUDA),
    about 4x faster than the default per-parameter loop on CPU for the 650k dense parameters of
    benchmarks/speed.py's reference MMoE (1.1 ms vs 4.5-6.4 ms per step, one thread), with the same
    update rule and state."""
    return lambda params, **kwargs: cls(params, fused=True, **kwargs)


# The torch optimizer for each name of DENSE_OPTIMIZERS (train.dense_optimizer).
TORCH_OPTIMIZERS: Dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": fused(torch.optim.Adam),
    "adagrad": fused(torch.optim.Adagrad),
    "sgd": fused(torch.optim.SGD),
}

# The same update as each fused TBE optimizer (train.sparse_optimizer), for tables that a plan
# replicates (data_parallel): their dense kernel has no fused optimizer, and DDP averages their
# gradients before the step, so every replica takes the same step.
REPLICATED_TABLE_OPTIMIZERS: Dict[str, Callable[..., torch.optim.Optimizer]] = {
    "rowwise_adagrad": lambda params, lr: RowWiseAdagrad(params, lr=lr, eps=1e-8),
    "adagrad": lambda params, lr: fused(torch.optim.Adagrad)(params, lr=lr, eps=1e-8),
    "sgd": lambda params, lr: fused(torch.optim.SGD)(params, lr=lr),
}


class ReplicatedTableOptimizer(KeyedOptimizerWrapper):
    """The sparse optimizer (``train.sparse_optimizer`` at ``train.sparse_lr``) of the embedding
    tables that a plan replicates instead of fusing (``data_parallel``, which TorchRec's planner
    picks for small tables): without it the dense optimizer would train them at ``dense_lr``."""


def replicated_tables(dmp: DistributedModelParallel) -> Dict[str, nn.Parameter]:
    """The trainable embedding tables of ``dmp`` that no fused optimizer updates, by parameter name.

    These are the ``data_parallel`` tables of every sharded EBC and EC (sequence tables; their
    weights are ordinary parameters of the dense kernel); frozen (text) tables are left out.
    """
    table_ids = set()
    for module in dmp.modules():
        if isinstance(module, ShardedEmbeddingBagCollection) and not isinstance(
            module, ShardedFrozenEmbeddingBagCollection
        ):
            table_ids.update(id(p) for p in module.embedding_bags.parameters())
        elif isinstance(module, ShardedEmbeddingCollection):
            table_ids.update(id(p) for p in module.embeddings.parameters())
    return {k: p for k, p in in_backward_optimizer_filter(dmp.named_parameters()) if id(p) in table_ids}


def sparse_parts(dmp: DistributedModelParallel, optimizer: CombinedOptimizer) -> List[KeyedOptimizer]:
    """The parts of ``optimizer`` (from :func:`make_optimizer`) that train embedding tables: DMP's
    fused optimizer and the :class:`ReplicatedTableOptimizer`, if any; ``train.lr_schedule.sparse``
    applies to their parameter groups."""
    parts: List[KeyedOptimizer] = [dmp.fused_optimizer]
    parts += [o for _, o in optimizer.optimizers if isinstance(o, ReplicatedTableOptimizer)]
    return parts


def make_optimizer(
    dmp: DistributedModelParallel,
    name: str,
    lr: float,
    *,
    sparse_optimizer: str,
    sparse_lr: float,
    balance_lr: Optional[float] = None,
    adapter_lr: Optional[float] = None,
    adapter_weight_decay: float = 0.0,
) -> CombinedOptimizer:
    """The fused sparse optimizer (already inside DMP) combined with a dense one for the rest.

    ``sparse_optimizer`` and ``sparse_lr`` must be those the model was sharded with
    (:func:`~mtl_torchrec.distributed.sharding.shard_module`): tables that the plan replicates
    (:func:`replicated_tables`) get that optimizer here as a :class:`ReplicatedTableOptimizer`, so
    every table is trained by the sparse optimizer whatever the plan.

    With ``balance_lr``, the loss balancer's parameters (those under the train module's
    ``balancer``) get their own optimizer of the same kind at that rate, and the dense optimizer
    leaves them out. With ``adapter_lr`` or ``adapter_weight_decay``, the text features' adapters
    (parameters under ``feature_modules.<name>.adapter``) get their own optimizer of the same kind at
    that rate (default ``lr``) with weight decay (decoupled, AdamW, for ``adam``; L2 otherwise): text vectors have
    hundreds of inputs per row and fit the training items faster than the rest of the model. All are
    unnamed in the combination, so optimizer state keys stay the parameters' names either way. Raises ValueError naming ``train.dense_optimizer`` (unknown) or
    ``train.balance.lr`` (not positive).

    Example::

        opt = make_optimizer(dmp, "adam", 1e-3, sparse_optimizer="rowwise_adagrad", sparse_lr=0.05, balance_lr=0.025)
    """
    if name not in TORCH_OPTIMIZERS:
        raise ValueError(f"train.dense_optimizer: unknown '{name}' (known: {list(DENSE_OPTIMIZERS)})")
    if sparse_optimizer not in REPLICATED_TABLE_OPTIMIZERS:
        raise ValueError(f"train.sparse_optimizer: unknown '{sparse_optimizer}' (known: {list(SPARSE_OPTIMIZERS)})")
    make = TORCH_OPTIMIZERS[name]
    tables = replicated_tables(dmp)
    dense_params = {k: p for k, p in in_backward_optimizer_filter(dmp.named_parameters()) if k not in tables}
    balance_params: Dict[str, nn.Parameter] = {}
    if balance_lr is not None:
        if not balance_lr > 0:
            raise ValueError(f"train.balance.lr: must be positive, got {balance_lr}")
        balance_params = {k: p for k, p in dense_params.items() if plain_key(k).startswith("balancer.")}
        dense_params = {k: p for k, p in dense_params.items() if k not in balance_params}
    adapter_params: Dict[str, nn.Parameter] = {}
    if adapter_lr is not None or adapter_weight_decay:
        adapter_params = {k: p for k, p in dense_params.items() if _is_adapter(plain_key(k))}
        dense_params = {k: p for k, p in dense_params.items() if k not in adapter_params}
    parts: List[KeyedOptimizer] = [dmp.fused_optimizer]
    if tables:
        make_table = REPLICATED_TABLE_OPTIMIZERS[sparse_optimizer]
        parts.append(ReplicatedTableOptimizer(tables, lambda params: make_table(params, sparse_lr)))
    parts.append(KeyedOptimizerWrapper(dense_params, lambda params: make(params, lr=lr)))
    if adapter_params:
        a_lr = adapter_lr if adapter_lr is not None else lr
        a_make = fused(torch.optim.AdamW) if name == "adam" else make
        parts.append(KeyedOptimizerWrapper(
            adapter_params, lambda params: a_make(params, lr=a_lr, weight_decay=adapter_weight_decay)))
    if balance_params:
        parts.append(KeyedOptimizerWrapper(balance_params, lambda params: make(params, lr=balance_lr)))
    return CombinedOptimizer(parts)


def _is_adapter(key: str) -> bool:
    """Whether the plain parameter name ``key`` belongs to a text feature's adapter."""
    parts = key.split(".")
    return "feature_modules" in parts and parts[parts.index("feature_modules") + 2:][:1] == ["adapter"]
