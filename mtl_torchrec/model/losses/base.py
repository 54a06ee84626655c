"""The task-loss interface, the :data:`LOSSES` registry and the checks of ``model.tasks[i].loss``.

A loss turns a task's tower output into a per-row loss ``[B]``; the train module takes the masked,
row-weighted mean. It declares the label kinds it accepts (``huber``: ``regression``) and its options
as a config dataclass (``model.tasks[i].loss_options``). The label kind (``model.tasks[i].type``)
chooses the default loss, the prediction and every metric; the loss never does.
"""

from __future__ import annotations

import functools
import json
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Type

import torch
from pydantic import TypeAdapter, ValidationError

from mtl_torchrec.core.config.fields import config_dataclass
from mtl_torchrec.core.config.messages import dotted, format_errors
from mtl_torchrec.core.registry import Registry
from mtl_torchrec.data.label_kinds import LABEL_KINDS


@config_dataclass
class NoOptions:
    """The options of a loss that has none (``loss_options`` must then be empty)."""


class TaskLoss:
    """A per-row task loss; subclasses set :attr:`label_kinds` and :attr:`Options` and implement
    :meth:`__call__`.

    Args:
        options: an instance of :attr:`Options` (default: its defaults).

    Example::

        loss = LOSSES.get("huber")(HuberOptions(delta=0.5))
        per_row = loss(logits, label, task)    # [B]
    """

    # The label kinds (``model.tasks[i].type``) the loss fits.
    label_kinds: ClassVar[Tuple[str, ...]] = ()
    # Its ``model.tasks[i].loss_options`` as a config dataclass (defaults for every field).
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Optional[Any] = None) -> None:
        self.options = options if options is not None else self.Options()

    def __call__(self, logits: Dict[str, torch.Tensor], label: torch.Tensor, task: Any) -> torch.Tensor:
        """Per-row loss ``[B]`` of ``task`` (a :class:`~mtl_torchrec.model.tasks.TaskSpec`) from the
        tower outputs of every task (``logits[name]`` ``[B]``; ESMM and AITM read the parent's) and
        the task's labels ``[B]`` (0 on unlabelled rows, which the mask then drops)."""
        raise NotImplementedError


# Task losses by ``model.tasks[i].loss`` name.
LOSSES: Registry[Type[TaskLoss]] = Registry("model.tasks[*].loss")


def loss_name(task: Any) -> str:
    """The loss a task uses: its ``loss``, else its label kind's default (``binary`` -> ``bce``).

    ``task`` has ``type`` and optionally ``loss`` (a TaskSpec or a TaskConfig).
    """
    return getattr(task, "loss", None) or LABEL_KINDS.get(task.type).default_loss


def loss_problems(task: Any) -> List[Tuple[str, str]]:
    """What is wrong with a task's loss, as ``(field, message)``: an unknown loss name, a loss that
    does not fit the task's label kind, options the loss does not have or values they refuse
    (``("loss_options.gamma", "must be >= 0, got -1.0")``). A task of an unknown label kind has none
    here (its ``type`` is reported instead)."""
    name = getattr(task, "loss", None)
    if name is not None and name not in LOSSES:
        return [("loss", LOSSES.unknown(name))]
    if task.type not in LABEL_KINDS:
        return []
    name = loss_name(task)
    cls = LOSSES.get(name)
    if task.type not in cls.label_kinds:
        fitting = [n for n, c in LOSSES.items() if task.type in c.label_kinds]
        return [("loss", f"'{name}' is a loss of {list(cls.label_kinds)} labels and task '{task.name}' is "
                         f"{task.type} (its losses: {sorted(fitting)})")]
    try:
        options_of(cls, getattr(task, "loss_options", None) or {})
    except ValidationError as e:
        return [(dotted(["loss_options", *err["loc"]]), _option_message(cls, name, err)) for err in e.errors()]
    return []


def _option_message(cls: Type[TaskLoss], name: str, err: Mapping[str, Any]) -> str:
    if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        known = sorted(getattr(cls.Options, "__dataclass_fields__", {}))
        return f"not an option of loss '{name}' (its options: {known})"
    line = format_errors(cls.Options, [err])[0]
    key = dotted(list(err["loc"]))
    return line[len(key) + 2:] if key and line.startswith(f"{key}: ") else line


@functools.lru_cache(maxsize=None)
def _adapter(options_cls: type) -> TypeAdapter:
    # Built once per options class: the train module builds each task's loss on every step.
    return TypeAdapter(options_cls)


def options_of(cls: Type[TaskLoss], options: Mapping[str, Any]) -> Any:
    """``options`` (a mapping) validated into ``cls.Options`` as the config's YAML typed them (strict,
    as every config value: ``true`` is no number); pydantic's ValidationError otherwise."""
    return _adapter(cls.Options).validate_json(json.dumps(dict(options)), strict=True)


def build_loss(task: Any) -> TaskLoss:
    """The loss of ``task`` (:func:`loss_name`) with its ``loss_options``; ConfigError for an unknown name.

    Example::

        build_loss(TaskSpec("rating", "regression", loss="huber", loss_options={"delta": 0.5}))
    """
    cls = LOSSES.get(loss_name(task))
    return _built(cls, json.dumps(dict(getattr(task, "loss_options", None) or {}), sort_keys=True))


@functools.lru_cache(maxsize=None)
def _built(cls: Type[TaskLoss], options: str) -> TaskLoss:
    # Built once per loss class and options: multitask_loss asks for each task's loss on every training step.
    return cls(options_of(cls, json.loads(options)))
