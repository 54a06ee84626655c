"""Checks of behaviour-sequence columns on the training split, made while a fitted bundle is built.

A history (``vocab: shared`` with a separator) is only useful when its ids are the candidate's ids:
written in another form (``"m12"`` against ``"12"``) they all fall in the out-of-vocabulary row and
training runs on without a word; a history that is empty on every training row carries nothing; a
history holding the row's own candidate may have the row's own interaction in it (leakage).

* unknown ids: refused (DataError naming both columns and a few unmatched values) when the
  history's share of unknown ids on the training split is above :data:`HISTORY_UNKNOWN_FLOOR` and
  far above the candidate's own share (:func:`~mtl_torchrec.data.preprocessing.far_above`, the rule
  ``evaluate`` warns by), unless the history column sets ``allow_unknown_ids: true``;
* every training row empty: refused for every behaviour sequence (:attr:`SparseColumn.ordered`);
* the row's own candidate in its history: a warning with the share of training rows, never a
  refusal (repeat interactions are real; a history that includes the impression itself leaks).

The counts come from the converted ids (unknown = row 0 of a ``build``/``file`` vocabulary, the
candidate's id equal to a history id), so they cost no second reading of the raw cells.

Example::

    counts = SequenceCounts(spec)
    counts.add(converted, keys, train_rows)   # per chunk: table columns, vocabulary keys, train row indices
    stats = counts.check()                    # raises DataError; feature -> counts with "warnings"
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.data.preprocessing import far_above
from mtl_torchrec.data.schema import Jagged
from mtl_torchrec.data.spec.view import SpecView

# A history whose training ids are mostly unknown (and far more than the candidate's) is refused.
HISTORY_UNKNOWN_FLOOR = 0.5
# Unmatched history values (and candidate values) shown in the refusal.
EXAMPLES = 5


def _examples(keys: Optional[np.ndarray], where: np.ndarray, into: List[str]) -> None:
    """Adds distinct ``keys[where]`` (a boolean mask) to ``into`` until it holds :data:`EXAMPLES`."""
    if keys is None or len(into) >= EXAMPLES:
        return
    for key in pd.unique(keys[np.flatnonzero(where)[:1000]]):
        if len(into) >= EXAMPLES:
            break
        if key is not None and str(key) not in into:
            into.append(str(key))


class _Counts:
    """Training-split counts of one behaviour-sequence column ``column`` (``key``: its ``sparse[i]``;
    ``owner``: the ``shared_with`` candidate, None for a column with a vocabulary of its own)."""

    def __init__(self, column: Any, key: str, owner: Optional[Any], unknown_ids: bool) -> None:
        self.column, self.key, self.owner = column, key, owner
        # Whether id 0 is the unknown row (build/file vocabularies): only then unknown ids are counted.
        self.unknown_ids = unknown_ids
        self.rows = self.empty_rows = self.rows_with_candidate = 0
        self.tokens = self.unknown = self.candidate_tokens = self.candidate_unknown = 0
        self.unmatched: List[str] = []
        self.candidate_values: List[str] = []

    def add(self, converted: Dict[str, Any], keys: Dict[str, np.ndarray], train: np.ndarray) -> None:
        """Counts the training rows ``train`` (indices) of one converted chunk: ``converted`` the table
        columns, ``keys`` each build/file feature's tokens (flat, None where missing)."""
        history = converted[self.column.feature]
        assert isinstance(history, Jagged)
        lengths = history.lengths[train]
        self.rows += len(train)
        self.empty_rows += int(np.sum(lengths == 0))
        if self.owner is None or not len(train):
            return
        # Flat positions of the training rows' ids.
        in_train = np.zeros(len(history.lengths), dtype=bool)
        in_train[train] = True
        flat_train = np.repeat(in_train, history.lengths)
        ids = history.values
        owned = converted[self.owner.feature]
        # A multi-valued owner (ids shared between two lists): its ids count, no row has one candidate.
        candidate = owned.values if isinstance(owned, Jagged) else np.asarray(owned)
        own_train = np.repeat(in_train, owned.lengths) if isinstance(owned, Jagged) else in_train
        if self.unknown_ids:
            hist_keys, own_keys = keys.get(self.column.feature), keys.get(self.owner.feature)
            present = flat_train & ~np.asarray(pd.isna(hist_keys), dtype=bool) if hist_keys is not None else flat_train
            unknown = present & (ids == 0)
            self.tokens += int(present.sum())
            self.unknown += int(unknown.sum())
            _examples(hist_keys, unknown, self.unmatched)
            own_present = own_train & ~np.asarray(pd.isna(own_keys), dtype=bool) if own_keys is not None else own_train
            self.candidate_tokens += int(own_present.sum())
            self.candidate_unknown += int((own_present & (candidate == 0)).sum())
            _examples(own_keys, own_present & (candidate != 0), self.candidate_values)
        if not isinstance(owned, Jagged):
            # The row's own candidate among its history ids: the same id in the shared vocabulary (row 0,
            # unknown or missing, matches nothing where it is the unknown row).
            row_of = np.repeat(np.arange(len(history.lengths)), history.lengths)
            same = flat_train & (ids == candidate[row_of])
            if self.unknown_ids:
                same &= ids != 0
            self.rows_with_candidate += int(np.count_nonzero(np.bincount(row_of[same], minlength=len(lengths))))

    def check(self) -> Dict[str, Any]:
        """Raises DataError for a history empty on every training row, or mostly of unknown ids (see the
        module docstring); returns this column's statistics (with ``warnings``)."""
        c = self.column
        if self.rows and self.empty_rows == self.rows:
            raise DataError(
                f"data spec: column '{c.column}' ({self.key}): the behaviour sequence is empty on all {self.rows} "
                f"training rows, so the model would learn nothing from it; fill the column (ids joined by "
                f"{c.separator!r}, oldest first) or leave it out of the spec"
            )
        stats: Dict[str, Any] = {"rows": self.rows, "empty_rows": self.empty_rows, "warnings": []}
        if self.owner is None:
            return stats
        owner = self.owner.feature
        stats["rows_with_candidate"] = self.rows_with_candidate
        if self.unknown_ids:
            rate = self.unknown / self.tokens if self.tokens else 0.0
            own_rate = self.candidate_unknown / self.candidate_tokens if self.candidate_tokens else 0.0
            stats.update({"tokens": self.tokens, "unknown": self.unknown, "unknown_rate": rate,
                          "candidate_unknown_rate": own_rate})
            if rate > HISTORY_UNKNOWN_FLOOR and far_above(rate, own_rate) and not c.allow_unknown_ids:
                raise DataError(
                    f"data spec: column '{c.column}' ({self.key}, vocab: shared, shared_with: {owner}): {rate:.1%} of "
                    f"its ids on the training split ({self.unknown} of {self.tokens}) are unknown to the vocabulary of "
                    f"'{owner}', against {own_rate:.1%} of the ids of '{owner}' itself, so the history would read the "
                    f"out-of-vocabulary row. Unmatched history values: {self.unmatched}; values of '{owner}': "
                    f"{self.candidate_values}. Write the history's ids in the form of '{owner}', or set "
                    f"{self.key}.allow_unknown_ids: true if this is intended"
                )
        if self.rows_with_candidate:
            share = self.rows_with_candidate / self.rows
            stats["warnings"].append(
                f"data spec: column '{c.column}' ({self.key}): {share:.1%} of the training rows "
                f"({self.rows_with_candidate} of {self.rows}) have their own '{owner}' id in the history. Expected for "
                f"repeat interactions; if the history includes the row's own interaction, it leaks the label (a "
                f"history must end before the row's event)"
            )
        return stats


class SequenceCounts:
    """The training-split counts of every behaviour-sequence column of ``spec`` (see the module
    docstring); the candidate of a ``vocab: shared`` history is its ``shared_with`` feature (its
    own unknown ids are counted when its vocabulary is ``build`` or ``file``)."""

    def __init__(self, spec: SpecView) -> None:
        self.columns: List[_Counts] = []
        for i, s in enumerate(spec.sparse):
            if not s.ordered:
                continue
            owner = spec.sparse_by_feature(str(s.shared_with)) if s.vocab == "shared" else None
            unknown_ids = owner is not None and owner.vocab in ("build", "file")
            self.columns.append(_Counts(s, f"sparse[{i}]", owner, unknown_ids))

    def add(self, converted: Dict[str, Any], keys: Dict[str, np.ndarray], train: np.ndarray) -> None:
        """Counts the training rows ``train`` (row indices) of one converted chunk (see :meth:`_Counts.add`)."""
        for c in self.columns:
            c.add(converted, keys, train)

    def check(self) -> Dict[str, Dict[str, Any]]:
        """Raises DataError (see the module docstring); returns feature -> statistics (``rows``,
        ``empty_rows``; for a history sharing a candidate's vocabulary ``rows_with_candidate``, and with a
        build/file vocabulary ``tokens``, ``unknown``, ``unknown_rate``, ``candidate_unknown_rate``), each
        with its ``warnings`` (a list of lines)."""
        return {c.column.feature: c.check() for c in self.columns}
