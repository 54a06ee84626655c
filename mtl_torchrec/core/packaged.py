"""The job configs that ship inside the package (``mtl_torchrec/configs/*.yaml``), by name.

``--config`` takes a YAML file path or the name of a packaged config, so an installed wheel runs
its documented jobs from any directory::

    config_path("default")              # .../site-packages/mtl_torchrec/configs/default.yaml
    config_path("runs/exp1/config.yaml")  # that file
    packaged_configs()                  # ['aitm', 'default', 'feature_attention', 'ple_esmm']

Imports only the standard library: the command line resolves ``--config`` while it parses its
arguments, before torch is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from mtl_torchrec.core.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def packaged_configs() -> List[str]:
    """Names (file stems) of the configs in :data:`CONFIG_DIR`, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(value: str) -> Path:
    """The config file that ``value`` names: an existing file path, else a packaged config's name.

    A file wins over a packaged config of the same name.

    Raises:
        ConfigError: ``value`` is neither an existing file nor a packaged config name; the message
            lists the packaged names.
    """
    path = Path(value)
    if path.is_file():
        return path
    if value in packaged_configs():
        return CONFIG_DIR / f"{value}.yaml"
    if path.exists():
        raise ConfigError(f"'{value}' is not a file")
    raise ConfigError(
        f"'{value}' is neither a config file nor a packaged config (packaged: {', '.join(packaged_configs())})"
    )
