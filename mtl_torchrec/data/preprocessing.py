"""Fitted preprocessing: id vocabularies and dense normalisers, fitted on the training split and
saved with the run as plain JSON (no pickle), so evaluation and serving map raw values exactly as
training did.

Id vocabularies come in four explicit modes (a spec must name one; nothing is hashed silently):

* ``build``: tokens seen at least ``min_count`` times in the training split, by descending count;
* ``file``: tokens listed one per line in a vocabulary file;
* ``hash``: a stable 64-bit hash of the token, modulo the bucket count;
* ``identity``: the raw value already is an integer id in ``[0, num_embeddings)``.

Index 0 is reserved in the first three modes for out-of-vocabulary and missing values, so the
embedding table has ``len(tokens) + 1`` (or ``hash_buckets``) rows.

Example::

    vocab = Vocabulary.build({"a": 5, "b": 1, "c": 3}, min_count=2)   # tokens ["a", "c"]
    vocab.lookup(np.array(["c", "zzz", None], dtype=object))          # [2, 0, 0]
    norm = Normalizer("standard"); norm.update(np.array([1.0, 3.0])); norm.transform(np.array([2.0]))
    pre = Preprocessing(vocabs={"item": vocab}, normalizers={"price": norm})
    pre.save(run_dir / "preprocessing"); Preprocessing.load(run_dir / "preprocessing")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.core.io import write_json

FORMAT_VERSION = 1
FILE_NAME = "preprocessing.json"
# pandas' hash_array uses SipHash with this fixed key, so ids are identical across processes and
# machines (Python's own str hash is salted per process).
_HASH_KEY = "mtl_torchrec_v1_"


def stable_hash(values: np.ndarray) -> np.ndarray:
    """A deterministic uint64 hash of each value's string form."""
    return pd.util.hash_array(np.asarray(values, dtype=object).astype(str), hash_key=_HASH_KEY, categorize=True)


def _missing(values: np.ndarray) -> np.ndarray:
    return pd.isna(values)


@dataclass
class Vocabulary:
    """Maps raw tokens (as strings) to embedding rows; see the module docstring for the modes."""

    mode: str
    tokens: List[str] = field(default_factory=list)
    hash_buckets: int = 0
    num_embeddings_: int = 0
    min_count: int = 1
    _index: Optional[pd.Index] = field(default=None, init=False, repr=False, compare=False)

    @staticmethod
    def build(counts: Dict[str, int], min_count: int = 1) -> "Vocabulary":
        """A ``build`` vocabulary: tokens counted at least ``min_count`` times, by descending count (ties by token)."""
        kept = [(t, c) for t, c in counts.items() if c >= min_count]
        # Descending count, ties by token: deterministic regardless of chunk order.
        kept.sort(key=lambda tc: (-tc[1], tc[0]))
        return Vocabulary("build", tokens=[t for t, _ in kept], min_count=min_count)

    @staticmethod
    def from_file(path: Union[str, Path]) -> "Vocabulary":
        """A ``file`` vocabulary: one token per line (blank lines skipped).

        Raises FileNotFoundError when the file is missing, DataError when a token appears twice.
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {p}")
        tokens = [line.rstrip("\r\n") for line in p.read_text(encoding="utf-8").splitlines()]
        tokens = [t for t in tokens if t != ""]
        dup = pd.Index(tokens).duplicated()
        if dup.any():
            line = int(np.flatnonzero(dup)[0]) + 1
            raise DataError(f"{p}: token '{tokens[line - 1]}' appears twice (second time near line {line})")
        return Vocabulary("file", tokens=tokens)

    @staticmethod
    def hashed(buckets: int) -> "Vocabulary":
        """A ``hash`` vocabulary of ``buckets`` rows (row 0 for missing values); DataError when ``buckets < 2``."""
        if buckets < 2:
            raise DataError("hash_buckets must be at least 2 (bucket 0 is reserved for missing values)")
        return Vocabulary("hash", hash_buckets=buckets)

    @staticmethod
    def identity(num_embeddings: int) -> "Vocabulary":
        """An ``identity`` vocabulary of ``num_embeddings`` rows; DataError when ``num_embeddings < 1``."""
        if num_embeddings < 1:
            raise DataError("identity ids need num_embeddings >= 1")
        return Vocabulary("identity", num_embeddings_=num_embeddings)

    @property
    def num_embeddings(self) -> int:
        """Rows of the embedding table: ``len(tokens) + 1``, ``hash_buckets``, or the identity size."""
        if self.mode == "hash":
            return self.hash_buckets
        if self.mode == "identity":
            return self.num_embeddings_
        return len(self.tokens) + 1

    def _lookup_index(self) -> pd.Index:
        if self._index is None:
            self._index = pd.Index(self.tokens, dtype=object)
        return self._index

    def lookup(self, values: np.ndarray) -> np.ndarray:
        """Ids for raw values; 0 for out-of-vocabulary and missing (build/file/hash modes).

        ``identity`` mode expects integers and returns -1 where a value is missing, not an integer
        or out of range, for the caller to report as a bad row.
        """
        values = np.asarray(values, dtype=object)
        miss = _missing(values)
        if self.mode in ("build", "file"):
            ids = self._lookup_index().get_indexer(values.astype(str)) + 1
            ids[miss] = 0
            return ids.astype(np.int64)
        if self.mode == "hash":
            ids = (stable_hash(values) % np.uint64(self.hash_buckets - 1)).astype(np.int64) + 1
            ids[miss] = 0
            return ids
        if self.mode == "identity":
            num = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
            ok = np.isfinite(num) & (num == np.round(num)) & (num >= 0) & (num < self.num_embeddings_)
            return np.where(ok, num, -1).astype(np.int64)
        raise DataError(f"unknown vocabulary mode '{self.mode}'")

    def to_json(self) -> Dict[str, Any]:
        """The JSON form saved in ``preprocessing.json``."""
        out: Dict[str, Any] = {"mode": self.mode, "num_embeddings": self.num_embeddings}
        if self.mode in ("build", "file"):
            out["tokens"] = self.tokens
        if self.mode == "build":
            out["min_count"] = self.min_count
        if self.mode == "hash":
            out["hash_buckets"] = self.hash_buckets
        return out

    @staticmethod
    def from_json(d: Dict[str, Any]) -> "Vocabulary":
        """The vocabulary saved by :meth:`to_json`; DataError for an unknown mode."""
        mode = d["mode"]
        if mode in ("build", "file"):
            return Vocabulary(mode, tokens=list(d["tokens"]), min_count=int(d.get("min_count", 1)))
        if mode == "hash":
            return Vocabulary.hashed(int(d["hash_buckets"]))
        if mode == "identity":
            return Vocabulary.identity(int(d["num_embeddings"]))
        raise DataError(f"{FILE_NAME}: unknown vocabulary mode '{mode}'")


@dataclass
class Normalizer:
    """Streaming-fitted dense normalisation.

    ``standard``: (x - mean) / std; ``log_standard``: the same on log1p(max(x, 0)) for heavy-tailed
    counts; ``minmax``: (x - min) / (max - min); ``none``: unchanged. Missing values are filled
    with the fitted mean (``fill_missing: mean``) or 0 after normalisation (``zero``), or are an
    error.
    """

    method: str = "standard"
    fill_missing: str = "error"
    count: int = 0
    # Running mean and sum of squared deviations (Chan et al.'s parallel update): a sum of squares
    # loses the spread of large values (timestamps near 1.7e9 with spread 30 gave std 22.6).
    running_mean: float = 0.0
    m2: float = 0.0
    minimum: float = float("inf")
    maximum: float = float("-inf")

    def _pre(self, x: np.ndarray) -> np.ndarray:
        return np.log1p(np.maximum(x, 0.0)) if self.method == "log_standard" else x

    def update(self, x: np.ndarray) -> None:
        """Adds a chunk of values (NaN/inf skipped). Raises DataError when the values are too large
        for their spread to be represented in float64."""
        x = np.asarray(x, dtype=np.float64)
        x = self._pre(x[np.isfinite(x)])
        if len(x) == 0:
            return
        n = int(len(x))
        with np.errstate(over="ignore", invalid="ignore"):
            chunk_mean = float(x.mean())
            chunk_m2 = float(((x - chunk_mean) ** 2).sum())
            total = self.count + n
            delta = chunk_mean - self.running_mean
            mean = self.running_mean + delta * n / total
            m2 = self.m2 + chunk_m2 + delta * delta * self.count * n / total
        if not (np.isfinite(mean) and np.isfinite(m2)):
            raise DataError(
                f"values up to {float(np.abs(x).max()):.3g} are too large to normalise (their spread overflows "
                f"float64); scale the column or use normalize: log_standard"
            )
        self.count, self.running_mean, self.m2 = total, mean, m2
        self.minimum = min(self.minimum, float(x.min()))
        self.maximum = max(self.maximum, float(x.max()))

    @property
    def mean(self) -> float:
        """The fitted mean (of ``log1p`` values for ``log_standard``); 0.0 before any value."""
        return self.running_mean if self.count else 0.0

    @property
    def std(self) -> float:
        """Population standard deviation; 1.0 when undefined or zero (a constant column stays put)."""
        if self.count < 2:
            return 1.0
        var = self.m2 / self.count
        return var**0.5 if var > 0 else 1.0

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Normalised ``x`` as float32; NaN filled as ``fill_missing`` says (kept with ``error``)."""
        x = self._pre(np.asarray(x, dtype=np.float64))
        if self.method in ("standard", "log_standard"):
            y = (x - self.mean) / self.std
        elif self.method == "minmax":
            span = self.maximum - self.minimum
            y = (x - self.minimum) / (span if span > 0 else 1.0)
        else:
            y = x
        if self.fill_missing in ("mean", "zero"):
            # The mean maps to 0 under standardisation; for minmax/none fill with the mapped mean.
            fill = 0.0 if self.fill_missing == "zero" else float(self.transform_value(self.mean))
            y = np.where(np.isnan(y), fill, y)
        return y.astype(np.float32)

    def transform_value(self, v: float) -> float:
        """One value normalised as :meth:`transform` does, without ``log1p`` or filling."""
        if self.method in ("standard", "log_standard"):
            return (v - self.mean) / self.std
        if self.method == "minmax":
            span = self.maximum - self.minimum
            return (v - self.minimum) / (span if span > 0 else 1.0)
        return v

    def to_json(self) -> Dict[str, Any]:
        """The JSON form saved in ``preprocessing.json``."""
        return {
            "method": self.method, "fill_missing": self.fill_missing, "count": self.count,
            "mean": self.mean, "std": self.std, "m2": self.m2,
            "min": self.minimum if self.count else None, "max": self.maximum if self.count else None,
        }

    @staticmethod
    def from_json(d: Dict[str, Any]) -> "Normalizer":
        """The normaliser saved by :meth:`to_json` (also the older ``total``/``total_sq`` form)."""
        count = int(d["count"])
        if "m2" in d:
            mean, m2 = float(d["mean"]), float(d["m2"])
        else:
            # Saved before the stable update: the same mean and spread from the old sums.
            mean = float(d["total"]) / count if count else 0.0
            m2 = max(float(d["total_sq"]) - count * mean * mean, 0.0)
        return Normalizer(
            method=d["method"], fill_missing=d["fill_missing"], count=count, running_mean=mean, m2=m2,
            minimum=float("inf") if d["min"] is None else float(d["min"]),
            maximum=float("-inf") if d["max"] is None else float(d["max"]),
        )


@dataclass
class Preprocessing:
    """Everything fitted on the training split, keyed by feature name, plus data statistics
    (rows per split, skipped bad rows by reason) for reports."""

    vocabs: Dict[str, Vocabulary] = field(default_factory=dict)
    normalizers: Dict[str, Normalizer] = field(default_factory=dict)
    stats: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        """The JSON form saved in ``preprocessing.json``, with its ``format_version``."""
        return {
            "format_version": FORMAT_VERSION,
            "vocabs": {k: v.to_json() for k, v in self.vocabs.items()},
            "normalizers": {k: n.to_json() for k, n in self.normalizers.items()},
            "stats": self.stats,
        }

    @staticmethod
    def from_json(d: Dict[str, Any]) -> "Preprocessing":
        """The preprocessing saved by :meth:`to_json`; DataError for another format version."""
        if d.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{FILE_NAME}: unsupported format_version {d.get('format_version')!r}")
        return Preprocessing(
            vocabs={k: Vocabulary.from_json(v) for k, v in d["vocabs"].items()},
            normalizers={k: Normalizer.from_json(v) for k, v in d["normalizers"].items()},
            stats=dict(d.get("stats", {})),
        )

    def save(self, directory: Union[str, Path]) -> Path:
        """Writes ``<directory>/preprocessing.json`` atomically and returns its path."""
        path = Path(directory) / FILE_NAME
        write_json(path, self.to_json())
        return path

    @staticmethod
    def load(directory: Union[str, Path]) -> "Preprocessing":
        """Reads ``<directory>/preprocessing.json``.

        Raises FileNotFoundError when it is missing, DataError for an unsupported format version or
        vocabulary mode.
        """
        path = Path(directory) / FILE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no fitted preprocessing at {path}")
        return Preprocessing.from_json(json.loads(path.read_text(encoding="utf-8")))
