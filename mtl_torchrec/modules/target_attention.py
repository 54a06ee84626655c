"""Target attention of a candidate item over a behaviour sequence (DIN), and the ``KJT -> [B, 2d]``
feature module that embeds both with one shared, sharded ``EmbeddingCollection``.

Deep Interest Network (Zhou et al., KDD 2018, "Deep Interest Network for Click-Through Rate
Prediction"): a *local activation unit* scores each history item ``h`` against the candidate ``t``
with an MLP over ``[h, t, h - t, h * t]``; the user's interest in this candidate is the
score-weighted sum of the history embeddings. DIN leaves the scores un-normalised (a plain weighted
sum, so the interest's norm can grow with the number of matching items); here they go through a
**softmax over the valid positions** (padding masked out), so the weights of a row sum to 1 and the
output does not depend on how much padding the batch adds. A row with an empty history gets
weights 0 everywhere and the zero vector as its interest (no NaN).

Sequences are padded (never pooled): the module reads the ``max_length`` most recent ids of each
row, where ids are ordered oldest first and most recent last (the data's convention, see
``docs/mtl.md``). Everything is tensor arithmetic with shapes fixed by ``max_length``, so the
module traces under torch.fx (TorchRec's train pipeline traces the model) and scripts.

Example::

    ec = EmbeddingCollection(tables=[EmbeddingConfig(name="t_item_id", embedding_dim=16,
                                                     num_embeddings=1000,
                                                     feature_names=["item_id", "item_history"])])
    feature = HistoryAttentionFeature(ec, candidate="item_id", history="item_history",
                                      max_length=50, attention_layers=[64, 32])
    feature(kjt).shape                        # [B, 32]: candidate embedding | interest
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


def recent_padded(
    values: torch.Tensor, lengths: torch.Tensor, max_length: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``max_length`` most recent entries of each row of a jagged sequence, left-aligned and padded.

    Args:
        values (torch.Tensor): ``[sum(lengths), d]``, the rows' entries back to back, each row oldest first.
        lengths (torch.Tensor): ``[B]`` entries per row (int).
        max_length (int): positions kept per row; a longer row keeps its last ``max_length`` entries.

    Returns:
        Tuple[torch.Tensor, torch.Tensor]: ``[B, max_length, d]`` entries (0 on padding) and the
        ``[B, max_length]`` bool mask of valid positions.
    """
    lengths = lengths.long()
    ends = torch.cumsum(lengths, dim=0)
    kept = torch.clamp(lengths, max=max_length)
    starts = ends - kept
    pos = torch.arange(max_length, device=values.device).unsqueeze(0)
    mask = pos < kept.unsqueeze(1)
    # Padding positions read an appended zero row, so an empty batch (no values) indexes safely.
    padded_values = torch.cat([values, values.new_zeros((1, values.shape[1]))], dim=0)
    pad_row = torch.full_like(pos, values.shape[0]).expand(lengths.shape[0], max_length)
    index = torch.where(mask, starts.unsqueeze(1) + pos, pad_row)
    return padded_values[index], mask


class TargetAttention(nn.Module):
    """DIN's local activation unit with a masked softmax: ``[B, L, d]`` history, ``[B, d]`` target ->
    ``[B, d]`` interest and ``[B, L]`` weights.

    The unit is an MLP over ``[h, t, h - t, h * t]`` (``4 d`` inputs) with PReLU between the hidden
    layers (DIN uses PReLU or its Dice activation) and one linear output, a scalar score per
    position. Scores of padded positions are set to -1e9 before the softmax and
    the weights are multiplied by the mask, so padding gets exactly 0 and the valid weights of a row
    sum to 1; a row without a valid position gets all zeros.

    Args:
        dim: width ``d`` of the history and target vectors.
        layers: hidden widths of the activation unit (may be empty: a linear score).

    Raises ValueError when ``dim`` or a layer width is not positive.

    Example::

        attn = TargetAttention(16, [64, 32])
        interest, weights = attn(history, mask, target)   # [B, 16], [B, L]
    """

    def __init__(self, dim: int, layers: List[int]) -> None:
        super().__init__()
        if dim <= 0 or any(w <= 0 for w in layers):
            raise ValueError(f"TargetAttention needs positive widths, got dim {dim} and layers {list(layers)}")
        blocks: List[nn.Module] = []
        width = 4 * dim
        for w in layers:
            blocks += [nn.Linear(width, w), nn.PReLU(w)]
            width = w
        blocks.append(nn.Linear(width, 1))
        self.unit = nn.Sequential(*blocks)
        self.dim = dim

    def forward(
        self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Scores every history position against the target and returns the weighted sum.

        Args:
            history (torch.Tensor): ``[B, L, d]`` history embeddings (any value on padding).
            mask (torch.Tensor): ``[B, L]`` bool, True on valid positions.
            target (torch.Tensor): ``[B, d]`` candidate embedding.

        Returns:
            Tuple[torch.Tensor, torch.Tensor]: the interest ``[B, d]`` and the weights ``[B, L]``
            (sum 1 over a row's valid positions, 0 on padding, all 0 for an empty row).
        """
        t = target.unsqueeze(1).expand_as(history)
        pairs = torch.cat([history, t, history - t, history * t], dim=-1)
        # Flattened to [B * L, 4 d]: PReLU's per-channel slopes read dimension 1.
        scores = self.unit(pairs.reshape(-1, pairs.shape[-1])).reshape(history.shape[0], history.shape[1])
        # A finite fill (not -inf): a row without valid positions then gets a uniform softmax, which the
        # mask zeroes, instead of NaN; exp(-1e9 - max) underflows to exactly 0 for padding otherwise.
        scores = scores.masked_fill(~mask, -1.0e9)
        weights = torch.softmax(scores, dim=1) * mask.to(scores.dtype)
        interest = torch.bmm(weights.unsqueeze(1), history * mask.unsqueeze(-1).to(history.dtype)).squeeze(1)
        return interest, weights


class HistoryAttentionFeature(nn.Module):
    """A behaviour sequence with target attention, as a ``KeyedJaggedTensor -> [B, 2 d]`` feature module.

    One ``EmbeddingCollection`` table (sequence embeddings, not pooled; DMP shards it like the
    EBC's tables) serves both the candidate feature (one id per row: its length-1 sequence is its
    embedding) and the history feature, so the same raw item has the same vector in both places.
    The output is ``[candidate embedding | interest]``: the candidate's embedding is a feature
    group of its own (the model's EBC then leaves the item table out), the interest
    (:class:`TargetAttention` over the ``max_length`` most recent history ids) another.

    Args:
        embedding: an ``EmbeddingCollection`` with exactly one table whose ``feature_names`` are
            ``[candidate, history]`` (in either order).
        candidate: the single-valued candidate item feature.
        history: the multi-valued history feature (ids oldest first, most recent last).
        max_length: most recent history ids read per row (``model.sequence.max_length``).
        attention_layers: hidden widths of the local activation unit.

    Raises ValueError when the collection is not one table over exactly those two features, or
    ``max_length`` < 1.

    Example::

        feature = HistoryAttentionFeature(ec, "item_id", "item_history", 50, [64, 32])
        out = feature(kjt)                       # [B, 2 * dim]
        weights, mask = feature.attention_weights(kjt)
    """

    def __init__(
        self, embedding: EmbeddingCollection, candidate: str, history: str, max_length: int, attention_layers: List[int]
    ) -> None:
        super().__init__()
        configs = embedding.embedding_configs()
        if len(configs) != 1 or sorted(configs[0].feature_names) != sorted([candidate, history]):
            found = [list(c.feature_names) for c in configs]
            raise ValueError(f"HistoryAttentionFeature needs one table over ['{candidate}', '{history}'], got {found}")
        if max_length < 1:
            raise ValueError(f"model.sequence.max_length: must be >= 1, got {max_length}")
        self.embedding = embedding
        self.candidate = candidate
        self.history = history
        self.max_length = int(max_length)
        self.dim = int(configs[0].embedding_dim)
        self.table_name = configs[0].name
        self.attention = TargetAttention(self.dim, list(attention_layers))
        self.out_features = 2 * self.dim
        # The model's feature groups (per-task feature attention, diagnostics): two, not one.
        self.groups: List[Tuple[str, int]] = [(candidate, self.dim), (history, self.dim)]

    def _attend(self, features: KeyedJaggedTensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(candidate [B, d], interest [B, d], weights [B, L], mask [B, L])`` of one batch."""
        seqs = self.embedding(features)
        target = seqs[self.candidate].values()
        hist = seqs[self.history]
        history, mask = recent_padded(hist.values(), hist.lengths(), self.max_length)
        interest, weights = self.attention(history, mask, target)
        return target, interest, weights, mask

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        """Embeds the candidate and the history and attends from one to the other.

        Args:
            features (KeyedJaggedTensor): ids of (at least) the candidate and history features.

        Returns:
            torch.Tensor: ``[B, 2 d]``, the candidate embedding then the interest vector.
        """
        target, interest, _, _ = self._attend(features)
        return torch.cat([target, interest], dim=1)

    @torch.jit.export
    def attention_weights(self, features: KeyedJaggedTensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The attention weights of a batch, for diagnostics: ``[B, L]`` weights and ``[B, L]`` valid mask
        (position 0 is the oldest id kept)."""
        _, _, weights, mask = self._attend(features)
        return weights, mask
