"""Configuration loading: validated dataclasses from YAML plus ``key=value`` overrides.

Config sections are dataclasses checked by pydantic v2 (:func:`config_dataclass`; plain
dataclasses work too, e.g. the data spec's). Keyword construction, ``dataclasses.asdict`` and
``copy.deepcopy`` work as for any dataclass. :func:`from_dict` validates a whole tree at once and
turns every problem into one line naming the full dotted key and what is allowed::

    model.mmoe.num_experts: must be >= 1, got 0
    train.loss_balance: 'gradnrm' is not one of ['fixed', 'gradnorm', 'mgda_ub', 'uncertainty']
    unknown config key 'train.epoch' (known here: ['balance', 'checkpoint_every', ...])

Values keep the types YAML gave them: an integer key refuses ``1.5`` and ``'3'``, a boolean
refuses the string ``'true'``, a string refuses ``5`` (YAML has already typed ``true``, numbers
and lists). Overrides address list entries by index: ``model.tasks.0.weight=2``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import annotated_types
import yaml
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.core.io import atomic_write_text

# Unknown keys are errors (typos must not be ignored); NaN/inf are never meaningful settings.
CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)

# ----------------------------------------------------------------------------- value types

# Counts and sizes (>= 1), step intervals and other counts that may be 0, rates (> 0),
# probabilities/fractions in [0, 1).
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
# MLP layer widths: ``Widths`` may be empty (no hidden layer), ``Layers`` needs at least one.
Widths = List[PositiveInt]
Layers = Annotated[List[PositiveInt], Field(min_length=1)]


def config_dataclass(cls: type) -> type:
    """Makes ``cls`` a validated config dataclass: pydantic checks types and constraints
    (``Annotated[int, Field(ge=1)]`` ...) and refuses unknown keys.

    Keyword construction validates too (a pydantic ``ValidationError``, a ``ValueError``);
    attribute assignment does not. Load files through :func:`from_dict` / :func:`load_config`
    for errors in the dotted-key form.
    """
    return _pydantic_dataclass(cls, config=CONFIG)


def one_of(source: Any) -> AfterValidator:
    """A validator for ``Annotated[str, one_of(registry)]``: the value must be one of
    ``source.names()`` at the time it is checked (so entries registered later count).

    ``source`` is anything with ``names() -> Iterable[str]``, e.g. a
    :class:`~mtl_torchrec.core.registry.Registry`.
    """

    def check(value: str) -> str:
        names = list(source.names())
        if value not in names:
            raise problem(f"{value!r} is not one of {names}")
        return value

    return AfterValidator(check)


def problems(items: Sequence[Tuple[Sequence[Union[str, int]], str]]) -> PydanticCustomError:
    """An error for a validator to raise that reports several problems, each as
    ``(path below the validated value, message)``; every one becomes its own line.

    Example (in a field validator of ``model.tasks``)::

        raise problems([((1, "name"), "'click' is already the name of tasks[0]")])
        # -> model.tasks[1].name: 'click' is already the name of tasks[0]
    """
    listed = [(tuple(path), str(msg)) for path, msg in items]
    return PydanticCustomError("config", "{message}", {"message": "; ".join(m for _, m in listed), "problems": listed})


def problem(message: str, *path: Union[str, int]) -> PydanticCustomError:
    """One problem at ``path`` below the validated value (see :func:`problems`)."""
    return problems([(path, message)])


# ----------------------------------------------------------------------------- error messages

_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "dict_type": "a mapping",
    "dataclass_type": "a mapping",
    "dataclass_args_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "none_required": "null",
}
_BOUND = {annotated_types.Ge: ">=", annotated_types.Gt: ">", annotated_types.Le: "<=", annotated_types.Lt: "<"}


def dotted(parts: Sequence[Union[str, int]]) -> str:
    """``("model", "tasks", 0, "weight")`` -> ``"model.tasks[0].weight"``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _got(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _flatten_metadata(items: Iterable[Any]) -> List[Any]:
    out: List[Any] = []
    for m in items:
        out.extend(m.metadata if isinstance(m, FieldInfo) else [m])
    return out


def _unwrap(tp: Any) -> Tuple[Any, List[Any]]:
    """Strips ``Annotated`` (collecting its constraints) and ``Optional``."""
    meta: List[Any] = []
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            args = typing.get_args(tp)
            tp = args[0]
            meta += _flatten_metadata(args[1:])
            continue
        if origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp, meta


def _field(cls: Any, name: Any) -> Optional[Tuple[Any, List[Any]]]:
    """The annotation and constraints of field ``name`` of dataclass ``cls`` (None if unknown)."""
    fields = getattr(cls, "__pydantic_fields__", None)
    if fields is not None:
        info = fields.get(name)
        return None if info is None else (info.annotation, list(info.metadata))
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # an unresolvable annotation: fall back to pydantic's own wording
        return None
    return (hints[name], []) if name in hints else None


def _union_member(tp: Any, tag: Any) -> Any:
    """The member of union ``tp`` that pydantic's location tag (``'str'``, ``'list[str]'``,
    a class name ...) names, or None."""
    for member in typing.get_args(tp):
        inner, _ = _unwrap(member)
        origin = typing.get_origin(inner) or inner
        name = getattr(origin, "__name__", str(origin))
        if tag == name or (isinstance(tag, str) and tag.startswith(f"{name}[")):
            return member
    return None


@dataclasses.dataclass
class _Located:
    parts: List[Union[str, int]]  # the key without pydantic's union tags
    tp: Any  # the annotation there (None when it could not be followed)
    meta: List[Any]
    union_at: Optional[int]  # len(parts) where the first union was entered


def _locate(root: Any, loc: Sequence[Union[str, int]]) -> _Located:
    """Follows a pydantic error location through the annotations of ``root``."""
    tp, meta = _unwrap(root)
    parts: List[Union[str, int]] = []
    union_at: Optional[int] = None
    for seg in loc:
        origin = typing.get_origin(tp)
        if tp is not None and dataclasses.is_dataclass(tp):
            parts.append(seg)
            found = _field(tp, seg)
            if found is None:
                tp, meta = None, []
            else:
                tp, inner = _unwrap(found[0])
                meta = found[1] + inner
        elif origin in (list, tuple, set, frozenset, collections.abc.Sequence):
            parts.append(seg)
            args = typing.get_args(tp)
            tp, meta = _unwrap(args[0]) if args else (None, [])
        elif origin in (dict, collections.abc.Mapping):
            parts.append(seg)
            args = typing.get_args(tp)
            tp, meta = _unwrap(args[1]) if len(args) == 2 else (None, [])
        elif origin in (Union, types.UnionType):
            # pydantic names the member it tried; that is not part of the user's key.
            union_at = len(parts) if union_at is None else union_at
            member = _union_member(tp, seg)
            tp, meta = _unwrap(member) if member is not None else (None, [])
        else:
            parts.append(seg)
            tp, meta = None, []
    return _Located(parts, tp, meta, union_at)


def _range(meta: Sequence[Any], ctx: Mapping[str, Any]) -> str:
    """``">= 1"`` or ``"in [0, 1)"`` from a field's constraints (else from pydantic's context)."""
    # annotated_types.Ge(ge=1) keeps its bound in the attribute named like the class.
    bounds = [(op, getattr(m, k.__name__.lower())) for m in meta for k, op in _BOUND.items() if isinstance(m, k)]
    if not bounds:
        bounds = [(op, ctx[k.__name__.lower()]) for k, op in _BOUND.items() if k.__name__.lower() in ctx]
    lower = [(op, v) for op, v in bounds if op.startswith(">")]
    upper = [(op, v) for op, v in bounds if op.startswith("<")]
    if lower and upper:
        (lo_op, lo), (hi_op, hi) = lower[0], upper[0]
        return f"in {'[' if lo_op == '>=' else '('}{lo}, {hi}{']' if hi_op == '<=' else ')'}"
    return " and ".join(f"{op} {v}" for op, v in bounds)


@dataclasses.dataclass
class _Line:
    parts: List[Union[str, int]]
    text: str
    expected: Optional[str] = None  # set for "wrong type" problems, which merge across union members
    value: Any = None
    union_at: Optional[int] = None
    unknown_key: bool = False  # text is then the "(known here: ...)" suffix


def _lines_for(root: Any, error: Mapping[str, Any]) -> List[_Line]:
    where = _locate(root, error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    parts = where.parts
    if kind == "config":
        return [_Line(parts + list(path), msg) for path, msg in ctx.get("problems", [((), ctx.get("message", ""))])]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        parent = _locate(root, error["loc"][:-1]).tp
        known = sorted(f.name for f in dataclasses.fields(parent)) if dataclasses.is_dataclass(parent) else None
        return [_Line(parts, f" (known here: {known})" if known is not None else "", unknown_key=True)]
    if kind in _EXPECTED:
        expected = _EXPECTED[kind]
        return [_Line(parts, "", expected=expected, value=value, union_at=where.union_at)]
    if kind == "literal_error":
        allowed = list(typing.get_args(where.tp)) if typing.get_origin(where.tp) is Literal else None
        text = f"{value!r} is not one of {allowed}" if allowed is not None else f"{error['msg']}, got {_got(value)}"
        return [_Line(parts, text, union_at=where.union_at)]
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return [_Line(parts, f"must be {_range(where.meta, ctx)}, got {_got(value)}")]
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        need = "must not be empty" if n == 1 else f"must have at least {n} entries"
        return [_Line(parts, f"{need}, got {_got(value)}")]
    if kind == "too_long":
        return [_Line(parts, f"must have at most {ctx.get('max_length')} entries, got {_got(value)}")]
    if kind == "finite_number":
        return [_Line(parts, f"must be a finite number, got {_got(value)}")]
    if kind == "missing":
        return [_Line(parts, "required key is missing")]
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return [_Line(parts, str(ctx["error"]))]
    return [_Line(parts, f"{error['msg']}, got {_got(value)}")]


def format_errors(root: Any, errors: Sequence[Mapping[str, Any]], prefix: str = "") -> List[str]:
    """One line per problem in pydantic ``errors`` of validating ``root``: ``<dotted key>: <message>``
    (unknown keys: ``unknown config key '<dotted key>' (known here: [...])``).

    Wrong-type problems of the members of a union merge into one line (``expected a string or a
    list, got 5``); a member whose problems lie deeper in the value (it matched the value's
    shape) hides the others' shallow type mismatches.
    """
    lines: List[_Line] = [line for e in errors for line in _lines_for(root, e)]

    def at_union(ln: _Line) -> bool:
        return ln.union_at is not None and len(ln.parts) == ln.union_at

    deep = {tuple(ln.parts[: ln.union_at]) for ln in lines if ln.union_at is not None and len(ln.parts) > ln.union_at}
    kept = [ln for ln in lines if not (ln.expected and at_union(ln) and tuple(ln.parts) in deep)]
    out: List[List[Any]] = []  # [key, line] or [key, expected options, got]
    typed: Dict[str, List[Any]] = {}
    for ln in kept:
        key = dotted(([prefix] if prefix else []) + list(ln.parts))
        if ln.unknown_key:
            out.append([key, f"unknown config key '{key}'{ln.text}"])
        elif ln.expected is None:
            out.append([key, f"{key}: {ln.text}" if key else ln.text])
        elif key in typed:
            if ln.expected not in typed[key][1]:
                typed[key][1].append(ln.expected)
        else:
            typed[key] = [key, [ln.expected], _got(ln.value)]
            out.append(typed[key])
    result = []
    for entry in out:
        if len(entry) == 2:
            result.append(entry[1])
            continue
        key, options, got = entry
        expected = options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]
        result.append(f"{key}: expected {expected}, got {got}" if key else f"expected {expected}, got {got}")
    return list(dict.fromkeys(result))


# ----------------------------------------------------------------------------- building configs


@functools.lru_cache(maxsize=None)
def _adapter(cls: Any) -> TypeAdapter:
    """Validates ``{"root": data}``: the wrapper carries :data:`CONFIG` down to plain dataclasses
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
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {_got(data)}")
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


# ----------------------------------------------------------------------------- files and overrides


def _merge(base: Any, update: Any) -> Any:
    """``update`` over ``base``: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(update, dict):
        out = dict(base)
        for k, v in update.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return update


def _set_override(data: Dict[str, Any], dotted_key: str, raw: str) -> None:
    """Sets ``a.b.c`` (list entries by index: ``model.tasks.0.weight``) to the YAML value ``raw``."""
    parts = re.sub(r"\[(\d+)\]", r".\1", dotted_key).split(".")
    if any(p == "" for p in parts):
        raise ConfigError(f"override '{dotted_key}': empty key part")
    try:
        value = yaml.load(raw, Loader=_StrictLoader) if raw != "" else ""
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
            raise ConfigError(f"override '{dotted_key}': {here} is a value ({_got(node)}), not a section or list")


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


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last
    silently, so a setting the user wrote would be ignored without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
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
_StrictLoader.add_implicit_resolver(
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
        return yaml.load(text, Loader=_StrictLoader)
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
    merged = _merge(defaults, data)
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


def save_config(cfg: Any, path: Union[str, Path]) -> None:
    """Writes ``cfg`` as YAML, atomically (a reader sees the old file or the whole new one)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


__all__ = [
    "CONFIG", "Fraction", "Layers", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat", "PositiveInt", "Widths",
    "apply_overrides", "config_dataclass", "dotted", "format_errors", "from_dict", "load_config", "one_of",
    "problem", "problems", "read_yaml_mapping", "save_config", "to_dict",
]
