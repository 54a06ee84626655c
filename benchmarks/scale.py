"""Training on Parquet sets of growing size: peak memory, time to the first step and throughput of the
streamed training split (``data.shuffle_buffer``) against the in-memory path.

For each of ``--sizes`` impressions it writes a synthetic Parquet set in 1M-row files (row groups of
``--row-group`` rows; user and item ids drawn from skewed popularity, a category, a price, click and
conversion labels from hidden affinities), then trains it in a fresh process per measurement:

* ``first step``: the wall time of a run of one step (start-up, fitting pass, counting pass, one step);
* ``steps``: a run of ``--steps`` steps; its ``train_summary.json`` gives the peak resident memory of the
  rank (``peak_rss_mb``, MiB) and the training throughput (``samples_per_s``, rows/s, steps only);

streamed with ``--buffer`` rows per window, and at the smallest size also held in memory
(``data.shuffle_buffer=0``) for the throughput ratio, interleaved in ``--rounds`` rounds. ``--vocab``
picks the id features' vocabulary mode (``zch``: no fitted vocabulary; ``build``). Run it on an idle
machine (one rank, ``OMP_NUM_THREADS=2``)::

    python benchmarks/scale.py --sizes 1000000 10000000 50000000 --out /tmp/scale
    python benchmarks/scale.py --sizes 20000 40000 --steps 5 --out /tmp/scale-smoke    # a functional check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd
import yaml

from mtl_torchrec.launch.args import doc_summary

NUM_USERS = 1_000_000
NUM_ITEMS = 200_000
NUM_CATEGORIES = 100
FILE_ROWS = 1_000_000


def make_rows(n: int, seed: int) -> pd.DataFrame:
    """``n`` impressions (deterministic for ``seed``): skewed user/item popularity, click and
    conversion from hidden user and item affinities and the price."""
    rng = np.random.default_rng(seed)
    user = np.minimum(rng.zipf(1.3, n), NUM_USERS) - 1
    item = np.minimum(rng.zipf(1.2, n), NUM_ITEMS) - 1
    u_bias = np.random.default_rng(7).normal(0, 1, NUM_USERS)
    i_bias = np.random.default_rng(8).normal(0, 1, NUM_ITEMS)
    price = rng.lognormal(3, 1, n)
    logit = u_bias[user] + i_bias[item] - 0.2 * np.log(price) - 1.5
    click = rng.random(n) < 1 / (1 + np.exp(-logit))
    conversion = click & (rng.random(n) < 1 / (1 + np.exp(-(i_bias[item] - 1.0))))
    return pd.DataFrame({
        "user_id": user.astype(np.int64), "item_id": item.astype(np.int64), "category": item % NUM_CATEGORIES,
        "price": np.round(price, 2), "click": click.astype(np.int64), "conversion": conversion.astype(np.int64),
    })


def write_set(folder: Path, rows: int, row_group: int) -> None:
    """``rows`` training impressions in files of at most 1M rows, plus small val and test files."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "done").exists():
        return
    for i, start in enumerate(range(0, rows, FILE_ROWS)):
        make_rows(min(FILE_ROWS, rows - start), seed=i).to_parquet(folder / f"train-{i:04d}.parquet", index=False,
                                                                   row_group_size=row_group)
    make_rows(20_000, seed=10_001).to_parquet(folder / "val.parquet", index=False)
    make_rows(20_000, seed=10_002).to_parquet(folder / "test.parquet", index=False)
    (folder / "done").write_text("")


def write_spec(folder: Path, vocab: str, zch_size: int) -> Path:
    """The data spec of a set (files per split; ids by ``vocab``)."""
    ids = {"vocab": "zch", "zch": {"size": zch_size}} if vocab == "zch" else {"vocab": "build"}
    spec = {
        "files": {"train": "train-*.parquet", "val": "val.parquet", "test": "test.parquet"},
        "sparse": [{"column": "user_id", **ids}, {"column": "item_id", **ids},
                   {"column": "category", "vocab": "identity", "num_embeddings": NUM_CATEGORIES}],
        "dense": [{"column": "price", "normalize": "log_standard"}],
        "labels": [{"task": "click", "column": "click", "type": "binary"},
                   {"task": "conversion", "column": "conversion", "type": "binary"}],
        "chunk_rows": 200_000,
    }
    path = folder / f"spec-{vocab}.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def train(spec: Path, run_dir: Path, buffer: int, steps: int) -> Dict[str, Any]:
    """One run in a fresh process: its wall time and ``train_summary.json``."""
    overrides = [
        "data.source=spec", f"data.spec={spec}", f"run_dir={run_dir}", f"data.shuffle_buffer={buffer}",
        "data.batch_size=1024", "data.eval_batch_size=8192", f"train.max_steps={steps}", "train.epochs=1",
        "train.progress=false", "train.log_every=0", "train.checkpoint_every=0", "train.sharding=table_wise",
        "model.tasks=[{name: click, type: binary}, {name: conversion, type: binary, esmm_parent: click}]",
    ]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mtl_torchrec", "train", *overrides], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({run_dir}):\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "train_summary.json").read_text())
    return {"wall_s": wall, "peak_rss_mb": summary.get("peak_rss_mb"), "samples_per_s": summary.get("samples_per_s")}


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000, 50_000_000])
    p.add_argument("--out", type=Path, required=True, help="folder for the data sets and runs (kept)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--buffer", type=int, default=200_000, help="data.shuffle_buffer of the streamed runs")
    p.add_argument("--row-group", type=int, default=100_000)
    p.add_argument("--vocab", choices=["zch", "build"], default="zch")
    p.add_argument("--zch-size", type=int, default=500_000)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    results: List[Dict[str, Any]] = []
    for rows in args.sizes:
        folder = args.out / f"rows-{rows}"
        write_set(folder, rows, args.row_group)
        spec = write_spec(folder, args.vocab, args.zch_size)
        for r in range(args.rounds):
            modes = [("streamed", args.buffer)] + ([("in memory", 0)] if rows == min(args.sizes) else [])
            for mode, buffer in modes:
                first = train(spec, folder / f"run-{r}-{buffer}-first", buffer, 1)
                run = train(spec, folder / f"run-{r}-{buffer}", buffer, args.steps)
                results.append({"rows": rows, "mode": mode, "round": r, "first_step_s": first["wall_s"], **run})
                print(json.dumps(results[-1]), flush=True)
    table = pd.DataFrame(results).groupby(["rows", "mode"]).median(numeric_only=True)
    print(table[["first_step_s", "peak_rss_mb", "samples_per_s"]].to_string())
    (args.out / "scale.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
