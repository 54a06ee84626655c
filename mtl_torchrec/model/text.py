"""Builds text feature modules from the config: the store's vectors in a frozen table + adapter.

The language model never runs here: vectors come from a :class:`~mtl_torchrec.text.store.TextStore`
(given, or encoded once into the cache), and :class:`~mtl_torchrec.modules.text_feature.TextFeature`
serves them. Id dropout for cold start (:class:`~mtl_torchrec.modules.id_dropout.UnseenIdDropout`)
is built here too.

Example::

    feature = build_text_feature(TextConfig(enabled=True, adapter_layers=[32]), store, num_items=1682)
    model = build_model(cfg.model, schema, feature_modules={"text": feature})
    dmp = shard_module(TrainModule(model, ...), ctx)    # make_sharders includes the frozen sharder
    load_text_tables(dmp)                                # copy the vectors into their shards
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.schema import Schema
from mtl_torchrec.model.config import ModelConfig
from mtl_torchrec.modules.frozen_ebc import FrozenEmbeddingBagCollection
from mtl_torchrec.modules.id_dropout import IdDropouts, UnseenIdDropout
from mtl_torchrec.modules.text_feature import TextFeature, table_weights
from mtl_torchrec.text.config import TextConfig
from mtl_torchrec.text.store import TextStore, build_store


def build_text_feature(
    cfg: TextConfig,
    store: TextStore,
    num_items: int,
    device: Optional[torch.device] = None,
    source: str = "text store",
) -> TextFeature:
    """A :class:`TextFeature` over ``cfg.item_feature`` holding the store's vectors for ids ``[0, num_items)``."""
    vectors, has_text = store.table(num_items, source=source)
    if store.info.get("normalize", False):
        # Unit-norm vectors have entries of about 1/sqrt(d); give them unit scale like other inputs.
        vectors = vectors * math.sqrt(store.dim)
    weights = table_weights(vectors, has_text)
    table_cfg = EmbeddingBagConfig(
        name=f"text_{cfg.item_feature}",
        embedding_dim=weights.shape[1],
        num_embeddings=num_items,
        feature_names=[cfg.item_feature],
        pooling=PoolingType.SUM,
    )
    cls = EmbeddingBagCollection if cfg.trainable_table else FrozenEmbeddingBagCollection
    table = cls(tables=[table_cfg], device=device)
    with torch.no_grad():
        if device is None or torch.device(device).type != "meta":
            table.embedding_bags[table_cfg.name].weight.copy_(weights)
    return TextFeature(table, store.dim, cfg.adapter_layers, initial_weights=weights)


def resolve_store(cfg: TextConfig, item_text: Optional[List[Optional[str]]], cache_name: str, progress: bool = False) -> TextStore:
    """The store named by ``cfg.store``, or the data's item texts encoded into ``cfg.cache_dir``.

    Collective under a process group when it has to encode (every rank takes a slice).
    """
    if cfg.store:
        return TextStore.load(cfg.store)
    if item_text is None:
        raise ConfigError(
            "model.text.store: the data has no item text, so a store must be given (mtl-torchrec encode-text)"
        )
    store, _ = build_store(item_text, Path(cfg.cache_dir) / cache_name, cfg.encoder, progress=progress)
    return store


def text_feature_modules(
    text: TextConfig, data: DataBundle, cache_name: str, progress: bool = False
) -> Dict[str, nn.Module]:
    """``{"text": TextFeature}`` for ``text`` (``model.text``) and the data's schema (empty when disabled).

    ``cache_name`` names the cache folder under ``text.cache_dir`` when the store is encoded from
    the data's item texts. Raises ConfigError naming ``model.text.*`` when the item feature is
    missing or multi-valued, or when there is neither a store nor item text.
    """
    if not text.enabled:
        return {}
    feature = next((f for f in data.schema.sparse if f.name == text.item_feature), None)
    if feature is None:
        raise ConfigError(
            f"model.text.item_feature: '{text.item_feature}' is not a sparse feature of the data "
            f"({[f.name for f in data.schema.sparse]})"
        )
    if feature.multi_valued:
        raise ConfigError(f"model.text.item_feature: '{text.item_feature}' must be single-valued")
    store = resolve_store(text, data.item_text, cache_name, progress=progress)
    source = text.store or str(text.cache_dir)
    return {"text": build_text_feature(text, store, feature.num_embeddings, source=f"text store {source}")}


def item_id_dropout(cfg: ModelConfig, schema: Schema) -> nn.Module:
    """:class:`UnseenIdDropout` with probability ``cfg.text.id_dropout`` on each of
    ``cfg.text.id_dropout_features`` (default: ``cfg.text.item_feature``), chained by :class:`IdDropouts`."""
    if not 0.0 <= cfg.text.id_dropout < 1.0:
        raise ConfigError(f"model.text.id_dropout: must be in [0, 1), got {cfg.text.id_dropout}")
    key = "model.text.id_dropout_features" if cfg.text.id_dropout_features else "model.text.item_feature"
    names = list(cfg.text.id_dropout_features) or [cfg.text.item_feature]
    drops = []
    for name in names:
        feature = next((f for f in schema.sparse if f.name == name), None)
        if feature is None or feature.multi_valued:
            raise ConfigError(f"{key}: '{name}' must be a single-valued sparse feature")
        drops.append(UnseenIdDropout(feature.name, feature.num_embeddings, cfg.embedding_dim, cfg.text.id_dropout))
    return drops[0] if len(drops) == 1 else IdDropouts(drops)
