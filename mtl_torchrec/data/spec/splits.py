"""The split of every row: from per-split files, a split column, or a deterministic seeded hash
(of a key column, so that all rows of a key share a split, or of the row position)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mtl_torchrec.data.spec.bad_rows import BadRows
from mtl_torchrec.data.spec.data_spec import DataSpec
from mtl_torchrec.data.spec.reading import Chunk
from mtl_torchrec.data.spec.sections import ALL_SPLIT
from mtl_torchrec.data.tokens import stable_hash, value_tokens


def assign_splits(spec: DataSpec, chunk: Chunk, bad: BadRows) -> np.ndarray:
    """The split name of each row of ``chunk`` (object array).

    Rows of a val/test file keep the file's split; rows of a train file (or of any file when there
    is no per-split file) follow ``spec.split``; without a split rule every row is in
    :data:`ALL_SPLIT`. A split-column value outside the configured values is flagged on ``bad``.
    """
    n = len(chunk.frame)
    sp = spec.split
    if chunk.file_split is not None and (chunk.file_split != "train" or sp is None):
        return np.full(n, chunk.file_split, dtype=object)
    if sp is None:
        return np.full(n, ALL_SPLIT, dtype=object)
    if sp.column:
        raw = chunk.frame[sp.column].to_numpy(dtype=object)
        # The cells 1, 1.0 and " 1" all match a configured "1", whatever the file format.
        text = value_tokens(chunk.frame[sp.column])
        out = np.full(n, None, dtype=object)
        for name, values in (("train", sp.train_values), ("val", sp.val_values), ("test", sp.test_values)):
            out[pd.Series(text).isin(value_tokens(np.array(values, dtype=object))).to_numpy()] = name
        bad.flag(pd.isna(out), sp.column, "split value is not one of the configured train/val/test values", raw)
        return out
    if sp.by:
        h = stable_hash(chunk.frame[sp.by].to_numpy(dtype=object))
    else:
        h = stable_hash(np.arange(chunk.global_start, chunk.global_start + n))
    u = seeded_uniform(h, sp.seed)
    return np.where(u < sp.test_fraction, "test",
                    np.where(u < sp.test_fraction + sp.val_fraction, "val", "train")).astype(object)


def seeded_uniform(h: np.ndarray, seed: int) -> np.ndarray:
    """A number in [0, 1) per uint64 hash: splitmix64 (Steele et al., 2014) of ``h xor seed``, top
    53 bits; a different ``seed`` reshuffles the split."""
    with np.errstate(over="ignore"):
        z = h.astype(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)
