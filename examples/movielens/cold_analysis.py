"""Why item text helps some cold MovieLens movies and not others: what the cold slice is made of, how each
variant scores each cold movie, and how much a movie's text says about its conversion rate.

Reads the files of ``export_csv.py`` and, optionally, the output folder of ``examples/compare_text.py``
(its ``id_only`` / ``text_id`` run folders), and prints for the chosen split's cold rows (movies never
seen in the training split), by the split in which each movie was first rated:

1. rows, movies, conversion rate, and the share of rows of the four largest movies;
2. per variant: conversion AUC, and the "between movies" AUC (each row scored by its movie's mean
   prediction, i.e. only how the variant ranks the movies), then the largest cold movies with their
   observed conversion rate and each variant's mean predicted conversion;
3. a text probe: a ridge regression of the training movies' conversion rates (weighted by rows) on
   their text vectors, scored by AUC on the cold rows (what a linear read of the text can rank) next to
   an in-sample oracle (each cold movie scored by its own observed rate), and the nearest training texts of the largest cold movie of each group with their conversion rates.

    python examples/movielens/cold_analysis.py --data data/ml_s0 --runs runs/cmp_s0 --cache runs/text_cache
    python examples/movielens/cold_analysis.py --data data/ml_s0 --runs runs/cmp_s0 --split val
    python examples/movielens/cold_analysis.py --data data/ml_s0 --probe-max-rows 100   # probe on rare movies only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pandas as pd
import torch

from mtl_torchrec.eval.metrics import binary_auc
from mtl_torchrec.launch.args import doc_summary
from mtl_torchrec.launch.quiet import silence_known_warnings
from mtl_torchrec.serve.predict import predict_frame
from mtl_torchrec.text.config import TextEncoderConfig
from mtl_torchrec.text.store import encode_texts

VARIANTS = ("id_only", "text_id")


def ridge(x: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """Weighted ridge regression with an unpenalised intercept; returns ``[d + 1]`` coefficients (intercept last)."""
    xm = np.average(x, axis=0, weights=w)
    ym = np.average(y, weights=w)
    xc, yc = torch.from_numpy(x - xm).double(), torch.from_numpy(y - ym).double()
    wt = torch.from_numpy(w).double().unsqueeze(1)
    a = xc.T @ (wt * xc) + alpha * torch.eye(x.shape[1], dtype=torch.float64)
    coef = torch.linalg.solve(a, xc.T @ (wt[:, 0] * yc)).numpy()
    return np.append(coef, ym - xm @ coef)


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--data", required=True, help="folder of export_csv.py (impressions.csv, items.csv)")
    p.add_argument("--runs", default=None, help="output folder of compare_text.py (id_only/, text_id/)")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--cache", default=None, help="text encoding cache (model.text.cache_dir); default <data>/text_cache")
    p.add_argument("--top", type=int, default=8, help="cold movies to list (largest first)")
    p.add_argument("--probe-max-rows", type=int, default=None,
                   help="fit the text probe on the training movies with fewer rows than this only (the rare ones)")
    args = p.parse_args(argv)
    silence_known_warnings()
    data = Path(args.data)
    rows = pd.read_csv(data / "impressions.csv")
    items = pd.read_csv(data / "items.csv")
    train = rows[rows["split"] == "train"]
    part = rows[rows["split"] == args.split].reset_index(drop=True)
    cold = ~part["item_id"].isin(set(train["item_id"]))
    groups: Dict[str, np.ndarray] = {"all cold": cold.to_numpy()}
    for g in sorted(part.loc[cold, "item_first_rated"].unique()):
        groups[f"first rated in {g}"] = (cold & (part["item_first_rated"] == g)).to_numpy()
    conv = part["conversion"].to_numpy()

    print(f"1. cold rows of '{args.split}' (movies not in the training split)")
    for name, m in groups.items():
        sizes = part.loc[m, "item_id"].value_counts()
        print(f"   {name:<22} {m.sum():>5} rows, {len(sizes):>3} movies, conversion {conv[m].mean():.3f}, "
              f"4 largest movies {sizes.iloc[:4].sum() / m.sum():.0%} of rows")

    scores: Dict[str, np.ndarray] = {}
    for v in VARIANTS if args.runs else ():
        pred = predict_frame(Path(args.runs) / v, part.drop(columns=["click", "conversion", "rating"]))
        scores[v] = pred["conversion"].to_numpy()
    if scores:
        print("\n2. conversion AUC on cold rows: rows as scored / movies by their mean score")
        for name, m in groups.items():
            line = []
            for v, s in scores.items():
                movie_mean = pd.Series(s[m]).groupby(part.loc[m, "item_id"].to_numpy()).transform("mean").to_numpy()
                line.append(f"{v} {binary_auc(s[m], conv[m]):.3f} / {binary_auc(movie_mean, conv[m]):.3f}")
            print(f"   {name:<22} " + "   ".join(line))
        table = part[cold].assign(**{v: s[cold.to_numpy()] for v, s in scores.items()})
        per_movie = table.groupby(["item_first_rated", "item_id"]).agg(
            rows=("click", "size"), conversion=("conversion", "mean"), **{v: (v, "mean") for v in scores})
        per_movie = per_movie.reset_index().sort_values("rows", ascending=False).head(args.top)
        per_movie["text"] = per_movie["item_id"].map(items.set_index("item_id")["text"]).str.slice(0, 48)
        print("\n   largest cold movies: observed conversion and mean predicted conversion per variant\n"
              + per_movie.round(3).to_string(index=False))

    texts = [None] + [t if isinstance(t, str) and t.strip() else None for t in items["text"]]
    cache = Path(args.cache) if args.cache else data / "text_cache"
    vectors, _, _ = encode_texts(texts, cache, TextEncoderConfig())
    vec = vectors[1:].numpy()
    row_of = {k: i for i, k in enumerate(items["item_id"])}
    stats = train.groupby("item_id").agg(n=("conversion", "size"), rate=("conversion", "mean"))
    if args.probe_max_rows is not None:
        stats = stats[stats["n"] < args.probe_max_rows]
    train_rows = np.array([row_of[k] for k in stats.index])
    coef = ridge(vec[train_rows] * np.sqrt(vec.shape[1]), stats["rate"].to_numpy(), stats["n"].to_numpy().astype(float), 100.0)
    probe = (vec[[row_of[k] for k in part["item_id"]]] * np.sqrt(vec.shape[1])) @ coef[:-1] + coef[-1]
    fitted_on = f"{len(stats)} training movies" + (f" with < {args.probe_max_rows} rows" if args.probe_max_rows else "")
    print(f"\n3. text probe (ridge of the conversion rate of {fitted_on} on their text vectors): conversion AUC;"
          f" oracle: each cold movie scored by its own observed rate on these rows")
    for name, m in groups.items():
        oracle = part.loc[m].groupby("item_id")["conversion"].transform("mean").to_numpy()
        print(f"   {name:<22} probe {binary_auc(probe[m], conv[m]):.3f}   oracle {binary_auc(oracle, conv[m]):.3f}")
    for name, m in list(groups.items())[1:]:
        movie = part.loc[m, "item_id"].value_counts().index[0]
        sims = vec[train_rows] @ vec[row_of[movie]]
        near = np.argsort(-sims)[:5]
        print(f"   {items['text'][row_of[movie]]} ({name}, conversion {conv[m & (part['item_id'] == movie).to_numpy()].mean():.3f});"
              f" nearest training texts:")
        for j in near:
            print(f"      {sims[j]:.2f}  {items['text'][train_rows[j]][:56]:<56} {int(stats['n'].iloc[j]):>4} rows, "
                  f"conversion {stats['rate'].iloc[j]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
