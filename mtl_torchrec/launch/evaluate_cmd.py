"""``mtl-torchrec evaluate``: score a trained run on a split (or a data spec) and write a report.

Writes ``eval.json``, ``report.md`` and PNG plots to ``RUN/eval/<split>/`` (or ``--out``).
Works in one process or under ``torchrun``. ``--compare RUN_A RUN_B`` prints two evaluations side
by side instead.

    mtl-torchrec evaluate --run runs/census
    mtl-torchrec evaluate --run runs/census --data other.yaml --split all
    mtl-torchrec evaluate --run runs/census --data 'new/*.parquet'
    mtl-torchrec evaluate --run runs/census --checkpoint latest --no-calibration
    torchrun --nproc_per_node 2 -m mtl_torchrec evaluate --run-dir runs/census
    mtl-torchrec evaluate --compare runs/a runs/b
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# torch and the packages that use it are imported inside the functions below, not here: the command
# line imports this module to build its parser, and `mtl-torchrec --help` must start without torch.


def add_parser(sub: Any) -> None:
    """Registers ``evaluate`` and its options."""
    p = sub.add_parser("evaluate", help="evaluate a trained run: metrics per task and slice, report, plots")
    # --run-dir is the same option; use it under torchrun, whose parser takes "--run" for its --run-path.
    p.add_argument("--run", "--run-dir", dest="run_dir", type=str, help="run directory (config.yaml + checkpoint/)")
    p.add_argument("--data", type=str, default=None,
                   help="YAML data spec, or CSV/Parquet files (path or glob, read with the run's spec), to evaluate "
                        "on (default: the run's data); data specs are streamed chunk by chunk")
    p.add_argument("--split", type=str, default="test", help="split to evaluate (default: test)")
    p.add_argument("--out", type=str, default=None, help="output folder (default: RUN/eval/SPLIT)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per rank per step (default: data.eval_batch_size)")
    p.add_argument("--slice", dest="slices", action="append", default=[], metavar="COLUMN",
                   help="also report per value of this categorical column (repeatable; top --slice-top values)")
    p.add_argument("--slice-top", type=int, default=10, help="values per --slice column (default: 10)")
    p.add_argument("--checkpoint", type=str, default=None, metavar="latest|best|step_N",
                   help="checkpoint to evaluate (default: best for a run trained with train.select_by, else latest)")
    p.add_argument("--no-calibration", action="store_true",
                   help="report the model's own predictions, without the run's calibration.json")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no stage messages or progress bar on stderr")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), default=None,
                   help="print two evaluations (run dirs, eval folders or eval.json files) side by side")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Evaluates ``--run`` and writes ``eval.json``, ``report.md`` and plots to ``--out`` (default
    ``RUN/eval/<split>``), or with ``--compare`` prints two evaluations side by side. Returns 0.

    Raises FileNotFoundError when neither ``--run`` nor ``--compare`` is given, and what
    :func:`mtl_torchrec.workflows.evaluate` raises.
    """
    if args.compare:
        from mtl_torchrec.eval.report import compare_table, load_eval

        a, b = args.compare
        print(compare_table(load_eval(a, args.split), load_eval(b, args.split), Path(a).name, Path(b).name))
        return 0
    if not args.run_dir:
        raise FileNotFoundError("--run: give the run directory to evaluate (or --compare RUN_A RUN_B)")
    from mtl_torchrec.workflows import evaluate, process_group
    from mtl_torchrec.workflows.evaluation import eval_dir

    with process_group() as ctx:
        result = evaluate(args.run_dir, args.data, split=args.split, batch_size=args.batch_size, slices=args.slices,
                          slice_top=args.slice_top, progress=not args.no_progress, checkpoint=args.checkpoint,
                          calibrate=not args.no_calibration, out=args.out or None, plots=not args.no_plots, ctx=ctx)
    if ctx.is_main:
        from mtl_torchrec.eval.metrics import format_table

        s = result.summary
        print(f"evaluated {s['rows']} rows of '{s['split']}' on {s['world_size']} rank(s) "
              f"({s['timing']['rows_per_s']:.0f} rows/s), checkpoint {s['checkpoint_name']}"
              + (f", calibrated by {s['calibration']['method']}" if s.get("calibration") else ""))
        print(format_table(s["tasks"]))
        out = Path(args.out) if args.out else eval_dir(args.run_dir, s["split"])
        print(out / "report.md")
    return 0
