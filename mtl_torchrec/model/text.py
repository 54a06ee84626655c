"""Builds text feature modules from the config and the data's text tables: frozen vectors + adapter.

The language model never runs in a training step: each text feature's table rows
(:class:`~mtl_torchrec.data.bundle.TextTable`, keyed by raw item key or by the text itself, never by
an id vocabulary) get their vectors from the content-addressed encoding cache
(:func:`~mtl_torchrec.text.store.encode_texts`) or a store keyed by raw item key, and
:class:`~mtl_torchrec.modules.text_feature.TextFeature` serves them. Id dropout for cold start
(:class:`~mtl_torchrec.modules.id_dropout.UnseenIdDropout`) is built here too.

Example::

    modules = text_feature_modules(cfg.model.text, bundle, text_cache_root(cfg.model.text, "runs"))
    model = build_model(cfg.model, bundle.schema, feature_modules=modules)
    dmp = shard_module(TrainModule(model, ...), ctx)    # make_sharders includes the frozen sharder
    load_text_tables(dmp)                                # copy the vectors into their shards
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.bundle import DataBundle, TextTable
from mtl_torchrec.data.schema import Schema
from mtl_torchrec.model.config import ModelConfig
from mtl_torchrec.modules.frozen_ebc import FrozenEmbeddingBagCollection
from mtl_torchrec.modules.id_dropout import IdDropouts, UnseenIdDropout
from mtl_torchrec.modules.text_feature import TextFeature, table_weights
from mtl_torchrec.text.config import TextConfig
from mtl_torchrec.text.store import TextStore, encode_texts, model_dim

logger = logging.getLogger(__name__)


def build_text_feature(
    cfg: TextConfig,
    feature: str,
    vectors: torch.Tensor,
    has_text: torch.Tensor,
    normalized: bool,
    device: Optional[torch.device] = None,
) -> TextFeature:
    """A :class:`TextFeature` over the text feature ``feature`` whose table row ``r`` holds
    ``vectors[r]`` (``has_text[r]`` False: the learned "no text" vector).

    L2-normalised vectors (``normalized``) are scaled by ``sqrt(dim)`` first, so their entries have
    unit scale like the other inputs; the module outputs ``[B, cfg.adapter_layers[-1]]``.
    """
    if normalized:
        vectors = vectors * math.sqrt(vectors.shape[1])
    weights = table_weights(vectors, has_text)
    table_cfg = EmbeddingBagConfig(
        name=f"text_{feature}",
        embedding_dim=weights.shape[1],
        num_embeddings=weights.shape[0],
        feature_names=[feature],
        pooling=PoolingType.SUM,
    )
    cls = EmbeddingBagCollection if cfg.trainable_table else FrozenEmbeddingBagCollection
    table = cls(tables=[table_cfg], device=device)
    with torch.no_grad():
        if device is None or torch.device(device).type != "meta":
            table.embedding_bags[table_cfg.name].weight.copy_(weights)
    return TextFeature(table, vectors.shape[1], cfg.adapter_layers, initial_weights=weights, dropout=cfg.dropout)


def text_cache_root(text: TextConfig, output_dir: str) -> Path:
    """The encoding cache's root: ``model.text.cache_dir``, else ``<output_dir>/text_cache``. Inside,
    one folder per encoder identity holds the vectors of every text encoded so far, found by the
    text itself (:func:`~mtl_torchrec.text.store.cache_folder`), so any data or spec reuses them."""
    return Path(text.cache_dir) if text.cache_dir else Path(output_dir) / "text_cache"


def table_vectors(
    cfg: TextConfig, table: TextTable, cache_root: Optional[Path], progress: bool = False
) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """``(vectors [rows, dim], has_text [rows], normalized)`` for the rows of ``table``.

    Texts are encoded through the cache under ``cache_root`` (collective under a process group); a
    keyed store is looked up by the rows' raw keys (DataError naming a few keys it lacks); a table
    without texts (a training run's rows reused at evaluation) gets zeros, which the checkpoint
    replaces. Raises ConfigError when texts must be encoded but there is no cache root.
    """
    if table.store is not None:
        store = TextStore.load(table.store)
        wanted = table.store_key or table.key_column
        if store.key_column is not None and wanted is not None and store.key_column != wanted:
            # Two columns of other names may hold other ids that overlap (SKU 5 vs catalogue number 5).
            raise DataError(
                f"text feature '{table.feature}': the store {table.store} is keyed by {store.keyed_by}, the data "
                f"reads column '{table.key_column}'; if that column holds the same ids, say so with "
                f"store_key: {store.key_column} in the spec's text entry"
            )
        vectors, has_text = store.lookup(table.keys, source=f"text feature '{table.feature}': store {table.store}")
        return vectors, has_text, bool(store.info.get("normalize", False))
    if table.texts is None:
        dim = model_dim(cfg.encoder)
        return torch.zeros(table.num_rows, dim), torch.zeros(table.num_rows, dtype=torch.bool), cfg.encoder.normalize
    if cache_root is None:
        raise ConfigError("model.text.cache_dir: no cache folder to encode the data's texts into")
    vectors, has_text, stats = encode_texts(table.texts, cache_root, cfg.encoder, progress=progress,
                                            source=f"text feature '{table.feature}' row")
    if not dist.is_initialized() or dist.get_rank() == 0:
        logger.info("text feature '%s': %s rows, %s distinct texts encoded, %s from the cache %s",
                    table.feature, table.num_rows - 1, stats.encoded, stats.reused, cache_root)
    return vectors, has_text, cfg.encoder.normalize


def text_feature_modules(
    text: TextConfig, data: DataBundle, cache_root: Optional[Path] = None, progress: bool = False
) -> Dict[str, nn.Module]:
    """``{feature name: TextFeature}`` for each of the data's text features (empty when
    ``text.enabled`` is false).

    ``cache_root`` is where texts are encoded (:func:`text_cache_root`). Raises ConfigError naming
    ``model.text.enabled`` when the data has no text feature, and what :func:`table_vectors` raises.
    """
    if not text.enabled:
        return {}
    if not data.texts:
        raise ConfigError("model.text.enabled: the data has no text feature (a data spec declares them under "
                          "`text:`, see docs/text.md)")
    modules: Dict[str, nn.Module] = {}
    for name, table in data.texts.items():
        feature = next((f for f in data.schema.text_features if f.name == name), None)
        if feature is None or feature.num_embeddings != table.num_rows:
            raise DataError(f"text feature '{name}': the schema and its text table disagree")
        vectors, has_text, normalized = table_vectors(text, table, cache_root, progress)
        modules[name] = build_text_feature(text, name, vectors, has_text, normalized)
    return modules


def item_id_dropout(cfg: ModelConfig, schema: Schema) -> nn.Module:
    """:class:`UnseenIdDropout` with probability ``cfg.text.id_dropout`` on each of
    ``cfg.text.id_dropout_features`` (default: ``cfg.text.item_feature``): one module for one
    feature, several chained by :class:`IdDropouts`.

    Raises ConfigError naming ``model.text.id_dropout`` (outside ``[0, 1)``) or the features' key
    (a name that is not a single-valued sparse feature).
    """
    if not 0.0 <= cfg.text.id_dropout < 1.0:
        raise ConfigError(f"model.text.id_dropout: must be in [0, 1), got {cfg.text.id_dropout}")
    key = "model.text.id_dropout_features" if cfg.text.id_dropout_features else "model.text.item_feature"
    names = list(cfg.text.id_dropout_features) or [cfg.text.item_feature]
    drops = []
    for name in names:
        feature = next((f for f in schema.id_features if f.name == name), None)
        if feature is None or feature.multi_valued:
            raise ConfigError(f"{key}: '{name}' must be a single-valued sparse feature")
        if feature.managed is not None:
            raise ConfigError(f"{key}: '{name}' has vocab: zch, whose rows are not fixed ids; id dropout needs another "
                              f"vocabulary")
        drops.append(UnseenIdDropout(feature.name, feature.num_embeddings, cfg.embedding_dim, cfg.text.id_dropout))
    return drops[0] if len(drops) == 1 else IdDropouts(drops)
