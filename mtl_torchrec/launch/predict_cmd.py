"""``mtl-torchrec predict``: per-row scores of a trained run for a CSV / Parquet file (or a data spec),
streamed chunk by chunk into a Parquet file. Label columns are optional. Works in one process or
under ``torchrun`` (each rank scores its share of every chunk, rank 0 writes).

    mtl-torchrec predict --run runs/census --data new_rows.csv --out scores.parquet
    mtl-torchrec predict --run runs/census --data more.yaml --out scores.parquet --checkpoint best --keep user_id
    torchrun --nproc_per_node 2 -m mtl_torchrec predict --run-dir runs/census --data new.csv --out s.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mtl_torchrec.launch.args import new_output, positive_int


def add_parser(sub: Any) -> None:
    """Registers ``predict`` and its options."""
    p = sub.add_parser("predict", help="per-row scores of a trained run for a CSV/Parquet file (labels optional)")
    # --run-dir is the same option; use it under torchrun, whose parser takes "--run" for its --run-path.
    p.add_argument("--run", "--run-dir", dest="run_dir", required=True, help="run directory (trained on a data spec)")
    p.add_argument("--data", required=True,
                   help="CSV or Parquet file (or glob) with the run's feature columns, or a YAML data spec")
    p.add_argument("--out", type=new_output, required=True, help="output Parquet file (written to a temporary file, then renamed)")
    p.add_argument("--checkpoint", default=None, metavar="latest|best|step_N",
                   help="checkpoint to score with (default: best for a run trained with train.select_by, else latest)")
    p.add_argument("--keep", action="append", default=[], metavar="COLUMN",
                   help="copy this input column into the output (repeatable; a column the spec reads)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="rows per step (default: data.eval_batch_size)")
    p.add_argument("--no-calibration", action="store_true", help="the model's own predictions only")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Scores ``--data`` with ``--run`` into ``--out``; returns 0. Raises what
    :func:`mtl_torchrec.workflows.predict` raises."""
    from mtl_torchrec.workflows import predict, process_group

    with process_group() as ctx:
        written = predict(args.run_dir, args.data, Path(args.out), keep=args.keep, checkpoint=args.checkpoint,
                          calibrate=not args.no_calibration, batch_size=args.batch_size, ctx=ctx)
    if ctx.is_main:
        cal = ", calibrated" if written.calibrated else ""
        print(f"scored {written.rows} rows with {written.checkpoint.name} on {ctx.world_size} rank(s){cal}: {args.out}")
    return 0
