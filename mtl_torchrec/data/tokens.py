"""Raw values as id tokens: one canonical text form whatever the file format and column type, and
the stable hash that ``hash`` vocabularies, splits and group ids use.

Ids are matched in one canonical text form (:func:`canonical_tokens`): the integer 5, the float 5.0
and the cells ``"5"`` and ``"5.0"`` are all the token ``"5"``, so a CSV-trained run maps a Parquet
file of int, float or nullable-int ids the same way.

Example::

    canonical_tokens(np.array([5, 5.0, "5.0", None], dtype=object))   # ["5", "5", "5", None]
    value_tokens(pd.Series([" 1 ", "0"]))                              # ["1", "0"]
    stable_hash(np.array(["a", "b"], dtype=object))                    # uint64, the same in every process
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd

# pandas' hash_array uses SipHash with this fixed key, so ids are identical across processes and
# machines (Python's own str hash is salted per process).
_HASH_KEY = "mtl_torchrec_v1_"


def stable_hash(values: np.ndarray) -> np.ndarray:
    """A deterministic uint64 hash of each value's string form."""
    return pd.util.hash_array(np.asarray(values, dtype=object).astype(str), hash_key=_HASH_KEY, categorize=True)


def missing_values(values: np.ndarray) -> np.ndarray:
    """Where ``values`` are missing (``pd.isna``: None, NaN, pd.NA, NaT), as a bool array."""
    return np.asarray(pd.isna(values), dtype=bool)


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
