"""The ``mtl-torchrec`` command. Each sub-command lives in its own module with
``add_parser(subparsers)`` registering itself and a ``run(args)`` function.

Building the parser imports every sub-command module, so those modules import only the standard
library and ``mtl_torchrec.core`` at module level and import torch inside the functions that run
(``tests/launch/test_cli.py`` checks it): ``mtl-torchrec --help`` and argument errors answer in a fraction
of a second instead of the seconds torch takes to import.
"""

from __future__ import annotations

import argparse
import importlib
import logging
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


# INFO records of these loggers go to stdout, where the train command's report has always had these
# notes (text features encoded, sequence truncation, model selection); every other record, and every
# warning, goes to stderr.
STDOUT_LOGGERS = ("mtl_torchrec.model", "mtl_torchrec.train", "mtl_torchrec.workflows")


class ConsoleHandler(logging.Handler):
    """The command line's one handler, on the ``mtl_torchrec`` logger: each record's message as it
    is (no level or logger prefix; the messages carry their own ``warning:`` / ``note:``), flushed at
    once, on stdout for INFO records of :data:`STDOUT_LOGGERS` and on stderr otherwise.

    The stream is looked up for each record, so that a replaced ``sys.stderr`` (the command's
    dropping stream, pytest's capture) gets the line. The library decides what only rank 0 logs.
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Writes the record's line to stdout or stderr."""
        try:
            to_stdout = record.levelno < logging.WARNING and any(
                record.name == name or record.name.startswith(name + ".") for name in STDOUT_LOGGERS
            )
            stream = sys.stdout if to_stdout else sys.stderr
            if stream is None:  # pythonw, or a closed descriptor replaced by None
                return
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            self.handleError(record)


def show_logs_on_console() -> None:
    """Shows the package's INFO and WARNING records on the console through one
    :class:`ConsoleHandler` (idempotent; the commands call it in :func:`main`). The command line
    owns the console, so the records stop there: a root handler that a library set up (torchrun's
    workers have one) would print each line a second time."""
    logger = logging.getLogger("mtl_torchrec")
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())
    logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


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
    show_logs_on_console()
    try:
        return int(args.run(args) or 0)
    except (ConfigError, DataError, FileNotFoundError, CheckpointError, RunDirError) as e:
        print(f"mtl-torchrec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
