"""Building a config dataclass tree from a mapping, with every key and value checked at once.

Values keep the types YAML gave them: an integer key refuses ``1.5`` and ``'3'``, a boolean
refuses the string ``'true'``, a string refuses ``5`` (YAML has already typed ``true``, numbers
and lists). Problems are reported by :func:`~mtl_torchrec.core.config.messages.format_errors`.

Example::

    cfg = from_dict(TrainConfig, {"epochs": 2}, prefix="train")
    to_dict(cfg)["epochs"]   # 2
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Dict, Mapping

from pydantic import TypeAdapter, ValidationError

from mtl_torchrec.core.config.fields import config_dataclass
from mtl_torchrec.core.config.messages import format_errors, short_repr
from mtl_torchrec.core.errors import ConfigError


@functools.lru_cache(maxsize=None)
def _adapter(cls: Any) -> TypeAdapter:
    """Validates ``{"root": data}``: the wrapper carries
    :data:`~mtl_torchrec.core.config.fields.CONFIG` down to plain dataclasses
    (the data spec's), which otherwise would ignore unknown keys."""
    wrapper = dataclasses.make_dataclass("_Root", [("root", cls)], namespace={"__module__": __name__})
    return TypeAdapter(config_dataclass(wrapper))


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    # YAML dates, timestamps ...: as the text the user wrote, so a string key accepts them.
    return str(value)


def _run_validate_hooks(obj: Any) -> None:
    """Calls ``validate()`` of every plain dataclass in the tree, innermost first (the data
    spec's cross-field checks); pydantic config dataclasses use validators instead."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _run_validate_hooks(getattr(obj, f.name))
        hook = getattr(obj, "validate", None)
        if callable(hook):
            hook()
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _run_validate_hooks(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            _run_validate_hooks(v)


def from_dict(cls: Any, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Builds dataclass ``cls`` from a mapping, checking every key and value at once.

    Raises ConfigError with one line per problem, each naming the dotted key (under
    ``prefix``) and what is allowed. Values are checked as YAML typed them (strict: no string
    to number conversion); plain dataclasses' ``validate()`` methods run afterwards.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {short_repr(data)}")
    try:
        text = json.dumps(data, default=_jsonable, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or 'config'}: cannot read the values: {e}") from None
    try:
        # JSON input + strict: nested mappings become dataclasses, but scalars are never coerced.
        obj = _adapter(cls).validate_json('{"root": %s}' % text, strict=True).root
    except ValidationError as e:
        errors = [{**err, "loc": tuple(err["loc"])[1:]} for err in e.errors()]
        raise ConfigError("\n".join(format_errors(cls, errors, prefix))) from None
    _run_validate_hooks(obj)
    return obj


def to_dict(cfg: Any) -> Dict[str, Any]:
    """The config as plain nested dicts and lists (``dataclasses.asdict``)."""
    return dataclasses.asdict(cfg)
