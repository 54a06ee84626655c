"""Learning-rate schedules (``train.lr_schedule``) for the dense and the fused sparse optimizers.

One ``torch.optim.lr_scheduler.LambdaLR`` drives every parameter group of the trainer's
``CombinedOptimizer``: each group gets a multiplier function of the number of optimizer steps
taken. The fused embedding optimizers inside DistributedModelParallel read their group's ``lr`` and
hand it to their TBE kernels on ``zero_grad()`` / ``step()`` (as TorchRec's ``WarmupOptimizer``
relies on), so setting the groups' ``lr`` is all a schedule needs for sparse and dense alike.
``WarmupOptimizer`` itself does not fit: it gives every group one rate, whereas the dense,
sparse and balancer rates differ here.

The multiplier for the step that follows ``s`` completed steps (so the first step uses
``multiplier(0)``):

- ``s < warmup_steps``: ``(s + 1) / warmup_steps`` (linear warmup reaching the rate on its last step);
- then with ``t = s - warmup_steps`` and ``n = total_steps - warmup_steps`` decay steps:
  ``constant`` 1; ``linear`` ``1 - (1 - m) p``; ``cosine`` ``m + (1 - m)(1 + cos(pi p)) / 2``
  with ``p = min(t / (n - 1), 1)`` (``m = min_lr_ratio``, reached on the last step);
  ``step`` ``gamma ** (t // step_size)``.

Example::

    scheduler = make_scheduler(optimizer, sparse_parts(dmp, optimizer), cfg.train.lr_schedule, total_steps=500)
    ...  # after each optimizer step:
    scheduler.step()
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Sequence

from torch.optim.lr_scheduler import LambdaLR

from mtl_torchrec.config import LRScheduleConfig

Multiplier = Callable[[int], float]


def lr_multiplier(cfg: LRScheduleConfig, total_steps: int) -> Multiplier:
    """The learning-rate factor as a function of completed optimizer steps (module docstring).

    ``total_steps`` is the run's last step (>= 1): where ``linear`` and ``cosine`` reach
    ``cfg.min_lr_ratio``. Raises ValueError for ``total_steps < 1`` or an unknown ``cfg.decay``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup, m = cfg.warmup_steps, cfg.min_lr_ratio
    span = max(total_steps - warmup - 1, 1)

    def progress(t: int) -> float:
        return min(t / span, 1.0)

    decays: Dict[str, Multiplier] = {
        "constant": lambda t: 1.0,
        "linear": lambda t: 1.0 - (1.0 - m) * progress(t),
        "cosine": lambda t: m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress(t))),
        "step": lambda t: cfg.gamma ** (t // cfg.step_size),
    }
    if cfg.decay not in decays:
        raise ValueError(f"train.lr_schedule.decay: unknown '{cfg.decay}' (known: {sorted(decays)})")
    decay = decays[cfg.decay]

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return decay(step - warmup)

    return multiplier


def _constant(step: int) -> float:
    return 1.0


def make_scheduler(
    optimizer: Any,
    sparse_optimizers: Sequence[Any],
    cfg: LRScheduleConfig,
    total_steps: int,
    completed_steps: int = 0,
) -> LambdaLR:
    """A ``LambdaLR`` over every parameter group of ``optimizer`` (a torch or TorchRec keyed
    optimizer), positioned after ``completed_steps`` optimizer steps: the groups' ``lr`` is set
    for the next step at once.

    Groups of ``sparse_optimizers`` (those that train tables:
    :func:`~mtl_torchrec.distributed.optim.sparse_parts`; matched by identity) follow the schedule when ``cfg.sparse``, the others (dense, balancer, any added later) when
    ``cfg.dense``; the rest keep their rate. The base rates are the groups' ``initial_lr`` when a
    scheduler was made on them before (so rebuilding at another position is exact), else their
    current ``lr``. Call ``step()`` after each optimizer step.
    """
    schedule = lr_multiplier(cfg, total_steps)
    sparse_ids = {id(g) for o in sparse_optimizers for g in o.param_groups}
    lambdas: List[Multiplier] = []
    for group in optimizer.param_groups:
        scheduled = cfg.sparse if id(group) in sparse_ids else cfg.dense
        lambdas.append(schedule if scheduled else _constant)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    # LambdaLR takes one step in its constructor: last_epoch n - 1 leaves it at n.
    return LambdaLR(optimizer, lambdas, last_epoch=completed_steps - 1)


def group_rates(optimizer: Any, sparse_optimizers: Sequence[Any]) -> Dict[str, float]:
    """The current ``lr`` of the first sparse (table) and the first other parameter group, as
    ``{"sparse": ..., "dense": ...}`` (a key is left out when there is no such group)."""
    sparse_ids = {id(g) for o in sparse_optimizers for g in o.param_groups}
    out: Dict[str, float] = {}
    for g in optimizer.param_groups:
        out.setdefault("sparse" if id(g) in sparse_ids else "dense", float(g["lr"]))
    return out
