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

Ids are matched in one canonical text form whatever the file format and column type
(:func:`canonical_tokens`): the integer 5, the float 5.0 and the cells ``"5"`` and ``"5.0"`` are all
the token ``"5"``, so a CSV-trained run maps a Parquet file of int, float or nullable-int ids the
same way. Vocabularies saved before this form existed are read with their tokens put in it (same
ids); a hash vocabulary saved before keeps hashing the plain ``str()`` text, as it was trained.

Example::

    vocab = Vocabulary.build({"a": 5, "b": 1, "c": 3}, min_count=2)   # tokens ["a", "c"]
    vocab.lookup(np.array(["c", "zzz", None], dtype=object))          # [2, 0, 0]
    norm = Normalizer("standard"); norm.update(np.array([1.0, 3.0])); norm.transform(np.array([2.0]))
    pre = Preprocessing(vocabs={"item": vocab}, normalizers={"price": norm})
    pre.save(run_dir / "preprocessing"); Preprocessing.load(run_dir / "preprocessing")
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.core.io import write_json
from mtl_torchrec.data.texts import TextRows

FORMAT_VERSION = 1
FILE_NAME = "preprocessing.json"
# pandas' hash_array uses SipHash with this fixed key, so ids are identical across processes and
# machines (Python's own str hash is salted per process).
_HASH_KEY = "mtl_torchrec_v1_"


# A share of unknown ids is far above a reference share beyond max(2 x, x + 0.2) of it: the rule of
# evaluate's warning (a split against training) and of the data spec's history check (the history
# against its candidate).
OOV_FACTOR = 2.0
OOV_MARGIN = 0.2


def far_above(rate: float, reference: float) -> bool:
    """Whether the unknown-id share ``rate`` is far above ``reference`` (both in [0, 1]): above
    ``max(OOV_FACTOR * reference, reference + OOV_MARGIN)``."""
    return rate > max(OOV_FACTOR * reference, reference + OOV_MARGIN)


def oov_warnings(stats: Dict[str, Any], split: str, text_features: Sequence[str] = ()) -> List[str]:
    """One warning per sparse feature whose share of unknown ids (``stats["oov"][split]``) is far
    above the training split's (``stats["train_oov"]``): above ``max(2 x train, train + 0.2)``. Ids in
    another form than in training (``"u12"`` vs ``"12"``) all fall in the out-of-vocabulary row
    without a word otherwise. Features without a reference rate (runs saved before it) are skipped.
    For ``text_features`` any unknown key or text is a warning: such rows read the "no text" vector
    (the run's text table was encoded from the training run's data). The one rule of ``evaluate``'s and
    ``predict``'s warnings about unknown ids."""
    reference = stats.get("train_oov") or {}
    out: List[str] = []
    for feature, c in (stats.get("oov") or {}).get(split, {}).items():
        if feature in text_features:
            if c.get("unknown"):
                out.append(f"text feature '{feature}': {c['unknown']} of {c['tokens']} rows in split '{split}' have a "
                           f"text or key the run did not encode in training; they read the \"no text\" vector")
            continue
        base, rate = reference.get(feature), c.get("rate")
        if base is None or rate is None or not far_above(rate, base):
            continue
        out.append(f"sparse feature '{feature}': {rate:.1%} of its ids in split '{split}' ({c['unknown']} of "
                   f"{c['tokens']}) are unknown to the run's vocabulary, against {base:.1%} in training; check that "
                   f"the ids have the same form as in the training data")
    return out


def skipped_rows_warnings(by_reason: Mapping[str, int]) -> List[str]:
    """A warning when rows were dropped under ``on_bad_rows: skip`` (``by_reason``: reason -> rows, as
    ``stats["skipped_by_reason"]``): the rows are gone from every metric and prediction, which the
    user must hear of, not only find in a statistics file. The one rule of train's, ``evaluate``'s
    and ``predict``'s warnings (and errors) about skipped rows; empty when nothing was skipped."""
    n = int(sum(by_reason.values()))
    if not n:
        return []
    # Most frequent reason first.
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])))
    return [f"{n} bad row{'s' if n != 1 else ''} skipped while reading the files (on_bad_rows: skip; counted over "
            f"every row read, all splits); by reason: {reasons}"]


def skipped_rows_suffix(by_reason: Mapping[str, int]) -> str:
    """``"; <the skipped-rows warning>"``, or ``""`` when nothing was skipped: the tail of a "no rows"
    error, so that a split or a file left empty by ``on_bad_rows: skip`` says why."""
    return "".join(f"; {w}" for w in skipped_rows_warnings(by_reason))


def stable_hash(values: np.ndarray) -> np.ndarray:
    """A deterministic uint64 hash of each value's string form."""
    return pd.util.hash_array(np.asarray(values, dtype=object).astype(str), hash_key=_HASH_KEY, categorize=True)


def _missing(values: np.ndarray) -> np.ndarray:
    return pd.isna(values)


# pandas writes a whole-number float as "5.0", and a float (or nullable-int) column holds the id 5
# as 5.0: such text is the integer's token.
_WHOLE_NUMBER = r"^([+-]?[0-9]+)\.0+$"
_WHOLE_NUMBER_RE = re.compile(_WHOLE_NUMBER)
# Floats up to 2**53 are exact integers, so the int64 text is the integer written in the file.
_EXACT_FLOAT = 2.0**53
# Token form of vocabularies: "canonical" (canonical_tokens) or "str" (plain str(value), how
# hash vocabularies saved before the canonical form were trained).
CANONICAL = "canonical"
LEGACY_STR = "str"


def _canonical_text(text: str) -> Optional[str]:
    text = _WHOLE_NUMBER_RE.sub(r"\1", text)
    return text if text != "" else None


def _canonical_scalar(v: Any) -> Optional[str]:
    if v is None or (not isinstance(v, (str, bytes)) and pd.isna(v)):
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "backslashreplace")
    if isinstance(v, (float, np.floating)):
        v = repr(float(v))
    return _canonical_text(str(v))


def _canonical_strings(s: pd.Series) -> pd.Series:
    """Whole-number text ("5.0") to its integer ("5") in a string Series; only cells with a dot are looked at."""
    dot = s.str.contains(".", regex=False, na=False).to_numpy(dtype=bool)
    if dot.any():
        s = s.copy()
        s[dot] = s[dot].str.replace(_WHOLE_NUMBER, r"\1", regex=True)
    return s


def canonical_tokens(values: Union[pd.Series, np.ndarray, Sequence[Any]]) -> np.ndarray:
    """The id token of each value, as one text form whatever the file format and column type.

    Returns an object array of str, None where the value is missing (None, NaN, pd.NA, NaT or the
    empty string). Integers and floats holding whole numbers are their decimal integer (5, 5.0,
    ``"5"`` and ``"5.0"`` -> ``"5"``; ``-3.00`` -> ``"-3"``); other floats their shortest ``repr``
    (``0.5`` -> ``"0.5"``); bytes are decoded as UTF-8; text is kept as it is apart from the
    whole-number rule (no stripping, leading zeros kept: ``"007"`` stays). For any value ``v``,
    ``canonical(v) == canonical(str(v))``, which is what lets vocabularies saved as ``str`` text be
    read in this form.
    """
    s = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=object), dtype=object)
    s = s.reset_index(drop=True)
    out = np.full(len(s), None, dtype=object)
    present = ~s.isna().to_numpy(dtype=bool)
    if not present.any():
        return out
    dtype = s.dtype
    if pd.api.types.is_bool_dtype(dtype):
        out[present] = np.where(s[present].to_numpy(dtype=bool), "True", "False")
    elif pd.api.types.is_integer_dtype(dtype):
        out[present] = s[present].to_numpy().astype(str).astype(object)
    elif pd.api.types.is_float_dtype(dtype):
        x = s.to_numpy(dtype=np.float64, na_value=np.nan)
        exact = present & np.isfinite(x) & (x == np.trunc(x)) & (np.abs(x) < _EXACT_FLOAT)
        out[exact] = x[exact].astype(np.int64).astype(str).astype(object)
        for i in np.flatnonzero(present & ~exact):
            out[i] = _canonical_scalar(x[i])
    elif pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
        text = _canonical_strings(s if present.all() else s[present]).to_numpy(dtype=object)
        out[present] = text
    else:
        vals = s.to_numpy(dtype=object)[present]
        kind = pd.api.types.infer_dtype(vals, skipna=True)
        if kind == "string":
            dot = np.fromiter(("." in v for v in vals), dtype=bool, count=len(vals))
            vals[dot] = [_canonical_text(v) for v in vals[dot]]
            out[present] = vals
        elif kind == "integer":
            out[present] = np.array([str(int(v)) for v in vals], dtype=object)
        else:
            out[present] = np.array([_canonical_scalar(v) for v in vals], dtype=object)
    out[out == ""] = None
    return out


def value_tokens(values: Union[pd.Series, np.ndarray]) -> np.ndarray:
    """Cell values as :func:`canonical_tokens` of their text with surrounding spaces stripped, for
    matching against configured value lists (label ``positive``/``negative``, split values): the
    cells ``1``, ``1.0`` and ``" 1 "`` all match ``"1"``. None where a value is missing."""
    s = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=object), dtype=object)
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(object)
    if pd.api.types.is_string_dtype(s.dtype) or pd.api.types.is_object_dtype(s.dtype):
        # Text is stripped before the whole-number rule (" 5.0 " -> "5"); other values have no spaces.
        s = s.str.strip() if pd.api.types.infer_dtype(s, skipna=True) == "string" else s.map(
            lambda v: v.strip() if isinstance(v, str) else v)
    return canonical_tokens(s)


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

    def keys(self, values: Union[pd.Series, np.ndarray]) -> np.ndarray:
        """``values`` in this vocabulary's token form (object array, None where missing)."""
        if self.token_form == CANONICAL:
            return canonical_tokens(values)
        values = np.asarray(values, dtype=object)
        return np.where(_missing(values), None, values.astype(str)).astype(object)

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
            raise DataError(f"{FILE_NAME}: unknown token_form '{form}'")
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
        raise DataError(f"{FILE_NAME}: unknown vocabulary mode '{mode}'")


@dataclass
class Normalizer:
    """Streaming-fitted dense normalisation.

    ``standard``: (x - mean) / std; ``log_standard``: the same on log1p(max(x, 0)) for heavy-tailed
    counts (a data spec refuses negative values there unless ``clip_negative: true``); ``minmax``: (x - min) / (max - min); ``none``: unchanged. Missing values are filled
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
    # Text features' table rows by raw key or text hash (see data/texts.py), frozen once saved.
    texts: Dict[str, TextRows] = field(default_factory=dict)
    # Raw keys (canonical tokens) of the training split, per cold/warm slice column: "cold" means not
    # among them, whatever the column's vocabulary mode.
    seen: Dict[str, List[str]] = field(default_factory=dict)
    # The data spec's feature layout when fitted (DataSpec.feature_layout); empty for built-in
    # sources and runs saved before it was recorded.
    features: List[List[str]] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        """The JSON form saved in ``preprocessing.json``, with its ``format_version``."""
        return {
            "format_version": FORMAT_VERSION,
            "vocabs": {k: v.to_json() for k, v in self.vocabs.items()},
            "normalizers": {k: n.to_json() for k, n in self.normalizers.items()},
            "texts": {k: t.to_json() for k, t in self.texts.items()},
            "seen": {k: sorted(v) for k, v in self.seen.items()},
            "features": self.features,
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
            texts={k: TextRows.from_json(v) for k, v in d.get("texts", {}).items()},
            seen={k: [str(x) for x in v] for k, v in d.get("seen", {}).items()},
            features=[[str(x) for x in f] for f in d.get("features", [])],
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
