"""The multi-task model: sparse ids + dense features (+ extra feature modules) -> backbone -> towers.

The trainer needs only this interface from a model: ``model(batch)`` returns a
:class:`ModelOutput` whose ``logits`` map each task name to a ``[B]`` tensor (a logit for binary
tasks, a value for regression).
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mtl_torchrec.data.batch import Batch
from mtl_torchrec.modules.towers import TaskTowers


class ModelOutput(NamedTuple):
    """One forward pass of a :class:`MultiTaskModel`."""

    # Raw tower outputs per task: logits (binary) or values (regression).
    logits: Dict[str, torch.Tensor]
    # The fused representation every task reads (input of the backbone).
    shared: torch.Tensor
    # Gate weights per gate, [B, experts the gate mixes] each (empty for gate-free backbones).
    gates: List[torch.Tensor]


class MultiTaskModel(nn.Module):
    """Embeds ids with an ``EmbeddingBagCollection``, fuses them with dense (and extra) features,
    runs a multi-task backbone and per-task towers.

    Args:
        embedding: the EBC over all sparse features (sharded by DMP when distributed).
        num_dense: number of dense input features.
        dense_layers: MLP applied to the dense features (empty: used as they are).
        backbone: module with ``forward_with_gates(x) -> (List[Tensor], List[Tensor])`` and
            ``out_features`` (MMoE, PLE, SharedBottom ...).
        towers: the per-task towers.
        feature_modules: extra feature extractors ``KeyedJaggedTensor -> [B, d]`` with an
            ``out_features`` attribute, e.g. the text-feature module.
        id_dropout: optional ``(pooled KeyedTensor, KJT) -> KeyedTensor`` applied to the pooled
            embeddings, e.g. :class:`~mtl_torchrec.modules.id_dropout.IdDropouts`.
        feature_attention: optional ``[B, fused_width] -> [B, tasks, d]`` per-task attention over
            the feature groups (:class:`~mtl_torchrec.modules.feature_attention.FeatureGroupAttention`
            over :meth:`feature_groups`); each task's ``[B, d]`` is concatenated to its backbone
            output before its tower (so towers read ``backbone.out_features + d``). None: the
            towers read the backbone output alone.

    Example::

        out = model(batch)
        out.logits["click"].shape   # [B]
    """

    def __init__(
        self,
        embedding: EmbeddingBagCollection,
        num_dense: int,
        dense_layers: List[int],
        backbone: nn.Module,
        towers: TaskTowers,
        feature_modules: Optional[Dict[str, nn.Module]] = None,
        id_dropout: Optional[nn.Module] = None,
        feature_attention: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.embedding = embedding
        self.num_dense = num_dense
        self.dense_arch: nn.Module = MLP(num_dense, dense_layers) if (num_dense and dense_layers) else nn.Identity()
        self.feature_modules = nn.ModuleDict(feature_modules or {})
        # Sharded EBCs may return features in another order than the unsharded one; fix ours.
        self.embedding_names: List[str] = [n for c in embedding.embedding_bag_configs() for n in c.feature_names]
        # Optional (pooled KeyedTensor, KJT) -> KeyedTensor, e.g. UnseenIdDropout for cold-start ids.
        self.id_dropout = id_dropout
        self.backbone = backbone
        self.towers = towers
        self.tasks = towers.tasks
        # Names of the fused representation's parts, for the feature-attention diagnostics.
        self.feature_group_names: List[str] = [
            n for n, _ in self.feature_groups(embedding, num_dense, dense_layers, feature_modules)
        ]
        # None adds no parameter: without it the state dict is as before.
        self.feature_attention = feature_attention
        # Rows per block of the dense layers in eval mode (forward); 1024 rows of an MMoE with 8
        # experts [256, 128] keep the expert activations (8 MB) near cache size on CPU.
        self.score_rows = 1024

    @staticmethod
    def fused_width(
        embedding: EmbeddingBagCollection,
        num_dense: int,
        dense_layers: List[int],
        feature_modules: Optional[Dict[str, nn.Module]] = None,
    ) -> int:
        """Width of the fused representation, for sizing the backbone before building the model."""
        width = sum(c.embedding_dim * len(c.feature_names) for c in embedding.embedding_bag_configs())
        width += (dense_layers[-1] if dense_layers else num_dense) if num_dense else 0
        width += sum(int(m.out_features) for m in (feature_modules or {}).values())
        return width

    @staticmethod
    def feature_groups(
        embedding: EmbeddingBagCollection,
        num_dense: int,
        dense_layers: List[int],
        feature_modules: Optional[Dict[str, nn.Module]] = None,
    ) -> List[Tuple[str, int]]:
        """``(name, width)`` of each part of the fused representation, in :meth:`fuse`'s order:
        each id feature (its name), ``dense`` (the dense MLP's output), each feature module (its
        key, e.g. a text feature; or the ``(name, width)`` list of its ``groups`` attribute, e.g.
        the sequence feature's candidate and history). Widths sum to :meth:`fused_width`."""
        groups = [(n, c.embedding_dim) for c in embedding.embedding_bag_configs() for n in c.feature_names]
        if num_dense:
            groups.append(("dense", dense_layers[-1] if dense_layers else num_dense))
        for name, m in (feature_modules or {}).items():
            # A module may name several groups of its output (the sequence feature: candidate, history).
            groups += list(getattr(m, "groups", None) or [(name, int(m.out_features))])
        return groups

    def fuse(self, sparse: KeyedJaggedTensor, dense: torch.Tensor) -> torch.Tensor:
        """The fused representation every task reads.

        Args:
            sparse (KeyedJaggedTensor): ids of every sparse feature.
            dense (torch.Tensor): dense features ``[B, num_dense]``.

        Returns:
            torch.Tensor: ``[B, fused_width]``: the pooled embeddings (after ``id_dropout``) in
            ``embedding_names`` order, the dense MLP's output, then each feature module's output.
        """
        parts: List[torch.Tensor] = []
        # An EBC without tables (every id feature in a feature module, e.g. all vocab: zch) is not run.
        if self.embedding_names:
            pooled = self.embedding(sparse)
            if self.id_dropout is not None:
                pooled = self.id_dropout(pooled, sparse)
            pooled_dict = pooled.to_dict()
            parts = [pooled_dict[name] for name in self.embedding_names]
        if self.num_dense:
            parts.append(self.dense_arch(dense))
        for module in self.feature_modules.values():
            parts.append(module(sparse))
        return torch.cat(parts, dim=1)

    def forward(self, batch: Batch) -> ModelOutput:
        """Fuses the features, runs the backbone and the towers.

        Args:
            batch (Batch): ``sparse`` KJT and ``dense`` ``[B, num_dense]`` (labels are not read).

        Returns:
            ModelOutput: ``logits`` ``[B]`` per task, ``shared`` ``[B, fused_width]``, and the
            backbone's gate weights.
        """
        shared = self.fuse(batch.sparse, batch.dense)
        # Scoring batches are large (data.eval_batch_size) to spread the per-batch cost of the
        # data path; the dense layers run faster on row blocks whose activations stay in cache.
        if self.training or shared.shape[0] <= self.score_rows:
            return self.head(shared)
        parts = [self.head(rows) for rows in shared.split(self.score_rows)]
        logits = {name: torch.cat([p.logits[name] for p in parts]) for name in parts[0].logits}
        gates = [torch.cat([p.gates[i] for p in parts]) for i in range(len(parts[0].gates))]
        return ModelOutput(logits, shared, gates)

    def head(self, shared: torch.Tensor) -> ModelOutput:
        """The backbone and the towers on a fused representation ``[B, fused_width]`` (the part of
        :meth:`forward` after :meth:`fuse`)."""
        task_inputs, gates = self.backbone.forward_with_gates(shared)
        return ModelOutput(self.towers(self.attend(shared, task_inputs)), shared, gates)

    def attend(self, shared: torch.Tensor, task_inputs: List[torch.Tensor]) -> List[torch.Tensor]:
        """The towers' inputs: each task's backbone output, with its feature-attention output
        concatenated when ``feature_attention`` is set (``[B, out + d]``); else ``task_inputs``.

        Args:
            shared (torch.Tensor): the fused representation ``[B, fused_width]``.
            task_inputs (List[torch.Tensor]): the backbone's ``[B, out]`` per task.
        """
        if self.feature_attention is None:
            return task_inputs
        # Indexed, not unpacked: TorchRec's pipeline tracer keeps the module a leaf (a proxy).
        attended = self.feature_attention(shared)
        return [torch.cat([task_inputs[i], attended[:, i]], dim=1) for i in range(len(task_inputs))]
