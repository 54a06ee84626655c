"""Pydantic's validation errors as one line per problem, naming the dotted key and what is allowed::

    model.mmoe.num_experts: must be >= 1, got 0
    train.loss_balance: 'gradnrm' is not one of ['fixed', 'gradnorm', 'mgda_ub', 'uncertainty']
    unknown config key 'train.epoch' (known here: ['balance', 'checkpoint_every', ...])

The error locations are followed through the dataclass annotations, so that union members that
pydantic names in a location never show up in the user's key, and a field's own constraints
give the allowed range.

Example::

    format_errors(TrainConfig, e.errors(), prefix="train")   # ["train.epochs: must be >= 1, got 0"]
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from typing import Annotated, Any, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import annotated_types
from pydantic.fields import FieldInfo

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


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to 80 characters: the "got ..." part of a message."""
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
        text = f"{value!r} is not one of {allowed}" if allowed is not None else f"{error['msg']}, got {short_repr(value)}"
        return [_Line(parts, text, union_at=where.union_at)]
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return [_Line(parts, f"must be {_range(where.meta, ctx)}, got {short_repr(value)}")]
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        need = "must not be empty" if n == 1 else f"must have at least {n} entries"
        return [_Line(parts, f"{need}, got {short_repr(value)}")]
    if kind == "too_long":
        return [_Line(parts, f"must have at most {ctx.get('max_length')} entries, got {short_repr(value)}")]
    if kind == "finite_number":
        return [_Line(parts, f"must be a finite number, got {short_repr(value)}")]
    if kind == "missing":
        return [_Line(parts, "required key is missing")]
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return [_Line(parts, str(ctx["error"]))]
    return [_Line(parts, f"{error['msg']}, got {short_repr(value)}")]


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
            typed[key] = [key, [ln.expected], short_repr(ln.value)]
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
