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
