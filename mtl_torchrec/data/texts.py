"""Which row of a text feature's frozen table each data row reads, keyed by raw keys, never by id vocabularies.

A text feature's table rows are found from the data itself, independently of any embedding
vocabulary, so that an item unseen in training (out of the id vocabulary) still reads its own text:

* ``item``: an item table (a file of item keys and their text); row ``r + 1`` holds the table's
  ``r``-th item and a data row reads the row of its raw item key;
* ``row``: each data row's own text (a review, a query, an item text repeated on every impression);
  the rows are the distinct texts, found by a 16-byte BLAKE2b hash of the text;
* ``key``: a store encoded ahead of time and keyed by raw item key (``mtl-torchrec encode-text
  --id-column``); the rows are the distinct raw keys of the data, looked up in the store later.

Row 0 is "no text": an empty text, a missing key, or (at evaluation, with a mapping fitted in
training) a text or key the training run never saw. Growing kinds add rows while a training run
reads its data (every split: the text of a test row is an input of that row, not a label, and
the language model is frozen); a fitted mapping is frozen and only looked up.

Example::

    rows = TextRows("row")
    ids, unknown = rows.lookup(np.array([text_key("a red coat"), None, text_key("a red coat")], dtype=object))
    ids            # [1, 0, 1]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple

import numpy as np
import pandas as pd

TextKind = Literal["item", "row", "key"]
TEXT_KINDS = ("item", "row", "key")


def text_hash(text: Optional[str]) -> bytes:
    """16-byte BLAKE2b digest of a text (``None``: no text); the identity of a text everywhere."""
    data = b"\x00none" if text is None else b"\x01" + text.encode("utf-8")
    return hashlib.blake2b(data, digest_size=16).digest()


def text_key(text: Optional[str]) -> Optional[str]:
    """The row key of a ``row``-kind text: its :func:`text_hash` in hex (None for no text)."""
    return None if text is None else text_hash(text).hex()


@dataclass
class TextRows:
    """The table rows of one text feature: ``keys[r - 1]`` identifies row ``r`` (row 0: no text).

    ``frozen`` mappings only look keys up (unknown keys read row 0); others add a row for each new
    key. ``keys`` are raw item keys (kinds ``item`` and ``key``, in :func:`canonical_tokens` form)
    or text hashes (kind ``row``).
    """

    kind: TextKind
    keys: List[str] = field(default_factory=list)
    frozen: bool = False

    def __post_init__(self) -> None:
        if self.kind not in TEXT_KINDS:
            raise ValueError(f"text rows: unknown kind {self.kind!r} (known: {list(TEXT_KINDS)})")
        self._index: Dict[str, int] = {k: i + 1 for i, k in enumerate(self.keys)}
        if len(self._index) != len(self.keys):
            raise ValueError("text rows: duplicate keys")

    @property
    def num_rows(self) -> int:
        """Table rows, including row 0 ("no text")."""
        return len(self.keys) + 1

    def lookup(self, keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(rows int64, unknown bool)`` for ``keys`` (an object array, None = missing -> row 0).

        Unknown keys get a new row unless the mapping is frozen; then they read row 0 and are
        flagged in ``unknown``.
        """
        keys = np.asarray(keys, dtype=object)
        rows = np.zeros(len(keys), dtype=np.int64)
        unknown = np.zeros(len(keys), dtype=bool)
        present = np.flatnonzero(pd.notna(keys))
        if not len(present):
            return rows, unknown
        # One dictionary probe per distinct key, in first-seen order (new rows follow the data's order).
        distinct, first, inverse = np.unique(keys[present].astype(str), return_index=True, return_inverse=True)
        found = np.zeros(len(distinct), dtype=np.int64)
        for j in np.argsort(first, kind="stable"):
            k = str(distinct[j])
            r = self._index.get(k)
            if r is None and not self.frozen:
                self.keys.append(k)
                r = self._index[k] = len(self.keys)
            found[j] = r or 0
        rows[present] = found[inverse]
        unknown[present] = found[inverse] == 0
        return rows, unknown

    def frozen_copy(self) -> "TextRows":
        """The same mapping, frozen (evaluation and serving reuse a training run's rows)."""
        return TextRows(self.kind, list(self.keys), frozen=True)

    def to_json(self) -> Dict[str, Any]:
        """``{"kind", "keys"}``, saved with the run's fitted preprocessing."""
        return {"kind": self.kind, "keys": list(self.keys)}

    @staticmethod
    def from_json(d: Dict[str, Any]) -> "TextRows":
        """A frozen mapping from :meth:`to_json`."""
        return TextRows(d["kind"], [str(k) for k in d["keys"]], frozen=True)
