"""Text+ID vs ID-only MMoE on MovieLens-100K, overall and on cold-start items, in one command.

Both variants use the same config, seed and number of steps; the only difference is
``model.text.enabled``. Item texts (title, year, genres) are encoded once with the packaged
MiniLM-L6 into ``model.text.cache_dir`` and reused on later runs.

    python examples/movielens/run.py                          # from the repository root
    python examples/movielens/run.py data.movielens.path=/data/ml-100k train.epochs=5

Writes ``<output>/results.json`` and prints one table per evaluation set.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

from mtl_torchrec.config import load_config
from mtl_torchrec.core.io import write_json
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.launch.quiet import silence_known_warnings
from mtl_torchrec.launch.train_cmd import make_trainer

HERE = Path(__file__).resolve().parent
VARIANTS = {"id_only": ["model.text.enabled=false"], "text_id": ["model.text.enabled=true"]}


def comparison_table(results: Dict[str, Dict[str, Dict[str, Dict[str, float]]]], split: str) -> str:
    """Rows task/metric, one column per variant plus the difference (text_id - id_only)."""
    keys = [("click", "auc"), ("click", "gauc"), ("click", "logloss"), ("click", "ne"), ("conversion", "auc"),
            ("conversion", "gauc"), ("conversion", "logloss"), ("conversion", "ne"), ("rating", "rmse"), ("rating", "mae")]
    lines = [f"{'task':<12}{'metric':<10}{'id_only':>10}{'text_id':>10}{'diff':>10}"]
    for task, metric in keys:
        a = results["id_only"][split][task].get(metric, float("nan"))
        b = results["text_id"][split][task].get(metric, float("nan"))
        lines.append(f"{task:<12}{metric:<10}{a:>10.4f}{b:>10.4f}{b - a:>+10.4f}")
    return "\n".join(lines)


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(HERE / "config.yaml"))
    p.add_argument("--output", default=None, help="folder for runs and results.json (default: a temp folder)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    out = Path(args.output or tempfile.mkdtemp(prefix="movielens_"))
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    silence_known_warnings()  # the library notices checked to be harmless, as the commands do
    ctx = init_distributed()
    results: Dict[str, Any] = {}
    try:
        for name, extra in ((n, VARIANTS[n]) for n in args.variants):
            cfg = load_config(args.config, list(args.overrides) + extra)
            data = load_data(cfg.data)
            trainer = make_trainer(cfg, data, ctx, out / name)
            try:
                summary = trainer.fit()
                # The data's slices (cold_items) are evaluated with the split.
                test = trainer.evaluate("test")
                if ctx.is_main:
                    results[name] = {"test": test["tasks"], "test_cold": test["slices"]["cold_items"]["tasks"],
                                     "summary": summary}
            finally:
                trainer.close()
            if ctx.is_main:
                print(f"{name}: {summary['steps']} steps, {summary['samples_per_s']:.0f} samples/s", flush=True)
    finally:
        close_distributed(ctx)
    if ctx.is_main and len(results) == 1:
        write_json(out / "results.json", results)
        print(results)
    elif ctx.is_main:
        n_cold = int(results["text_id"]["test_cold"]["click"]["count"])
        write_json(out / "results.json", results)
        print("\nall test impressions (conversion: click-and-convert over all impressions)")
        print(comparison_table(results, "test"))
        print(f"\ncold-start items (first rated after the test cut; {n_cold} impressions)")
        print(comparison_table(results, "test_cold"))
        print(f"\n{out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
