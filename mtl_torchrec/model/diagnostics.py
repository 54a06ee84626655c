"""Is multi-task learning helping or hurting? Gate, expert and task-gradient diagnostics.

For any :class:`~mtl_torchrec.model.multitask.MultiTaskModel` (sharded or not), on the first of
the batches given (gates, experts) or on each of them (task gradients):

* **gates** (MMoE, OMoE, PLE): per gate the mean per-row entropy (normalised to [0, 1]: 1 is a
  uniform mix, 0 a hard choice) and each expert's share of the gate's weight;
* **experts**: ``dead`` experts that no gate uses (their largest share in any gate is below
  ``dead_share`` of a uniform share), ``constant`` experts whose output does not vary over the
  batch, and ``collapsed`` pairs of experts whose outputs are nearly identical (centred cosine
  above ``collapse_cosine``) -- capacity that is spent twice;
* **feature attention** (``model.feature_attention``): per task, the mean weight of each feature
  group (id features, ``dense``, text features): which task reads which features;
* **sequence attention** (``model.sequence``): per history feature, how the target-attention
  weights spread over a sample's histories (largest weight vs uniform, entropy, recency);
* **AITM** (``model.tasks[*].aitm_parent``): per AITM task, the mean AIT weight of the
  transferred (parent's) and of its own representation;
* **managed collisions** (``vocab: zch`` features): per table, the keys it holds, and over the
  training steps so far the lookups, those that read the shared row (the table's collisions), the
  keys inserted and evicted (:func:`~mtl_torchrec.modules.managed_collision.managed_collision_stats`);
  the diagnostics' own forward passes only look up (they insert nothing);
* **task gradients** on the shared representation: norms and pairwise cosines per batch, averaged
  over the batches with a t confidence interval (:func:`~mtl_torchrec.core.stats.mean_interval`).
  A negative cosine means the tasks pull the shared features in opposite directions (negative
  transfer), but one batch's cosine is noisy: a pair is flagged as conflicting only when the
  whole interval lies below :data:`CONFLICT_COSINE` (-0.05), i.e. the conflict is clear. One
  batch never flags (its interval is unbounded); a cosine of -0.003 never flags.

Example::

    report = diagnose(model, [batch1, batch2, batch3], tasks)
    report["gradients"]["cosine"]["click|conversion"]          # mean over the batches
    report["gradients"]["cosine_interval"]["click|conversion"]  # {"mean", "sd", "n", "low", "high", ...}
    report["gradients"]["conflicting"]                          # pairs whose interval is below -0.05
    report["experts"]["dead"], report["experts"]["collapsed"]
    flat = flatten_scalars(report)   # {"gates/click/entropy": ..., ...} for TensorBoard
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from mtl_torchrec.core.stats import mean_interval
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.model.multitask import ModelOutput
from mtl_torchrec.model.tasks import TaskSpec, task_losses
from mtl_torchrec.modules.experts import ExpertTrace, GateInfo
from mtl_torchrec.modules.managed_collision import lookup_only, managed_collision_stats


def gate_name(info: GateInfo, task_names: Sequence[str], multi_level: bool) -> str:
    """A gate's name in reports: its task's name or ``shared``, prefixed ``level<l>/`` when ``multi_level``."""
    who = task_names[info.task] if info.task is not None else "shared"
    return f"level{info.level}/{who}" if multi_level else who


def expert_display_name(name: str, task_names: Sequence[str]) -> str:
    """``level0/task1/expert0`` -> ``level0/conversion/expert0``."""
    return "/".join(
        task_names[int(m.group(1))] if (m := re.fullmatch(r"task(\d+)", part)) and int(m.group(1)) < len(task_names)
        else part
        for part in name.split("/")
    )


def gate_statistics(
    gates: List[torch.Tensor], info: List[GateInfo], task_names: Sequence[str]
) -> Dict[str, Dict[str, Any]]:
    """Per gate: normalised mean entropy, per-expert share and the entropy of the mean share."""
    multi_level = len({i.level for i in info}) > 1
    out: Dict[str, Dict[str, Any]] = {}
    for g, gi in zip(gates, info):
        g = g.detach().float()
        n = g.shape[1]
        norm = math.log(n) if n > 1 else 1.0
        ent = -(g * g.clamp_min(1e-12).log()).sum(-1).mean() / norm
        share = g.mean(0)
        usage_ent = -(share * share.clamp_min(1e-12).log()).sum() / norm
        out[gate_name(gi, task_names, multi_level)] = {
            "entropy": float(ent) if n > 1 else 0.0,
            "usage_entropy": float(usage_ent) if n > 1 else 0.0,
            "share": {expert_display_name(e, task_names): float(share[j]) for j, e in enumerate(gi.experts)},
        }
    return out


def _centred_cosine(outputs: torch.Tensor) -> torch.Tensor:
    """``outputs`` ``[E, B, D]`` -> ``[E, E]`` cosine of the batch-centred, flattened outputs."""
    c = outputs - outputs.mean(dim=1, keepdim=True)
    flat = c.reshape(c.shape[0], -1)
    norms = flat.norm(dim=1)
    return (flat @ flat.T) / (norms[:, None] * norms[None, :]).clamp_min(1e-12)


def expert_health(
    trace: ExpertTrace,
    task_names: Sequence[str],
    dead_share: float = 0.05,
    collapse_cosine: float = 0.99,
    constant_std: float = 1e-6,
) -> Dict[str, Any]:
    """Flags dead, constant and collapsed experts of a mixture backbone's trace."""
    names = list(trace.experts)
    if not names:
        return {"dead": [], "constant": [], "collapsed": [], "max_share": {}}
    # Largest share of each expert over all gates that mix it, relative to a uniform share.
    rel: Dict[str, float] = {n: 0.0 for n in names}
    for g, gi in zip(trace.gates, trace.gate_info):
        share = g.detach().float().mean(0) * len(gi.experts)
        for j, e in enumerate(gi.experts):
            rel[e] = max(rel[e], float(share[j]))
    dead = [n for n in names if rel[n] < dead_share]
    outputs = torch.stack([trace.experts[n].detach().float() for n in names])  # [E, B, D]
    spread = outputs.std(dim=1).mean(dim=1)
    constant = [n for i, n in enumerate(names) if float(spread[i]) < constant_std]
    collapsed: List[Dict[str, Any]] = []
    if len(names) > 1:
        cos = _centred_cosine(outputs)
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                if names[i] in constant or names[j] in constant:
                    continue
                if float(cos[i, j]) > collapse_cosine:
                    collapsed.append({
                        "experts": [expert_display_name(names[i], task_names), expert_display_name(names[j], task_names)],
                        "cosine": float(cos[i, j]),
                    })
    show = lambda n: expert_display_name(n, task_names)  # noqa: E731
    return {
        "dead": [show(n) for n in dead],
        "constant": [show(n) for n in constant],
        "collapsed": collapsed,
        "max_share": {show(n): rel[n] for n in names},
    }


# A task pair conflicts when the upper bound of its mean gradient cosine's confidence interval is
# below this: clearly negative, not noise around 0 (census runs showed single-batch cosines of
# -0.003, which is no conflict at all).
CONFLICT_COSINE = -0.05
# Confidence of the interval the conflict flag is decided on.
CONFLICT_CONFIDENCE = 0.95


def gradient_conflict(losses: Dict[str, torch.Tensor], shared: torch.Tensor) -> Dict[str, Any]:
    """Norms and pairwise cosines of each task loss's gradient on ``shared`` (which must require
    grad), on one batch: ``{"norm": {task: float}, "cosine": {"a|b": float}}`` (NaN cosine when a
    gradient is 0). Whether a pair conflicts is decided over several batches by
    :func:`conflict_over_batches`."""
    names = list(losses)
    grads: Dict[str, torch.Tensor] = {}
    for t in names:
        (g,) = torch.autograd.grad(losses[t], shared, retain_graph=True, allow_unused=True)
        grads[t] = torch.zeros_like(shared).reshape(-1) if g is None else g.reshape(-1).detach()
    norms = {t: float(grads[t].norm()) for t in names}
    cosine: Dict[str, float] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            denom = grads[a].norm() * grads[b].norm()
            cosine[f"{a}|{b}"] = float(grads[a] @ grads[b] / denom) if float(denom) > 0 else float("nan")
    return {"norm": norms, "cosine": cosine}


def conflict_over_batches(
    per_batch: Sequence[Dict[str, Any]],
    threshold: float = CONFLICT_COSINE,
    confidence: float = CONFLICT_CONFIDENCE,
) -> Dict[str, Any]:
    """Task-gradient statistics over batches from :func:`gradient_conflict` results ``per_batch``.

    Returns ``norm`` and ``cosine`` (means over the batches), ``cosine_interval`` (per pair, the
    :class:`~mtl_torchrec.core.stats.MeanInterval` as a dict: mean, sd, n, low, high, confidence),
    ``conflicting`` (pairs whose interval's ``high`` is below ``threshold``), ``batches`` and
    ``threshold``. Batches with a NaN cosine are left out of that pair's interval.
    """
    pairs = list(per_batch[0]["cosine"]) if per_batch else []
    tasks = list(per_batch[0]["norm"]) if per_batch else []
    intervals = {p: mean_interval([b["cosine"][p] for b in per_batch], confidence) for p in pairs}
    return {
        "norm": {t: float(sum(b["norm"][t] for b in per_batch) / len(per_batch)) for t in tasks},
        "cosine": {p: ci.mean for p, ci in intervals.items()},
        "cosine_interval": {p: ci.as_dict() for p, ci in intervals.items()},
        "conflicting": [p for p, ci in intervals.items() if ci.high < threshold],
        "batches": len(per_batch),
        "threshold": threshold,
    }


def _trace(backbone: nn.Module, shared: torch.Tensor) -> ExpertTrace:
    if hasattr(backbone, "forward_with_experts"):
        return backbone.forward_with_experts(shared)
    outs, gates = backbone.forward_with_gates(shared)
    return ExpertTrace(outs, gates, [], {})


def feature_attention_weights(model: nn.Module, shared: torch.Tensor) -> Dict[str, Dict[str, float]]:
    """Per task, the mean (over the rows of ``shared`` ``[B, fused_width]``) attention weight of
    each feature group of ``model``'s feature attention; ``{}`` without one. Weights of a task sum to 1."""
    attention = getattr(model, "feature_attention", None)
    if attention is None:
        return {}
    groups = model.feature_group_names
    with torch.no_grad():
        _, weights = attention.forward_with_weights(shared)
    mean = weights.float().mean(0)  # [T, G]
    return {t: {g: float(mean[i, j]) for j, g in enumerate(groups)} for i, t in enumerate(model.tasks)}


def aitm_weights(towers: nn.Module, inputs: List[torch.Tensor]) -> Dict[str, Dict[str, float]]:
    """Per AITM task, the mean AIT weight of the ``transferred`` (parent's) and the ``own``
    representation on ``inputs`` (the towers' inputs); ``{}`` for towers without AIT units."""
    if not hasattr(towers, "forward_with_weights"):
        return {}
    with torch.no_grad():
        _, weights = towers.forward_with_weights(inputs)
    return {t: {"transferred": float(w[:, 0].mean()), "own": float(w[:, 1].mean())} for t, w in weights.items()}


def sequence_attention(model: nn.Module, batch: Batch) -> Dict[str, Dict[str, float]]:
    """Per sequence feature (a feature module with ``attention_weights``, e.g.
    :class:`~mtl_torchrec.modules.target_attention.HistoryAttentionFeature`): on ``batch``, the mean
    history length read, the share of rows with an empty history, the mean largest weight next to
    its uniform value (mean ``1 / length``), the mean normalised entropy of the weights (1 = uniform,
    over rows with two or more ids) and the mean weight on the most recent id kept. Empty when the
    model has none."""
    out: Dict[str, Dict[str, float]] = {}
    for name, module in getattr(model, "feature_modules", {}).items():
        if not hasattr(module, "attention_weights"):
            continue
        with torch.no_grad():
            weights, mask = module.attention_weights(batch.sparse)
        lengths = mask.sum(dim=1)
        filled = lengths > 0
        n = lengths[filled].to(weights.dtype)
        w = weights[filled]
        several = lengths[filled] > 1
        entropy = -(w * torch.log(w.clamp_min(1e-12))).sum(dim=1)
        last = w.gather(1, (lengths[filled] - 1).unsqueeze(1)).squeeze(1)
        out[name] = {
            "mean_length": float(lengths.to(weights.dtype).mean()) if len(lengths) else 0.0,
            "empty_share": float((~filled).to(weights.dtype).mean()) if len(lengths) else 0.0,
            "max_weight": float(w.max(dim=1).values.mean()) if len(w) else 0.0,
            "uniform_max_weight": float((1.0 / n).mean()) if len(n) else 0.0,
            "normalised_entropy": float((entropy[several] / torch.log(n[several])).mean()) if bool(several.any()) else 1.0,
            "most_recent_weight": float(last.mean()) if len(last) else 0.0,
        }
    return out


def diagnose(
    model: nn.Module,
    batches: Union[Batch, Sequence[Batch]],
    tasks: List[TaskSpec],
    dead_share: float = 0.05,
    collapse_cosine: float = 0.99,
) -> Dict[str, Any]:
    """All diagnostics of ``model`` (a MultiTaskModel, its embedding possibly sharded) on ``batches``
    (one Batch or several; ValueError for none).

    Gate and expert statistics and ``losses`` are of the first batch; task gradients are measured
    on every batch and summarised by :func:`conflict_over_batches` (several batches are needed to
    flag a conflict). The fused features are computed without gradient and then differentiated as
    a leaf, so the embedding tables (and fused sparse optimizers) are never touched and no
    parameter receives a gradient.
    """
    batches = [batches] if isinstance(batches, Batch) else list(batches)
    if not batches:
        raise ValueError("diagnose needs at least one batch")
    names = [t.name for t in tasks]
    per_batch: List[Dict[str, Any]] = []
    for i, batch in enumerate(batches):
        # lookup_only: the held-out batches must not enter a managed-collision table.
        with torch.no_grad(), lookup_only(model):
            shared = model.fuse(batch.sparse, batch.dense)
        shared = shared.detach().requires_grad_(True)
        with torch.enable_grad():
            batch_trace = _trace(model.backbone, shared)
            attend = getattr(model, "attend", None)
            inputs = attend(shared, batch_trace.outputs) if attend is not None else batch_trace.outputs
            logits = model.towers(inputs)
            batch_losses = task_losses(ModelOutput(logits, shared, batch_trace.gates), batch, tasks)
            per_batch.append(gradient_conflict(batch_losses, shared))
        if i == 0:
            trace, losses = batch_trace, batch_losses
            attention = feature_attention_weights(model, shared.detach())
            transfer = aitm_weights(model.towers, [x.detach() for x in inputs])
            sequences = sequence_attention(model, batch)
    report: Dict[str, Any] = {
        "batch_size": batches[0].batch_size,
        "losses": {t: float(v.detach()) for t, v in losses.items()},
        "gradients": conflict_over_batches(per_batch),
    }
    if trace.gate_info:
        report["gates"] = gate_statistics(trace.gates, trace.gate_info, names)
        report["experts"] = expert_health(trace, names, dead_share=dead_share, collapse_cosine=collapse_cosine)
    if attention:
        report["feature_attention"] = attention
    if transfer:
        report["aitm"] = transfer
    if sequences:
        report["sequence_attention"] = sequences
    managed = managed_collision_stats(model)
    if managed:
        report["managed_collisions"] = managed
    return report


def flatten_scalars(report: Dict[str, Any]) -> Dict[str, float]:
    """The numeric leaves of a :func:`diagnose` report as ``a/b/c`` names, for TensorBoard."""
    out: Dict[str, float] = {}
    for t, v in report.get("gradients", {}).get("norm", {}).items():
        out[f"grad_norm/{t}"] = v
    for pair, v in report.get("gradients", {}).get("cosine", {}).items():
        out[f"grad_cosine/{pair}"] = v
    for pair, ci in report.get("gradients", {}).get("cosine_interval", {}).items():
        if math.isfinite(ci["high"]):
            out[f"grad_cosine_ci_high/{pair}"] = ci["high"]
    for gate, stats in report.get("gates", {}).items():
        out[f"gate/{gate}/entropy"] = stats["entropy"]
        out[f"gate/{gate}/usage_entropy"] = stats["usage_entropy"]
    for task, shares in report.get("feature_attention", {}).items():
        for group, v in shares.items():
            out[f"feature_attention/{task}/{group}"] = v
    for table, stats in report.get("managed_collisions", {}).items():
        for key in ("keys_held", "shared_row_share", "evicted"):
            if stats.get(key) is not None:
                out[f"managed_collisions/{table}/{key}"] = stats[key]
    for task, shares in report.get("aitm", {}).items():
        out[f"aitm/{task}/transferred"] = shares["transferred"]
    for feature, stats in report.get("sequence_attention", {}).items():
        for key, v in stats.items():
            out[f"sequence_attention/{feature}/{key}"] = v
    experts = report.get("experts")
    if experts is not None:
        out["experts/dead"] = float(len(experts["dead"]))
        out["experts/constant"] = float(len(experts["constant"]))
        out["experts/collapsed_pairs"] = float(len(experts["collapsed"]))
    return out


def summarize_findings(report: Dict[str, Any]) -> List[str]:
    """Human-readable warnings from a report (empty when nothing looks wrong)."""
    notes: List[str] = []
    experts: Optional[Dict[str, Any]] = report.get("experts")
    if experts:
        if experts["dead"]:
            notes.append(f"dead experts (no gate uses them): {', '.join(experts['dead'])}")
        if experts["constant"]:
            notes.append(f"constant experts (output does not vary): {', '.join(experts['constant'])}")
        for pair in experts["collapsed"]:
            notes.append(f"collapsed experts {pair['experts'][0]} ~ {pair['experts'][1]} (cosine {pair['cosine']:.3f})")
    gradients = report.get("gradients", {})
    for pair in gradients.get("conflicting", []):
        ci = gradients["cosine_interval"][pair]
        notes.append(
            f"conflicting task gradients {pair.replace('|', ' vs ')} (cosine {ci['mean']:.3f}, "
            f"{ci['confidence']:.0%} CI [{ci['low']:.3f}, {ci['high']:.3f}] over {ci['n']} batches, "
            f"below {gradients['threshold']}): negative transfer risk"
        )
    return notes
