"""The optimizers of a DMP model: fused sparse (inside DMP) combined with dense torch optimizers.

Example::

    opt = make_optimizer(dmp, "adam", 1e-3, balance_lr=0.025)
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from mtl_torchrec.config import DENSE_OPTIMIZERS
from mtl_torchrec.distributed.state import plain_key

# The torch optimizer for each name of DENSE_OPTIMIZERS (train.dense_optimizer).
TORCH_OPTIMIZERS: Dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}


def make_optimizer(
    dmp: DistributedModelParallel,
    name: str,
    lr: float,
    balance_lr: Optional[float] = None,
    adapter_lr: Optional[float] = None,
    adapter_weight_decay: float = 0.0,
) -> CombinedOptimizer:
    """The fused sparse optimizer (already inside DMP) combined with a dense one for the rest.

    With ``balance_lr``, the loss balancer's parameters (those under the train module's
    ``balancer``) get their own optimizer of the same kind at that rate, and the dense optimizer
    leaves them out. With ``adapter_lr`` or ``adapter_weight_decay``, the text features' adapters
    (parameters under ``feature_modules.<name>.adapter``) get their own optimizer of the same kind at
    that rate (default ``lr``) with decoupled weight decay (AdamW for ``adam``): text vectors have
    hundreds of inputs per row and fit the training items faster than the rest of the model. All are
    unnamed in the combination, so optimizer state keys stay the parameters' names either way. Raises ValueError naming ``train.dense_optimizer`` (unknown) or
    ``train.balance.lr`` (not positive).

    Example::

        opt = make_optimizer(dmp, "adam", 1e-3, balance_lr=0.025)
    """
    if name not in TORCH_OPTIMIZERS:
        raise ValueError(f"train.dense_optimizer: unknown '{name}' (known: {list(DENSE_OPTIMIZERS)})")
    make = TORCH_OPTIMIZERS[name]
    dense_params = dict(in_backward_optimizer_filter(dmp.named_parameters()))
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
    parts = [dmp.fused_optimizer, KeyedOptimizerWrapper(dense_params, lambda params: make(params, lr=lr))]
    if adapter_params:
        a_lr = adapter_lr if adapter_lr is not None else lr
        a_make = torch.optim.AdamW if name == "adam" else make
        parts.append(KeyedOptimizerWrapper(
            adapter_params, lambda params: a_make(params, lr=a_lr, weight_decay=adapter_weight_decay)))
    if balance_params:
        parts.append(KeyedOptimizerWrapper(balance_params, lambda params: make(params, lr=balance_lr)))
    return CombinedOptimizer(parts)


def _is_adapter(key: str) -> bool:
    """Whether the plain parameter name ``key`` belongs to a text feature's adapter."""
    parts = key.split(".")
    return "feature_modules" in parts and parts[parts.index("feature_modules") + 2:][:1] == ["adapter"]
