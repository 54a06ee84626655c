"""Cells of a chunk as values: missing cells and numbers, the one reading every kind of feature and
label uses (a missing cell is NaN/None/pd.NA or the empty string; an unparseable or infinite number
is a bad value whatever a feature's missing-value rule says)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mtl_torchrec.data.spec.bad_rows import BadRows


def is_missing(values: np.ndarray) -> np.ndarray:
    """Missing cells (bool array): NaN/None/pd.NA, and the empty string in text (object) columns."""
    miss = np.asarray(pd.isna(values), dtype=bool)
    if values.dtype == object:
        # Compared only where present: pd.NA == "" is NA, whose truth value is an error.
        present = np.flatnonzero(~miss)
        miss[present] = values[present] == ""
    return miss


def parse_numbers(frame: pd.DataFrame, column: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values, missing mask, unparseable-or-infinite mask) of ``column``; missing and
    unparseable cells are NaN in the values, infinite ones stay infinite (so a missing value, NaN
    in a Parquet float column included, follows ``fill_missing``, while ``inf`` or ``1e999`` is a bad
    value whatever ``fill_missing`` says)."""
    raw = frame[column].to_numpy()
    missing = is_missing(raw)
    num = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(num) & ~missing
    bad |= np.isinf(num)
    return num, missing, bad


def checked_numbers(frame: pd.DataFrame, column: str, bad: "BadRows", missing_hint: Optional[str]) -> np.ndarray:
    """float64 values of a numeric feature's ``column`` (NaN where missing), the one rule of every
    numeric kind: an unparseable or infinite number is flagged on ``bad``, and so is a missing one
    when ``missing_hint`` says what to set instead (``"set fill_missing: mean or zero"``)."""
    num, missing, unparseable = parse_numbers(frame, column)
    raw = frame[column].to_numpy()
    bad.flag(unparseable, column, "not a finite number", raw)
    if missing_hint is not None:
        bad.flag(missing, column, f"missing value ({missing_hint})", raw)
    return num
