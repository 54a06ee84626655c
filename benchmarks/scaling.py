"""Scaling of ours: 2 ranks x 1 thread vs 1 rank x 1 thread at a fixed per-rank batch, training and
scoring, measured in one run.

Each round launches ``benchmarks/speed.py --ours-only`` once on 1 rank and once on 2 ranks
(torchrun, gloo, ``OMP_NUM_THREADS=1``; the order alternates between rounds) and reads the rows/s it
timed inside (start-up, data generation and sharding excluded). Prints the median rows/s of each
setting and the ratio 2 ranks / 1 rank. Run it on an otherwise idle machine with 2 or more cores.

With ``--with-plain`` each launch also times speed.py's plain-PyTorch reference (scoring: each rank
scores its own rows with no communication at all; training: DDP), and the ``torch.mm`` peak that
each rank measures while every rank multiplies at once. Their 2 / 1 ratios are what this machine's
cores give to perfectly parallel work: the ceiling of any 2-rank scaling here.

    python benchmarks/scaling.py                      # 3 rounds
    python benchmarks/scaling.py --rounds 5 --steps 40
    python benchmarks/scaling.py --with-plain         # and the plain reference's scaling (the ceiling)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from mtl_torchrec.launch.args import doc_summary

ROOT = Path(__file__).resolve().parents[1]


def launch(ranks: int, args: argparse.Namespace, out: Path) -> Dict[str, Any]:
    """One ``speed.py --ours-only`` run on ``ranks`` ranks; its JSON results."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           str(ROOT / "benchmarks" / "speed.py"), *([] if args.with_plain else ["--ours-only"]),
           "--rounds", str(args.inner_rounds), "--steps", str(args.steps), "--score-rows", str(args.score_rows),
           "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{ranks} rank(s) failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--inner-rounds", type=int, default=2, help="timed rounds inside each launch")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--score-rows", type=int, default=100_000)
    p.add_argument("--with-plain", action="store_true",
                   help="also time the plain reference and the matmul peak on 1 and 2 ranks (the ceiling)")
    args = p.parse_args(argv)
    rates: Dict[str, Dict[int, List[float]]] = {"train": {1: [], 2: []}, "score": {1: [], 2: []}}
    # (kind, contestant) -> ranks -> rows/s (or FLOP/s per rank for the peak); only with --with-plain.
    reference: Dict[str, Dict[int, List[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for ranks in ((1, 2) if r % 2 == 0 else (2, 1)):
                res = launch(ranks, args, Path(tmp) / f"r{r}_{ranks}.json")
                for kind in rates:
                    rates[kind][ranks] += res[kind]["ours"]
                    for name, got in res[kind].items():
                        if name != "ours":
                            reference.setdefault(f"{kind}: {name}", {1: [], 2: []})[ranks] += got
                if args.with_plain:
                    # Over all ranks: what the cores multiply at once.
                    reference.setdefault("torch.mm peak (GFLOP/s)", {1: [], 2: []})[ranks].append(
                        res["matmul_peak_per_rank"] * ranks / 1e9)
                print(f"round {r + 1}, {ranks} rank(s): train {statistics.median(res['train']['ours']):,.0f}, "
                      f"score {statistics.median(res['score']['ours']):,.0f} rows/s", flush=True)
    for kind, by in rates.items():
        one, two = statistics.median(by[1]), statistics.median(by[2])
        print(f"{kind:<6} 1 rank x 1 thread {one:>9,.0f} rows/s   2 ranks x 1 thread {two:>9,.0f} rows/s   "
              f"2 / 1: {two / one:.2f}x")
    if reference:
        print("the same runs' plain reference and matmul peak (the ceiling of 2-rank scaling on these cores):")
    for name, by in reference.items():
        one, two = statistics.median(by[1]), statistics.median(by[2])
        print(f"  {name:<24} 1 rank {one:>11,.1f}   2 ranks {two:>11,.1f}   2 / 1: {two / one:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
