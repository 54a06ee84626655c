"""Training throughput (samples/s) of the default config on 1 and 2 ranks.

Runs the real ``mtl-torchrec train`` command under torchrun for each setting and reads the
``train_summary.json`` it writes (step time only; data generation, evaluation and checkpointing
excluded). On a 2-core machine the settings are: 1 rank x 1 thread, 1 rank x 2 threads and
2 ranks x 1 thread (more threads than cores per rank oversubscribes).

    python benchmarks/train_throughput.py [--steps 300] [--sharding planner] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mtl_torchrec.launch.args import doc_summary

REPO = Path(__file__).resolve().parents[1]


def measure(nproc: int, threads: int, steps: int, extra: list) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        cmd += ["-m", "mtl_torchrec", "train", "--config", "default"]
        cmd += [f"train.max_steps={steps}", "train.epochs=1", "train.progress=false", f"run_dir={out}/run"] + extra
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-4000:])
        return json.loads(Path(out, "run", "train_summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--steps", type=int, default=300, help="training steps per setting")
    p.add_argument("overrides", nargs="*", help="config overrides applied to every setting")
    args = p.parse_args()
    print(f"{'setting':<22}{'steps':>8}{'samples/s':>12}{'peak RSS per rank (MiB)':>26}")
    for nproc, threads in ((1, 1), (1, 2), (2, 1)):
        s = measure(nproc, threads, args.steps, args.overrides)
        print(f"{f'{nproc} rank x {threads} thread':<22}{s['steps']:>8}{s['samples_per_s']:>12.0f}"
              f"{s.get('peak_rss_mb', float('nan')):>26.0f}", flush=True)


if __name__ == "__main__":
    main()
