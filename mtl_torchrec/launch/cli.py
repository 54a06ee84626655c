"""The ``mtl-torchrec`` command. Each sub-command lives in its own module with
``add_parser(subparsers)`` registering itself and a ``run(args)`` function.

Building the parser imports every sub-command module, so those modules import only the standard
library and ``mtl_torchrec.core`` at module level and import torch inside the functions that run
(``tests/test_cli.py`` checks it): ``mtl-torchrec --help`` and argument errors answer in a fraction
of a second instead of the seconds torch takes to import.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, List, Optional, TextIO

from mtl_torchrec.core.errors import CheckpointError, ConfigError, DataError, RunDirError
from mtl_torchrec.launch.quiet import silence_known_warnings

# Sub-command modules, in the order ``--help`` lists them.
COMMANDS = (
    "mtl_torchrec.launch.train_cmd",
    "mtl_torchrec.launch.evaluate_cmd",
    "mtl_torchrec.launch.compare_cmd",
    "mtl_torchrec.launch.encode_cmd",
    "mtl_torchrec.launch.predict_cmd",
    "mtl_torchrec.launch.export_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    """The ``mtl-torchrec`` argument parser, with every sub-command of :data:`COMMANDS` (imports no torch)."""
    parser = argparse.ArgumentParser(
        prog="mtl-torchrec",
        description="Multi-task recommendation on TorchRec: train, evaluate, compare with single-task models, "
        "encode item texts.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


class _DroppingStream:
    """A text stream that drops what cannot be written: stderr on a full disk or a closed descriptor
    must cost the messages, not the run (notes and progress are printed there before any work).
    After the first failure it writes to ``os.devnull``, so nothing is left to fail at exit either."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def _drop(self) -> None:
        self._stream = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            self._drop()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._drop()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command line ``argv`` (default: ``sys.argv[1:]``) and returns the exit status.

    A ConfigError, DataError, FileNotFoundError, CheckpointError or RunDirError is printed as one
    line on stderr and gives status 2; the sub-command's own status otherwise. Messages that stderr
    cannot take (a full disk, a closed descriptor) are dropped; the command still runs.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    silence_known_warnings()
    if sys.stderr is not None and not isinstance(sys.stderr, _DroppingStream):
        sys.stderr = _DroppingStream(sys.stderr)  # type: ignore[assignment]
    try:
        return int(args.run(args) or 0)
    except (ConfigError, DataError, FileNotFoundError, CheckpointError, RunDirError) as e:
        print(f"mtl-torchrec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
