"""Test metrics of a data spec's run with its vocabularies as written (``build`` / ``hash`` / ...) against
the same run with every such id feature on ``vocab: zch`` (TorchRec's managed collisions, no fitted
vocabulary): AUC and NE per binary task, RMSE per regression task, and the zch tables' statistics
(keys held, share of lookups that read the shared row, evictions).

``--size`` sets every zch table's rows (default: the feature's ``build`` vocabulary size times
``--headroom``, so the two runs have about the same table sizes). The default synthetic job reads a
built-in source (ids already rows, no spec), so only spec runs take part; the census example:

    OMP_NUM_THREADS=1 python benchmarks/zch_quality.py --config examples/census_income/config.yaml \\
        [--eviction lfu] [--headroom 1.5] [--out zch_quality.json] [train.epochs=1 ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import yaml

from mtl_torchrec.config import load_config
from mtl_torchrec.core.io import write_json
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.launch.args import doc_summary
from mtl_torchrec.launch.quiet import silence_known_warnings
from mtl_torchrec.workflows import train

# The metrics compared, per task type.
METRICS = {"binary": ("auc", "ne", "logloss"), "regression": ("rmse",)}


def zch_spec(spec: Dict[str, Any], sizes: Dict[str, int], eviction: str) -> Dict[str, Any]:
    """``spec`` with every ``sparse:`` entry that has a vocabulary of its own (not ``shared``, no shared
    ``table``) on ``vocab: zch`` of ``sizes[feature]`` rows."""
    out = copy.deepcopy(spec)
    for entry in out.get("sparse", []):
        feature = entry.get("name") or entry["column"]
        if entry.get("vocab") == "shared" or entry.get("table") or feature not in sizes:
            continue
        for key in ("min_count", "vocab_file", "hash_buckets", "num_embeddings"):
            entry.pop(key, None)
        entry.update(vocab="zch", zch={"size": sizes[feature], "eviction": eviction})
    return out


def run(config: Path, spec_path: Path, run_dir: Path, overrides: List[str]) -> Dict[str, Any]:
    """Trains ``config`` on ``spec_path`` into ``run_dir`` (one process); returns its metrics and diagnostics."""
    cfg = load_config(config, [f"data.spec={spec_path}", f"run_dir={run_dir}", "train.progress=false", *overrides])
    ctx = init_distributed()
    try:
        train(cfg, ctx)
    finally:
        close_distributed(ctx)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    diag = run_dir / "diagnostics.json"
    managed = json.loads(diag.read_text())["final"].get("managed_collisions", {}) if diag.exists() else {}
    pre = json.loads((run_dir / "preprocessing" / "preprocessing.json").read_text())
    return {"metrics": metrics, "managed_collisions": managed,
            "table_rows": {k: v["num_embeddings"] for k, v in pre["vocabs"].items()}}


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--config", required=True, type=Path, help="a run config with data.source: spec")
    p.add_argument("--eviction", default="lfu", choices=["lfu", "lru", "distance_lfu"])
    p.add_argument("--size", type=int, default=None, help="rows of every zch table (default: build size x headroom)")
    p.add_argument("--headroom", type=float, default=1.5)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("overrides", nargs="*", help="config overrides for both runs, e.g. train.epochs=1")
    args = p.parse_args(argv)
    silence_known_warnings()
    base_cfg = load_config(args.config, list(args.overrides))
    spec_file = Path(base_cfg.data.spec)
    spec = yaml.safe_load(spec_file.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = run(args.config, spec_file.resolve(), root / "build", list(args.overrides))
        sizes = {f: args.size or max(2, int(n * args.headroom)) for f, n in base["table_rows"].items()}
        # Relative file paths of the spec stay valid beside the original.
        zch_file = spec_file.with_name(f".{spec_file.stem}.zch.yaml")
        zch_file.write_text(yaml.safe_dump(zch_spec(spec, sizes, args.eviction)))
        try:
            zch = run(args.config, zch_file.resolve(), root / "zch", list(args.overrides))
        finally:
            zch_file.unlink()
    rows = []
    for task, m in base["metrics"].items():
        for key in METRICS.get(m.get("type"), ()):
            a, b = m.get(key), zch["metrics"].get(task, {}).get(key)
            rows.append({"task": task, "metric": key, "vocab": a, "zch": b})
            print(f"{task:>16} {key:>8}  vocab {a:.4f}  zch {b:.4f}  ({b - a:+.4f})")
    for table, s in zch["managed_collisions"].items():
        print(f"{table:>32}: rows {s['rows']}, keys held {s['keys_held']}, shared-row share "
              f"{s['shared_row_share']}, evicted {s['evicted']}")
    if args.out:
        write_json(args.out, {"rows": rows, "managed_collisions": zch["managed_collisions"],
                              "table_rows": {"vocab": base["table_rows"], "zch": sizes}, "eviction": args.eviction})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
