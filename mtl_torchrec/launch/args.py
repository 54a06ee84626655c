"""Argument types shared by the ``mtl-torchrec`` sub-commands (standard library and core only, so
that building the parser never imports torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.core.packaged import config_path, packaged_configs


def config_arg(value: str) -> Path:
    """``--config``: a YAML file or a packaged config's name, resolved by :func:`config_path`.

    Raises:
        argparse.ArgumentTypeError: neither; argparse then prints the message (which lists the
            packaged configs) with the usage and exits with status 2, before any work is done.
    """
    try:
        return config_path(value)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def config_help(what: str = "YAML config file") -> str:
    """``--config``'s help text: ``what``, and the packaged configs' names."""
    return f"{what}, or the name of a packaged config ({', '.join(packaged_configs())})"


def doc_summary(doc: str) -> str:
    """The first paragraph of a module docstring ``doc`` (up to its first blank line), its lines joined
    by spaces: an argparse ``description`` that is a whole sentence, where the first line alone may stop
    mid-sentence (argparse wraps it again to the terminal's width)."""
    return " ".join(line.strip() for line in doc.strip().split("\n\n")[0].splitlines())


def positive_int(value: str) -> int:
    """An integer >= 1 (e.g. ``--batch-size``); argparse reports anything else with the usage."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got '{value}'") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {n}")
    return n


def new_output(value: str) -> Path:
    """An output path that is not a directory (``predict --out``): checked before any work."""
    path = Path(value)
    if path.is_dir() or value.endswith(("/", "\\")) or path.name in ("", ".", ".."):
        raise argparse.ArgumentTypeError(f"'{value}' is a directory; name the file to write")
    return path


def new_folder(value: str) -> Path:
    """An output folder to create (``export --out``): not a file, and with a name of its own (not
    ``.`` or ``..``, which cannot be written beside and renamed into place)."""
    path = Path(value)
    if path.resolve().name in ("", ".", "..") or Path(value).name in ("", ".", ".."):
        raise argparse.ArgumentTypeError(f"'{value}' has no folder name of its own; name a new folder")
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"'{value}' is a file; name a folder")
    return path
