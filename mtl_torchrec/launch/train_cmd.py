"""``mtl-torchrec train``: train on the configured data, evaluate on the test split, write a run.

The command line of :func:`mtl_torchrec.workflows.train` (what a run directory holds:
:mod:`mtl_torchrec.workflows.training`): parses the config and overrides, trains, and prints the test
metrics and the run directory on rank 0. Works in one process or under ``torchrun``.
"""

from __future__ import annotations

import argparse
from typing import Any

from mtl_torchrec.launch.args import config_arg, config_help

# torch and the packages that use it are imported inside the functions below, not here: the command
# line imports this module to build its parser, and `mtl-torchrec --help` must start without torch.


def add_parser(sub: Any) -> None:
    """Registers ``train`` (``--config``, ``--resume``, overrides) on ``sub`` (argparse only)."""
    p = sub.add_parser("train", help="train a multi-task model and evaluate it on the test split")
    p.add_argument("--config", type=config_arg, default=None, help=config_help())
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.epochs=3 model.backbone=ple")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue run_dir from its latest checkpoint (error if it has none); same as train.resume=required",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Loads the config (``--resume`` adds ``train.resume=required``), trains and tests; prints the test
    metrics and the run directory on rank 0. Returns 0.
    """
    from mtl_torchrec.config import load_config

    overrides = list(args.overrides) + (["train.resume=required"] if getattr(args, "resume", False) else [])
    # A config error is reported before torch is imported (seconds earlier).
    cfg = load_config(args.config, overrides)
    from mtl_torchrec.eval.metrics import format_table
    from mtl_torchrec.workflows import process_group, train

    with process_group() as ctx:
        result = train(cfg, ctx)
    if ctx.is_main:
        s = result.summary
        print(f"trained {s['steps']} steps, {s['samples_per_s']:.0f} samples/s on {ctx.world_size} rank(s)")
        if "selection" in s:
            sel = s["selection"]
            stop = f", stopped early at step {sel['stopped_at_step']}" if sel["stopped_early"] else ""
            print(f"best validation {sel['select_by']} = {sel['best_value']} at step {sel['best_step']} of "
                  f"{len(sel['curve'])} validations{stop}")
        print(f"test metrics ({s['tested_checkpoint']}" + (f", calibrated by {cfg.train.calibration}"
                                                          if result.test_calibration else "") + "):")
        print(format_table(result.metrics))
        if result.test_calibration:
            from mtl_torchrec.eval.report import calibration_table

            print("test calibration before / after:")
            print(calibration_table(result.test_calibration))
        for name, block in result.slices.items():
            print(f"test metrics on slice '{name}' ({block['rows']} rows):")
            print(format_table(block["tasks"]))
        print(result.run_dir)
    return 0
