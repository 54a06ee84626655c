"""Id vocabularies: raw tokens to embedding rows, in four explicit modes (a spec must name one;
nothing is hashed silently):

* ``build``: tokens seen at least ``min_count`` times in the training split, by descending count;
* ``file``: tokens listed one per line in a vocabulary file;
* ``hash``: a stable 64-bit hash of the token, modulo the bucket count;
* ``identity``: the raw value already is an integer id in ``[0, num_embeddings)``;
* ``zch``: a stable 63-bit key of the token (:func:`managed_keys`), which the model maps to one of
  ``num_embeddings`` rows itself (TorchRec's managed-collision modules, ``vocab: zch``).

Index 0 is reserved in the first three modes for out-of-vocabulary and missing values, so the
embedding table has ``len(tokens) + 1`` (or ``hash_buckets``) rows. Tokens are in the canonical
form of :mod:`mtl_torchrec.data.tokens`; vocabularies saved before this form existed are read with
their tokens put in it (same ids); a hash vocabulary saved before keeps hashing the plain ``str()``
text, as it was trained.

Example::

    vocab = Vocabulary.build({"a": 5, "b": 1, "c": 3}, min_count=2)   # tokens ["a", "c"]
    vocab.lookup(np.array(["c", "zzz", None], dtype=object))          # [2, 0, 0]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.data.tokens import CANONICAL, LEGACY_STR, canonical_tokens, missing_values, stable_hash

# The file a vocabulary's JSON form is saved in (named in errors about it).
SAVED_IN = "preprocessing.json"


@dataclass
class Vocabulary:
    """Maps raw tokens to embedding rows; see the module docstring for the modes.

    ``token_form`` is how values become tokens before matching or hashing: ``canonical``
    (:func:`canonical_tokens`; every vocabulary built now) or ``str`` (plain ``str(value)``: hash
    vocabularies saved before the canonical form, and build/file ones whose saved tokens would
    collide in it), so that a saved run maps its data exactly as it was trained.
    """

    mode: str
    tokens: List[str] = field(default_factory=list)
    hash_buckets: int = 0
    num_embeddings_: int = 0
    min_count: int = 1
    token_form: str = CANONICAL
    _index: Optional[pd.Index] = field(default=None, init=False, repr=False, compare=False)

    @staticmethod
    def build(counts: Dict[str, int], min_count: int = 1) -> "Vocabulary":
        """A ``build`` vocabulary: tokens counted at least ``min_count`` times (``counts``: canonical
        token -> count), by descending count (ties by token)."""
        kept = [(t, c) for t, c in counts.items() if c >= min_count]
        # Descending count, ties by token: deterministic regardless of chunk order.
        kept.sort(key=lambda tc: (-tc[1], tc[0]))
        return Vocabulary("build", tokens=[t for t, _ in kept], min_count=min_count)

    @staticmethod
    def from_file(path: Union[str, Path]) -> "Vocabulary":
        """A ``file`` vocabulary: one token per line (blank lines skipped), in canonical form.

        Raises FileNotFoundError when the file is missing, DataError naming the line of a token
        listed twice (``5`` and ``5.0`` are the same token).
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {p}")
        lines = [line.rstrip("\r\n") for line in p.read_text(encoding="utf-8").splitlines()]
        numbered = [(i + 1, t) for i, t in enumerate(lines) if t != ""]
        tokens = list(canonical_tokens(np.array([t for _, t in numbered], dtype=object)))
        dup = pd.Index(tokens).duplicated()
        if dup.any():
            k = int(np.flatnonzero(dup)[0])
            line, text = numbered[k]
            first = numbered[tokens.index(tokens[k])][0]
            raise DataError(f"{p} line {line}: token '{text}' appears twice (first on line {first})")
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

    @staticmethod
    def managed(num_embeddings: int) -> "Vocabulary":
        """A ``zch`` vocabulary: tokens to 63-bit keys (:func:`managed_keys`) that the model maps to
        ``num_embeddings`` rows; DataError when ``num_embeddings < 2``."""
        if num_embeddings < 2:
            raise DataError("zch.size must be at least 2 (the last row is shared by keys not in the table)")
        return Vocabulary("zch", num_embeddings_=num_embeddings)

    @property
    def num_embeddings(self) -> int:
        """Rows of the embedding table: ``len(tokens) + 1``, ``hash_buckets``, or the identity / zch size."""
        if self.mode == "hash":
            return self.hash_buckets
        if self.mode in ("identity", "zch"):
            return self.num_embeddings_
        return len(self.tokens) + 1

    def _lookup_index(self) -> pd.Index:
        if self._index is None:
            self._index = pd.Index(self.tokens, dtype=object)
        return self._index

    def keys(self, values: Union[pd.Series, np.ndarray]) -> np.ndarray:
        """``values`` in this vocabulary's token form (object array, None where missing)."""
        if self.token_form == CANONICAL:
            return canonical_tokens(values)
        values = np.asarray(values, dtype=object)
        return np.where(missing_values(values), None, values.astype(str)).astype(object)

    def lookup(self, values: Union[pd.Series, np.ndarray]) -> np.ndarray:
        """Ids for raw values (any type; see :func:`canonical_tokens`); 0 for out-of-vocabulary
        and missing (build/file/hash modes).

        ``identity`` mode expects integers and returns -1 where a value is missing, not an integer
        or out of range, for the caller to report as a bad row.
        """
        if self.mode == "identity":
            num = pd.to_numeric(pd.Series(np.asarray(values, dtype=object)), errors="coerce")
            num = num.to_numpy(dtype=np.float64, na_value=np.nan)
            ok = np.isfinite(num) & (num == np.round(num)) & (num >= 0) & (num < self.num_embeddings_)
            return np.where(ok, num, -1).astype(np.int64)
        return self.lookup_keys(self.keys(values))

    def lookup_keys(self, keys: np.ndarray) -> np.ndarray:
        """Ids for tokens already in this vocabulary's form (:meth:`keys`; None = missing -> 0);
        build/file/hash modes only."""
        miss = np.asarray(pd.isna(keys), dtype=bool)
        if self.mode in ("build", "file"):
            ids = self._lookup_index().get_indexer(keys) + 1
            ids[miss] = 0
            return ids.astype(np.int64)
        if self.mode == "hash":
            ids = (stable_hash(keys) % np.uint64(self.hash_buckets - 1)).astype(np.int64) + 1
            ids[miss] = 0
            return ids
        if self.mode == "zch":
            return managed_keys(keys)
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
        if self.mode != "identity":
            out["token_form"] = self.token_form
        return out

    @staticmethod
    def from_json(d: Dict[str, Any]) -> "Vocabulary":
        """The vocabulary saved by :meth:`to_json`; DataError for an unknown mode or token form.

        One saved without ``token_form`` (before the canonical form) keeps its ids: build/file
        tokens are put in canonical form unless two of them would then coincide (then the ``str``
        form stays), hash vocabularies keep hashing ``str`` text.
        """
        mode = d["mode"]
        form = d.get("token_form")
        if form not in (None, CANONICAL, LEGACY_STR):
            raise DataError(f"{SAVED_IN}: unknown token_form '{form}'")
        if mode in ("build", "file"):
            tokens = [str(t) for t in d["tokens"]]
            if form is None:
                canon = list(canonical_tokens(np.array(tokens, dtype=object)))
                clash = None in canon or len(set(canon)) != len(canon)
                tokens, form = (tokens, LEGACY_STR) if clash else (canon, CANONICAL)
            return Vocabulary(mode, tokens=tokens, min_count=int(d.get("min_count", 1)), token_form=form)
        if mode == "hash":
            vocab = Vocabulary.hashed(int(d["hash_buckets"]))
            vocab.token_form = form or LEGACY_STR
            return vocab
        if mode == "identity":
            return Vocabulary.identity(int(d["num_embeddings"]))
        if mode == "zch":
            return Vocabulary.managed(int(d["num_embeddings"]))
        raise DataError(f"{SAVED_IN}: unknown vocabulary mode '{mode}'")


# The largest key: int64's maximum (2**63 - 1) marks an empty slot in TorchRec's MCH module, so keys
# stay below it.
MAX_MANAGED_KEY = 2**63 - 2


def managed_keys(tokens: np.ndarray) -> np.ndarray:
    """The ``zch`` key of each canonical token: ``1 + stable_hash(token) % MAX_MANAGED_KEY`` (int64 in
    ``[1, 2**63 - 2]``, the same in every process), 0 where the token is missing (a key like any
    other: missing values get a row of their own once frequent enough). Two tokens share a key with
    probability about ``n**2 / 2**64`` for ``n`` distinct tokens (one in ten thousand for 10**7).

    Example::

        managed_keys(np.array(["a", None], dtype=object))   # [<63-bit key>, 0]
    """
    miss = np.asarray(pd.isna(tokens), dtype=bool)
    keys = (stable_hash(tokens) % np.uint64(MAX_MANAGED_KEY)).astype(np.int64) + 1
    keys[miss] = 0
    return keys
