"""Cells of a chunk as values: missing cells and numbers, the one reading every kind of feature and
label uses (a missing cell is NaN/None/pd.NA or the empty string; an unparseable or infinite number
is a bad value whatever a feature's missing-value rule says)."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import pandas as pd


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
