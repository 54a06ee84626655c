"""How far the exported scoring forms are from the trained model on a run's split: fp32 TorchScript
(expected: float32 rounding only) and INT8 tables (row-wise int8 embedding tables), as the largest
absolute prediction difference per task and the AUC of every binary task (and its drop under INT8).

Works on any run, built-in sources included (the default job: ``make train``), because it scores the
split's id rows directly; ``mtl-torchrec export`` itself needs a run trained on a data spec.

    python benchmarks/export_quality.py --run runs/<default job> [--split test] [--out quality.json]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from mtl_torchrec.core.io import write_json
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.eval.metrics import binary_auc
from mtl_torchrec.launch.args import doc_summary
from mtl_torchrec.launch.quiet import silence_known_warnings
from mtl_torchrec.serve.export import script_module
from mtl_torchrec.serve.runs import load_run_with_data
from mtl_torchrec.serve.scoring import ScoringModel, scoring_inputs


def scoring_forms(module: Any, keys: List[str]) -> Dict[str, Any]:
    """``{"eager": ScoringModel, "fp32": scripted, "int8": scripted with int8 tables}`` of a train module."""
    import copy

    from torchrec.inference.modules import quantize_embeddings

    eager = ScoringModel.from_model(copy.deepcopy(module.model), module.tasks, keys)
    fp32 = script_module(ScoringModel.from_model(copy.deepcopy(module.model), module.tasks, keys), int8=False)
    q = quantize_embeddings(ScoringModel.from_model(copy.deepcopy(module.model), module.tasks, keys),
                            dtype=torch.qint8, inplace=True)
    return {"eager": eager, "fp32": fp32, "int8": script_module(q, int8=True)}


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--run", required=True, help="a trained run directory")
    p.add_argument("--checkpoint", default=None, help="latest, best or step_N (default: as evaluate)")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    silence_known_warnings()
    _, bundle, module = load_run_with_data(Path(args.run), args.checkpoint)
    table = bundle.splits[args.split]
    keys = [f.name for f in bundle.schema.sparse]
    forms = scoring_forms(module, keys)
    preds: Dict[str, Dict[str, List[np.ndarray]]] = {k: {} for k in forms}
    labels: Dict[str, List[np.ndarray]] = {}
    masks: Dict[str, List[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, len(table), args.batch_size):
            batch = Batch.from_table(table.take(np.arange(start, min(start + args.batch_size, len(table)))),
                                     bundle.schema)
            inputs = scoring_inputs(batch)
            for name, form in forms.items():
                for task, v in form(*inputs).items():
                    preds[name].setdefault(task, []).append(v.double().numpy())
            for task in batch.labels:
                labels.setdefault(task, []).append(batch.labels[task].numpy())
                masks.setdefault(task, []).append(batch.masks[task].numpy())
    out: Dict[str, Any] = {"run": args.run, "split": args.split, "rows": len(table), "tasks": {}}
    print(f"{args.run} split {args.split} ({len(table)} rows)")
    print("| task | max abs diff fp32 script | max abs diff int8 | AUC fp32 | AUC int8 | AUC drop |")
    print("|---|---|---|---|---|---|")
    for task in preds["eager"]:
        e, f, q = (np.concatenate(preds[k][task]) for k in ("eager", "fp32", "int8"))
        row: Dict[str, Any] = {"max_abs_diff_fp32": float(np.abs(f - e).max()),
                               "max_abs_diff_int8": float(np.abs(q - e).max())}
        spec = next((t for t in module.tasks if t.name == task), None)
        if spec is not None and spec.type == "binary" and task in labels:
            m = np.concatenate(masks[task]) > 0
            y = np.concatenate(labels[task])[m]
            row["auc_fp32"], row["auc_int8"] = binary_auc(e[m], y), binary_auc(q[m], y)
            row["auc_drop"] = row["auc_fp32"] - row["auc_int8"]
        out["tasks"][task] = row
        auc = (f"{row['auc_fp32']:.4f} | {row['auc_int8']:.4f} | {row['auc_drop']:.5f}" if "auc_drop" in row
               else " | | ")
        print(f"| {task} | {row['max_abs_diff_fp32']:.2e} | {row['max_abs_diff_int8']:.2e} | {auc} |")
    if args.out:
        write_json(Path(args.out), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
