"""Training throughput with a behaviour sequence (DIN target attention) vs without, measured in one run.

The same impressions and model (``--config sequence``); "with" adds each user's past clicks
(``data.synthetic.history_length``) read by ``model.sequence``, "without" has no history feature
(the candidate item in the EBC). Both are built and sharded in the same process; timing alternates
between them in rounds (so background load hits both alike) and reports samples/s per variant and
the ratio of the medians, by wall time and by process CPU time (the cost of a step even on a
machine shared with other work).

    OMP_NUM_THREADS=1 python benchmarks/sequence_overhead.py
    OMP_NUM_THREADS=1 python benchmarks/sequence_overhead.py --rounds 5 --steps 40 data.synthetic.history_length=50 \
        model.sequence.max_length=50
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from mtl_torchrec.config import load_config
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.launch.args import config_arg, config_help
from mtl_torchrec.launch.quiet import silence_known_warnings
from mtl_torchrec.launch.train_cmd import make_trainer
from mtl_torchrec.train.trainer import Trainer


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=config_arg, default="sequence", help=config_help())
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=40, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    base = ["data.synthetic.num_impressions=200000", "train.progress=false"] + list(args.overrides)
    silence_known_warnings()  # the library notices checked to be harmless, as the commands do
    ctx = init_distributed()
    out = Path(tempfile.mkdtemp(prefix="sequence_overhead_"))
    variants = {"without": ["data.synthetic.history_length=0", "model.sequence.enabled=false"],
                "with": ["model.sequence.enabled=true"]}
    trainers: Dict[str, Trainer] = {}
    for name, extra in variants.items():
        cfg = load_config(args.config, base + extra)
        data = load_data(cfg.data)
        trainers[name] = make_trainer(cfg, data, ctx, out / name)

    def run(name: str, steps: int) -> Tuple[float, float]:
        """(wall seconds, process CPU seconds) for ``steps`` training steps."""
        t0, c0 = time.perf_counter(), time.process_time()
        trainers[name].run_steps(steps)
        return time.perf_counter() - t0, time.process_time() - c0

    for name in variants:
        run(name, args.warmup)
    rates: Dict[str, List[float]] = {n: [] for n in variants}
    cpu_rates: Dict[str, List[float]] = {n: [] for n in variants}
    batch = trainers["without"].cfg.data.batch_size * ctx.world_size
    for r in range(args.rounds):
        # Alternate which variant goes first, so a load change mid-round favours neither.
        for name in (list(variants) if r % 2 == 0 else list(reversed(list(variants)))):
            wall, cpu = run(name, args.steps)
            rates[name].append(args.steps * batch / wall)
            cpu_rates[name].append(args.steps * batch / cpu)
    for t in trainers.values():
        t.close()
    close_distributed(ctx)
    if ctx.is_main:
        med = {n: statistics.median(r) for n, r in rates.items()}
        cpu = {n: statistics.median(r) for n, r in cpu_rates.items()}
        seq = trainers["with"].cfg.model.sequence
        history = trainers["with"].cfg.data.synthetic.history_length
        print(f"batch {batch}, {args.rounds} rounds x {args.steps} steps, {torch.get_num_threads()} thread(s), "
              f"{ctx.world_size} rank(s); history {history}, max_length {seq.max_length}, "
              f"attention {seq.attention_layers}")
        for n in variants:
            print(f"{n:<8} median {med[n]:>9.0f} samples/s (wall), {cpu[n]:>9.0f} samples per CPU-second   "
                  f"wall rounds: {', '.join(f'{x:.0f}' for x in rates[n])}")
        # CPU time is what the step costs; wall time also carries any other load on the machine.
        print(f"ratio with / without (throughput): {cpu['with'] / cpu['without']:.3f} (CPU time), "
              f"{med['with'] / med['without']:.3f} (wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
