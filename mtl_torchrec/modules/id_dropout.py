"""A learned "unseen id" embedding for ids without training history (cold start).

An id that never occurs in training keeps its random initial table row: noise that the model
never learned to read. :class:`UnseenIdDropout` replaces the pooled embedding of one feature by a
learned vector (a) for a random fraction ``p`` of training rows, so the vector is trained and the
rest of the model (e.g. text features) learns to carry those rows, and (b) at evaluation for
every id not seen in training. Which ids were seen is a boolean buffer, OR-reduced across ranks
before the first evaluation step (all ranks evaluate in lockstep) and saved with checkpoints.

Example::

    drop = UnseenIdDropout("item_id", num_embeddings=1682, dim=16, p=0.2)
    pooled = drop(ebc(kjt), kjt)          # KeyedTensor with item_id rows replaced where needed
"""

from __future__ import annotations

from typing import List

import torch
import torch.distributed as dist
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor


class UnseenIdDropout(nn.Module):
    """Replaces one feature's pooled embedding by a learned "unseen id" vector: for a random fraction of
    training rows, and at evaluation for every id not seen in training.

    Args:
        feature: name of the single-valued id feature (one id per row).
        num_embeddings: rows of the feature's table (ids are ``0 .. num_embeddings - 1``).
        dim: embedding width of the feature's table.
        p: probability in ``[0, 1)`` that a training row gets the unseen vector; ValueError otherwise.

    Example::

        drop = UnseenIdDropout("item_id", num_embeddings=1682, dim=16, p=0.2)
        pooled = drop(ebc(kjt), kjt)          # same keys and shapes as ebc(kjt)
    """

    def __init__(self, feature: str, num_embeddings: int, dim: int, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"id dropout probability must be in [0, 1), got {p}")
        self.feature = feature
        self.p = p
        self.unseen = nn.Parameter(torch.zeros(dim))
        self.register_buffer("seen", torch.zeros(num_embeddings, dtype=torch.bool))
        self._synced = True

    def _sync(self) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flags = self.seen.to(torch.uint8)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            self.seen.copy_(flags.bool())
        self._synced = True

    def forward(self, pooled: KeyedTensor, features: KeyedJaggedTensor) -> KeyedTensor:
        """Marks the batch's ids as seen (training) and replaces the rows to drop.

        In evaluation mode the first call after training OR-reduces ``seen`` across ranks (a
        collective: every rank must call it).

        Args:
            pooled (KeyedTensor): pooled embeddings ``[B, sum of dims]`` that include ``feature``.
            features (KeyedJaggedTensor): the ids ``pooled`` was looked up from.

        Returns:
            KeyedTensor: ``pooled`` with ``feature``'s ``[B, dim]`` rows replaced where dropped.

        Raises:
            ValueError: when ``feature`` does not have exactly one id per row.
        """
        ids = features[self.feature].values()
        if ids.numel() != pooled.values().shape[0]:
            raise ValueError(f"id dropout needs a single-valued feature; '{self.feature}' has several ids per row")
        if self.training:
            with torch.no_grad():
                self.seen[ids] = True
            self._synced = False
            drop = torch.rand(ids.shape[0], device=ids.device) < self.p
        else:
            if not self._synced:
                self._sync()
            drop = ~self.seen[ids]
        d = pooled.to_dict()
        emb = d[self.feature]
        d[self.feature] = torch.where(drop.unsqueeze(1), self.unseen.to(emb.dtype).expand_as(emb), emb)
        keys = pooled.keys()
        return KeyedTensor.from_tensor_list(keys, [d[k] for k in keys])


class IdDropouts(nn.Module):
    """Several :class:`UnseenIdDropout` applied in turn (e.g. user and item ids), each to its feature.

    Args:
        drops: the dropouts; ValueError when two name the same feature.

    Example::

        drops = IdDropouts([UnseenIdDropout("user_id", 943, 16, 0.2), UnseenIdDropout("item_id", 1682, 16, 0.2)])
        pooled = drops(ebc(kjt), kjt)
    """

    def __init__(self, drops: List[UnseenIdDropout]) -> None:
        super().__init__()
        names = [d.feature for d in drops]
        if len(set(names)) != len(names):
            raise ValueError(f"id dropout features must be distinct, got {names}")
        self.drops = nn.ModuleList(drops)

    def forward(self, pooled: KeyedTensor, features: KeyedJaggedTensor) -> KeyedTensor:
        """Applies each :class:`UnseenIdDropout` in turn.

        Args:
            pooled (KeyedTensor): pooled embeddings ``[B, sum of dims]`` that include every dropout's feature.
            features (KeyedJaggedTensor): the ids ``pooled`` was looked up from.

        Returns:
            KeyedTensor: ``pooled`` with each dropout's feature replaced where dropped.
        """
        for drop in self.drops:
            pooled = drop(pooled, features)
        return pooled
