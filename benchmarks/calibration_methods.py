"""Every calibration method on one trained run, without retraining: fits temperature, Platt and
isotonic on the run's validation split (the model's own predictions, the checkpoint `evaluate`
picks) and reports the test split's calibration, ECE, logloss and AUC before and after each.

    python benchmarks/calibration_methods.py --run runs/default-platt

Prints a Markdown table (and writes it to ``--out`` as JSON when given).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict

from mtl_torchrec.core.io import write_json
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.eval.calibration import METHODS, before_after, fit_calibration
from mtl_torchrec.eval.evaluate import evaluate_run, load_run_config
from mtl_torchrec.eval.report import md_table
from mtl_torchrec.launch.args import doc_summary
from mtl_torchrec.launch.quiet import silence_known_warnings
from mtl_torchrec.model.tasks import TaskSpec

COLUMNS = ("calibration", "ece", "logloss", "auc")


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--run", required=True, help="a trained run directory")
    p.add_argument("--checkpoint", default=None, help="latest, best or step_N (default: as evaluate)")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    silence_known_warnings()
    ctx = init_distributed()
    try:
        val = evaluate_run(Path(args.run), ctx, split="val", checkpoint=args.checkpoint, calibrate=False)
        test = evaluate_run(Path(args.run), ctx, split="test", checkpoint=args.checkpoint, calibrate=False)
    finally:
        close_distributed(ctx)
    train_tasks = [TaskSpec(t.name, t.type, t.weight, t.esmm_parent) for t in load_run_config(Path(args.run)).model.tasks]
    results: Dict[str, Any] = {"run": args.run, "checkpoint": test.summary["checkpoint_name"], "methods": {}}
    rows = []
    for method in METHODS:
        cal = fit_calibration(method, train_tasks, val.rows.predictions, val.rows.labels, val.rows.masks)
        calibrated = cal.apply_numpy(test.rows.predictions)
        block = before_after(test.tasks, test.rows.predictions, calibrated, test.rows.labels, test.rows.masks)
        results["methods"][method] = block
        for task, v in block.items():
            if method == METHODS[0]:
                rows.append([task, "none", *(v["before"][c] for c in COLUMNS)])
            rows.append([task, method, *(v["after"][c] for c in COLUMNS)])
    rows.sort(key=lambda r: r[0])
    print(f"test split of {args.run} ({results['checkpoint']}), calibration fitted on its val split:")
    print(md_table(["task", "method", *COLUMNS], rows))
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
