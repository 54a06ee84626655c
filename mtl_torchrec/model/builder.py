"""Builds the multi-task model, its tasks and loss balancer from a config and a data schema."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.schema import Schema
from mtl_torchrec.model.backbones import BACKBONES
from mtl_torchrec.model.balancing import BALANCERS
from mtl_torchrec.model.config import BalanceConfig, ModelConfig
from mtl_torchrec.model.head import init_towers_from_labels, make_backbone
from mtl_torchrec.model.multitask import MultiTaskModel
from mtl_torchrec.model.sequence import build_sequence_feature, sequence_table, truncation_note
from mtl_torchrec.model.tasks import TaskSpec, TrainModule, check_tasks
from mtl_torchrec.model.text import item_id_dropout, text_feature_modules
from mtl_torchrec.modules.aitm import AITMTowers
from mtl_torchrec.modules.feature_attention import FeatureGroupAttention
from mtl_torchrec.modules.managed_collision import ManagedCollisionFeatures
from mtl_torchrec.modules.towers import TaskTowers

logger = logging.getLogger(__name__)


def embedding_configs(schema: Schema, embedding_dim: int, exclude: Optional[str] = None) -> List[EmbeddingBagConfig]:
    """One table per distinct ``table_name`` of the id features; features naming the same table share
    it. Text features have their own frozen tables (:mod:`mtl_torchrec.model.text`), managed-collision
    features (``vocab: zch``) theirs (:func:`managed_features`); the table named ``exclude`` (the
    sequence feature's, :func:`~mtl_torchrec.model.sequence.sequence_table`) is left out."""
    tables: Dict[str, EmbeddingBagConfig] = {}
    for f in schema.id_features:
        if f.managed is not None or (exclude is not None and f.table_name == exclude):
            continue
        name = f"t_{f.table_name}"
        if name in tables:
            tables[name].feature_names.append(f.name)
            continue
        tables[name] = EmbeddingBagConfig(
            name=name,
            embedding_dim=embedding_dim,
            num_embeddings=f.num_embeddings,
            feature_names=[f.name],
            pooling=PoolingType.MEAN if f.pooling == "mean" else PoolingType.SUM,
        )
    return list(tables.values())


MANAGED_FEATURES = "managed_ids"


def managed_features(schema: Schema, embedding_dim: int, device: Optional[torch.device] = None,
                     exclude: Optional[str] = None) -> Optional[ManagedCollisionFeatures]:
    """The id features with managed collisions (``vocab: zch``) as one feature module (TorchRec's
    managed-collision EBC, :class:`~mtl_torchrec.modules.managed_collision.ManagedCollisionFeatures`),
    added to the model's feature modules under ``managed_ids``; None when the schema has none.
    Raises ConfigError naming ``model.sequence`` when the sequence feature's table (``exclude``) is one."""
    features = [f for f in schema.id_features if f.managed is not None]
    if not features:
        return None
    if exclude is not None and any(f.table_name == exclude for f in features):
        raise ConfigError(f"model.sequence: the candidate's table '{exclude}' has vocab: zch; a behaviour sequence "
                          f"needs a vocabulary its history shares (build, file, hash or identity)")
    return ManagedCollisionFeatures(features, embedding_dim, device)


def task_specs(cfg: ModelConfig, schema: Schema) -> List[TaskSpec]:
    """The :class:`TaskSpec` of each ``model.tasks`` entry, checked against the data's labels.

    Raises ConfigError naming ``model.tasks`` when there is no task, ``model.tasks[i].name`` when
    the data has no such label, ``model.tasks[i].type`` when the label's type differs, and the key of
    each :func:`~mtl_torchrec.model.tasks.task_problems` entry.
    """
    if not cfg.tasks:
        raise ConfigError("model.tasks: at least one task is required")
    specs = []
    for i, t in enumerate(cfg.tasks):
        if t.name not in schema.tasks:
            raise ConfigError(f"model.tasks[{i}].name: '{t.name}' has no label in the data (labels: {schema.tasks})")
        if schema.label(t.name).type != t.type:
            raise ConfigError(
                f"model.tasks[{i}].type: '{t.type}' but the data labels '{t.name}' as '{schema.label(t.name).type}'"
            )
        specs.append(TaskSpec(name=t.name, type=t.type, weight=t.weight, esmm_parent=t.esmm_parent,
                              aitm_parent=t.aitm_parent, loss=t.loss, loss_options=dict(t.loss_options),
                              aitm_calibration=cfg.aitm.calibration_weight if t.aitm_parent else 0.0))
    try:
        check_tasks(specs)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return specs


def build_backbone(cfg: ModelConfig, in_features: int, num_tasks: int) -> nn.Module:
    """The registered backbone ``cfg.backbone`` built from its options section ``model.<section>``.

    Raises ConfigError naming ``model.backbone`` (not registered) or ``model.<section>`` (the
    module refused its options).
    """
    backbone = BACKBONES.get(cfg.backbone)
    try:
        return make_backbone(cfg.backbone, backbone.options_of(cfg), in_features, num_tasks)
    except ValueError as e:
        raise ConfigError(f"model.{backbone.section}: {e}") from None


def build_balancer(name: str, tasks: List[TaskSpec], options: Optional[BalanceConfig] = None) -> nn.Module:
    """The registered balancer ``name`` (``train.loss_balance``) for ``tasks`` and their weights.

    Raises ConfigError naming ``train.loss_balance`` for an unknown name, or for a learned
    balancer with a task weight <= 0.
    """
    balancer = BALANCERS.get(name)
    weights = {t.name: t.weight for t in tasks}
    if balancer.needs_positive_weights and any(w <= 0 for w in weights.values()):
        raise ConfigError(f"train.loss_balance: '{name}' needs positive model.tasks[*].weight (got {weights})")
    return balancer.from_config(weights, options or BalanceConfig())


def build_model(
    cfg: ModelConfig,
    schema: Schema,
    device: Optional[torch.device] = None,
    feature_modules: Optional[Dict[str, nn.Module]] = None,
    id_dropout: Optional[nn.Module] = None,
) -> MultiTaskModel:
    """The :class:`MultiTaskModel` for ``cfg`` over ``schema``: one table per distinct table name,
    the ``model.backbone`` sized to the fused width, and one tower per task (with AIT units
    between AITM tasks, ``model.tasks[*].aitm_parent``), plus per-task feature attention when
    ``model.feature_attention.enabled``, and with ``model.sequence.enabled`` the behaviour-sequence
    feature (:mod:`mtl_torchrec.model.sequence`) as the first feature module, owning the item table;
    the ``vocab: zch`` features' tables are the last feature module (:func:`managed_features`).

    ``device='meta'`` defers table allocation to DistributedModelParallel. Raises ConfigError
    naming the key (see :func:`task_specs` and :func:`build_backbone`).
    """
    tasks = task_specs(cfg, schema)
    sequence = build_sequence_feature(cfg, schema, device)
    if sequence is not None:
        feature_modules = {sequence.history: sequence, **(feature_modules or {})}
    managed = managed_features(schema, cfg.embedding_dim, device, sequence_table(cfg, schema))
    if managed is not None:
        feature_modules = {**(feature_modules or {}), MANAGED_FEATURES: managed}
    ebc = EmbeddingBagCollection(
        tables=embedding_configs(schema, cfg.embedding_dim, sequence_table(cfg, schema)), device=device)
    width = MultiTaskModel.fused_width(ebc, len(schema.dense), cfg.dense_layers, feature_modules)
    backbone = build_backbone(cfg, width, len(tasks))
    attention = cfg.feature_attention
    tower_in = backbone.out_features + (attention.dim if attention.enabled else 0)
    layer_sizes = {t.name: (t.tower_layers if t.tower_layers is not None else cfg.tower_layers) for t in cfg.tasks}
    parents = {t.name: t.aitm_parent for t in tasks if t.aitm_parent is not None}
    towers: TaskTowers
    if parents:
        towers = AITMTowers([t.name for t in tasks], tower_in, layer_sizes, cfg.tower_mlp.options(), parents,
                            cfg.aitm.attention_dim)
    else:
        towers = TaskTowers([t.name for t in tasks], tower_in, layer_sizes, cfg.tower_mlp.options())
    feature_attention = None
    if attention.enabled:
        groups = MultiTaskModel.feature_groups(ebc, len(schema.dense), cfg.dense_layers, feature_modules)
        feature_attention = FeatureGroupAttention([w for _, w in groups], len(tasks), attention.dim)
    return MultiTaskModel(ebc, len(schema.dense), cfg.dense_layers, backbone, towers, feature_modules, id_dropout,
                          feature_attention)


def build_train_module(
    cfg: ModelConfig,
    data: DataBundle,
    loss_balance: str = "fixed",
    balance: Optional[BalanceConfig] = None,
    feature_modules: Optional[Dict[str, nn.Module]] = None,
    text_cache: Optional[Path] = None,
    progress: bool = False,
) -> TrainModule:
    """Model (``model.*``), tasks and loss balancer (``train.loss_balance``, ``train.balance``),
    sized for the data's schema. ``text_cache`` is the encoding cache's root
    (:func:`~mtl_torchrec.model.text.text_cache_root`). Raises
    ConfigError naming the key.

    Regression heads start at the training labels' mean: started at 0, a rating task's squared
    error (~mean^2) dwarfs the binary losses and its gradient swamps the shared layers early on.
    """
    tasks = task_specs(cfg, data.schema)
    if feature_modules is None and cfg.text.enabled:
        feature_modules = text_feature_modules(cfg.text, data, text_cache, progress=progress)
    id_dropout = None
    # Independent of text.enabled, so an ID-only baseline can get the same cold-start treatment.
    if cfg.text.id_dropout > 0:
        id_dropout = item_id_dropout(cfg, data.schema)
    model = build_model(cfg, data.schema, feature_modules=feature_modules, id_dropout=id_dropout)
    train = data.splits.get("train")
    note = truncation_note(cfg, train) if train is not None else None
    if note and (not dist.is_initialized() or dist.get_rank() == 0):
        logger.info(note)
    if data.train_stream is not None:
        # A streamed split is not in memory: one row per task holding its training labels' mean
        # (NaN without a label), which is all the regression heads' initialisation takes.
        means = data.train_stream.label_means
        labels = {t.name: torch.tensor([means.get(data.schema.label(t.name).column_name, float("nan"))],
                                       dtype=torch.float64) for t in tasks}
        init_towers_from_labels(model.towers, tasks, labels, binary=False)
    elif train is not None:
        labels = {
            t.name: torch.from_numpy(np.asarray(train[data.schema.label(t.name).column_name], dtype=np.float64))
            for t in tasks
        }
        # The head's own initialisation (MultiTaskHead.init_from_labels), regression heads only:
        # binary heads keep their default start.
        init_towers_from_labels(model.towers, tasks, labels, binary=False)
    return TrainModule(model, tasks, build_balancer(loss_balance, tasks, balance))
