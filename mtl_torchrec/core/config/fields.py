"""What config sections are written with: validated dataclasses and constrained value types.

Config sections are dataclasses checked by pydantic v2 (:func:`config_dataclass`; plain
dataclasses work too, e.g. the data spec's). Keyword construction, ``dataclasses.asdict`` and
``copy.deepcopy`` work as for any dataclass. Validators report problems with :func:`problem` /
:func:`problems`, which :mod:`mtl_torchrec.core.config.messages` turns into dotted-key lines.

Example::

    @config_dataclass
    class MLPConfig:
        layers: Layers = dataclasses.field(default_factory=lambda: [64])
        dropout: Fraction = 0.0
"""

from __future__ import annotations

from typing import Annotated, Any, List, Sequence, Tuple, Union

from pydantic import AfterValidator, ConfigDict, Field
from pydantic.dataclasses import dataclass as _pydantic_dataclass
from pydantic_core import PydanticCustomError

# Unknown keys are errors (typos must not be ignored); NaN/inf are never meaningful settings.
CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)

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
    attribute assignment does not. Load files through :func:`~mtl_torchrec.core.config.validate.from_dict` /
    :func:`~mtl_torchrec.core.config.load.load_config`
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
