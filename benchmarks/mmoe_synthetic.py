"""The MMoE paper's synthetic experiment: test loss of SharedBottom, OMoE, MMoE and PLE as the
correlation ``p`` between two regression tasks falls.

Setup as in the paper (Ma et al., KDD 2018, section 5): ``d = 100`` inputs, 8 single-layer
experts of 16 units, single-layer towers of 8 units, Adam. SharedBottom gets one hidden layer
whose width matches MMoE's parameter count; PLE has 2 levels of 2 task experts per task and 4
shared experts (8 per level, as MMoE). ``separate`` (two unshared bottoms, same parameter count) is
the no-sharing reference. Training is plain PyTorch over dense tensors with the
project's modules (no sparse features).

A paired design: for each seed, one task pair is generated (x, the sine terms and the noise depend
on the seed only; the correlation p only turns w2), and every model is trained on exactly that data
at each p, from the same torch seed. Model comparisons are the per-seed differences
``loss(model) - loss(MMoE)``, reported as mean and 95% t confidence interval over the seeds, which
takes out the seed-to-seed difficulty of the data (larger than any model effect). The paper's claim
is checked the same way: the per-seed gap at the lowest p minus the gap at the highest p.

Run::

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/mmoe_synthetic.py            # writes docs/
    PYTHONPATH=. python benchmarks/mmoe_synthetic.py --seeds 2 --epochs 1 --no-write   # smoke run
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from mtl_torchrec.core.io import atomic_path, atomic_write_text, write_json
from mtl_torchrec.core.stats import mean_interval
from mtl_torchrec.data.mmoe_synthetic import make_correlated_tasks
from mtl_torchrec.launch.args import doc_summary
from mtl_torchrec.modules import PLE, MMoE, SeparateBottoms, SharedBottom, TaskTowers

MODELS = ("shared_bottom", "omoe", "mmoe", "ple", "separate")
DIM = 100
# Paired comparisons: every model against MMoE, on the same data.
BASELINE = "mmoe"
CONFIDENCE = 0.95


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
        cls = SharedBottom if name == "shared_bottom" else SeparateBottoms
        # The width search builds many models; it must not move the RNG the model's init draws from,
        # or the first build of a run would start from another state than the later ones.
        with torch.random.fork_rng(devices=[]):
            width = matched_width(name, count(mmoe), tuple(tower))
        return TwoTaskRegressor(cls(DIM, 2, [width]), tower)
    raise ValueError(name)


@functools.lru_cache(maxsize=None)
def matched_width(name: str, target: int, tower: Tuple[int, ...]) -> int:
    """The hidden width of SharedBottom / SeparateBottoms whose parameter count is closest to
    ``target`` (MMoE's); cached, since it builds a model per candidate width."""
    cls = SharedBottom if name == "shared_bottom" else SeparateBottoms
    return min(range(4, 1024), key=lambda h: abs(count(TwoTaskRegressor(cls(DIM, 2, [h]), list(tower))) - target))


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
    """Per model and correlation: mean, std, median and 95% CI of the test MSE over seeds."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name in MODELS:
        for p in sorted({r["p"] for r in runs}):
            sel = [r for r in runs if r["model"] == name and r["p"] == p]
            vals = np.array([r["mean"] for r in sel])
            if len(vals):
                early = np.array([r["curve"][min(1, len(r["curve"]) - 1)] for r in sel])
                ci = mean_interval(vals, CONFIDENCE)
                out.setdefault(name, {})[str(p)] = {
                    "mean": float(vals.mean()),
                    "epoch2_mean": float(early.mean()),
                    "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                    "median": float(np.median(vals)),
                    "low": ci.low,
                    "high": ci.high,
                    "seeds": int(len(vals)),
                }
    return out


def per_seed(runs: List[Dict], model: str, p: float) -> Dict[int, float]:
    """seed -> test MSE (mean of the two tasks) of ``model`` at correlation ``p``."""
    return {r["seed"]: r["mean"] for r in runs if r["model"] == model and r["p"] == p}


def paired_gaps(runs: List[Dict], a: str, b: str) -> Dict[str, Dict[str, float]]:
    """Per correlation: ``loss(a) - loss(b)`` per seed (same data for both), as mean, sd, n and the
    95% t interval ``[low, high]`` over seeds; ``d`` holds the per-seed differences."""
    out: Dict[str, Dict[str, float]] = {}
    for p in sorted({r["p"] for r in runs}):
        la, lb = per_seed(runs, a, p), per_seed(runs, b, p)
        seeds = sorted(set(la) & set(lb))
        if seeds:
            d = [la[s] - lb[s] for s in seeds]
            out[str(p)] = {**mean_interval(d, CONFIDENCE).as_dict(), "d": d}
    return out


def trend(runs: List[Dict], a: str, b: str) -> Dict[str, float]:
    """The paper's claim as one paired number: per seed, the gap ``a - b`` at the lowest correlation
    minus the gap at the highest (positive: the gap grows as the tasks grow apart), with its interval."""
    ps = sorted({r["p"] for r in runs})
    if len(ps) < 2:
        return {}
    lo, hi = ps[0], ps[-1]
    gap_lo = {s: v - per_seed(runs, b, lo).get(s, math.nan) for s, v in per_seed(runs, a, lo).items()}
    gap_hi = {s: v - per_seed(runs, b, hi).get(s, math.nan) for s, v in per_seed(runs, a, hi).items()}
    d = [gap_lo[s] - gap_hi[s] for s in sorted(set(gap_lo) & set(gap_hi))]
    return {"low_p": lo, "high_p": hi, **mean_interval(d, CONFIDENCE).as_dict()}


def comparisons(models: List[str]) -> List[str]:
    """The models compared with :data:`BASELINE` (those run besides it)."""
    return [m for m in models if m != BASELINE] if BASELINE in models else []


def plot(summary: Dict, runs: List[Dict], models: List[str], path: Path) -> None:
    """Left: paired differences to MMoE with 95% CIs against p; right: each model's test MSE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = comparisons(models)
    for k, name in enumerate(names):
        gaps = paired_gaps(runs, name, BASELINE)
        ps = sorted(gaps, key=float)
        # A small horizontal offset per model keeps the error bars apart.
        x = [float(p) + 0.006 * (k - (len(names) - 1) / 2) for p in ps]
        y = [gaps[p]["mean"] for p in ps]
        err = [[gaps[p]["mean"] - gaps[p]["low"] for p in ps], [gaps[p]["high"] - gaps[p]["mean"] for p in ps]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{name} − {BASELINE}")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel("task correlation p = cos(w1, w2)")
    ax.set_ylabel("paired difference in test MSE")
    seeds = len({r["seed"] for r in runs})
    ax.set_title(f"model − MMoE on the same data: mean, 95% CI ({seeds} seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    for name, by_p in summary.items():
        ps = sorted(by_p, key=float)
        ax2.plot([float(p) for p in ps], [by_p[p]["median"] for p in ps], marker="o", label=name)
    ax2.set_yscale("log")
    ax2.set_xlabel("task correlation p = cos(w1, w2)")
    ax2.set_ylabel("test MSE (mean of 2 tasks), median over seeds")
    ax2.set_title("each model's test loss", fontsize=10)
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _interval(c: Dict[str, float]) -> str:
    return f"{c['mean']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"


def _verdict(c: Dict[str, float], a: str) -> str:
    if c["low"] > 0:
        return f"MMoE better than {a}"
    if c["high"] < 0:
        return f"{a} better than MMoE"
    return "no difference resolved"


def markdown(summary: Dict, runs: List[Dict], models: List[str], args: argparse.Namespace, seconds: float) -> str:
    """The results table: test MSE per model (mean ± std over seeds), the paired differences to MMoE
    with 95% CIs, the trend in p, and one line per comparison saying what the intervals show."""
    ps = sorted({p for by_p in summary.values() for p in by_p}, key=float)
    lines = ["Test MSE (mean of the two tasks), mean ± std over seeds:", "",
             "| model | " + " | ".join(f"p = {p}" for p in ps) + " |", "|---|" + "---|" * len(ps)]
    for name, by_p in summary.items():
        cells = [f"{by_p[p]['mean']:.4f} ± {by_p[p]['std']:.4f}" if p in by_p else "-" for p in ps]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    names = comparisons(models)
    seeds = len({r["seed"] for r in runs})
    if names:
        lines += ["", f"Paired differences (same data per seed), mean [95% CI] over {seeds} seeds; positive: MMoE "
                  "has the lower loss. Last column: the gap at the lowest p minus the gap at the highest, per seed "
                  "(the paper: positive, the gap grows as the tasks grow apart):", "",
                  "| difference | " + " | ".join(f"p = {p}" for p in ps) + " | gap(low p) − gap(high p) |",
                  "|---|" + "---|" * (len(ps) + 1)]
        reading = []
        for name in names:
            gaps = paired_gaps(runs, name, BASELINE)
            tr = trend(runs, name, BASELINE)
            cells = [_interval(gaps[p]) if p in gaps else "-" for p in ps]
            lines.append(f"| {name} − {BASELINE} | " + " | ".join(cells) + f" | {_interval(tr) if tr else '-'} |")
            per_p = "; ".join(f"p = {p}: {_verdict(gaps[p], name)}" for p in ps if p in gaps)
            grows = ("grows as p falls" if tr and tr["low"] > 0 else
                     "shrinks as p falls" if tr and tr["high"] < 0 else "shows no resolved trend in p")
            reading.append(f"- {name} − {BASELINE}: {per_p}; the gap {grows}.")
        lines += ["", *reading]
    lines.append("")
    lines.append(
        f"{seeds} seeds, {args.train_size} train / {args.test_size} test samples, {args.epochs} epochs of batch "
        f"{args.batch_size}, Adam lr {args.lr}, {args.threads} thread(s); {seconds:.0f} s in total."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=doc_summary(__doc__))
    ap.add_argument("--correlations", type=float, nargs="+", default=[0.5, 0.9, 1.0])
    ap.add_argument("--models", nargs="+", default=["shared_bottom", "omoe", "mmoe", "ple"], choices=MODELS,
                    help="'separate' is two unshared bottoms (no multi-task sharing), for reference")
    ap.add_argument("--seeds", type=int, default=10)
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
    # Seed outermost: each seed's task pair goes to every model at every p before the next seed.
    for seed in range(args.seeds):
        for p in args.correlations:
            for name in args.models:
                r = run_one(name, p, seed, args)
                runs.append({"model": name, "p": p, "seed": seed, **r})
                print(f"p={p:<4} seed={seed} {name:<14} test mse {r['mean']:.4f} train {r['train_mean']:.4f} "
                      f"(task1 {r['task1']:.4f}, task2 {r['task2']:.4f}, {r['params']} params)", flush=True)
    seconds = time.perf_counter() - t0
    summary = summarize(runs)
    table = markdown(summary, runs, args.models, args, seconds)
    print(table)
    if not args.no_write:
        out = Path(args.out)
        write_json(out / "mmoe_synthetic.json", {
            "args": vars(args), "summary": summary,
            "paired": {f"{m}-{BASELINE}": {"by_p": paired_gaps(runs, m, BASELINE), "trend": trend(runs, m, BASELINE)}
                       for m in comparisons(args.models)},
            "runs": runs,
        })
        plot(summary, runs, args.models, out / "mmoe_synthetic.png")
        atomic_write_text(out / "mmoe_synthetic_table.md", table)
        print(f"wrote {out / 'mmoe_synthetic.png'}, {out / 'mmoe_synthetic.json'}, {out / 'mmoe_synthetic_table.md'}")


if __name__ == "__main__":
    main()
