"""Config files: strict YAML reading (safe tags only, no repeated keys, ``1e-4`` is a number) and writing.

Example::

    data = read_yaml_mapping("mtl_torchrec/configs/default.yaml")   # ConfigError naming file and line
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Union

import yaml

from mtl_torchrec.core.config.validate import to_dict
from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.core.io import atomic_write_text


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last
    silently, so a setting the user wrote would be ignored without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        """The mapping of ``node``; a ConstructorError naming the line of a key given twice."""
        seen: Dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first at line {seen[key].line + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads "1e-4" as a string (it wants "1.0e-4"); YAML 1.2 and every user mean a number.
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: Union[str, Path]) -> Any:
    """The YAML document in ``path``, read strictly (safe tags only, no repeated keys).

    Raises ConfigError naming the file and, where YAML knows it, the line and column: for a file
    that cannot be read or is not UTF-8 text, invalid YAML, or a key given twice.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{p} line {line}: not valid UTF-8 text (byte offset {e.start})") from None
    try:
        return yaml.load(text, Loader=StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{where}: invalid YAML: {e.problem or e.context}") from None
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None


def read_yaml_mapping(path: Union[str, Path]) -> Dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file is ``{}``); ConfigError otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    loaded = read_yaml(p)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    return loaded


def save_config(cfg: Any, path: Union[str, Path]) -> None:
    """Writes ``cfg`` as YAML, atomically (a reader sees the old file or the whole new one)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
