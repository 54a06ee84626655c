"""Training throughput with a feature vs without it, measured in one run: text features
(``--feature text``) or a behaviour sequence with DIN target attention (``--feature sequence``).

* ``text``: ``--config default``; "without" is ID-only, "with" adds the text features (vectors from the
  cache, encoded once on the first run; the language model never runs in a training step).
* ``sequence``: ``--config sequence``; "with" adds each user's past clicks
  (``data.synthetic.history_length``) read by ``model.sequence``, "without" has no history feature.

Both models are built and sharded in the same process; timing alternates between them in rounds
(so background load hits both alike) and reports samples/s per variant and the ratio of the medians,
by wall time and by process CPU time (the cost of a step even on a machine shared with other work).

    OMP_NUM_THREADS=1 python benchmarks/feature_overhead.py --feature text --rounds 12
    OMP_NUM_THREADS=1 python benchmarks/feature_overhead.py --feature sequence --rounds 6 --steps 20 --warmup 5 \\
        data.synthetic.history_length=50 model.sequence.max_length=50
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

from mtl_torchrec.config import Config, load_config
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.launch.args import config_arg, config_help, doc_summary
from mtl_torchrec.launch.quiet import silence_known_warnings
from mtl_torchrec.train.trainer import Trainer
from mtl_torchrec.workflows.training import make_trainer

# Per feature: the packaged config, the overrides of "without" and "with", and what to print of "with".
FEATURES: Dict[str, Dict[str, Any]] = {
    "text": {
        "config": "default",
        "variants": {"without": ["model.text.enabled=false"], "with": ["model.text.enabled=true"]},
        "describe": lambda cfg: f"adapter {cfg.model.text.adapter_layers}",
    },
    "sequence": {
        "config": "sequence",
        "variants": {"without": ["data.synthetic.history_length=0", "model.sequence.enabled=false"],
                     "with": ["model.sequence.enabled=true"]},
        "describe": lambda cfg: (f"history {cfg.data.synthetic.history_length}, max_length "
                                 f"{cfg.model.sequence.max_length}, attention {cfg.model.sequence.attention_layers}"),
    },
}


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--feature", choices=sorted(FEATURES), required=True)
    p.add_argument("--config", type=config_arg, default=None, help=config_help() + " (default: the feature's)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=40, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    feature = FEATURES[args.feature]
    config = args.config or config_arg(feature["config"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    base = ["data.synthetic.num_impressions=200000", "train.progress=false"] + list(args.overrides)
    silence_known_warnings()  # the library notices checked to be harmless, as the commands do
    ctx = init_distributed()
    out = Path(tempfile.mkdtemp(prefix=f"{args.feature}_overhead_"))
    variants: Dict[str, List[str]] = feature["variants"]
    trainers: Dict[str, Trainer] = {}
    configs: Dict[str, Config] = {}
    for name, extra in variants.items():
        configs[name] = load_config(config, base + extra)
        # Each variant loads its own data: the sequence's "without" generates no history.
        trainers[name] = make_trainer(configs[name], load_data(configs[name].data), ctx, out / name)

    def run(name: str, steps: int) -> Tuple[float, float]:
        """(wall seconds, process CPU seconds) for ``steps`` training steps."""
        t0, c0 = time.perf_counter(), time.process_time()
        trainers[name].run_steps(steps)
        return time.perf_counter() - t0, time.process_time() - c0

    for name in variants:
        run(name, args.warmup)
    rates: Dict[str, List[float]] = {n: [] for n in variants}
    cpu_rates: Dict[str, List[float]] = {n: [] for n in variants}
    batch = configs["without"].data.batch_size * ctx.world_size
    for r in range(args.rounds):
        # Alternate which variant goes first, so a load change mid-round favours neither.
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            wall, cpu = run(name, args.steps)
            rates[name].append(args.steps * batch / wall)
            cpu_rates[name].append(args.steps * batch / cpu)
    for t in trainers.values():
        t.close()
    close_distributed(ctx)
    if ctx.is_main:
        med = {n: statistics.median(r) for n, r in rates.items()}
        cpu = {n: statistics.median(r) for n, r in cpu_rates.items()}
        print(f"{args.feature}: batch {batch}, {args.rounds} rounds x {args.steps} steps, {torch.get_num_threads()} "
              f"thread(s), {ctx.world_size} rank(s); {feature['describe'](configs['with'])}")
        for n in variants:
            print(f"{n:<8} median {med[n]:>9.0f} samples/s (wall), {cpu[n]:>9.0f} samples per CPU-second   "
                  f"wall rounds: {', '.join(f'{x:.0f}' for x in rates[n])}")
        # CPU time is what the step costs; wall time also carries any other load on the machine.
        print(f"ratio with / without: {cpu['with'] / cpu['without']:.3f} (CPU time), "
              f"{med['with'] / med['without']:.3f} (wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
