"""``mtl-torchrec compare-single-task``: does multi-task learning help on my data?

Trains the configured multi-task model, then one single-task model per task on the same data,
split, seed, epochs/steps and batch size, and reports each task's test metrics side by side
with the difference. Every model goes through the same ``train`` path as ``mtl-torchrec train``.

A single-task model is the same embedding + dense features with one bottom MLP (backbone
``single_task``) and the task's tower. Its bottom has the layer shape of the multi-task
backbone's experts (or bottom), scaled in width so that the dense parameter count (everything
but the embedding tables) matches a budget: ``per_model`` (default: each single-task model as
large as the multi-task model) or ``total`` (all single-task models together as large).
An ESMM task is trained directly on its impression-space label, so both sides report it in the
same space.

Writes ``compare.json`` and ``compare.md`` in the comparison folder, beside one run folder
per model (``multitask/``, ``single_<task>/``).

Example::

    mtl-torchrec compare-single-task --config default train.epochs=1
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.core.io import atomic_write_text, write_json
from mtl_torchrec.launch.args import config_arg, config_help

# torch and the packages that use it are imported inside the functions below, not here: the command
# line imports this module to build its parser, and `mtl-torchrec --help` must start without torch.
if TYPE_CHECKING:
    from mtl_torchrec.config import Config, ModelConfig, TaskConfig
    from mtl_torchrec.data.schema import Schema
    from mtl_torchrec.distributed.context import DistContext

# Whether higher is better, per compared metric (each label kind lists its own, in order).
HIGHER_IS_BETTER = {"auc": True, "gauc": True, "logloss": False, "ne": False, "rmse": False, "mae": False}


def add_parser(sub: Any) -> None:
    """Registers ``compare-single-task`` (``--config``, ``--budget``, overrides)."""
    p = sub.add_parser(
        "compare-single-task",
        help="train the multi-task model and one single-task model per task on the same data and budget",
    )
    p.add_argument("--config", type=config_arg, default=None, help=config_help())
    p.add_argument(
        "--budget",
        choices=("per_model", "total"),
        default="per_model",
        help="dense parameters of each single-task model = the multi-task model's (per_model) or a 1/T share (total)",
    )
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.epochs=1 model.backbone=ple")
    p.set_defaults(run=run)


def dense_parameter_count(cfg: ModelConfig, schema: Schema) -> int:
    """Parameters outside the embedding tables (tables are built on ``meta``, never allocated)."""
    import torch

    from mtl_torchrec.model.builder import build_model

    model = build_model(cfg, schema, device=torch.device("meta"))
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("embedding."))


def _template_layers(cfg: ModelConfig) -> List[int]:
    from mtl_torchrec.model.backbones import BACKBONES

    backbone = BACKBONES.get(cfg.backbone)
    return list(backbone.template_layers(backbone.options_of(cfg)))


def single_task_model_config(cfg: ModelConfig, task: TaskConfig, layers: List[int]) -> ModelConfig:
    """``cfg`` with backbone ``single_task`` of ``layers`` and ``task`` as its only task (weight 1, the
    task's tower layers, no ESMM parent: an ESMM task trains on its impression-space label).
    """
    from mtl_torchrec.config import TaskConfig

    out = copy.deepcopy(cfg)
    out.backbone = "single_task"
    out.single_task.layers = list(layers)
    out.tasks = [TaskConfig(name=task.name, type=task.type, loss=task.loss, loss_options=dict(task.loss_options),
                            weight=1.0, tower_layers=task.tower_layers)]
    return out


def matched_layers(cfg: ModelConfig, task: TaskConfig, schema: Schema, target: int) -> Tuple[List[int], int]:
    """Scales the template layer widths so the single-task model's dense parameters are closest
    to ``target``; returns the layers and their count."""
    template = _template_layers(cfg)

    def layers_for(scale: float) -> List[int]:
        return [max(1, int(round(w * scale))) for w in template]

    def size(scale: float) -> int:
        return dense_parameter_count(single_task_model_config(cfg, task, layers_for(scale)), schema)

    lo, hi = 1e-3, 1.0
    while size(hi) < target and hi < 1e4:
        hi *= 2.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if size(mid) < target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda s: abs(size(s) - target))
    return layers_for(best), size(best)


def compare_rows(multi: Dict[str, Dict[str, float]], singles: Dict[str, Dict[str, Dict[str, float]]],
                 task_types: Dict[str, str]) -> List[Dict[str, Any]]:
    """One row per task and compared metric (its label kind's ``compared_metrics``; binary: AUC, GAUC,
    logloss; regression: RMSE, MAE) that both sides report: the two values, ``multi - single`` and which side is better.
    """
    from mtl_torchrec.data.label_kinds import LABEL_KINDS

    rows = []
    for task, single in singles.items():
        keys = LABEL_KINDS.get(task_types[task]).compared_metrics
        for k in keys:
            if k not in multi.get(task, {}) or k not in single.get(task, {}):
                continue
            m, s = float(multi[task][k]), float(single[task][k])
            diff = m - s
            gain = diff if HIGHER_IS_BETTER[k] else -diff
            rows.append({
                "task": task,
                "metric": k,
                "multi_task": m,
                "single_task": s,
                "difference": diff,
                "better": "multi-task" if gain > 0 else ("single-task" if gain < 0 else "tie"),
            })
    return rows


def format_rows(rows: List[Dict[str, Any]]) -> str:
    """The rows of :func:`compare_rows` as a fixed-width console table."""
    lines = [f"{'task':<14}{'metric':<10}{'multi-task':>12}{'single-task':>13}{'difference':>12}  better"]
    for r in rows:
        lines.append(
            f"{r['task']:<14}{r['metric']:<10}{r['multi_task']:>12.4f}{r['single_task']:>13.4f}"
            f"{r['difference']:>+12.4f}  {r['better']}"
        )
    return "\n".join(lines)


def markdown_rows(rows: List[Dict[str, Any]]) -> str:
    """The rows of :func:`compare_rows` as a Markdown table."""
    lines = ["| task | metric | multi-task | single-task | difference | better |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['multi_task']:.4f} | {r['single_task']:.4f} | "
            f"{r['difference']:+.4f} | {r['better']} |"
        )
    return "\n".join(lines) + "\n"


def compare(cfg: Config, ctx: DistContext, budget: str = "per_model") -> Dict[str, Any]:
    """Trains the multi-task model and the single-task baselines; returns (and on rank 0 writes) the report."""
    from mtl_torchrec.data.sources import load_data
    from mtl_torchrec.workflows import train
    from mtl_torchrec.workflows.training import resolve_run_dir

    if budget not in ("per_model", "total"):
        raise ConfigError(f"--budget: '{budget}' is not one of ['per_model', 'total']")
    root = resolve_run_dir(cfg, ctx)
    schema = load_data(cfg.data).schema
    multi_params = dense_parameter_count(cfg.model, schema)
    target = multi_params if budget == "per_model" else multi_params // max(1, len(cfg.model.tasks))

    multi_cfg = copy.deepcopy(cfg)
    multi_cfg.run_dir = str(root / "multitask")
    multi = train(multi_cfg, ctx)

    singles: Dict[str, Dict[str, Dict[str, float]]] = {}
    single_info: Dict[str, Dict[str, Any]] = {}
    for task in cfg.model.tasks:
        layers, params = matched_layers(cfg.model, task, schema, target)
        st_cfg = copy.deepcopy(cfg)
        st_cfg.model = single_task_model_config(cfg.model, task, layers)
        st_cfg.train.loss_balance = "fixed"
        st_cfg.run_dir = str(root / f"single_{task.name}")
        result = train(st_cfg, ctx)
        singles[task.name] = result.metrics
        single_info[task.name] = {"layers": layers, "dense_params": params, "run_dir": str(result.run_dir)}

    types = {t.name: t.type for t in cfg.model.tasks}
    rows = compare_rows(multi.metrics, singles, types)
    spaces = {t.name: f"impression space (label {t.esmm_parent} AND {t.name})" for t in cfg.model.tasks if t.esmm_parent}
    report: Dict[str, Any] = {
        "budget": budget,
        "multi_task": {
            "backbone": cfg.model.backbone,
            "loss_balance": cfg.train.loss_balance,
            "dense_params": multi_params,
            "run_dir": str(multi.run_dir),
            "metrics": multi.metrics,
        },
        "single_task": {t: {**single_info[t], "metrics": singles[t]} for t in singles},
        "rows": rows,
        "spaces": spaces,
    }
    diag_file = Path(multi.run_dir) / "diagnostics.json"
    if ctx.is_main and diag_file.is_file():
        final = json.loads(diag_file.read_text(encoding="utf-8"))
        report["multi_task"]["gradient_cosine"] = final["final"]["gradients"]["cosine"]
        report["multi_task"]["findings"] = final.get("findings", [])
    if ctx.is_main:
        write_json(root / "compare.json", report)
        header = (
            f"Multi-task ({cfg.model.backbone}, loss_balance={cfg.train.loss_balance}, {multi_params} dense params) "
            f"vs single-task models ({budget} budget) on the test split.\n\n"
        )
        atomic_write_text(root / "compare.md", header + markdown_rows(rows))
    report["root"] = root
    return report


def run(args: argparse.Namespace) -> int:
    """Runs ``compare-single-task`` and prints the comparison on rank 0; returns 0."""
    from mtl_torchrec.config import load_config

    cfg = load_config(args.config, args.overrides)  # a config error is reported before torch is imported
    from mtl_torchrec.distributed.context import close_distributed, init_distributed

    ctx = init_distributed()
    try:
        report = compare(cfg, ctx, args.budget)
    finally:
        close_distributed(ctx)
    if ctx.is_main:
        print(f"multi-task {report['multi_task']['backbone']} ({report['multi_task']['dense_params']} dense params) "
              f"vs single-task models ({report['budget']} budget):")
        print(format_rows(report["rows"]))
        for task, space in report["spaces"].items():
            print(f"{task}: {space} in both models")
        for note in report["multi_task"].get("findings", []):
            print(f"diagnostics: {note}")
        print(report["root"])
    return 0
