"""Evaluation throughput: rows/s of `mtl-torchrec evaluate` on 1M rows, 1 rank and 2 ranks.

Trains a short run on the built-in synthetic data (default config: MMoE, 8 experts), then
evaluates its 1M-row train split with the CLI, once in one process and once under torchrun with
2 ranks (OMP_NUM_THREADS=1 per rank), and prints the rows/s each reports.

    python benchmarks/eval_throughput.py                       # 1M rows
    python benchmarks/eval_throughput.py --rows 200000         # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mtl_torchrec.launch.args import doc_summary

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd, env):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=doc_summary(__doc__))
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows to evaluate (the train split's size)")
    ap.add_argument("--batch-size", type=int, default=4096, help="rows per rank per step")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--workdir", type=str, default=None)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="eval_bench_"))
    run = work / "run"
    impressions = int(round(args.rows / 0.8))  # val and test take 10% each
    py = sys.executable
    train_s = sh([py, "-m", "mtl_torchrec", "train", "--config", "default", f"run_dir={run}",
                  f"data.synthetic.num_impressions={impressions}", f"train.max_steps={args.train_steps}",
                  "train.epochs=1", "train.progress=false", "train.sharding=table_wise"], env)
    print(f"trained {args.train_steps} steps in {train_s:.1f}s ({run})")
    results = {}
    for ranks in (1, 2):
        out = work / f"eval_{ranks}"
        launcher = [py, "-m", "mtl_torchrec"] if ranks == 1 else \
            [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "mtl_torchrec"]
        wall = sh([*launcher, "evaluate", "--run-dir", str(run), "--split", "train", "--no-plots", "--out", str(out),
                   "--batch-size", str(args.batch_size)], env)
        s = json.loads((out / "eval.json").read_text())
        t = s["timing"]
        results[ranks] = t["rows_per_s"]
        print(f"{ranks} rank(s): {s['rows']} rows, scoring {t['score_s']:.1f}s = {t['rows_per_s']:.0f} rows/s; "
              f"data {t['load_data_s']:.1f}s, exact AUC/GAUC on rank 0 {t['rank0_metrics_s']:.1f}s, "
              f"command wall {wall:.1f}s; click AUC {s['tasks']['click']['auc']:.4f}")
    print(f"2 ranks / 1 rank scoring throughput: {results[2] / results[1]:.2f}x")


if __name__ == "__main__":
    main()
