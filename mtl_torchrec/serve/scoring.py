"""The inference form of a trained :class:`~mtl_torchrec.model.multitask.MultiTaskModel`: plain
tensors in, per-task predictions out, with one ``forward`` that ``torch.jit.script`` compiles.

``ScoringModel(values, lengths, dense)`` builds the ``KeyedJaggedTensor`` itself (features in
:attr:`ScoringModel.keys` order, ``lengths`` feature-major as in TorchRec), so a caller (or a process
that loaded the TorchScript file with only ``torch`` and ``fbgemm_gpu`` imported) needs no TorchRec
type. Outputs are impression-space predictions as :func:`~mtl_torchrec.model.tasks.predictions`
computes them: a probability per binary task, a value per regression task, and for an ESMM task
pCTCVR under its name plus pCVR under ``<task>_given_<parent>``.

Example::

    scoring = ScoringModel.from_model(train_module.model, train_module.tasks, keys=batch.sparse.keys())
    values, lengths, dense = scoring_inputs(batch)
    out = torch.jit.script(scoring)(values, lengths, dense)    # {"click": [B], ...}
"""

# No `from __future__ import annotations`: TorchScript reads the class-level annotations below as types.

from typing import Dict, List, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mtl_torchrec.data.batch import Batch
from mtl_torchrec.model.multitask import MultiTaskModel
from mtl_torchrec.model.tasks import TaskSpec, conditional_name, is_probability
from mtl_torchrec.modules.frozen_ebc import FrozenEmbeddingBagCollection


class ScoringModel(nn.Module):
    """The model's layers (the same module objects, so the same weights) behind a tensor-only forward.

    Args:
        model: a trained, unsharded MultiTaskModel (its ``embedding`` may be replaced by a
            quantised TorchRec EBC, see :mod:`mtl_torchrec.serve.export`).
        tasks: the model's tasks.
        keys: the sparse feature names, in the order of ``values`` / ``lengths``.

    Id dropout is left out: in evaluation mode it only swaps the embeddings of ids never seen in
    training for the learned "unseen" vector, which :meth:`from_model` folds into the table rows
    (exactly the same output, see there).
    """

    # Class-level annotations: TorchScript cannot infer the type of an empty list attribute.
    keys: List[str]
    embedding_names: List[str]
    task_names: List[str]
    probability_tasks: List[str]
    value_tasks: List[str]
    esmm: List[str]
    esmm_parents: List[str]
    esmm_outputs: List[str]

    def __init__(self, model: MultiTaskModel, tasks: List[TaskSpec], keys: List[str]) -> None:
        super().__init__()
        self.keys = list(keys)
        self.embedding = model.embedding
        self.embedding_names = list(model.embedding_names)
        self.num_dense = int(model.num_dense)
        self.dense_arch = model.dense_arch
        self.feature_modules = model.feature_modules
        self.backbone = model.backbone
        # None when the model has no per-task feature attention (TorchScript drops the branch).
        self.feature_attention = model.feature_attention
        self.towers = model.towers
        self.task_names = [t.name for t in tasks]
        # Plain tasks by what their label kind predicts (a probability: sigmoid; a value: the tower's
        # output), then ESMM tasks with their parents (TorchScript needs typed lists, not TaskSpecs).
        self.probability_tasks = [t.name for t in tasks if is_probability(t) and t.esmm_parent is None]
        self.value_tasks = [t.name for t in tasks if not is_probability(t)]
        self.esmm = [t.name for t in tasks if t.esmm_parent is not None]
        self.esmm_parents = [str(t.esmm_parent) for t in tasks if t.esmm_parent is not None]
        self.esmm_outputs = [conditional_name(t) for t in tasks if t.esmm_parent is not None]

    @staticmethod
    def from_model(model: MultiTaskModel, tasks: List[TaskSpec], keys: List[str]) -> "ScoringModel":
        """The scoring form of ``model`` (evaluation mode). With id dropout, each dropped feature's
        table rows of ids never seen in training are set to the learned "unseen" vector, which is what
        the dropout returns for them in evaluation; this edits ``model``'s table in place, so pass a
        copy when the model is still used for training."""
        drops = getattr(model.id_dropout, "drops", None)
        if drops is None and model.id_dropout is not None:
            drops = [model.id_dropout]
        for drop in drops or []:
            fold_unseen_rows(model, drop.feature, drop.seen, drop.unseen)
        plain_text_tables(model)
        return ScoringModel(model, tasks, keys).eval()

    def forward(self, values: torch.Tensor, lengths: torch.Tensor, dense: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-task predictions for one batch.

        Args:
            values (torch.Tensor): int64 ids of every sparse feature, feature after feature.
            lengths (torch.Tensor): int32 ids per row, ``[len(keys) * B]`` (feature-major).
            dense (torch.Tensor): float32 ``[B, num_dense]`` (``[B, 0]`` without dense features).

        Returns:
            Dict[str, torch.Tensor]: ``[B]`` per task (and per ESMM conditional entry).
        """
        sparse = KeyedJaggedTensor(keys=self.keys, values=values, lengths=lengths)
        # The same fusion as MultiTaskModel.fuse (the parity tests hold them equal).
        parts: List[torch.Tensor] = []
        if len(self.embedding_names) > 0:
            pooled = self.embedding(sparse).to_dict()
            parts = [pooled[name] for name in self.embedding_names]
        if self.num_dense > 0:
            parts.append(self.dense_arch(dense))
        for module in self.feature_modules.values():
            parts.append(module(sparse))
        shared = torch.cat(parts, dim=1)
        task_inputs, _ = self.backbone.forward_with_gates(shared)
        # The same tower inputs as MultiTaskModel.attend.
        if self.feature_attention is not None:
            attended = self.feature_attention(shared)
            task_inputs = [torch.cat([task_inputs[i], attended[:, i]], dim=1) for i in range(len(task_inputs))]
        logits = self.towers(task_inputs)
        out: Dict[str, torch.Tensor] = {}
        for name in self.value_tasks:
            out[name] = logits[name]
        for name in self.probability_tasks:
            out[name] = torch.sigmoid(logits[name])
        for i, name in enumerate(self.esmm):
            cond = torch.sigmoid(logits[name])
            out[self.esmm_outputs[i]] = cond
            out[name] = out[self.esmm_parents[i]] * cond
        return out


def fold_unseen_rows(model: MultiTaskModel, feature: str, seen: torch.Tensor, unseen: torch.Tensor) -> int:
    """Writes the "unseen" vector into the rows of ``feature``'s table whose ids were never seen in
    training (``seen`` False); returns how many. ValueError when another feature shares the table
    (its ids would change too)."""
    for config, weight in zip(model.embedding.embedding_bag_configs(), model.embedding.embedding_bags.values()):
        if feature in config.feature_names:
            if len(config.feature_names) != 1:
                raise ValueError(f"id dropout on '{feature}', whose table is shared with {config.feature_names}: "
                                 f"the unseen rows cannot be folded into it")
            rows = ~seen.bool()
            with torch.no_grad():
                weight.weight[rows] = unseen.to(weight.weight.dtype)
            return int(rows.sum())
    raise ValueError(f"id dropout feature '{feature}' has no table")


def plain_text_tables(model: MultiTaskModel) -> int:
    """Replaces each feature module's :class:`FrozenEmbeddingBagCollection` by a plain
    ``EmbeddingBagCollection`` with the same tables and weights (in place; returns how many). Frozen
    only means "no gradient", which inference never asks for, and TorchScript cannot compile the
    frozen class's ``super().forward`` call."""
    count = 0
    for module in model.feature_modules.values():
        table = getattr(module, "table", None)
        if isinstance(table, FrozenEmbeddingBagCollection):
            plain = EmbeddingBagCollection(tables=table.embedding_bag_configs(), device=torch.device("meta"))
            plain.load_state_dict(table.state_dict(), assign=True)
            module.table = plain
            count += 1
    return count


def scoring_inputs(batch: Batch) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values, lengths, dense)`` of a :class:`Batch` for :meth:`ScoringModel.forward` (features in
    the batch's KJT key order)."""
    kjt = batch.sparse
    return kjt.values(), kjt.lengths().to(torch.int32), batch.dense
