"""A multi-task head for any TorchRec model: our backbone + towers on a ``[B, d]`` representation.

Users who already embed their features (their own ``EmbeddingBagCollection``, planner, sharders
and train loop, e.g. torchrec's ``DLRM``) put :class:`MultiTaskHead` on the representation they
would feed an over-arch, and train it with the same pieces the trainer uses:

* :func:`~mtl_torchrec.model.tasks.multitask_loss`: masked per-task losses over plain dicts
  (ESMM included), :func:`~mtl_torchrec.model.tasks.predictions` for probabilities / values;
* :meth:`MultiTaskHead.init_from_labels`: regression biases at the label mean, binary biases at
  the logit of the base rate (the trainer starts its regression heads the same way);
* a balancer of :mod:`mtl_torchrec.model.balancing`, stepped by an optimizer built from
  :func:`param_groups`, which gives the balancer's parameters their own learning rate
  (``train.balance.lr``, 0.025 by default). At the dense learning rate GradNorm and uncertainty
  weights barely move; at the balancer's rate for *every* parameter they swing to extremes.

Example::

    tasks = [TaskSpec("click", "binary"), TaskSpec("rating", "regression")]
    head = MultiTaskHead(64, tasks, "mmoe", {"num_experts": 4, "expert_layers": [32]}, tower_layers=[16])
    head.init_from_labels({"click": y_click, "rating": y_rating})
    balancer = GradNorm({"click": 1.0, "rating": 1.0})
    opt = torch.optim.Adam(param_groups(model, lr=1e-3, balancer=balancer))
    logits = head(x)                                   # {"click": [B], "rating": [B]}
    losses = multitask_loss(logits, labels, masks, tasks)
    balancer(losses, x).backward()                     # x: the head's input, requires grad
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from pydantic import ValidationError
from torch import nn
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedTensor

from mtl_torchrec.data.label_kinds import LABEL_KINDS
from mtl_torchrec.model.backbones import BACKBONES
from mtl_torchrec.model.balancing import Balancer
from mtl_torchrec.model.tasks import TaskSpec, check_label_dicts, check_tasks
from mtl_torchrec.modules.mlp import MLPOptions
from mtl_torchrec.modules.towers import TaskTowers


def make_backbone(name: str, options: Any, in_features: int, num_tasks: int) -> nn.Module:
    """The registered backbone ``name`` (``mmoe``, ``omoe``, ``ple``, ``shared_bottom``,
    ``single_task`` ...) over ``[B, in_features]`` inputs for ``num_tasks`` tasks.

    ``options`` is the backbone's options dataclass (its ``model.<section>`` config section), a
    dict of its fields, or None for the defaults. Raises ValueError naming the backbone for an
    unknown name or options the dataclass or the module refuses.

    Example::

        make_backbone("ple", {"num_levels": 1, "expert_layers": [32]}, 64, 2)
    """
    if name not in BACKBONES:
        raise ValueError(f"backbone: {BACKBONES.unknown(name)}")
    backbone = BACKBONES.get(name)
    if options is None or isinstance(options, dict):
        try:
            options = backbone.options(**(options or {}))
        except ValidationError as e:
            found = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
            raise ValueError(f"backbone_options of '{name}' ({backbone.options.__name__}): {found}") from None
    elif not isinstance(options, backbone.options):
        raise ValueError(
            f"backbone_options of '{name}': expected a dict or {backbone.options.__name__}, got {type(options).__name__}"
        )
    return backbone.build(options, in_features, num_tasks)


@torch.fx.wrap
def head_input(x: Union[torch.Tensor, KeyedTensor], width: int) -> torch.Tensor:
    """``x`` as the head's ``[B, width]`` input: a tensor as it is, a KeyedTensor's concatenated
    values. Raises ValueError when the width differs. A leaf call under ``torch.fx`` tracing
    (``torch.fx.wrap``), so the check runs on real tensors, never on proxies."""
    if isinstance(x, KeyedTensor):
        t = x.values()
    else:
        t = x
    if t.dim() != 2 or t.shape[1] != width:
        raise ValueError("MultiTaskHead: input must be [B, " + str(width) + "], got " + str(list(t.shape)))
    return t


class MultiTaskHead(nn.Module):
    """A registered multi-task backbone plus one tower per task, on a ``[B, in_features]`` input.

    The same modules as the trainer's :class:`~mtl_torchrec.model.multitask.MultiTaskModel`
    after its feature fusion. ``forward`` is ``torch.fx``-traceable and builds its output by
    looping over the stored task names, never over a dict; so is code that indexes the output
    by name. (TorchRec's ``TrainPipelineSparseDist`` traces the model that holds the head: in that
    model, ``for k, v in head(x).items()`` fails with "Proxy object cannot be iterated"; loop over
    ``head.task_names`` instead.)

    Args:
        in_features: width ``d`` of the input.
        tasks: the tasks (name, ``binary``/``regression``, ESMM parent); ValueError listing
            :func:`~mtl_torchrec.model.tasks.task_problems` when inconsistent.
        backbone: a registered backbone name (options built as :func:`make_backbone` does), or a
            ready module with ``forward_with_gates(x) -> (List[[B, out_features]], gates)`` and
            ``out_features`` (e.g. :class:`~mtl_torchrec.modules.mmoe.MMoE`).
        backbone_options: the named backbone's options (dict or dataclass; None: defaults).
        tower_layers: hidden widths of every tower, or per task name.
        tower_mlp: activation, norm and dropout of the towers' layers (default ReLU).

    Input ``[B, in_features]`` tensor or a ``KeyedTensor`` (values concatenated in key order;
    ValueError on another width). Output: ``Dict[str, Tensor]``, ``[B]`` per task: a logit
    (binary; for an ESMM task the conditional pCVR logit) or a value (regression); turn them
    into probabilities with :func:`~mtl_torchrec.model.tasks.predictions`.

    Optimizers: the head's parameters are ordinary dense parameters; a learned balancer's need
    their own learning rate (:func:`param_groups`).

    Example::

        head = MultiTaskHead(64, [TaskSpec("click", "binary"), TaskSpec("rating", "regression")],
                             "shared_bottom", {"layers": [32]}, tower_layers=[16])
        head(torch.randn(8, 64))["rating"].shape   # torch.Size([8])
    """

    def __init__(
        self,
        in_features: int,
        tasks: Sequence[TaskSpec],
        backbone: Union[str, nn.Module] = "mmoe",
        backbone_options: Any = None,
        tower_layers: Union[Sequence[int], Dict[str, Sequence[int]]] = (64,),
        tower_mlp: Optional[MLPOptions] = None,
    ) -> None:
        super().__init__()
        tasks = list(tasks)
        if not tasks:
            raise ValueError("tasks: at least one task is required")
        check_tasks(tasks)
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features: must be an integer >= 1, got {in_features!r}")
        self.tasks: List[TaskSpec] = tasks
        self.task_names: List[str] = [t.name for t in tasks]
        self.in_features = int(in_features)
        if isinstance(backbone, str):
            self.backbone = make_backbone(backbone, backbone_options, self.in_features, len(tasks))
        else:
            if backbone_options is not None:
                raise ValueError("backbone_options: only for a backbone given by name")
            self.backbone = backbone
        if isinstance(tower_layers, dict):
            for name in [*self.task_names, *tower_layers]:
                if name not in self.task_names or name not in tower_layers:
                    raise ValueError(f"tower_layers: task '{name}' is not in both the tasks {self.task_names} "
                                     f"and tower_layers {sorted(tower_layers)}")
            layers = {t: list(tower_layers[t]) for t in self.task_names}
        else:
            layers = {t: list(tower_layers) for t in self.task_names}
        for name, sizes in layers.items():
            if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
                raise ValueError(f"tower_layers: task '{name}' has layer sizes {sizes}; each must be an integer >= 1")
        if not (hasattr(self.backbone, "forward_with_gates") and hasattr(self.backbone, "out_features")):
            raise ValueError("backbone: a module with forward_with_gates(x) and out_features (as our backbones), "
                             f"got {type(self.backbone).__name__}")
        self.towers = TaskTowers(self.task_names, int(self.backbone.out_features), layers, tower_mlp)

    def forward(self, x: Union[torch.Tensor, KeyedTensor]) -> Dict[str, torch.Tensor]:
        """The backbone, then each task's tower on its input.

        Args:
            x (Union[torch.Tensor, KeyedTensor]): ``[B, in_features]``, or pooled embeddings whose
                concatenated values are that wide.

        Returns:
            Dict[str, torch.Tensor]: ``[B]`` raw output per task name, in ``task_names`` order.
        """
        inputs, _ = self.backbone.forward_with_gates(head_input(x, self.in_features))
        return self.towers(inputs)

    @torch.no_grad()
    def init_from_labels(
        self, labels: Dict[str, torch.Tensor], masks: Optional[Dict[str, torch.Tensor]] = None
    ) -> Dict[str, float]:
        """Starts each task's output bias from label statistics; see :func:`init_towers_from_labels`.

        Example::

            head.init_from_labels({"click": y_click, "rating": y_rating})   # {"click": -1.2, "rating": 3.6}
        """
        return init_towers_from_labels(self.towers, self.tasks, labels, masks)


@torch.no_grad()
def init_towers_from_labels(
    towers: TaskTowers,
    tasks: Sequence[TaskSpec],
    labels: Dict[str, torch.Tensor],
    masks: Optional[Dict[str, torch.Tensor]] = None,
    binary: bool = True,
) -> Dict[str, float]:
    """Sets each tower's output bias from the labels (training rows, ``[N]`` per task): the label
    kind's :meth:`~mtl_torchrec.data.label_kinds.LabelKind.initial_bias`.

    * regression: the mean label. Started at 0, a rating's squared error (~mean^2) dwarfs the
      binary losses and its gradient swamps the shared layers (and GradNorm's weights) early on;
    * binary (probability kinds, when ``binary``): ``logit(base rate)``, so the first losses are the
      label entropy; for an ESMM task the rate among the rows whose parent label is 1 (its tower
      predicts pCVR).

    Rows with a NaN label or a mask of 0 are ignored; a task without any usable row keeps its
    bias. Returns the bias set per task. Raises ValueError naming a task missing from
    ``labels``/``masks`` or an entry for an unknown task.
    """
    tasks = list(tasks)
    check_label_dicts(labels, masks, tasks)
    out: Dict[str, float] = {}
    for t in tasks:
        kind = LABEL_KINDS.get(t.type)
        if kind.probability and not binary:
            continue
        y = _valid(labels, masks, t.name)
        if t.esmm_parent is not None:
            parent = labels[t.esmm_parent].detach().reshape(-1).double()
            keep = _valid_mask(labels, masks, t.name) & _valid_mask(labels, masks, t.esmm_parent) & (parent > 0.5)
            y = labels[t.name].detach().reshape(-1).double()[keep]
        if y.numel() == 0:
            continue
        value = kind.initial_bias(y)
        towers.towers[t.name].head.bias.fill_(value)
        out[t.name] = value
    return out


def _valid_mask(labels: Dict[str, torch.Tensor], masks: Optional[Dict[str, torch.Tensor]], name: str) -> torch.Tensor:
    y = labels[name].detach().reshape(-1)
    keep = ~torch.isnan(y)
    if masks is not None:
        keep &= masks[name].detach().reshape(-1) > 0.5
    return keep


def _valid(labels: Dict[str, torch.Tensor], masks: Optional[Dict[str, torch.Tensor]], name: str) -> torch.Tensor:
    """The task's usable labels in float64 (NaN and masked rows dropped)."""
    return labels[name].detach().reshape(-1).double()[_valid_mask(labels, masks, name)]


def param_groups(
    model: nn.Module,
    lr: float,
    balancer: Optional[Balancer] = None,
    balance_lr: Optional[float] = None,
) -> List[Dict[str, Any]]:
    """Torch optimizer parameter groups: ``model``'s trainable parameters at ``lr``, the balancer's
    (also when it is a submodule of ``model``) at ``balance_lr`` (default ``train.balance.lr``).

    This is the split the trainer makes (:func:`~mtl_torchrec.distributed.optim.make_optimizer`).
    ``model`` may be a ``DistributedModelParallel``: parameters that a fused (in-backward)
    optimizer already updates, e.g. sharded embedding tables, are left out.

    Example::

        opt = torch.optim.Adam(param_groups(model, 1e-3, balancer))   # balancer at 0.025
    """
    own = {id(p) for p in balancer.parameters()} if balancer is not None else set()
    groups: List[Dict[str, Any]] = [
        {"params": [p for _, p in in_backward_optimizer_filter(model.named_parameters())
                    if p.requires_grad and id(p) not in own], "lr": lr}
    ]
    if balancer is not None:
        groups += balancer.parameter_groups(balance_lr)
    return groups
