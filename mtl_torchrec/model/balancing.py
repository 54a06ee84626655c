"""Loss balancers: how per-task losses become the one loss that is back-propagated.

Every balancer is an ``nn.Module`` with ``forward(losses, shared, labelled) -> total`` and
``weights() -> Dict[str, float]``; its parameters and buffers live in the train module, so DMP/DDP
synchronise them and checkpoints capture them. ``shared`` is the representation every task reads
(the backbone input); the gradient-based balancers differentiate the task losses with respect to
it only, never with respect to parameters, which keeps them cheap and valid beside fused sparse
optimizers (those never expose embedding-table gradients).

* :class:`UncertaintyWeights` (Kendall et al., CVPR 2018): learned log-variances ``s_k``,
  ``L = sum_k exp(-s_k) L_k + s_k``.
* :class:`GradNorm` (Chen et al., ICML 2018): learned positive weights, renormalised to sum to
  the task count, pulled so that each weighted task's gradient norm follows its relative
  training rate. The gradient norms are taken on the shared representation.
* :class:`MGDAUB` (Sener & Koltun, NeurIPS 2018, the "upper bound" variant): per step, the
  minimum-norm convex combination of the task gradients on the shared representation.

These balancers run as leaf modules inside TorchRec's traced train module; their forward is
ordinary eager code and avoids branching on tensor values all the same.

Each is registered in :data:`BALANCERS` under its ``train.loss_balance`` name and built from the
configured task weights and ``train.balance`` by :meth:`Balancer.from_config`. A new balancer is
one registered :class:`Balancer` subclass.
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Optional, Type

import torch
import torch.distributed as dist
from torch import nn

from mtl_torchrec.core.registry import Registry
from mtl_torchrec.model.config import BalanceConfig


class Balancer(nn.Module):
    """A loss balancer: ``forward(losses, shared, labelled) -> total`` and ``weights() -> {task: weight}``.

    ``labelled`` (``[T]``, in task order) counts each task's labelled rows in this rank's batch. A
    task without a labelled row on any rank has a loss of 0 and no gradient: it gets weight 0 for
    that step and is left out of every learned or solved weighting (else, e.g., MGDA-UB's minimum
    norm point is that task's zero gradient, and the step trains nothing).

    Attributes:
        needs_positive_weights: whether the configured task weights must all be > 0 (they
            start a learned weight's logarithm or normalisation).
    """

    needs_positive_weights: ClassVar[bool] = False

    @classmethod
    def from_config(cls, weights: Dict[str, float], options: BalanceConfig) -> "Balancer":
        """The balancer for tasks with configured ``weights`` (``model.tasks[*].weight``, in
        task order) and the ``train.balance`` options."""
        raise NotImplementedError

    def weights(self) -> Dict[str, float]:
        """The current weight of each task's loss, by task name (for logging)."""
        raise NotImplementedError

    def parameter_groups(self, lr: Optional[float] = None) -> List[Dict[str, Any]]:
        """The balancer's learned parameters as one torch optimizer group at ``lr`` (default
        ``train.balance.lr``, 0.025); empty for a balancer without parameters.

        Learned weights need a rate of their own: at a dense rate (1e-3) they barely move within
        an epoch, and with the whole model at their rate the model's gradients swing them (a
        hand-built GradNorm head drove its rating weight to 0 within 75 steps).

        Example::

            opt = torch.optim.Adam([{"params": model.parameters(), "lr": 1e-3}, *balancer.parameter_groups()])
        """
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        return [{"params": params, "lr": BalanceConfig().lr if lr is None else lr}]


BALANCERS: Registry[Type[Balancer]] = Registry("train.loss_balance")


@BALANCERS.register("fixed")
class FixedWeights(Balancer):
    """Total loss as a fixed weighted sum of task losses: ``L = sum_k w_k L_k``.

    Args:
        weights: each task's weight, by name, in task order.

    Example::

        balancer = FixedWeights({"click": 1.0, "rating": 0.5})
        total = balancer({"click": l1, "rating": l2}, shared)   # l1 + 0.5 * l2
    """

    def __init__(self, weights: Dict[str, float]) -> None:
        super().__init__()
        self.task_names = list(weights)
        self.register_buffer("weight", torch.tensor([weights[t] for t in self.task_names]), persistent=False)

    @classmethod
    def from_config(cls, weights: Dict[str, float], options: BalanceConfig) -> "FixedWeights":
        """``cls(weights)``; ``options`` are unused."""
        return cls(weights)

    def forward(
        self, losses: Dict[str, torch.Tensor], shared: torch.Tensor, labelled: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``sum_k w_k L_k`` (``shared`` and ``labelled`` are unused).

        Args:
            losses (Dict[str, torch.Tensor]): each task's scalar loss, by name.
            shared (torch.Tensor): the representation every task reads, ``[B, d]``.
            labelled (Optional[torch.Tensor]): ``[T]`` labelled rows per task on this rank, in task
                order; None counts every task as present.

        Returns:
            torch.Tensor: the scalar total loss.
        """
        # A task without labelled rows has loss 0: it adds nothing, no mask needed.
        return sum(self.weight[i] * losses[t] for i, t in enumerate(self.task_names))

    def weights(self) -> Dict[str, float]:
        """The configured weights."""
        return {t: float(self.weight[i]) for i, t in enumerate(self.task_names)}


def _stack(losses: Dict[str, torch.Tensor], names: List[str]) -> torch.Tensor:
    return torch.stack([losses[t] for t in names])


def representation_gradients(losses: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """Gradient of each loss in ``losses`` (``[T]``) with respect to ``shared``, flattened: ``[T, numel]``.

    The graph is kept for the caller's own backward; a task that does not reach ``shared`` gets
    a zero gradient. The result carries no graph (``create_graph=False``). Call it with grad
    enabled: indexing ``losses`` under ``no_grad`` would cut the graph.
    """
    rows = []
    for i in range(losses.shape[0]):
        (g,) = torch.autograd.grad(losses[i], shared, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(shared).reshape(-1) if g is None else g.reshape(-1))
    return torch.stack(rows)


def _global_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over data-parallel ranks, so every rank derives the same weights from the global batch."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def present_tasks(labelled: Optional[torch.Tensor], n: int, device: torch.device) -> torch.Tensor:
    """``[n]`` bool: which tasks have a labelled row in the global batch (all, when not told)."""
    if labelled is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return _global_sum(labelled.detach().float()) > 0


def _needs_gradients(shared: torch.Tensor) -> bool:
    # Evaluation runs the train module under no_grad; there is nothing to balance then.
    return torch.is_grad_enabled() and shared.requires_grad


@BALANCERS.register("uncertainty")
class UncertaintyWeights(Balancer):
    """Homoscedastic-uncertainty weighting: ``L = sum_k exp(-s_k) L_k + s_k`` with learned ``s_k``.

    At the optimum ``exp(-s_k) = 1 / L_k``: a task with a noisier (larger) loss gets a smaller
    weight. ``s_k`` starts at ``-log(initial weight)`` so training starts from the configured
    task weights. Kendall et al., CVPR 2018.

    Args:
        initial_weights: each task's starting weight, by name, in task order; ValueError unless all > 0.

    Example::

        balancer = UncertaintyWeights({"click": 1.0, "rating": 1.0})
        total = balancer({"click": l1, "rating": l2}, shared)
        balancer.weights()   # {"click": exp(-s_click), "rating": exp(-s_rating)}
    """

    needs_positive_weights = True

    def __init__(self, initial_weights: Dict[str, float]) -> None:
        super().__init__()
        self.task_names = list(initial_weights)
        init = torch.tensor([initial_weights[t] for t in self.task_names], dtype=torch.float32)
        if bool((init <= 0).any()):
            raise ValueError("uncertainty weighting needs positive initial task weights")
        self.log_var = nn.Parameter(-init.log())

    @classmethod
    def from_config(cls, weights: Dict[str, float], options: BalanceConfig) -> "UncertaintyWeights":
        """``cls(weights)`` (the initial weights); ``options`` are unused."""
        return cls(weights)

    def forward(
        self, losses: Dict[str, torch.Tensor], shared: torch.Tensor, labelled: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``sum_k present_k (exp(-s_k) L_k + s_k)``: tasks without a labelled row in the global batch are
        left out (with ``labelled``, an all-reduce across ranks: every rank must call it).

        Args:
            losses (Dict[str, torch.Tensor]): each task's scalar loss, by name.
            shared (torch.Tensor): the representation every task reads, ``[B, d]``.
            labelled (Optional[torch.Tensor]): ``[T]`` labelled rows per task on this rank, in task
                order; None counts every task as present.

        Returns:
            torch.Tensor: the scalar total loss.
        """
        L = _stack(losses, self.task_names)
        # Without labels the regulariser s_k alone would pull that task's weight up.
        present = present_tasks(labelled, len(self.task_names), L.device).to(L.dtype)
        return ((torch.exp(-self.log_var) * L + self.log_var) * present).sum()

    def weights(self) -> Dict[str, float]:
        """``exp(-s_k)``, the current weight on each task's loss."""
        w = torch.exp(-self.log_var.detach())
        return {t: float(w[i]) for i, t in enumerate(self.task_names)}


@BALANCERS.register("gradnorm")
class GradNorm(Balancer):
    """GradNorm: learned task weights that equalise gradient norms relative to training rates.

    With ``G_k = ||d(w_k L_k)/d shared||``, ``r_k = (L_k / L_k(0)) / mean_j(L_j / L_j(0))`` and
    ``target_k = mean(G) * r_k ** alpha`` (a constant), the weights follow the gradient of
    ``sum_k |G_k - target_k|`` while the model follows ``sum_k w_k L_k``. Weights are clamped
    positive and renormalised to sum to the task count before each step. ``L_k(0)`` is each
    task's first non-zero loss, kept as a buffer (so it survives checkpoints).

    The reported total is ``sum_k w_k L_k``; the weight objective adds gradient but no value.
    Chen et al., ICML 2018.

    Args:
        initial_weights: each task's starting weight, by name, in task order; ValueError unless all > 0.
        alpha: the paper's asymmetry ``alpha`` (how strongly slow tasks are pulled up).
        eps: floor of a weight before renormalising.

    Example::

        balancer = GradNorm({"click": 1.0, "rating": 1.0}, alpha=1.5)
        total = balancer(losses, shared)    # shared must require grad
        sum(balancer.weights().values())    # 2.0
    """

    needs_positive_weights = True

    def __init__(self, initial_weights: Dict[str, float], alpha: float = 1.5, eps: float = 1e-4) -> None:
        super().__init__()
        self.task_names = list(initial_weights)
        n = len(self.task_names)
        init = torch.tensor([initial_weights[t] for t in self.task_names], dtype=torch.float32)
        if bool((init <= 0).any()):
            raise ValueError("GradNorm needs positive initial task weights")
        self.alpha = alpha
        self.eps = eps
        self.raw = nn.Parameter(init * n / init.sum())
        self.register_buffer("initial_losses", torch.full((n,), float("nan")))

    @classmethod
    def from_config(cls, weights: Dict[str, float], options: BalanceConfig) -> "GradNorm":
        """``cls(weights, alpha=train.balance.gradnorm_alpha)``."""
        return cls(weights, alpha=options.gradnorm_alpha)

    def _normalized(self) -> torch.Tensor:
        w = self.raw.clamp_min(self.eps)
        return w * (len(self.task_names) / w.sum())

    def forward(
        self, losses: Dict[str, torch.Tensor], shared: torch.Tensor, labelled: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``sum_k w_k L_k`` in value, plus the gradient of GradNorm's weight objective on the weights.

        Renormalises the weights first. Under ``no_grad`` (or when ``shared`` does not require grad)
        only the weighted sum is computed. Otherwise the task gradients on ``shared`` are taken, the
        first non-zero loss of each task is recorded, and training rates and squared gradient norms
        are summed across ranks (all-reduce: every rank must call it); tasks without a labelled row in
        the global batch are left out of the objective.

        Args:
            losses (Dict[str, torch.Tensor]): each task's scalar loss, by name.
            shared (torch.Tensor): the representation every task reads, ``[B, d]``.
            labelled (Optional[torch.Tensor]): ``[T]`` labelled rows per task on this rank, in task
                order; None counts every task as present.

        Returns:
            torch.Tensor: the scalar total loss.
        """
        L = _stack(losses, self.task_names)
        with torch.no_grad():
            # The renormalisation GradNorm applies after every update of the weights.
            self.raw.copy_(self._normalized())
        w = self.raw
        weighted = (w.detach() * L).sum()
        if not _needs_gradients(shared):
            return weighted
        Ld = L.detach()
        sq_norms = representation_gradients(L, shared).pow(2).sum(dim=1)
        with torch.no_grad():
            unset = torch.isnan(self.initial_losses) & (Ld > 0)
            self.initial_losses.copy_(torch.where(unset, Ld, self.initial_losses))
            # A task without a recorded start (no labelled rows yet) counts as on pace.
            known = ~torch.isnan(self.initial_losses)
            start = torch.nan_to_num(self.initial_losses, nan=1.0).clamp_min(1e-12)
            rate = torch.where(known, Ld / start, torch.ones_like(Ld))
            rate = _global_sum(rate)
            # Tasks without labelled rows this step are out of the balance: no rate, no norm.
            present = present_tasks(labelled, len(self.task_names), L.device).to(L.dtype)
            count = present.sum().clamp_min(1.0)
            rel = rate / ((rate * present).sum() / count).clamp_min(1e-12)
            norms = _global_sum(sq_norms).sqrt()
        G = w * norms
        target = ((G * present).sum() / count * rel.pow(self.alpha)).detach()
        weight_objective = ((G - target).abs() * present).sum()
        # Adds the weights' gradient without changing the reported loss value.
        return weighted + (weight_objective - weight_objective.detach())

    def weights(self) -> Dict[str, float]:
        """The current normalised weights (they sum to the task count)."""
        w = self._normalized().detach()
        return {t: float(w[i]) for i, t in enumerate(self.task_names)}


def min_norm_weights(
    gram: torch.Tensor, iterations: int = 50, allowed: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Frank-Wolfe for ``min_a a^T M a`` over the simplex, ``M = gram`` (``[T, T]``); returns ``a``.

    ``allowed`` (``[T]`` bool) restricts the simplex to those tasks: the others keep weight 0
    (the start is uniform over the allowed ones and only allowed vertices are ever chosen). With
    none allowed, every task is. Fixed iteration count and tensor-only updates, so the same ops
    run whatever the values.
    """
    n = gram.shape[0]
    if allowed is None:
        allowed = torch.ones(n, dtype=torch.bool, device=gram.device)
    allowed = torch.where(allowed.any(), allowed, torch.ones_like(allowed))
    a = allowed.to(gram.dtype) / allowed.sum().to(gram.dtype)
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    blocked = torch.where(allowed, torch.zeros_like(a), torch.full_like(a, float("inf")))
    for _ in range(iterations):
        Ma = gram @ a
        e = eye[torch.argmin(Ma + blocked)]
        # Exact line search between v = sum a_i g_i and the chosen vertex g_t.
        vv = a @ Ma
        vt = e @ Ma
        tt = e @ gram @ e
        denom = vv - 2 * vt + tt
        gamma = torch.where(denom > 1e-12, (vv - vt) / denom.clamp_min(1e-12), torch.zeros_like(denom))
        gamma = gamma.clamp(0.0, 1.0)
        a = (1 - gamma) * a + gamma * e
    return a


@BALANCERS.register("mgda_ub")
class MGDAUB(Balancer):
    """MGDA-UB: weights from the minimum-norm point in the convex hull of the task gradients,
    taken on the shared representation (the upper bound of the paper).

    The weights sum to the task count (``T * a``) so the loss scale matches fixed unit weights.
    ``normalize``: ``none`` (the paper's plain solve), ``l2`` (unit gradients) or ``loss``
    (gradients divided by their loss). Sener & Koltun, NeurIPS 2018.

    Args:
        task_names: the tasks, in task order.
        normalize: ``none``, ``l2`` or ``loss``; ValueError otherwise.
        iterations: Frank-Wolfe iterations of :func:`min_norm_weights` per step.

    Example::

        balancer = MGDAUB(["click", "rating"])
        total = balancer(losses, shared)    # shared must require grad
    """

    def __init__(self, task_names: List[str], normalize: str = "none", iterations: int = 50) -> None:
        super().__init__()
        if normalize not in ("none", "l2", "loss"):
            raise ValueError(f"MGDA-UB normalize must be none, l2 or loss, got '{normalize}'")
        self.task_names = list(task_names)
        self.normalize = normalize
        self.iterations = iterations
        n = len(self.task_names)
        self.register_buffer("last_weights", torch.ones(n))

    @classmethod
    def from_config(cls, weights: Dict[str, float], options: BalanceConfig) -> "MGDAUB":
        """``cls(task names, normalize=train.balance.mgda_normalize)``; the weight values are unused."""
        return cls(list(weights), normalize=options.mgda_normalize)

    def forward(
        self, losses: Dict[str, torch.Tensor], shared: torch.Tensor, labelled: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``sum_k T a_k L_k`` with ``a`` the min-norm point of the task gradients on ``shared``.

        The Gram matrix of the (normalised) gradients is summed across ranks (all-reduce: every rank
        must call it) and solved by :func:`min_norm_weights` over the tasks with a labelled row in the
        global batch. The weights carry no gradient. Under ``no_grad`` (or when ``shared`` does not
        require grad) the last solved weights are used.

        Args:
            losses (Dict[str, torch.Tensor]): each task's scalar loss, by name.
            shared (torch.Tensor): the representation every task reads, ``[B, d]``.
            labelled (Optional[torch.Tensor]): ``[T]`` labelled rows per task on this rank, in task
                order; None counts every task as present.

        Returns:
            torch.Tensor: the scalar total loss.
        """
        L = _stack(losses, self.task_names)
        if not _needs_gradients(shared):
            return (self.last_weights * L).sum()
        present = present_tasks(labelled, len(self.task_names), L.device)
        grads = representation_gradients(L, shared).double()
        with torch.no_grad():
            if self.normalize == "l2":
                grads = grads / grads.norm(dim=1, keepdim=True).clamp_min(1e-12)
            elif self.normalize == "loss":
                grads = grads / L.detach().double().clamp_min(1e-12).unsqueeze(1)
            a = min_norm_weights(_global_sum(grads @ grads.T), self.iterations, allowed=present)
            self.last_weights.copy_((a * len(self.task_names)).to(self.last_weights.dtype))
        return (self.last_weights * L).sum()

    def weights(self) -> Dict[str, float]:
        """The weights of the last solved step (``T * a``; all 1 before the first)."""
        return {t: float(self.last_weights[i]) for i, t in enumerate(self.task_names)}

