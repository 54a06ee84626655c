"""The MMoE paper's synthetic experiment: test loss of SharedBottom, OMoE, MMoE and PLE as the
correlation ``p`` between two regression tasks falls.

Setup as in the paper (Ma et al., KDD 2018, section 5): ``d = 100`` inputs, 8 single-layer
experts of 16 units, single-layer towers of 8 units, Adam. SharedBottom gets one hidden layer
whose width matches MMoE's parameter count; PLE has 2 levels of 2 task experts per task and 4
shared experts (8 per level, as MMoE). ``separate`` (two unshared bottoms, same parameter count) is
the no-sharing reference. Training is plain PyTorch over dense tensors with the
project's modules (no sparse features).

Run::

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/mmoe_synthetic.py            # writes docs/
    PYTHONPATH=. python benchmarks/mmoe_synthetic.py --seeds 1 --epochs 2 --no-write   # smoke run
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from torch import nn

from mtl_torchrec.core.io import atomic_path, atomic_write_text, write_json
from mtl_torchrec.data.mmoe_synthetic import make_correlated_tasks
from mtl_torchrec.modules import PLE, MMoE, SeparateBottoms, SharedBottom, TaskTowers

MODELS = ("shared_bottom", "omoe", "mmoe", "ple", "separate")
DIM = 100


class TwoTaskRegressor(nn.Module):
    def __init__(self, backbone: nn.Module, tower: List[int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.towers = TaskTowers(["y1", "y2"], backbone.out_features, {"y1": tower, "y2": tower})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, _ = self.backbone.forward_with_gates(x)
        t = self.towers(outs)
        return torch.stack([t["y1"], t["y2"]], dim=1)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(name: str, num_experts: int, expert_units: int, tower: List[int]) -> nn.Module:
    mmoe = TwoTaskRegressor(MMoE(DIM, 2, num_experts, [expert_units]), tower)
    if name == "mmoe":
        return mmoe
    if name == "omoe":
        return TwoTaskRegressor(MMoE(DIM, 2, num_experts, [expert_units], single_gate=True), tower)
    if name == "ple":
        shared = num_experts // 2
        per_task = (num_experts - shared) // 2
        return TwoTaskRegressor(PLE(DIM, 2, 2, per_task, shared, [expert_units]), tower)
    if name in ("shared_bottom", "separate"):
        # The hidden width whose parameter count is closest to MMoE's.
        cls = SharedBottom if name == "shared_bottom" else SeparateBottoms
        target = count(mmoe)
        width = min(range(4, 1024), key=lambda h: abs(count(TwoTaskRegressor(cls(DIM, 2, [h]), tower)) - target))
        return TwoTaskRegressor(cls(DIM, 2, [width]), tower)
    raise ValueError(name)


def run_one(name: str, p: float, seed: int, args: argparse.Namespace) -> Dict[str, float]:
    data = make_correlated_tasks(args.train_size + args.test_size, p, dim=DIM, scale=args.scale, seed=seed)
    x = torch.from_numpy(data.x)
    y = torch.from_numpy(data.y)
    xtr, ytr = x[: args.train_size], y[: args.train_size]
    xte, yte = x[args.train_size:], y[args.train_size:]
    torch.manual_seed(seed)
    model = build(name, args.experts, args.expert_units, [args.tower_units])
    if args.head_bias == "mean":
        # As the project's trainer does for regression tasks: each head starts at its task's
        # training-label mean instead of 0.
        with torch.no_grad():
            for k, task in enumerate(("y1", "y2")):
                model.towers.towers[task].head.bias.fill_(float(ytr[:, k].mean()))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    curve: List[float] = []
    for _ in range(args.epochs):
        perm = torch.randperm(args.train_size, generator=gen)
        for i in range(0, args.train_size, args.batch_size):
            idx = perm[i: i + args.batch_size]
            loss = ((model(xtr[idx]) - ytr[idx]) ** 2).mean(0).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            curve.append(float(((model(xte) - yte) ** 2).mean()))
    with torch.no_grad():
        mse = ((model(xte) - yte) ** 2).mean(0)
        n = min(args.train_size, args.test_size)
        train_mse = ((model(xtr[:n]) - ytr[:n]) ** 2).mean()
    return {"task1": float(mse[0]), "task2": float(mse[1]), "mean": float(mse.mean()),
            "train_mean": float(train_mse), "params": count(model), "curve": curve}


def summarize(runs: List[Dict]) -> Dict[str, Dict[str, Dict[str, float]]]:
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name in MODELS:
        for p in sorted({r["p"] for r in runs}):
            sel = [r for r in runs if r["model"] == name and r["p"] == p]
            vals = np.array([r["mean"] for r in sel])
            if len(vals):
                early = np.array([r["curve"][min(1, len(r["curve"]) - 1)] for r in sel])
                out.setdefault(name, {})[str(p)] = {
                    "mean": float(vals.mean()),
                    "epoch2_mean": float(early.mean()),
                    "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                    "seeds": int(len(vals)),
                }
    return out


def plot(summary: Dict, runs: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, by_p in summary.items():
        ps = sorted(by_p, key=float)
        ax.errorbar([float(p) for p in ps], [by_p[p]["mean"] for p in ps], yerr=[by_p[p]["std"] for p in ps],
                    marker="o", capsize=3, label=name)
    ax.set_xlabel("task correlation p = cos(w1, w2)")
    ax.set_ylabel("test MSE after training (mean of 2 tasks)")
    ax.set_title("final test loss (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    styles = {"shared_bottom": "-", "mmoe": "--"}
    colors = {}
    for p in sorted({r["p"] for r in runs}):
        for name, style in styles.items():
            curves = np.array([r["curve"] for r in runs if r["p"] == p and r["model"] == name])
            if len(curves):
                line = ax2.plot(np.arange(1, curves.shape[1] + 1), curves.mean(0), style,
                                color=colors.get(p), label=f"{name} p={p}")[0]
                colors[p] = line.get_color()
    ax2.set_yscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test MSE (mean over seeds)")
    ax2.set_title("training curves: SharedBottom (solid) vs MMoE (dashed)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def paired_gaps(runs: List[Dict], a: str, b: str) -> Dict[str, Dict[str, float]]:
    """Per correlation: mean and standard error of ``loss(a) - loss(b)`` over seeds (same data)."""
    out: Dict[str, Dict[str, float]] = {}
    for p in sorted({r["p"] for r in runs}):
        by_seed = {}
        for r in runs:
            if r["p"] == p and r["model"] in (a, b):
                by_seed.setdefault(r["seed"], {})[r["model"]] = r["mean"]
        d = np.array([v[a] - v[b] for v in by_seed.values() if a in v and b in v])
        if len(d):
            sem = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
            out[str(p)] = {"mean": float(d.mean()), "sem": sem}
    return out


def markdown(summary: Dict, runs: List[Dict], args: argparse.Namespace, seconds: float) -> str:
    ps = sorted({p for by_p in summary.values() for p in by_p}, key=float)
    lines = ["| model | " + " | ".join(f"p = {p}" for p in ps) + " |", "|---|" + "---|" * len(ps)]
    for name, by_p in summary.items():
        cells = [f"{by_p[p]['mean']:.4f} ± {by_p[p]['std']:.4f}" if p in by_p else "-" for p in ps]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    gaps = paired_gaps(runs, "shared_bottom", "mmoe")
    if gaps:
        cells = [f"{gaps[p]['mean']:+.4f} ± {gaps[p]['sem']:.4f}" if p in gaps else "-" for p in ps]
        lines.append("| SharedBottom − MMoE (paired, ± s.e.) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"{args.seeds} seeds, {args.train_size} train / {args.test_size} test samples, {args.epochs} epochs of batch "
        f"{args.batch_size}, Adam lr {args.lr}; {seconds:.0f} s in total."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--correlations", type=float, nargs="+", default=[0.5, 0.9, 1.0])
    ap.add_argument("--models", nargs="+", default=["shared_bottom", "omoe", "mmoe", "ple"], choices=MODELS,
                    help="'separate' is two unshared bottoms (no multi-task sharing), for reference")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=10000)
    ap.add_argument("--test-size", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--scale", type=float, default=1.0, help="c, the norm of w1 and w2")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--expert-units", type=int, default=16)
    ap.add_argument("--tower-units", type=int, default=8)
    ap.add_argument("--head-bias", choices=["zero", "mean"], default="zero",
                    help="start each regression head's bias at 0 (the paper's plain setup) or at the "
                    "task's training-label mean")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=str, default="docs")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = []
    t0 = time.perf_counter()
    for p in args.correlations:
        for seed in range(args.seeds):
            for name in args.models:
                r = run_one(name, p, seed, args)
                runs.append({"model": name, "p": p, "seed": seed, **r})
                print(f"p={p:<4} seed={seed} {name:<14} test mse {r['mean']:.4f} train {r['train_mean']:.4f} "
                      f"(task1 {r['task1']:.4f}, task2 {r['task2']:.4f}, {r['params']} params)", flush=True)
    seconds = time.perf_counter() - t0
    summary = summarize(runs)
    table = markdown(summary, runs, args, seconds)
    print(table)
    if not args.no_write:
        out = Path(args.out)
        write_json(out / "mmoe_synthetic.json", {
            "args": vars(args), "summary": summary, "shared_bottom_minus_mmoe": paired_gaps(runs, "shared_bottom", "mmoe"),
            "runs": runs,
        })
        plot(summary, runs, out / "mmoe_synthetic.png")
        atomic_write_text(out / "mmoe_synthetic_table.md", table)
        print(f"wrote {out / 'mmoe_synthetic.png'}, {out / 'mmoe_synthetic.json'}, {out / 'mmoe_synthetic_table.md'}")


if __name__ == "__main__":
    main()
