"""Settings of the multi-task model: tasks, backbones, towers, text features and loss balancing.

``ModelConfig`` has one options section per built-in backbone (``model.mmoe``, ``model.ple``,
...). A backbone registered later (a plugin, a test) brings its own section:
:func:`model_config_class` then derives a class with the sections of every registered backbone
(:data:`~mtl_torchrec.model.backbones.BACKBONES`); while the registry holds the built-in ones it
is ``ModelConfig`` itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple

from pydantic import Field, field_validator

from mtl_torchrec.core.config.fields import (
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Widths,
    config_dataclass,
    one_of,
    problems,
)
from mtl_torchrec.data.label_kinds import LABEL_KINDS
from mtl_torchrec.model.backbones import (
    BACKBONES,
    MLPConfig,
    MMoEConfig,
    PLEConfig,
    SharedBottomConfig,
    SingleTaskConfig,
    option_sections,
)
from mtl_torchrec.model.losses import LOSSES
from mtl_torchrec.model.tasks import task_problems
from mtl_torchrec.text.config import TextConfig


@config_dataclass
class TaskConfig:
    """One prediction task.

    ``type`` is the label kind (:data:`~mtl_torchrec.data.label_kinds.LABEL_KINDS`), as the data
    labels the task: ``binary`` (a probability; AUC, NE, calibration ...) or ``regression`` (a value;
    RMSE, MAE). ``loss`` is a registered loss (:data:`~mtl_torchrec.model.losses.LOSSES`) that fits
    the kind, by default the kind's (``binary``: ``bce``, ``regression``: ``mse``), e.g. ``focal``
    or ``huber``; ``loss_options`` are its options (``{gamma: 2.0}``), checked by the loss's options
    dataclass. The loss changes training only: predictions and metrics follow the label kind.
    ``esmm_parent`` makes a binary task ESMM-style: its tower
    predicts p(task | parent), trained through p(parent) * p(task | parent) over all rows, against
    the label parent AND task. Data whose task label is 1 where the parent's is 0 is refused
    unless ``esmm_derive_and_label`` sets those labels to 0 (see :mod:`mtl_torchrec.model.esmm`).
    ``aitm_parent`` makes a binary task an AITM task (Xi et al., KDD 2021): its tower mixes in
    what the parent's tower transferred (``model.aitm``) and its loss adds the calibrator
    ``model.aitm.calibration_weight * max(p(task) - p(parent), 0)``; its prediction is its own
    probability in impression space, trained against the same label ``parent AND task``.
    ``weight`` scales the task's loss (>= 0: a negative weight would maximise it).
    """

    name: str = ""
    type: Annotated[str, one_of(LABEL_KINDS)] = "binary"
    loss: Optional[Annotated[str, one_of(LOSSES)]] = None
    loss_options: Dict[str, Any] = field(default_factory=dict)
    weight: NonNegativeFloat = 1.0
    tower_layers: Optional[Widths] = None
    esmm_parent: Optional[str] = None
    esmm_derive_and_label: bool = False
    aitm_parent: Optional[str] = None


@config_dataclass
class AITMConfig:
    """``model.aitm``: options of the AITM tasks (``model.tasks[*].aitm_parent``), see
    :mod:`mtl_torchrec.modules.aitm`."""

    # Width of the AIT unit's scoring projections h2/h3; none: the child's tower width.
    attention_dim: Optional[PositiveInt] = None
    # lambda of the behavioural-expectation calibrator lambda * mean(max(p_task - p_parent, 0));
    # 0.6 is the authors' released default (xidongbo/AITM, --weight "label constraint weight").
    calibration_weight: NonNegativeFloat = 0.6


@config_dataclass
class FeatureAttentionConfig:
    """``model.feature_attention``: per-task attention over the feature groups (id features,
    dense, text), concatenated to each tower's input; see
    :mod:`mtl_torchrec.modules.feature_attention`. Off by default (the model is then unchanged)."""

    enabled: bool = False
    # Common width of the projected groups and of each task's attended vector.
    dim: PositiveInt = 16


@config_dataclass
class SequenceConfig:
    """``model.sequence``: a behaviour sequence (the user's recent items) read by target attention of
    the candidate item (DIN, Zhou et al., KDD 2018), see :mod:`mtl_torchrec.modules.target_attention`.
    Off by default (the model is then unchanged).

    ``history`` names a multi-valued id feature holding each row's past items, oldest first and most
    recent last; ``candidate`` the single-valued item feature it shares its table (and vocabulary)
    with. Both are embedded by one sharded ``EmbeddingCollection`` table; the model's
    ``EmbeddingBagCollection`` leaves that table out.
    """

    enabled: bool = False
    history: str = "item_history"
    candidate: str = "item_id"
    # The model reads the max_length most recent history ids of each row (a longer history is cut
    # to its most recent ids; training prints how many rows that concerns).
    max_length: PositiveInt = 50
    # Hidden widths of DIN's local activation unit (MLP over [h, t, h - t, h * t]); may be empty.
    attention_layers: Widths = field(default_factory=lambda: [64, 32])


@config_dataclass
class BalanceConfig:
    """Options of the loss balancers (``train.loss_balance``), see ``model/balancing.py``."""

    # GradNorm's restoring force: higher pulls slow-learning tasks harder.
    gradnorm_alpha: float = 1.5
    # MGDA-UB's gradient normalisation before the min-norm solve: none | l2 | loss.
    mgda_normalize: Literal["none", "l2", "loss"] = "none"
    # Learning rate of the balancer's own parameters (uncertainty log-variances, GradNorm
    # weights), stepped by a separate optimizer of the train.dense_optimizer kind. At the dense
    # learning rate they would barely move within an epoch.
    lr: PositiveFloat = 0.025


def _default_tasks() -> List[TaskConfig]:
    return [
        TaskConfig(name="click", type="binary"),
        TaskConfig(name="conversion", type="binary"),
        TaskConfig(name="rating", type="regression"),
    ]


def _check_tasks(cls: Any, tasks: List[TaskConfig]) -> List[TaskConfig]:
    """Names non-empty and unique, known label kinds, losses that fit them with valid options, ESMM and
    AITM parents other plain binary tasks (as the train module needs): :func:`task_problems`."""
    found = task_problems(tasks)
    if found:
        raise problems([((i, key), msg) for i, key, msg in found])
    return tasks


@config_dataclass
class ModelConfig:
    """``model.*``: features, backbone choice and one options section per built-in backbone (mmoe,
    ple, shared_bottom, single_task), towers, text features and tasks."""

    embedding_dim: PositiveInt = 16
    # MLP on the dense features; empty: used as they are.
    dense_layers: Widths = field(default_factory=lambda: [64, 16])
    backbone: Annotated[str, one_of(BACKBONES)] = "mmoe"
    # The backbones' options sections (model/backbones/*.py); the field name is the section.
    mmoe: MMoEConfig = field(default_factory=MMoEConfig)
    ple: PLEConfig = field(default_factory=PLEConfig)
    shared_bottom: SharedBottomConfig = field(default_factory=SharedBottomConfig)
    single_task: SingleTaskConfig = field(default_factory=SingleTaskConfig)
    # Tower MLP of every task without its own ``tower_layers``; empty: the head alone.
    tower_layers: Widths = field(default_factory=lambda: [64])
    # Activation, norm and dropout of every tower MLP layer.
    tower_mlp: MLPConfig = field(default_factory=MLPConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tasks: Annotated[List[TaskConfig], Field(min_length=1)] = field(default_factory=_default_tasks)
    aitm: AITMConfig = field(default_factory=AITMConfig)
    feature_attention: FeatureAttentionConfig = field(default_factory=FeatureAttentionConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)

    _tasks_valid = field_validator("tasks")(classmethod(_check_tasks))


# The options sections ModelConfig declares; a later backbone's section goes after them, before
# _AFTER_SECTIONS (the key order of saved configs).
_BUILTIN_SECTIONS = {"mmoe": MMoEConfig, "ple": PLEConfig, "shared_bottom": SharedBottomConfig,
                     "single_task": SingleTaskConfig}
_AFTER_SECTIONS = "tower_layers"
_CLASSES: Dict[Tuple[Tuple[str, type], ...], type] = {}


def model_config_class() -> type:
    """The ``model`` config dataclass for the backbones registered now: ``ModelConfig`` while they
    are the built-in ones, else a class with its fields plus one ``<section>: <options class>``
    field per further section, after the built-in sections (built once per set of sections, so it
    is the same class while the registry is unchanged).

    Raises ValueError when a section's name collides with another ``model.*`` key.
    """
    sections = option_sections()
    if sections == _BUILTIN_SECTIONS:
        return ModelConfig
    key = tuple(sections.items())
    if key in _CLASSES:
        return _CLASSES[key]
    fixed = {f.name for f in dataclasses.fields(ModelConfig)} - set(_BUILTIN_SECTIONS)
    clash = sorted(fixed & set(sections))
    if clash:
        raise ValueError(f"backbone options sections {clash} collide with model.* keys")
    fields: List[Tuple[str, Any, Any]] = []
    for f in dataclasses.fields(ModelConfig):
        if f.name in _BUILTIN_SECTIONS and f.name not in sections:
            continue
        if f.name == _AFTER_SECTIONS:
            fields += [(s, o, field(default_factory=o)) for s, o in sections.items() if s not in _BUILTIN_SECTIONS]
        same = field(default=f.default) if f.default_factory is dataclasses.MISSING else \
            field(default_factory=f.default_factory)
        fields.append((f.name, f.type, same))
    namespace = {
        "__module__": __name__,
        "__doc__": (
            "``model.*``: features, backbone choice and one options section per backbone "
            f"({', '.join(sections)}), towers, text features and tasks."
        ),
        "_tasks_valid": field_validator("tasks")(classmethod(_check_tasks)),
    }
    cls = config_dataclass(dataclasses.make_dataclass("ModelConfig", fields, namespace=namespace))
    _CLASSES[key] = cls
    return cls


__all__ = [
    "AITMConfig",
    "BalanceConfig",
    "FeatureAttentionConfig",
    "MLPConfig",
    "MMoEConfig",
    "ModelConfig",
    "PLEConfig",
    "SequenceConfig",
    "SharedBottomConfig",
    "SingleTaskConfig",
    "TaskConfig",
    "model_config_class",
]
