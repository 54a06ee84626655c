"""Text vectors as a (frozen) TorchRec table plus a trainable adapter, as a model feature module.

* :class:`FrozenEmbeddingBagCollection` is an EBC whose tables never change: its parameters do
  not require grad and its output is detached. DMP shards it with
  :class:`FrozenEmbeddingBagCollectionSharder`, whose sharded module detaches the pooled output as
  well, so no gradient ever reaches the fused kernel (whose in-backward optimizer would otherwise
  update every table it holds). Its fused optimizer is SGD with learning rate 0 as a second guard.
* :class:`TextFeature` looks the item id up in that table and maps the vector through a small
  adapter to the fusion width; items without text get a learned "no text" vector, selected by a
  flag column stored in the table (so the flag is sharded with the vectors, no dense buffer) and
  learned as the adapter's weights on that column.

Example::

    feature = build_text_feature(TextConfig(enabled=True, adapter_layers=[32]), store, num_items=1682)
    model = build_model(cfg.model, schema, feature_modules={"text": feature})
    dmp = shard_module(TrainModule(model, ...), ctx)    # make_sharders includes the frozen sharder
    load_text_tables(dmp)                                # copy the vectors into their shards
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Optional, Type

import torch
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder, ShardedEmbeddingBagCollection
from torchrec.distributed.types import ParameterSharding, ShardingEnv
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor
from fbgemm_gpu.split_embedding_configs import EmbOptimType

from mtl_torchrec.config import ConfigError, TextConfig
from mtl_torchrec.text.store import TextStore

if TYPE_CHECKING:  # imported for annotations only: these modules import this one
    from mtl_torchrec.config import Config, ModelConfig
    from mtl_torchrec.data.schema import Schema
    from mtl_torchrec.data.sources import DataBundle

# fbgemm's table kernels want widths in multiples of 4.
_WIDTH_MULTIPLE = 4


def _detached(kt: KeyedTensor) -> KeyedTensor:
    return KeyedTensor(keys=kt.keys(), length_per_key=kt.length_per_key(), values=kt.values().detach())


class FrozenEmbeddingBagCollection(EmbeddingBagCollection):
    """An ``EmbeddingBagCollection`` that is never trained (its output carries no gradient).

    Example::

        ebc = FrozenEmbeddingBagCollection(tables=[EmbeddingBagConfig(...)])
        ebc(kjt).values().requires_grad   # False
    """

    def __init__(self, tables: List[EmbeddingBagConfig], device: Optional[torch.device] = None) -> None:
        super().__init__(tables=tables, device=device)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        return _detached(super().forward(features))


class ShardedFrozenEmbeddingBagCollection(ShardedEmbeddingBagCollection):
    """Sharded :class:`FrozenEmbeddingBagCollection`: the pooled output is detached after the output
    dist, so the backward pass never enters the fused lookup kernel."""

    def output_dist(self, ctx, output):  # type: ignore[no-untyped-def]
        awaitable = super().output_dist(ctx, output)
        awaitable.callbacks.append(_detached)
        return awaitable

    def compute_and_output_dist(self, ctx, input):  # type: ignore[no-untyped-def]
        awaitable = super().compute_and_output_dist(ctx, input)
        awaitable.callbacks.append(_detached)
        return awaitable


class FrozenEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """Shards only :class:`FrozenEmbeddingBagCollection`; its fused optimizer cannot move weights."""

    def __init__(self) -> None:
        super().__init__(fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.0})

    def shard(
        self,
        module: EmbeddingBagCollection,
        params: Dict[str, ParameterSharding],
        env: ShardingEnv,
        device: Optional[torch.device] = None,
        module_fqn: Optional[str] = None,
    ) -> ShardedEmbeddingBagCollection:
        return ShardedFrozenEmbeddingBagCollection(
            module=module,
            table_name_to_parameter_sharding=params,
            env=env,
            fused_params=self.fused_params,
            device=device,
            qcomm_codecs_registry=self.qcomm_codecs_registry,
            module_fqn=module_fqn,
        )

    @property
    def module_type(self) -> Type[EmbeddingBagCollection]:
        return FrozenEmbeddingBagCollection

    @property
    def sharded_module_type(self) -> Type[ShardedEmbeddingBagCollection]:
        return ShardedFrozenEmbeddingBagCollection


def table_width(text_dim: int) -> int:
    """Text dimension + 1 flag column ("no text"), padded to the kernels' width multiple."""
    return int(math.ceil((text_dim + 1) / _WIDTH_MULTIPLE) * _WIDTH_MULTIPLE)


def table_weights(vectors: torch.Tensor, has_text: torch.Tensor) -> torch.Tensor:
    """``[N, table_width]``: the vectors, then 1.0 in the flag column for items without text."""
    n, d = vectors.shape
    w = torch.zeros(n, table_width(d), dtype=torch.float32)
    w[:, :d] = vectors
    w[:, d] = (~has_text).float()
    return w


class TextFeature(nn.Module):
    """Item id -> text vector (table lookup) -> adapter, a ``KeyedJaggedTensor -> [B, out_features]`` module.

    The table row is ``[vector | no-text flag | zero padding]`` and the adapter's first layer reads
    all of it, so the flag column's weights are the learned "no text" vector (in the first layer's
    output space): items without text (zero vector, flag 1) get it, others get their projected text.
    That keeps the step to one lookup and one matmul.

    Args:
        table: an EBC with one table over the item feature of width ``table_width(text_dim)``;
            a :class:`FrozenEmbeddingBagCollection` unless the vectors are meant to be fine-tuned.
        text_dim: width of the language-model vectors inside the table.
        adapter_layers: widths of the adapter; ReLU between layers, none after the last.
        initial_weights: the table content to copy in after sharding (see :func:`load_text_tables`).

    Example::

        feature = TextFeature(FrozenEmbeddingBagCollection([cfg]), text_dim=384, adapter_layers=[32])
        feature(kjt).shape      # [B, 32]
    """

    def __init__(
        self,
        table: EmbeddingBagCollection,
        text_dim: int,
        adapter_layers: List[int],
        initial_weights: Optional[torch.Tensor] = None,
    ) -> None:
        super().__init__()
        if not adapter_layers:
            raise ConfigError("model.text.adapter_layers: at least one layer is required")
        configs = table.embedding_bag_configs()
        if len(configs) != 1 or configs[0].embedding_dim != table_width(text_dim):
            raise ValueError(f"TextFeature needs one table of width {table_width(text_dim)}")
        self.table = table
        self.table_name = configs[0].name
        self.text_dim = text_dim
        layers: List[nn.Module] = []
        width = configs[0].embedding_dim
        for i, h in enumerate(adapter_layers):
            layers.append(nn.Linear(width, h))
            if i + 1 < len(adapter_layers):
                layers.append(nn.ReLU())
            width = h
        self.adapter = nn.Sequential(*layers)
        with torch.no_grad():
            # The padding columns are always zero; keep their weights at zero too (no effect, tidy).
            self.adapter[0].weight[:, text_dim + 1 :] = 0.0
        self.out_features = width
        # Not a buffer: the weights live in the (sharded) table; this is only the initial copy.
        self.initial_weights = initial_weights

    @property
    def no_text_weight(self) -> torch.Tensor:
        """The learned "no text" vector: the first adapter layer's weights on the flag column."""
        return self.adapter[0].weight[:, self.text_dim]

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        return self.adapter(self.table(features).values())


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


def load_text_tables(module: nn.Module) -> int:
    """Copies each :class:`TextFeature`'s initial vectors into its (possibly sharded) table.

    Call once after DMP wrapping: sharding allocates fresh table storage. Returns how many tables
    were filled.
    """
    from mtl_torchrec.train.sharding import _plain_key, copy_unsharded_state

    state: Dict[str, torch.Tensor] = {}
    for name, m in module.named_modules():
        if isinstance(m, TextFeature) and m.initial_weights is not None:
            prefix = _plain_key(name + ".") if name else ""
            state[f"{prefix}table.embedding_bags.{m.table_name}.weight"] = m.initial_weights
    if state:
        copy_unsharded_state(module, state)
    return len(state)


def resolve_store(cfg: TextConfig, item_text: Optional[List[Optional[str]]], cache_name: str, progress: bool = False) -> TextStore:
    """The store named by ``cfg.store``, or the data's item texts encoded into ``cfg.cache_dir``.

    Collective under a process group when it has to encode (every rank takes a slice).
    """
    from pathlib import Path

    from mtl_torchrec.text.store import build_store

    if cfg.store:
        return TextStore.load(cfg.store)
    if item_text is None:
        raise ConfigError(
            "model.text.store: the data has no item text, so a store must be given (mtl-torchrec encode-text)"
        )
    store, _ = build_store(item_text, Path(cfg.cache_dir) / cache_name, cfg.encoder, progress=progress)
    return store


def text_feature_modules(cfg: Config, data: DataBundle) -> Dict[str, nn.Module]:
    """``{"text": TextFeature}`` for ``cfg.model.text`` and the data's schema (empty when disabled)."""
    text = cfg.model.text
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
    store = resolve_store(text, data.item_text, cfg.data.source, progress=cfg.train.progress)
    source = text.store or str(text.cache_dir)
    return {"text": build_text_feature(text, store, feature.num_embeddings, source=f"text store {source}")}


def item_id_dropout(cfg: ModelConfig, schema: Schema) -> nn.Module:
    """:class:`UnseenIdDropout` with probability ``cfg.text.id_dropout`` on each of
    ``cfg.text.id_dropout_features`` (default: ``cfg.text.item_feature``), chained by :class:`IdDropouts`."""
    from mtl_torchrec.modules.id_dropout import IdDropouts, UnseenIdDropout

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
