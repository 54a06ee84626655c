"""``key=value`` overrides on a nested mapping: values parsed as YAML, list entries by index.

Example::

    apply_overrides(data, ["train.epochs=2", "model.tasks.0.weight=2", "model.tasks[1].name=cvr"])
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Sequence

import yaml

from mtl_torchrec.core.config.messages import short_repr
from mtl_torchrec.core.config.yaml_files import StrictLoader
from mtl_torchrec.core.errors import ConfigError


def merge_mappings(base: Any, update: Any) -> Any:
    """``update`` over ``base``: mappings merge key by key, anything else replaces (a new object;
    neither argument changes)."""
    if isinstance(base, dict) and isinstance(update, dict):
        out = dict(base)
        for k, v in update.items():
            out[k] = merge_mappings(base[k], v) if k in base else v
        return out
    return update


def _set_override(data: Dict[str, Any], dotted_key: str, raw: str) -> None:
    """Sets ``a.b.c`` (list entries by index: ``model.tasks.0.weight``) to the YAML value ``raw``."""
    parts = re.sub(r"\[(\d+)\]", r".\1", dotted_key).split(".")
    if any(p == "" for p in parts):
        raise ConfigError(f"override '{dotted_key}': empty key part")
    try:
        value = yaml.load(raw, Loader=StrictLoader) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{dotted_key}': cannot parse value {raw!r}: {e}") from None
    node: Any = data
    for depth, p in enumerate(parts):
        here = ".".join(parts[:depth]) or "the config"
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not p.isdigit():
                raise ConfigError(
                    f"override '{dotted_key}': {here} is a list; use an index 0..{len(node) - 1}, not '{p}'"
                )
            i = int(p)
            if i >= len(node):
                raise ConfigError(
                    f"override '{dotted_key}': index {i} is out of range, {here} has {len(node)} entries"
                )
            if last:
                node[i] = value
            else:
                if node[i] is None:
                    node[i] = {}
                node = node[i]
        elif isinstance(node, dict):
            if last:
                node[p] = value
            else:
                if node.get(p) is None:
                    node[p] = {}
                node = node[p]
        else:
            raise ConfigError(f"override '{dotted_key}': {here} is a value ({short_repr(node)}), not a section or list")


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Applies ``key=value`` overrides (values parsed as YAML) to ``data`` in place and returns it.

    Raises ConfigError listing every override that cannot be applied (one line each), after
    applying the others.
    """
    failed: List[str] = []
    for ov in overrides:
        try:
            if "=" not in ov:
                raise ConfigError(f"override '{ov}' must look like key=value")
            k, v = ov.split("=", 1)
            _set_override(data, k.strip(), v.strip())
        except ConfigError as e:
            failed.append(str(e))
    if failed:
        raise ConfigError("\n".join(failed))
    return data
