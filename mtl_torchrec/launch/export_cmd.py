"""``mtl-torchrec export``: an inference artifact of a trained run (TorchScript model with fp32 or
INT8 tables, the fitted preprocessing as JSON, the calibration), see docs/serving.md.

    mtl-torchrec export --run runs/census --out artifacts/census
    mtl-torchrec export --run runs/census --int8 --out artifacts/census-int8 --checkpoint best
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mtl_torchrec.launch.args import new_folder


def add_parser(sub: Any) -> None:
    """Registers ``export`` and its options."""
    p = sub.add_parser("export", help="export a trained run for serving (TorchScript, fp32 or INT8 tables)")
    p.add_argument("--run", "--run-dir", dest="run_dir", required=True, help="run directory (trained on a data spec)")
    p.add_argument("--out", type=new_folder, required=True, help="artifact folder to write (written under a temporary name, then renamed)")
    p.add_argument("--int8", action="store_true", help="quantise the embedding tables to int8 (row-wise)")
    p.add_argument("--format", dest="fmt", default="torchscript", choices=["torchscript", "export"],
                   help="torchscript (model.pt, torch.jit.load) or export (model.pt2: torch.export with a "
                   "dynamic batch dimension, fp32 only)")
    p.add_argument("--checkpoint", default=None, metavar="latest|best|step_N",
                   help="checkpoint to export (default: best for a run trained with train.select_by, else latest)")
    p.add_argument("--no-calibration", action="store_true", help="leave the run's calibration.json out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Exports ``--run`` to ``--out``; returns 0. Raises what
    :func:`mtl_torchrec.workflows.export` raises."""
    from mtl_torchrec.core.errors import ConfigError

    # Checked before importing torch (seconds), so a refused combination answers at once.
    if args.int8 and args.fmt == "export":
        raise ConfigError("--int8: INT8 tables are exported as TorchScript only (use --format torchscript)")
    from mtl_torchrec.workflows import export

    out = export(args.run_dir, Path(args.out), int8=args.int8, fmt=args.fmt, checkpoint=args.checkpoint,
                 calibrate=not args.no_calibration, overwrite=args.overwrite)
    print(out)
    return 0
