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

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.config import DataConfig
from mtl_torchrec.data.schema import Schema
from mtl_torchrec.model.config import ModelConfig
from mtl_torchrec.modules.frozen_ebc import FrozenEmbeddingBagCollection
from mtl_torchrec.modules.id_dropout import IdDropouts, UnseenIdDropout
from mtl_torchrec.modules.text_feature import TextFeature, table_weights
from mtl_torchrec.text.config import TextConfig
from mtl_torchrec.text.store import TextStore, build_store

# Settings that change how data is batched, not which rows exist: left out of the cache key.
_NOT_DATA_IDENTITY = ("batch_size", "eval_batch_size", "num_workers")


def build_text_feature(
    cfg: TextConfig,
    store: TextStore,
    num_items: int,
    device: Optional[torch.device] = None,
    source: str = "text store",
) -> TextFeature:
    """A :class:`TextFeature` over ``cfg.item_feature`` holding the store's vectors for ids ``[0, num_items)``.

    L2-normalised vectors are scaled by ``sqrt(dim)`` first; the module outputs ``[B, adapter_layers[-1]]``.
    """
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


def text_cache_folder(text: TextConfig, data: DataConfig, output_dir: str) -> Path:
    """Where the data's item texts are encoded when ``model.text.store`` is not given:
    ``<model.text.cache_dir or output_dir/text_cache>/<data.source>-<hash>``.

    The hash covers every ``data.*`` setting that decides the rows (not batch sizes or workers) and,
    for ``data.source: spec``, the spec file's bytes, so two data configs never share a folder
    (a shared folder would be re-encoded on every switch) and the same data always finds its cache.
    """
    settings = {k: v for k, v in dataclasses.asdict(data).items() if k not in _NOT_DATA_IDENTITY}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode("utf-8"))
    if data.source == "spec" and data.spec and Path(data.spec).is_file():
        digest.update(Path(data.spec).read_bytes())
    root = Path(text.cache_dir) if text.cache_dir else Path(output_dir) / "text_cache"
    return root / f"{data.source}-{digest.hexdigest()[:12]}"


def resolve_store(
    cfg: TextConfig, item_text: Optional[List[Optional[str]]], cache_folder: Optional[Path], progress: bool = False
) -> TextStore:
    """The store named by ``cfg.store``, or the data's item texts encoded into ``cache_folder``
    (see :func:`text_cache_folder`). Raises ConfigError when neither is possible.

    Collective under a process group when it has to encode (every rank takes a slice).
    """
    if cfg.store:
        return TextStore.load(cfg.store)
    if item_text is None:
        raise ConfigError(
            "model.text.store: the data has no item text, so a store must be given (mtl-torchrec encode-text)"
        )
    if cache_folder is None:
        raise ConfigError("model.text.store: not given, and no cache folder to encode the data's item texts into")
    store, _ = build_store(item_text, cache_folder, cfg.encoder, progress=progress)
    return store


def text_feature_modules(
    text: TextConfig, data: DataBundle, cache_folder: Optional[Path] = None, progress: bool = False
) -> Dict[str, nn.Module]:
    """``{"text": TextFeature}`` for ``text`` (``model.text``) and the data's schema (empty when disabled).

    ``cache_folder`` is where the data's item texts are encoded when ``text.store`` is not given
    (:func:`text_cache_folder`). Raises ConfigError naming ``model.text.*`` when the item feature is
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
    store = resolve_store(text, data.item_text, cache_folder, progress=progress)
    source = text.store or str(cache_folder)
    return {"text": build_text_feature(text, store, feature.num_embeddings, source=f"text store {source}")}


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
        feature = next((f for f in schema.sparse if f.name == name), None)
        if feature is None or feature.multi_valued:
            raise ConfigError(f"{key}: '{name}' must be a single-valued sparse feature")
        drops.append(UnseenIdDropout(feature.name, feature.num_embeddings, cfg.embedding_dim, cfg.text.id_dropout))
    return drops[0] if len(drops) == 1 else IdDropouts(drops)
