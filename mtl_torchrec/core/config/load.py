"""Loading a config: a YAML file (optional), ``a.b=c`` overrides, then one check of everything.

Example::

    cfg = load_config(Config, "mtl_torchrec/configs/default.yaml", ["train.epochs=2"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from mtl_torchrec.core.config.overrides import apply_overrides, merge_mappings
from mtl_torchrec.core.config.validate import from_dict, to_dict
from mtl_torchrec.core.config.yaml_files import read_yaml_mapping
from mtl_torchrec.core.errors import ConfigError


def load_config(
    cls: Any,
    path: Optional[Union[str, Path]] = None,
    overrides: Sequence[str] = (),
) -> Any:
    """Reads a YAML file (optional), applies ``a.b=c`` overrides, then checks everything at once.

    Overrides apply to the defaults merged with the file, so a nested key the file does not set
    works; every problem of file and overrides is reported together (ConfigError, one line each).
    """
    data = read_yaml_mapping(path) if path is not None else {}
    try:
        defaults: Dict[str, Any] = to_dict(cls())
    except (TypeError, ValueError):  # a class with required fields has no complete defaults
        defaults = {}
    merged = merge_mappings(defaults, data)
    problems_found: List[str] = []
    try:
        apply_overrides(merged, overrides)
    except ConfigError as e:
        problems_found += str(e).splitlines()
    try:
        cfg = from_dict(cls, merged)
    except ConfigError as e:
        problems_found += str(e).splitlines()
    if problems_found:
        raise ConfigError("\n".join(problems_found))
    return cfg
