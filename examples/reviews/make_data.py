"""Generates a product-review data set with per-row review text (generated here, free to redistribute).

Each row is one review: a user, a product (``item_id``, ``category``), the review text, the star rating
(1-5) and whether the reviewer recommends the product. A latent satisfaction (product quality + user
leniency + the reviewer's experience) decides the rating and the recommendation; the review text
says it in words, noisily: each sentence is drawn from positive, negative or neutral phrase banks
with a probability that follows the satisfaction, so the text carries most, not all, of the signal
and the ids only the product's and user's averages. ``spec.yaml`` reads ``reviews.csv`` with the
review as a per-row text feature.

    python examples/reviews/make_data.py --out data/reviews
    python examples/compare_text.py --config examples/reviews/config.yaml data.spec=data/reviews/spec.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtl_torchrec.core.io import atomic_write_text
from mtl_torchrec.launch.args import doc_summary

POSITIVE = ["I love it", "it fits perfectly", "great quality for the price", "the colour is beautiful",
            "very comfortable all day", "I would buy it again", "it exceeded my expectations", "the fabric is soft",
            "a really flattering cut", "true to size", "I get compliments every time", "well made and sturdy"]
NEGATIVE = ["it runs small", "the stitching came apart", "the colour faded after one wash", "the fabric is itchy",
            "I returned it", "it looks nothing like the picture", "too tight in the shoulders", "cheap thin material",
            "the zipper broke in a week", "very disappointed", "it shrank in the wash", "the seams are crooked"]
NEUTRAL = ["I ordered my usual size", "it arrived quickly", "I wore it to work", "I bought it for a wedding",
           "I got the blue one", "I bought it on sale", "I am five foot six", "it came in a nice box"]
NOUNS = ["dress", "sweater", "pair of jeans", "jacket", "blouse", "skirt"]

SPEC = """\
# Generated product reviews (examples/reviews/make_data.py): the review is a per-row text feature.
files: reviews.csv
split: {column: split}
sparse:
  - {column: user_id, vocab: build}
  - {column: item_id, vocab: build}
  - {column: category, vocab: build}
labels:
  - {task: recommended, column: recommended, type: binary}
  - {task: rating, column: rating, type: regression}
group: user_id
text:
  # Each row's own review, encoded once per distinct text; no id embedding needed.
  - {columns: [review], name: review_text}
"""


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--out", required=True, help="folder for reviews.csv and spec.yaml")
    p.add_argument("--rows", type=int, default=15000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    n, n_users, n_items = args.rows, max(args.rows // 10, 10), max(args.rows // 25, 10)
    quality = rng.normal(0, 0.7, n_items)
    leniency = rng.normal(0, 0.5, n_users)
    category = rng.integers(0, len(NOUNS), n_items)
    user = rng.integers(0, n_users, n)
    item = rng.choice(n_items, n, p=rng.dirichlet(np.full(n_items, 0.5)))
    satisfaction = quality[item] + leniency[user] + rng.normal(0, 1.0, n)
    p_positive = 1 / (1 + np.exp(-2.0 * satisfaction))
    reviews = []
    for i in range(n):
        sentences = [str(rng.choice(NEUTRAL))] if rng.random() < 0.5 else []
        for _ in range(int(rng.integers(1, 4))):
            r = rng.random()
            bank = NEUTRAL if r < 0.25 else POSITIVE if rng.random() < p_positive[i] else NEGATIVE
            sentences.append(str(rng.choice(bank)))
        reviews.append(f"This {NOUNS[category[item[i]]]}: " + ". ".join(sentences) + ".")
    rating = np.clip(np.round(3.0 + 1.1 * satisfaction + rng.normal(0, 0.4, n)), 1, 5).astype(int)
    recommended = ((rating >= 4) ^ (rng.random(n) < 0.08)).astype(int)
    frame = pd.DataFrame({
        "user_id": [f"u{u}" for u in user], "item_id": [f"p{i}" for i in item], "category": category[item],
        "review": reviews, "rating": rating, "recommended": recommended,
        "split": rng.choice(["train", "val", "test"], n, p=[0.8, 0.1, 0.1]),
    })
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "reviews.csv", frame.to_csv(index=False))
    atomic_write_text(out / "spec.yaml", SPEC)
    print(f"{out / 'reviews.csv'}: {n} reviews ({frame.review.nunique()} distinct texts), {n_users} users, "
          f"{n_items} products; {out / 'spec.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
