"""Fitted preprocessing: everything fitted on the training split (id vocabularies, dense normalisers,
text rows, the state of other feature kinds), saved with the run as plain JSON (no pickle), so
evaluation and serving map raw values exactly as training did; and the warnings about unknown ids
and skipped rows that training, ``evaluate`` and ``predict`` share.

Example::

    pre = Preprocessing(vocabs={"item": Vocabulary.build({"a": 5})}, normalizers={"price": Normalizer()})
    pre.save(run_dir / "preprocessing"); Preprocessing.load(run_dir / "preprocessing")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Union

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.core.io import write_json
from mtl_torchrec.data.normalizer import Normalizer
from mtl_torchrec.data.texts import TextRows
from mtl_torchrec.data.vocabulary import Vocabulary

FORMAT_VERSION = 1
FILE_NAME = "preprocessing.json"


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
    # What other feature kinds fitted (data/spec/kinds), per feature: plain JSON that the kind reads
    # back itself, e.g. {"price_bucket": {"kind": "buckets", "boundaries": [...]}}.
    fitted: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        """The JSON form saved in ``preprocessing.json``, with its ``format_version``."""
        out = {
            "format_version": FORMAT_VERSION,
            "vocabs": {k: v.to_json() for k, v in self.vocabs.items()},
            "normalizers": {k: n.to_json() for k, n in self.normalizers.items()},
            "texts": {k: t.to_json() for k, t in self.texts.items()},
            "seen": {k: sorted(v) for k, v in self.seen.items()},
            "features": self.features,
            "stats": self.stats,
        }
        # Only when some kind fitted state here: runs without such features keep the file as it was.
        if self.fitted:
            out["fitted"] = self.fitted
        return out

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
            fitted={str(k): dict(v) for k, v in d.get("fitted", {}).items()},
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
