"""Text vectors as a (frozen) embedding table plus a trainable adapter: a ``KJT -> [B, d]`` feature module.

The table row is ``[vector | no-text flag | zero padding]``; items without text get a learned "no
text" vector, selected by the flag column stored in the table (so the flag is sharded with the
vectors, no dense buffer) and learned as the adapter's first-layer weights on that column.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mtl_torchrec.core.errors import ConfigError

# fbgemm's table kernels want widths in multiples of 4.
_WIDTH_MULTIPLE = 4


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
        initial_weights: the table content to copy in after sharding (see
            :func:`~mtl_torchrec.distributed.state.load_text_tables`).
        dropout: probability, in training only, of serving a row the "no text" row (zero vector, flag
            1) instead of its own, so that the learned "no text" vector is trained although every
            training row may have text.

    Raises ConfigError (``model.text.adapter_layers``) when ``adapter_layers`` is empty, and
    ValueError when ``table`` is not one table of width ``table_width(text_dim)``.

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
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.text.dropout: must be in [0, 1), got {dropout}")
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
        self.dropout = float(dropout)
        no_text = torch.zeros(configs[0].embedding_dim)
        no_text[text_dim] = 1.0
        # What a row without text reads; not saved (it follows from text_dim).
        self.register_buffer("no_text_row", no_text, persistent=False)
        # Not a buffer: the weights live in the (sharded) table; this is only the initial copy.
        self.initial_weights = initial_weights

    @property
    def no_text_weight(self) -> torch.Tensor:
        """The learned "no text" vector: the first adapter layer's weights on the flag column."""
        return self.adapter[0].weight[:, self.text_dim]

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        """Looks up each row's table row and runs the adapter on it.

        Args:
            features (KeyedJaggedTensor): ids of the table's item feature.

        Returns:
            torch.Tensor: adapter output ``[B, out_features]``.
        """
        rows = self.table(features).values()
        if self.training and self.dropout > 0.0:
            # rand_like keeps the module fx-traceable (TrainPipelineSparseDist traces the model).
            drop = torch.rand_like(rows[:, :1]) < self.dropout
            rows = torch.where(drop, self.no_text_row, rows)
        return self.adapter(rows)
