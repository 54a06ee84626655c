"""Writes the MovieLens-100K multi-task protocol as plain files, as a user with their own data would have them.

``impressions.csv`` holds one row per impression with the raw MovieLens ids (``user_id``,
``item_id`` = the movie id), the user's age bucket, gender, occupation and zip digit, the three labels
and the time split; ``items.csv`` is the item table (``item_id``, ``text``: "Title. Year: 1995.
Genres: ..."); ``spec.yaml`` reads them with ``vocab: build`` on every id column, the item table as a
text feature keyed by the raw movie id, and a cold/warm slice of items unseen in training. The
impressions are exactly those of ``data.source: movielens`` for the same seed (see
``mtl_torchrec/data/movielens.py``).

    python examples/movielens/export_csv.py --out data/ml100k_csv
    python examples/movielens/run.py --config examples/movielens/spec_config.yaml data.spec=data/ml100k_csv/spec.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtl_torchrec.core.io import atomic_write_text
from mtl_torchrec.data.config import MovieLensConfig
from mtl_torchrec.data.movielens import load_movielens

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
  - {column: item_id, cold_warm: true}
"""


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for impressions.csv, items.csv and spec.yaml")
    p.add_argument("--path", default=MovieLensConfig().path, help="the ml-100k folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the negative sampling (data.movielens.seed)")
    args = p.parse_args(argv)
    bundle = load_movielens(MovieLensConfig(path=args.path, seed=args.seed))
    frames = []
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
            "split": split,
        }))
    texts = bundle.texts["item_text"].texts[1:]
    items = pd.DataFrame({"item_id": np.arange(1, len(texts) + 1), "text": [t or "" for t in texts]})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "impressions.csv", pd.concat(frames).to_csv(index=False))
    atomic_write_text(out / "items.csv", items.to_csv(index=False))
    atomic_write_text(out / "spec.yaml", SPEC)
    rows = sum(len(f) for f in frames)
    print(f"{out / 'impressions.csv'}: {rows} impressions; {out / 'items.csv'}: {len(items)} items; {out / 'spec.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
