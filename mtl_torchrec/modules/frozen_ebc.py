"""An embedding table that is served but never trained, and the sharder that keeps it so under DMP.

:class:`FrozenEmbeddingBagCollection` is an EBC whose parameters do not require grad and whose output
is detached. DMP shards it with :class:`FrozenEmbeddingBagCollectionSharder`, whose sharded module
detaches the pooled output as well, so no gradient ever reaches the fused kernel (whose in-backward
optimizer would otherwise update every table it holds). Its fused optimizer is SGD with learning
rate 0 as a second guard. Used for language-model text vectors (see :mod:`mtl_torchrec.modules.text_feature`).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Type

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec.distributed.embeddingbag import (
    EmbeddingBagCollectionSharder,
    ShardedEmbeddingBagCollection,
)
from torchrec.distributed.types import ParameterSharding, ShardingEnv
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor


def detached(kt: KeyedTensor) -> KeyedTensor:
    """The same pooled embeddings with their values cut from the autograd graph."""
    return KeyedTensor(keys=kt.keys(), length_per_key=kt.length_per_key(), values=kt.values().detach())


class FrozenEmbeddingBagCollection(EmbeddingBagCollection):
    """An ``EmbeddingBagCollection`` that is never trained (its output carries no gradient).

    Args:
        tables: the table configs, as for ``EmbeddingBagCollection``.
        device: where the tables are allocated (``meta`` to defer to sharding).

    Example::

        ebc = FrozenEmbeddingBagCollection(tables=[EmbeddingBagConfig(...)])
        ebc(kjt).values().requires_grad   # False
    """

    def __init__(self, tables: List[EmbeddingBagConfig], device: Optional[torch.device] = None) -> None:
        super().__init__(tables=tables, device=device)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Pooled embeddings as ``EmbeddingBagCollection.forward`` computes them, detached.

        Args:
            features (KeyedJaggedTensor): ids of the collection's features.

        Returns:
            KeyedTensor: pooled embeddings ``[B, sum of table dims]``, detached (no gradient).
        """
        return detached(super().forward(features))


class ShardedFrozenEmbeddingBagCollection(ShardedEmbeddingBagCollection):
    """Sharded :class:`FrozenEmbeddingBagCollection`: the pooled output is detached after the output
    dist, so the backward pass never enters the fused lookup kernel."""

    def output_dist(self, ctx, output):  # type: ignore[no-untyped-def]
        """The parent's output dist, with the pooled result detached once it arrives."""
        awaitable = super().output_dist(ctx, output)
        awaitable.callbacks.append(detached)
        return awaitable

    def compute_and_output_dist(self, ctx, input):  # type: ignore[no-untyped-def]
        """The parent's fused lookup and output dist, with the pooled result detached once it arrives."""
        awaitable = super().compute_and_output_dist(ctx, input)
        awaitable.callbacks.append(detached)
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
        """Wraps ``module`` as a :class:`ShardedFrozenEmbeddingBagCollection` with the lr-0 fused params."""
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
        """The module type this sharder shards: :class:`FrozenEmbeddingBagCollection`."""
        return FrozenEmbeddingBagCollection

    @property
    def sharded_module_type(self) -> Type[ShardedEmbeddingBagCollection]:
        """The sharded module type it produces: :class:`ShardedFrozenEmbeddingBagCollection`."""
        return ShardedFrozenEmbeddingBagCollection
