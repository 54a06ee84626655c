"""Text+ID vs ID-only, the same model otherwise, overall and on cold items, in one command.

Both variants use the same config, seed and number of steps; the only difference is
``model.text.enabled``. Texts are encoded once with the packaged MiniLM-L6 into the encoding cache
(``model.text.cache_dir``) and reused on later runs. The cold slice is the data's ``cold_items`` or
first ``<column>=cold`` slice (``--cold-slice``); without one only the overall table is printed. ``--val`` also evaluates both runs on
the validation split and prints the same tables for it: the split to choose settings on.

    python examples/movielens/run.py                                   # MovieLens-100K, built-in source
    python examples/movielens/export_csv.py --out data/ml100k_csv      # the same as CSV files + a data spec
    python examples/compare_text.py --config examples/movielens/spec_config.yaml data.spec=data/ml100k_csv/spec.yaml
    python examples/compare_text.py --val --config examples/movielens/spec_config.yaml data.spec=data/ml100k_csv/spec.yaml
    python examples/reviews/make_data.py --out data/reviews            # per-row review text
    python examples/compare_text.py --config examples/reviews/config.yaml data.spec=data/reviews/spec.yaml

Writes ``<output>/results.json`` and prints one table per evaluation set.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from mtl_torchrec.config import load_config
from mtl_torchrec.core.io import write_json
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.eval.evaluate import evaluate_run
from mtl_torchrec.launch.args import doc_summary
from mtl_torchrec.launch.quiet import silence_known_warnings
from mtl_torchrec.workflows import train

VARIANTS = {"id_only": ["model.text.enabled=false"], "text_id": ["model.text.enabled=true"]}


BINARY_METRICS = ("auc", "gauc", "logloss", "ne", "calibration")
REGRESSION_METRICS = ("rmse", "mae")


def comparison_table(results: Dict[str, Dict[str, Dict[str, Dict[str, float]]]], split: str) -> str:
    """Rows task/metric, one column per variant plus the difference (text_id - id_only)."""
    keys = [(task, metric) for task, block in results["id_only"][split].items()
            for metric in (BINARY_METRICS if "auc" in block else REGRESSION_METRICS) if metric in block]
    lines = [f"{'task':<12}{'metric':<12}{'id_only':>10}{'text_id':>10}{'diff':>10}"]
    for task, metric in keys:
        a = results["id_only"][split][task].get(metric, float("nan"))
        b = results["text_id"][split][task].get(metric, float("nan"))
        lines.append(f"{task:<12}{metric:<12}{a:>10.4f}{b:>10.4f}{b - a:>+10.4f}")
    return "\n".join(lines)


def print_tables(results: Dict[str, Any], split: str, pick: Callable[[Dict[str, Any]], Dict[str, Any]],
                 slices: List[str], cold: Optional[str]) -> None:
    """Prints the overall table of ``split``, its cold slice's (when ``cold`` names one) and each of ``slices``
    that the split has; ``pick`` gives a variant's ``{"tasks", "slices"}`` for the split."""
    blocks = {v: pick(r) for v, r in results.items()}
    print(f"\nall {split} rows")
    print(comparison_table({v: {"s": b["tasks"]} for v, b in blocks.items()}, "s"))
    for name in ([cold] if cold else []) + list(slices):
        have = blocks["text_id"]["slices"]
        if name not in have:
            if split == "test":
                raise SystemExit(f"--slice: {name!r} is not a slice of the data ({sorted(have)})")
            continue  # e.g. the test split's "first rated in test" has no validation rows
        title = "cold items (items never seen in training)" if name == cold else "slice"
        print(f"\n{title} '{name}' ({split}, {have[name]['rows']} rows)")
        print(comparison_table({v: {"s": b["slices"][name]["tasks"]} for v, b in blocks.items()}, "s"))


def main(argv: Any = None, default_config: Optional[str] = None, prog: Optional[str] = None) -> int:
    """Runs the comparison; ``default_config`` makes ``--config`` optional (the wrappers' own config)."""
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    if prog is not None:
        p.prog = prog
    if default_config is None:
        p.add_argument("--config", required=True, help="the run config both variants start from")
    else:
        p.add_argument("--config", default=default_config, help=f"the run config (default: {default_config})")
    p.add_argument("--output", default=None, help="folder for runs and results.json (default: a temp folder)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--cold-slice", default=None,
                   help="the data's slice of cold items (default: cold_items, or the first '<column>=cold' slice)")
    p.add_argument("--slice", dest="slices", action="append", default=[],
                   help="another slice of the data to print a table for (e.g. item_first_rated=test); repeatable")
    p.add_argument("--val", action="store_true",
                   help="also evaluate both runs on the validation split (overall, cold and --slice tables)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    out = Path(args.output or tempfile.mkdtemp(prefix="compare_text_"))
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    silence_known_warnings()  # the library notices checked to be harmless, as the commands do
    ctx = init_distributed()
    results: Dict[str, Any] = {}
    try:
        for name, extra in ((n, VARIANTS[n]) for n in args.variants):
            # The train command's own path: best-checkpoint selection and calibration apply when configured,
            # and each variant is a run folder that `mtl-torchrec evaluate --run` reads.
            cfg = load_config(args.config, list(args.overrides) + extra + [f"run_dir={out / name}"])
            res = train(cfg, ctx)
            summary = res.summary
            if ctx.is_main:
                slices = res.slices
                cold = args.cold_slice or next((s for s in slices if s == "cold_items" or s.endswith("=cold")), None)
                if args.cold_slice and cold not in slices:
                    raise SystemExit(f"--cold-slice: {cold!r} is not a slice of the data ({sorted(slices)})")
                results[name] = {"test": res.metrics, "summary": summary,
                                 "slices": {k: {"rows": v["rows"], "tasks": v["tasks"]} for k, v in slices.items()}}
                if cold is not None:
                    results[name]["test_cold"] = slices[cold]["tasks"]
                    results[name]["cold_slice"] = (cold, int(slices[cold]["rows"]))
                print(f"{name}: {summary['steps']} steps, {summary['samples_per_s']:.0f} samples/s", flush=True)
            if args.val:
                # The run folder as `mtl-torchrec evaluate --split val` reads it (calibration and slices included).
                val = evaluate_run(out / name, ctx, split="val").summary
                if ctx.is_main:
                    results[name]["val"] = {"tasks": val["tasks"], "slices": val["slices"]}
    finally:
        close_distributed(ctx)
    if ctx.is_main and len(results) == 1:
        write_json(out / "results.json", results)
        print(results)
    elif ctx.is_main:
        write_json(out / "results.json", results)
        print_tables(results, "test", lambda r: {"tasks": r["test"], "slices": r["slices"]}, args.slices, cold)
        if args.val:
            print_tables(results, "validation", lambda r: r["val"], args.slices, cold)
        print(f"\n{out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
