"""Checks of behaviour-sequence columns on the training split, made while preprocessing is fitted.

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

Example::

    counts = SequenceCounts(spec)
    for frame in training_frames:             # good training rows, chunk by chunk
        counts.add(frame)
    warnings = counts.check(vocabs)           # raises DataError; stats in counts.stats()
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.data.preprocessing import Vocabulary, canonical_tokens, far_above
from mtl_torchrec.data.spec.data_spec import DataSpec
from mtl_torchrec.data.spec.rows import sparse_tokens
from mtl_torchrec.data.spec.sections import SparseColumn

# A history whose training ids are mostly unknown (and far more than the candidate's) is refused.
HISTORY_UNKNOWN_FLOOR = 0.5
# Unmatched history values (and candidate values) shown in the refusal.
EXAMPLES = 5


class _Counts:
    """Training-split counts of one behaviour-sequence column ``column`` (``key``: its ``sparse[i]``)."""

    def __init__(self, column: SparseColumn, key: str, owner: Optional[SparseColumn]) -> None:
        self.column, self.key, self.owner = column, key, owner
        self.rows = 0
        self.empty_rows = 0
        self.rows_with_candidate = 0
        self.tokens = pd.Series(dtype=np.int64)
        self.candidate_tokens = pd.Series(dtype=np.int64)

    def add(self, frame: pd.DataFrame) -> None:
        """Counts one chunk's good training rows ``frame``."""
        tokens, lengths = sparse_tokens(self.column, frame)
        assert lengths is not None
        self.rows += len(lengths)
        self.empty_rows += int(np.sum(lengths == 0))
        if self.owner is None:
            return
        keys = canonical_tokens(tokens)
        self.tokens = self.tokens.add(pd.Series(keys, dtype=object).value_counts(dropna=True), fill_value=0)
        own, own_lengths = sparse_tokens(self.owner, frame)
        own_keys = canonical_tokens(own)
        self.candidate_tokens = self.candidate_tokens.add(pd.Series(own_keys, dtype=object).value_counts(dropna=True),
                                                          fill_value=0)
        if own_lengths is None and len(keys):
            # The row's own candidate among its history ids (both in token form).
            row_of = np.repeat(np.arange(len(lengths)), lengths)
            same = (keys == own_keys[row_of]) & ~pd.isna(keys)
            self.rows_with_candidate += int(np.count_nonzero(np.bincount(row_of[same], minlength=len(lengths))))

    def _unknown(self, counts: pd.Series, vocab: Vocabulary) -> pd.Series:
        """The entries of ``counts`` (token -> count) that ``vocab`` does not know."""
        if counts.empty:
            return counts
        ids = vocab.lookup_keys(np.asarray(counts.index, dtype=object))
        return counts[ids == 0]

    def check(self, vocab: Optional[Vocabulary]) -> Dict[str, Any]:
        """Raises DataError for a history empty on every training row, or mostly of unknown ids (see the
        module docstring); returns this column's statistics (with ``warnings``)."""
        c = self.column
        if self.rows and self.empty_rows == self.rows:
            raise DataError(
                f"data spec: column '{c.column}' ({self.key}): the behaviour sequence is empty on all {self.rows} training rows, so the "
                f"model would learn nothing from it; fill the column (ids joined by {c.separator!r}, oldest first) "
                f"or leave it out of the spec"
            )
        stats: Dict[str, Any] = {"rows": self.rows, "empty_rows": self.empty_rows, "warnings": []}
        if self.owner is None or vocab is None or vocab.mode not in ("build", "file"):
            return stats
        unknown = self._unknown(self.tokens, vocab)
        own_unknown = self._unknown(self.candidate_tokens, vocab)
        n, k = int(self.tokens.sum()), int(unknown.sum())
        own_n, own_k = int(self.candidate_tokens.sum()), int(own_unknown.sum())
        rate, own_rate = (k / n if n else 0.0), (own_k / own_n if own_n else 0.0)
        stats.update({"tokens": n, "unknown": k, "unknown_rate": rate, "candidate_unknown_rate": own_rate,
                      "rows_with_candidate": self.rows_with_candidate})
        owner = self.owner.feature
        if rate > HISTORY_UNKNOWN_FLOOR and far_above(rate, own_rate) and not c.allow_unknown_ids:
            shown = [str(t) for t in unknown.sort_values(ascending=False, kind="stable").index[:EXAMPLES]]
            known = self.candidate_tokens.drop(own_unknown.index).sort_values(ascending=False, kind="stable")
            raise DataError(
                f"data spec: column '{c.column}' ({self.key}, vocab: shared, shared_with: {owner}): {rate:.1%} of its "
                f"ids on the training split ({k} of {n}) are unknown to the vocabulary of '{owner}', against "
                f"{own_rate:.1%} of the ids of '{owner}' itself, so the history would read the out-of-vocabulary row. "
                f"Unmatched history values: {shown}; values of '{owner}': {[str(t) for t in known.index[:EXAMPLES]]}. "
                f"Write the history's ids in the form of '{owner}', or set {self.key}.allow_unknown_ids: true if "
                f"this is intended"
            )
        if self.rows_with_candidate:
            share = self.rows_with_candidate / self.rows
            stats["warnings"].append(
                f"data spec: column '{c.column}' ({self.key}): {share:.1%} of the training rows ({self.rows_with_candidate} of {self.rows}) "
                f"have their own '{owner}' id in the history. Expected for repeat interactions; if the history "
                f"includes the row's own interaction, it leaks the label (a history must end before the row's event)"
            )
        return stats


class SequenceCounts:
    """The training-split counts of every behaviour-sequence column of ``spec`` (see the module
    docstring); the candidate of a ``vocab: shared`` history is its ``shared_with`` feature."""

    def __init__(self, spec: DataSpec) -> None:
        self.columns: List[_Counts] = []
        for i, s in enumerate(spec.sparse):
            if not s.ordered:
                continue
            owner = spec.sparse_by_feature(str(s.shared_with)) if s.vocab == "shared" else None
            self.columns.append(_Counts(s, f"sparse[{i}]", owner))

    def add(self, frame: pd.DataFrame) -> None:
        """Counts one chunk's good training rows ``frame``."""
        for c in self.columns:
            c.add(frame)

    def check(self, vocabs: Dict[str, Vocabulary]) -> Dict[str, Dict[str, Any]]:
        """Raises DataError (see the module docstring); returns feature -> statistics (``rows``,
        ``empty_rows``, and for a history sharing a build/file vocabulary ``tokens``, ``unknown``,
        ``unknown_rate``, ``candidate_unknown_rate``, ``rows_with_candidate``), each with its
        ``warnings`` (a list of lines)."""
        return {c.column.feature: c.check(vocabs.get(c.column.feature)) for c in self.columns}
