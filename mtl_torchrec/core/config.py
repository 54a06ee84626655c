"""Configuration loading: nested dataclasses from YAML plus ``key=value`` overrides.

Every key is checked against the dataclass fields, so a typo is an error that names the full
dotted key instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import yaml

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.core.io import atomic_write_text


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` and builds nested dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def from_dict(cls: Any, data: Dict[str, Any], prefix: str = "") -> Any:
    """Builds dataclass ``cls`` from a mapping, rejecting unknown keys by their dotted name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"unknown config key '{key}' (known here: {sorted(names)})")
        kwargs[k] = _convert(v, hints[k], key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(cfg: Any) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def _set_override(data: Dict[str, Any], dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {} if node.get(p) is None else node[p]
        if not isinstance(node[p], dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
        node = node[p]
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{dotted}': cannot parse value {raw!r}: {e}") from None


def load_config(
    cls: Any,
    path: Optional[Union[str, Path]] = None,
    overrides: Sequence[str] = (),
) -> Any:
    """Reads a YAML file (optional) and applies ``a.b=c`` overrides, then type-checks everything."""
    data: Dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping")
        data = loaded
    # Overrides apply to the *defaults merged with the file*, so a nested key not in the file works.
    merged = to_dict(from_dict(cls, data))
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like key=value")
        k, v = ov.split("=", 1)
        _set_override(merged, k.strip(), v.strip())
    return from_dict(cls, merged)


def save_config(cfg: Any, path: Union[str, Path]) -> None:
    """Writes ``cfg`` as YAML, atomically (a reader sees the old file or the whole new one)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
