"""Peak memory of ``mtl-torchrec evaluate`` against the number of evaluated rows (memory only, no timing).

Generates impressions with a data spec (user and item ids, multi-valued tags, a price, a click and
a maskable rating label, users as GAUC groups, a cold/warm item slice), trains a tiny run for a few
steps on a small file, then evaluates CSV files of ``--sizes`` rows each (``--data FILE``: every
row is evaluated) in a fresh process per size and prints each process's peak resident memory
(``ru_maxrss``) and the bytes per row between the smallest and the largest size::

    python benchmarks/eval_memory.py                         # 200k and 2M rows, in a temporary folder
    python benchmarks/eval_memory.py --sizes 200000 2000000 --out /tmp/evalmem --whole   # keeps its files

``--whole`` also measures each size loaded whole (``evaluate_run(stream=False)`` on a spec of the
file, the path evaluation took before it streamed) for comparison.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mtl_torchrec.launch.args import doc_summary

NUM_USERS = 50_000
NUM_ITEMS = 20_000


def make_rows(n: int, seed: int) -> pd.DataFrame:
    """``n`` impressions whose click depends on hidden user and item affinities and the price."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, NUM_USERS, n)
    item = rng.integers(0, NUM_ITEMS, n)
    u_bias = np.random.default_rng(99).normal(0, 1.0, NUM_USERS)
    i_bias = np.random.default_rng(98).normal(0, 1.0, NUM_ITEMS)
    price = np.round(rng.lognormal(3, 1, n), 2)
    logit = u_bias[user] + i_bias[item] - 0.3 * np.log(price) - 1.0
    click = rng.random(n) < 1 / (1 + np.exp(-logit))
    rating = np.where(click, np.clip(np.round(3 + logit + rng.normal(0, 0.5, n)), 1, 5), np.nan)
    tags = pd.Series(rng.integers(0, 64, n)).astype(str) + "|" + pd.Series(rng.integers(0, 64, n)).astype(str)
    split = np.where(np.arange(n) % 10 == 9, "test", np.where(np.arange(n) % 10 == 8, "val", "train"))
    return pd.DataFrame({"user": user, "item": item, "tags": tags.to_numpy(), "price": price,
                         "click": click.astype(int), "rating": rating, "split": split})


def spec_of(files: str, split: bool = True) -> dict:
    """The data spec of :func:`make_rows` files (``split``: by the split column; else every row is
    in split ``all``)."""
    spec = {
        "files": files,
        "sparse": [{"column": "user", "vocab": "build"}, {"column": "item", "vocab": "build"},
                   {"column": "tags", "separator": "|", "vocab": "hash", "hash_buckets": 64}],
        "dense": [{"column": "price", "normalize": "log_standard"}],
        "labels": [{"task": "click", "column": "click", "type": "binary"},
                   {"task": "rating", "column": "rating", "type": "regression", "maskable": True}],
        "group": "user",
        "slices": [{"column": "item", "cold_warm": True}],
    }
    if split:
        spec["split"] = {"column": "split"}
    return spec


CONFIG = [
    "model.embedding_dim=8", "model.dense_layers=[16]", "model.mmoe.num_experts=2", "model.mmoe.expert_layers=[16]",
    "model.tower_layers=[8]", "model.tasks=[{name: click, type: binary}, {name: rating, type: regression}]",
    "data.batch_size=256", "data.eval_batch_size=4096", "train.epochs=1", "train.max_steps=20",
    "train.progress=false", "train.log_every=0", "train.sharding=table_wise",
]


def train(folder: Path) -> Path:
    """A tiny run on 100k rows (kept when ``folder`` already has one); returns its directory."""
    from mtl_torchrec.config import load_config
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.workflows import train as train_run

    run_dir = folder / "run"
    if (run_dir / "checkpoints" / "latest").exists():
        return run_dir
    make_rows(100_000, seed=1).to_csv(folder / "train.csv", index=False)
    (folder / "train.yaml").write_text(yaml.safe_dump(spec_of("train.csv")))
    cfg = load_config(None, [*CONFIG, "data.source=spec", f"data.spec={folder / 'train.yaml'}", f"run_dir={run_dir}"])
    ctx = init_distributed()
    try:
        train_run(cfg, ctx)
    finally:
        close_distributed(ctx)
    return run_dir


def evaluate_once(run_dir: str, data: str, whole: bool) -> None:
    """One evaluation in this process; prints ``{"rows", "peak_rss_mb"}`` as JSON on the last line."""
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.eval.evaluate import evaluate_run
    from mtl_torchrec.launch.quiet import silence_known_warnings

    silence_known_warnings()
    ctx = init_distributed()
    try:
        result = evaluate_run(Path(run_dir), ctx, data_spec=data, stream=not whole)
    finally:
        close_distributed(ctx)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(json.dumps({"rows": result.summary["rows"], "peak_rss_mb": peak}), flush=True)


def measure(run_dir: Path, data: Path, whole: bool) -> dict:
    """:func:`evaluate_once` in a fresh process (its own peak)."""
    cmd = [sys.executable, __file__, "--evaluate", str(run_dir), str(data)] + (["--whole"] if whole else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--sizes", type=int, nargs="+", default=[200_000, 2_000_000], help="evaluated rows per file")
    p.add_argument("--out", type=str, default=None, help="working folder (default: a temporary one)")
    p.add_argument("--whole", action="store_true", help="also measure the whole-bundle path (stream=False)")
    p.add_argument("--evaluate", nargs=2, metavar=("RUN", "DATA"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.evaluate:
        evaluate_once(*args.evaluate, whole=args.whole)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        run_dir = train(folder)
        modes = ["stream"] + (["whole"] if args.whole else [])
        peaks = {m: {} for m in modes}
        for n in args.sizes:
            data = folder / f"eval_{n}.csv"
            if not data.is_file():
                make_rows(n, seed=2).drop(columns=["split"]).to_csv(data, index=False)
            (folder / f"eval_{n}.yaml").write_text(yaml.safe_dump(spec_of(data.name, split=False)))
            for mode in modes:
                # The stream reads the CSV file itself (--data FILE); the whole path a spec of it.
                target = data if mode == "stream" else folder / f"eval_{n}.yaml"
                got = measure(run_dir, target, whole=mode == "whole")
                assert got["rows"] == n, got
                peaks[mode][n] = got["peak_rss_mb"]
                print(f"{mode:>6} {n:>10,} rows: peak RSS {got['peak_rss_mb']:8.0f} MiB", flush=True)
        lo, hi = min(args.sizes), max(args.sizes)
        for mode in modes:
            if hi > lo:
                per_row = (peaks[mode][hi] - peaks[mode][lo]) * 2**20 / (hi - lo)
                print(f"{mode:>6}: {per_row:.0f} bytes per row between {lo:,} and {hi:,} rows")


if __name__ == "__main__":
    main()
