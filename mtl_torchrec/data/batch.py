"""The training/evaluation batch that flows through TorchRec pipelines.

Example::

    batch = Batch.from_table(table, schema)      # ColumnTable -> Batch
    batch = batch.to(torch.device("cpu"))
    batch.sparse["user_id"].values()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from mtl_torchrec.data.schema import ColumnTable, Jagged, Schema


@dataclass
class Batch(Pipelineable):
    """Sparse ids, dense features, per-task labels and label masks, and group ids.

    ``masks[task]`` is 1.0 where the row has a label for ``task``; losses and metrics weight rows
    by it, which is also how padding rows (mask 0 everywhere) are kept out of evaluation.
    ``weights[task]`` (optional, ``[B]``) weights each row's loss for ``task``: a row of weight 2
    counts like two copies of it. Absent (``None``, or no entry for a task) means weight 1.

    Shapes: ``sparse`` a KJT over the schema's sparse features; ``dense`` ``[B, num_dense]``
    float32; ``labels[task]`` and ``masks[task]`` ``[B]`` float32 (label 0 where masked);
    ``group`` ``[B]`` int64 (zeros when the schema has no group column).
    """

    sparse: KeyedJaggedTensor
    dense: torch.Tensor
    labels: Dict[str, torch.Tensor]
    masks: Dict[str, torch.Tensor]
    group: torch.Tensor
    weights: Optional[Dict[str, torch.Tensor]] = None

    @property
    def batch_size(self) -> int:
        """Rows in the batch, padding rows included."""
        return int(self.dense.shape[0])

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor on ``device`` (TorchRec's ``Pipelineable`` interface)."""
        return Batch(
            sparse=self.sparse.to(device=device, non_blocking=non_blocking),
            dense=self.dense.to(device=device, non_blocking=non_blocking),
            labels={k: v.to(device=device, non_blocking=non_blocking) for k, v in self.labels.items()},
            masks={k: v.to(device=device, non_blocking=non_blocking) for k, v in self.masks.items()},
            group=self.group.to(device=device, non_blocking=non_blocking),
            weights=None
            if self.weights is None
            else {k: v.to(device=device, non_blocking=non_blocking) for k, v in self.weights.items()},
        )

    def record_stream(self, stream: torch.Stream) -> None:
        """Marks every tensor as used by ``stream`` (``Pipelineable``, for pipelines' copy streams)."""
        self.sparse.record_stream(stream)
        self.dense.record_stream(stream)
        self.group.record_stream(stream)
        for t in [*self.labels.values(), *self.masks.values(), *(self.weights or {}).values()]:
            t.record_stream(stream)

    def pin_memory(self) -> "Batch":
        """A copy with every tensor in pinned host memory."""
        return Batch(
            sparse=self.sparse.pin_memory(),
            dense=self.dense.pin_memory(),
            labels={k: v.pin_memory() for k, v in self.labels.items()},
            masks={k: v.pin_memory() for k, v in self.masks.items()},
            group=self.group.pin_memory(),
            weights=None if self.weights is None else {k: v.pin_memory() for k, v in self.weights.items()},
        )

    @staticmethod
    def from_table(table: ColumnTable, schema: Schema, pad_rows: int = 0) -> "Batch":
        """Builds a batch from all rows of ``table``.

        ``pad_rows`` appends copies of the first row with every mask 0, so that all ranks can run
        the same number of equally shaped evaluation steps without counting the padding.
        ``weights`` holds the tasks whose label has a weight column (:class:`LabelSpec` ``weight``;
        0 on padding rows), None when no task has one.
        """
        n = len(table)
        if pad_rows:
            table = table.take(np.concatenate([np.arange(n), np.zeros(pad_rows, dtype=np.int64)]))
        total = n + pad_rows
        keys: List[str] = []
        values: List[np.ndarray] = []
        lengths: List[np.ndarray] = []
        for f in schema.sparse:
            col = table[f.name]
            keys.append(f.name)
            if isinstance(col, Jagged):
                values.append(col.values)
                lengths.append(col.lengths)
            else:
                values.append(np.asarray(col, dtype=np.int64))
                lengths.append(np.ones(total, dtype=np.int64))
        sparse = KeyedJaggedTensor.from_lengths_sync(
            keys=keys,
            values=torch.from_numpy(np.concatenate(values).astype(np.int64, copy=False)),
            lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32, copy=False)),
        )
        if schema.dense:
            dense = torch.from_numpy(
                np.stack([np.asarray(table[d], dtype=np.float32) for d in schema.dense_names], axis=1)
            )
        else:
            dense = torch.zeros(total, 0)
        labels: Dict[str, torch.Tensor] = {}
        masks: Dict[str, torch.Tensor] = {}
        weights: Dict[str, torch.Tensor] = {}
        valid = np.ones(total, dtype=bool)
        valid[n:] = False
        for lab in schema.labels:
            y = np.asarray(table[lab.column_name], dtype=np.float32)
            present = ~np.isnan(y) & valid
            labels[lab.task] = torch.from_numpy(np.where(present, y, 0.0).astype(np.float32))
            masks[lab.task] = torch.from_numpy(present.astype(np.float32))
            if lab.weight:
                w = np.asarray(table[lab.weight], dtype=np.float32)
                weights[lab.task] = torch.from_numpy(np.where(valid, w, 0.0).astype(np.float32))
        group = (
            torch.from_numpy(np.asarray(table[schema.group], dtype=np.int64))
            if schema.group
            else torch.zeros(total, dtype=torch.int64)
        )
        return Batch(sparse=sparse, dense=dense, labels=labels, masks=masks, group=group, weights=weights or None)
