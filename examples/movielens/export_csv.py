"""Writes the MovieLens-100K multi-task protocol as plain files, as a user with their own data would have them.

``impressions.csv`` holds one row per impression with the raw MovieLens ids (``user_id``,
``item_id`` = the movie id), the user's age bucket, gender, occupation and zip digit, the three labels
and the time split; ``item_first_rated`` (the split of the item's first rating: a column for a report slice, not a
feature); ``items.csv`` is the item table (``item_id``, ``text``: "Title. Year: 1995.
Genres: ..."); ``spec.yaml`` reads them with ``vocab: build`` on every id column, the item table as a
text feature keyed by the raw movie id, and a cold/warm slice of items unseen in training. The
impressions are exactly those of ``data.source: movielens`` for the same seed (see
``mtl_torchrec/data/movielens.py``).

MovieLens-100K itself is not shipped (its licence forbids redistribution): download ``ml-100k.zip`` from
https://grouplens.org/datasets/movielens/100k/, unzip it and pass its folder ``ml-100k/`` as ``--path``
(default: ``data.movielens.path``'s, ``../shared/data/ml-100k``).

    python examples/movielens/export_csv.py --out data/ml100k_csv --path data/ml-100k
    python examples/movielens/export_csv.py --out data/ml100k_csv --history-length 50   # + item_history, spec_history.yaml
    python examples/movielens/run.py --config examples/movielens/spec_config.yaml data.spec=data/ml100k_csv/spec.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import DataError
from mtl_torchrec.core.io import atomic_write_text
from mtl_torchrec.data.config import MovieLensConfig
from mtl_torchrec.data.movielens import ML100K_FILES, download_hint, load_movielens
from mtl_torchrec.launch.args import doc_summary

SPEC = """\
# MovieLens-100K impressions as plain files (examples/movielens/export_csv.py); see docs/text.md.
files: impressions.csv
split: {column: split}
sparse:
  - {column: user_id, vocab: build}
  - {column: item_id, vocab: build}
  - {column: user_age, vocab: build}
  - {column: user_gender, vocab: build}
  - {column: user_occupation, vocab: build}
  - {column: user_zip, vocab: build}
labels:
  - {task: click, column: click, type: binary}
  - {task: conversion, column: conversion, type: binary}
  - {task: rating, column: rating, type: regression, maskable: true}
group: user_id
text:
  # The item table's text of each row's raw movie id: movies first rated after the test cut are out of
  # the id vocabulary (never seen in training) and still read their own text.
  - {key: item_id, items: {file: items.csv}, columns: [text]}
slices:
  # Cold by data: the item's raw key never appears in the training split.
  - {column: item_id, cold_warm: true}
  # The split in which the item was first rated: "test" is the protocol's cold-start items (first rated
  # after the test cut), a subset of item_id=cold; "val" items are cold too (unseen in training).
  - {column: item_first_rated, top: 3}
"""


# spec_history.yaml: spec.yaml plus the behaviour sequence (--history-length), after the item column.
HISTORY_AFTER = "  - {column: item_id, vocab: build}\n"


def history_column(length: int) -> str:
    """The spec entry of item_history, whose cells hold at most ``length`` ids (``max_length`` says so)."""
    return (
        "  # The user's movies rated strictly before the impression, oldest first (most recent last), in\n"
        "  # item_id's vocabulary and table (a movie unseen in training is row 0 in both).\n"
        f"  - {{column: item_history, separator: \"|\", vocab: shared, shared_with: item_id, max_length: {length}}}\n"
    )


def _joined(history: Any) -> List[str]:
    """Each row's raw movie ids (1-based), oldest first, joined by '|' ("" for an empty history)."""
    ids = (history.values + 1).astype(str)
    return ["|".join(ids[a:b]) for a, b in zip(history.offsets[:-1], history.offsets[1:])]


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--out", required=True,
                   help="folder for impressions.csv, items.csv and spec.yaml (and spec_history.yaml)")
    p.add_argument("--path", default=MovieLensConfig().path,
                   help="the ml-100k folder unzipped from ml-100k.zip (https://grouplens.org/datasets/movielens/100k/)")
    p.add_argument("--seed", type=int, default=0, help="seed of the negative sampling (data.movielens.seed)")
    p.add_argument("--history-length", type=int, default=0,
                   help="> 0: also write the column item_history (the user's movies rated strictly before the "
                        "impression, oldest first, at most this many most recent, '|'-joined raw ids) and "
                        "spec_history.yaml, which reads it as a behaviour sequence sharing item_id's vocabulary")
    args = p.parse_args(argv)
    if args.history_length < 0:
        p.error("--history-length: must be >= 0")
    if not Path(args.path).is_dir():
        p.error(f"--path: {args.path} (here {Path(args.path).resolve()}) is not a folder. {download_hint('--path')}")
    missing = [name for name in ML100K_FILES if not (Path(args.path) / name).is_file()]
    if missing:
        p.error(f"--path: {args.path} (here {Path(args.path).resolve()}) lacks {', '.join(missing)} of the GroupLens "
                f"ml-100k layout. {download_hint('--path')}")
    try:
        bundle = load_movielens(MovieLensConfig(path=args.path, seed=args.seed, history_length=args.history_length))
    except DataError as e:
        p.error(str(e))
    frames = []
    first_split = np.full(bundle.schema.sparse[1].num_embeddings, "", dtype=object)
    for split in ("test", "val", "train"):
        # Positives only: negatives are sampled, not rated.
        t = bundle.splits[split]
        first_split[t["item_id"][t["click"] == 1]] = split
    for split in ("train", "val", "test"):
        t = bundle.splits[split]
        frames.append(pd.DataFrame({
            "user_id": t["user_id"] + 1,
            "item_id": t["item_id"] + 1,
            "user_age": t["user_age"],
            "user_gender": np.where(t["user_gender"] == 1, "F", "M"),
            "user_occupation": t["user_occupation"],
            "user_zip": t["user_zip"],
            "click": t["click"].astype(int),
            "conversion": t["conversion"].astype(int),
            "rating": t["rating"],
            "item_first_rated": first_split[t["item_id"]],
            "split": split,
            **({"item_history": _joined(t["item_history"])} if args.history_length else {}),
        }))
    texts = bundle.texts["item_text"].texts[1:]
    items = pd.DataFrame({"item_id": np.arange(1, len(texts) + 1), "text": [t or "" for t in texts]})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sum(len(f) for f in frames)
    written = [
        (out / "impressions.csv", pd.concat(frames).to_csv(index=False), f"{rows} impressions"),
        (out / "items.csv", items.to_csv(index=False), f"{len(items)} items"),
        (out / "spec.yaml", SPEC, "the data spec"),
    ]
    if args.history_length:
        history_spec = SPEC.replace(HISTORY_AFTER, HISTORY_AFTER + history_column(args.history_length), 1)
        written.append((out / "spec_history.yaml", history_spec,
                        f"the data spec with item_history, a behaviour sequence of up to {args.history_length} ids"))
    for path, text, what in written:
        atomic_write_text(path, text)
        print(f"wrote {path}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
