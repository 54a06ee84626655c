"""Batches from a :class:`ColumnTable`, split across ranks and DataLoader workers.

Every rank must run the same number of steps (sharded embeddings use collectives), so:

* training (``shuffle=True``): each epoch is a seeded permutation cut into global batches of
  ``batch_size * world_size`` rows; rank ``r`` takes the ``r``-th slice of each. The tail that
  does not fill a global batch (fewer than ``batch_size * world_size`` rows) waits for the next
  epoch's permutation.
* evaluation (``shuffle=False``): rows are split into contiguous per-rank shards; the last
  batches are padded with rows whose masks are 0, so nothing is dropped and nothing counted twice.
  With ``interleave=True`` rank ``r`` takes instead the ``r``-th ``batch_size`` rows of every
  ``batch_size * world_size`` consecutive rows: which rows a rank scores, and in which batches,
  then does not depend on the rows that follow, so a split read chunk by chunk is batched exactly
  as the whole split at once (:func:`interleaved_rows`).

Inside a rank, worker ``w`` of ``W`` builds batches ``w, w+W, ...``; the DataLoader's round-robin
over workers then yields them in order, so the stream is identical for any ``num_workers``.

Example::

    ds = BatchDataset(table, schema, batch_size=512, shuffle=True, seed=0, rank=0, world_size=1)
    loader = make_loader(ds, num_workers=2)
    for batch in loader: ...
"""

from __future__ import annotations

import math
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.label_kinds import LABEL_KINDS
from mtl_torchrec.data.schema import ColumnTable, Schema


class BatchDataset(IterableDataset):
    """This rank's batches of ``table`` for one epoch, built inside DataLoader workers (see the module docstring).

    Args:
        table: the rows to batch.
        schema: how columns become a :class:`Batch`.
        batch_size: rows per batch on each rank; ValueError unless > 0.
        shuffle: training order (seeded permutation, whole global batches) or evaluation order
            (contiguous per-rank shards, padded last batch).
        seed: seed of the permutation, combined with ``epoch``.
        rank: this rank, in ``[0, world_size)``.
        world_size: number of ranks.
        epoch: the epoch whose permutation is used.
        skip_batches: leading batches of the epoch not produced (resuming mid-epoch).
        interleave: evaluation order only: each rank takes its ``batch_size`` rows of every
            ``batch_size * world_size`` rows instead of a contiguous shard (see the module docstring).
    """

    def __init__(
        self,
        table: ColumnTable,
        schema: Schema,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        skip_batches: int = 0,
        interleave: bool = False,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.table = table
        self.schema = schema
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = epoch
        # Resume support: the first ``skip_batches`` batches of this epoch are not produced.
        self.skip_batches = skip_batches
        self.interleave = interleave

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Selects the epoch (its permutation when shuffling) and how many of its first batches to skip."""
        self.epoch = epoch
        self.skip_batches = skip_batches

    def __len__(self) -> int:
        return self.num_batches() - self.skip_batches

    def num_batches(self) -> int:
        """Batches per epoch on each rank, before ``skip_batches`` (the same on every rank)."""
        n = len(self.table)
        if self.shuffle:
            return n // (self.batch_size * self.world_size)
        return math.ceil(math.ceil(n / self.world_size) / self.batch_size) if n else 0

    def eval_row_range(self) -> Tuple[int, int]:
        """``[start, stop)`` of the rows this rank evaluates (contiguous shards, no shuffling)."""
        n = len(self.table)
        per_rank = math.ceil(n / self.world_size)
        start = min(n, self.rank * per_rank)
        return start, min(n, start + per_rank)

    def real_rows(self) -> List[int]:
        """The rows of each of this rank's batches that are not padding, in batch order (after
        ``skip_batches``); the real rows come first in every batch."""
        return [int((rows >= 0).sum()) for rows in self._rank_batches()[self.skip_batches:]]

    def _rank_batches(self) -> List[np.ndarray]:
        """Row indices of each of this rank's batches, padding marked by -1."""
        n = len(self.table)
        if self.interleave and not self.shuffle:
            out = []
            for b in range(self.num_batches()):
                lo = min(n, (b * self.world_size + self.rank) * self.batch_size)
                rows = np.arange(lo, min(n, lo + self.batch_size), dtype=np.int64)
                out.append(np.concatenate([rows, -np.ones(self.batch_size - len(rows), dtype=np.int64)]))
            return out
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            perm = rng.permutation(n)
            g = self.batch_size * self.world_size
            lo = self.rank * self.batch_size
            return [perm[b * g + lo : b * g + lo + self.batch_size] for b in range(self.num_batches())]
        rows = np.arange(*self.eval_row_range())
        out = []
        for b in range(self.num_batches()):
            chunk = rows[b * self.batch_size : (b + 1) * self.batch_size]
            pad = self.batch_size - len(chunk) if b == self.num_batches() - 1 else 0
            out.append(np.concatenate([chunk, -np.ones(pad, dtype=np.int64)]))
        return out

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batches = self._rank_batches()
        for b in range(self.skip_batches + worker, len(batches), num_workers):
            rows = batches[b]
            real = rows[rows >= 0]
            pad = len(rows) - len(real)
            if len(real) == 0:
                # A rank with no rows left still takes part in the step with an all-padding batch.
                real, pad = np.zeros(1, dtype=np.int64), len(rows) - 1
                yield _all_padding(self.table.take(real), self.schema, pad)
                continue
            yield Batch.from_table(self.table.take(real), self.schema, pad_rows=pad)


def interleaved_rows(num_rows: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """The rows rank ``rank`` scores, in order, when ``num_rows`` rows are batched with
    ``interleave=True``: its ``batch_size`` rows of every ``batch_size * world_size`` consecutive
    rows (int64, ``[0, num_rows)``). Concatenating each rank's scored rows at these positions puts
    them back in row order."""
    g = batch_size * world_size
    starts = np.arange(rank * batch_size, num_rows, g, dtype=np.int64)
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.minimum(starts + batch_size, num_rows)
    lengths = ends - starts
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def _all_padding(one_row: ColumnTable, schema: Schema, pad: int) -> Batch:
    batch = Batch.from_table(one_row, schema, pad_rows=pad)
    for t in batch.masks:
        batch.masks[t] = torch.zeros_like(batch.masks[t])
    return batch


def make_loader(dataset: BatchDataset, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader that passes the dataset's batches through (``batch_size=None``), prefetching with workers."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def split_rows(n: int, val_fraction: float, test_fraction: float, seed: int) -> "dict[str, np.ndarray]":
    """Deterministic random train/val/test row split."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    return {
        "test": np.sort(perm[:n_test]),
        "val": np.sort(perm[n_test : n_test + n_val]),
        "train": np.sort(perm[n_test + n_val :]),
    }


def describe(table: ColumnTable, schema: Schema, name: Optional[str] = None) -> str:
    """One line per split for the console: row count and each task's labels as its label kind
    describes them (rate; mean/std)."""
    parts = [f"{name or 'data'}: {len(table)} rows"]
    for lab in schema.labels:
        y = np.asarray(table[lab.column_name], dtype=np.float64)
        has = ~np.isnan(y)
        if not has.any():
            parts.append(f"{lab.task}: no labels")
        else:
            parts.append(f"{lab.task} {LABEL_KINDS.get(lab.type).describe(y[has])} ({has.sum()} labelled)")
    return ", ".join(parts)
