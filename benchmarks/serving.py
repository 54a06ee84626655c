"""Serving latency and throughput of a trained run's scoring forms on CPU: eager fp32 (the
``ScoringModel`` in Python), TorchScript fp32 and TorchScript with INT8 tables, at batch 1, 64 and 512.

Each round times every form at every batch size in turn (interleaved, so load drifts hit all forms
alike); per form and batch size it reports the p50 and p99 latency of single calls over all rounds,
rows/s (batch / mean latency) and the ratio of each to eager. Inputs are the run's test rows, already
mapped to ids (the preprocessing of raw rows is not timed). Record numbers only on an idle machine.

    OMP_NUM_THREADS=1 python benchmarks/serving.py --run runs/<default job> [--rounds 20] [--out serving.json]
    python benchmarks/serving.py --run RUN --quick     # a few calls: checks that it works, measures nothing
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from mtl_torchrec.core.io import write_json
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.launch.args import doc_summary
from mtl_torchrec.launch.quiet import silence_known_warnings
from mtl_torchrec.serve.runs import load_run_with_data
from mtl_torchrec.serve.scoring import scoring_inputs

BATCHES = (1, 64, 512)


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--run", required=True, help="a trained run directory")
    p.add_argument("--checkpoint", default=None, help="latest, best or step_N (default: as evaluate)")
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    p.add_argument("--calls", type=int, default=50, help="timed calls per form, batch size and round")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls per form and batch size first")
    p.add_argument("--quick", action="store_true", help="2 rounds of 3 calls: a smoke test, not a measurement")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.calls, args.warmup = 2, 3, 1
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    silence_known_warnings()
    # Imported here: the quality benchmark's helper builds the three forms the same way.
    from export_quality import scoring_forms  # type: ignore[import-not-found]

    _, bundle, module = load_run_with_data(Path(args.run), args.checkpoint)
    table = bundle.splits["test"]
    forms = scoring_forms(module, [f.name for f in bundle.schema.sparse])
    inputs = {b: scoring_inputs(Batch.from_table(table.take(np.arange(b) % len(table)), bundle.schema))
              for b in BATCHES}
    times: Dict[str, Dict[int, List[float]]] = {f: {b: [] for b in BATCHES} for f in forms}
    with torch.no_grad():
        for form in forms.values():
            for b in BATCHES:
                for _ in range(args.warmup):
                    form(*inputs[b])
        for _ in range(args.rounds):
            for name, form in forms.items():
                for b in BATCHES:
                    for _ in range(args.calls):
                        t0 = time.perf_counter()
                        form(*inputs[b])
                        times[name][b].append(time.perf_counter() - t0)
    out: Dict[str, Any] = {"run": args.run, "threads": threads, "rounds": args.rounds, "calls": args.calls,
                           "quick": args.quick, "forms": {}}
    print(f"{args.run}: {threads} thread(s), {args.rounds} rounds x {args.calls} calls"
          + (" (--quick: not a measurement)" if args.quick else ""))
    print("| form | batch | p50 ms | p99 ms | rows/s | p50 vs eager | rows/s vs eager |")
    print("|---|---|---|---|---|---|---|")
    for name in forms:
        out["forms"][name] = {}
        for b in BATCHES:
            t = np.array(times[name][b])
            e = np.array(times["eager"][b])
            row = {"p50_ms": float(np.percentile(t, 50) * 1e3), "p99_ms": float(np.percentile(t, 99) * 1e3),
                   "rows_per_s": float(b / t.mean())}
            row["p50_vs_eager"] = row["p50_ms"] / float(np.percentile(e, 50) * 1e3)
            row["rows_per_s_vs_eager"] = row["rows_per_s"] / float(b / e.mean())
            out["forms"][name][b] = row
            print(f"| {name} | {b} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['rows_per_s']:,.0f} | "
                  f"{row['p50_vs_eager']:.2f} | {row['rows_per_s_vs_eager']:.2f} |")
    if args.out:
        write_json(Path(args.out), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
