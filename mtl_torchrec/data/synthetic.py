"""Built-in synthetic e-commerce impressions with correlated click, conversion and rating.

A latent model generates everything:

* users have a segment (a centroid in latent space) plus their own offset, an age bucket and an
  activity level; items have a category (a centroid), a brand with a quality, a price bucket,
  tags derived from their strongest latent directions, and a short title built from category,
  brand, quality, price and tag words, so the text carries what the ids carry;
* an impression shows an item at a position on a device; ``click ~ Bernoulli(sigmoid(...))``
  from user-item affinity, brand quality, position and device; ``conversion`` is only possible
  after a click and follows a *related but different* affinity plus price sensitivity;
  ``rating`` (1-5) exists only on converted rows (NaN elsewhere, i.e. masked).

Deterministic for a seed; one million impressions take a few seconds.

Example::

    data = generate_synthetic(SyntheticConfig(num_impressions=10000))
    data.schema.validate(data.splits["train"], source="synthetic")
    data.item_text[:2]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from mtl_torchrec.data.config import SyntheticConfig
from mtl_torchrec.data.loader import split_rows
from mtl_torchrec.data.schema import (
    ColumnTable,
    DenseFeature,
    Jagged,
    Schema,
    SparseFeature,
    impression_labels,
)

NUM_TAGS = 64
NUM_POSITIONS = 10
NUM_DEVICES = 3
NUM_AGE_BUCKETS = 7
NUM_SEGMENTS = 16

_CATEGORY_NOUNS = [
    "headphones", "sneakers", "backpack", "coffee maker", "desk lamp", "yoga mat", "novel", "board game",
    "watch", "jacket", "blender", "keyboard", "tent", "perfume", "sunglasses", "phone case", "drone",
    "teapot", "skateboard", "guitar", "camera", "scarf", "water bottle", "mouse", "speaker", "puzzle",
    "cookbook", "sofa cushion", "plant pot", "bike light", "hoodie", "kettle", "monitor", "notebook",
    "candle", "toaster", "umbrella", "wallet", "helmet", "rug",
]
_TAG_WORDS = [
    "wireless", "waterproof", "compact", "vintage", "organic", "ergonomic", "lightweight", "premium",
    "handmade", "foldable", "rechargeable", "minimalist", "colorful", "classic", "smart", "eco",
    "sporty", "cozy", "durable", "portable", "silent", "bold", "soft", "retro", "modern", "travel",
    "kids", "pro", "outdoor", "studio", "festive", "silk", "wooden", "steel", "ceramic", "leather",
    "cotton", "bamboo", "glass", "matte", "glossy", "xl", "mini", "limited", "signature", "everyday",
    "deluxe", "basic", "hybrid", "digital", "analog", "solar", "neon", "pastel", "rustic", "urban",
    "alpine", "marine", "desert", "arctic", "tropical", "midnight", "sunrise", "velvet",
]
_QUALITY_WORDS = ["budget", "basic", "standard", "quality", "superior", "luxury"]
_PRICE_WORDS = ["bargain", "affordable", "mid-range", "pricey", "high-end"]
_SYLLABLES = ["ka", "lo", "mi", "zen", "tor", "vi", "ra", "nu", "qua", "bel", "sto", "fen", "dra", "po"]


@dataclass
class SyntheticData:
    """Generated impressions: schema, train/val/test tables, item titles and the true click probabilities."""

    schema: Schema
    splits: Dict[str, ColumnTable]
    # Title per item id (index = item id).
    item_text: List[str]
    # Latent ground truth, kept for tests and diagnostics.
    click_prob: Dict[str, np.ndarray]


def synthetic_schema(cfg: SyntheticConfig) -> Schema:
    """The schema :func:`generate_synthetic` produces: nine id features (``item_tags`` multi-valued),
    three dense features, the impression labels, grouped by ``user_id``, item text indexed by ``item_id``.
    With ``history_length > 0`` a tenth, ``item_history`` (multi-valued, on ``item_id``'s table).
    """
    history = ([SparseFeature("item_history", cfg.num_items, multi_valued=True, table="item_id")]
               if cfg.history_length else [])
    return Schema(
        sparse=[
            SparseFeature("user_id", cfg.num_users),
            SparseFeature("item_id", cfg.num_items),
            SparseFeature("user_segment", NUM_SEGMENTS),
            SparseFeature("user_age", NUM_AGE_BUCKETS),
            SparseFeature("category", cfg.num_categories),
            SparseFeature("brand", cfg.num_brands),
            SparseFeature("price_bucket", 10),
            SparseFeature("item_tags", NUM_TAGS, multi_valued=True),
            SparseFeature("device", NUM_DEVICES),
            *history,
        ],
        dense=[DenseFeature("position"), DenseFeature("log_price"), DenseFeature("item_popularity")],
        labels=impression_labels(),
        group="user_id",
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _brand_names(n: int, rng: np.random.Generator) -> List[str]:
    names = []
    for _ in range(n):
        k = int(rng.integers(2, 4))
        names.append("".join(rng.choice(_SYLLABLES, size=k)).capitalize())
    return names


def _click_histories(
    cfg: SyntheticConfig,
    user_vec: np.ndarray,
    item_vec: np.ndarray,
    quality: np.ndarray,
    user_bias: np.ndarray,
    item_weights: np.ndarray,
) -> Jagged:
    """Each user's past clicks (one row per user, oldest first): items shown as impressions are (the
    popularity-weighted draw) at position 1 on device 0, clicked with the impression click model's
    probability, until ``history_length`` clicks or ``8 * history_length`` shown items. A separate
    generator (seed + 7919), so the impressions are those of the same seed without history."""
    rng = np.random.default_rng(cfg.seed + 7919)
    n_users, k = len(user_vec), cfg.latent_dim
    shown = 8 * cfg.history_length
    items = rng.choice(len(item_vec), size=(n_users, shown), p=item_weights)
    affinity = np.einsum("uk,usk->us", user_vec, item_vec[items]) / np.sqrt(k)
    p_click = _sigmoid(affinity + quality[items] + user_bias[:, None] - 1.2)
    clicked = rng.random((n_users, shown)) < p_click
    # The first history_length clicks of each user, in the order shown.
    kept = clicked & (np.cumsum(clicked, axis=1) <= cfg.history_length)
    return Jagged(items[kept].astype(np.int64), kept.sum(axis=1))


def generate_synthetic(cfg: SyntheticConfig) -> SyntheticData:
    """``cfg.num_impressions`` impressions from the latent model, split into train/val/test rows at random.

    Raises ValueError naming the key when ``data.synthetic.num_categories`` exceeds the built-in
    category names or ``num_brands < num_categories``.
    """
    if cfg.num_categories > len(_CATEGORY_NOUNS):
        raise ValueError(f"data.synthetic.num_categories must be <= {len(_CATEGORY_NOUNS)}")
    if cfg.num_brands < cfg.num_categories:
        raise ValueError("data.synthetic.num_brands must be >= data.synthetic.num_categories")
    rng = np.random.default_rng(cfg.seed)
    k = cfg.latent_dim
    U, n_items, N = cfg.num_users, cfg.num_items, cfg.num_impressions

    # Users: segment centroid + individual offset.
    seg_centroids = rng.normal(0, 1, (NUM_SEGMENTS, k))
    user_segment = rng.integers(0, NUM_SEGMENTS, U)
    user_age = np.clip((rng.normal(3, 1.5, U)).round(), 0, NUM_AGE_BUCKETS - 1).astype(np.int64)
    age_dir = rng.normal(0, 1, k) / np.sqrt(k)
    user_vec = seg_centroids[user_segment] + 0.6 * rng.normal(0, 1, (U, k)) + np.outer(user_age - 3, age_dir) * 0.3
    user_activity = rng.lognormal(0, 1.0, U)
    price_sensitivity = rng.normal(0.6, 0.3, U)
    user_bias = rng.normal(0, 0.5, U)

    # Items: category centroid + offset; brands nested in categories.
    cat_centroids = rng.normal(0, 1, (cfg.num_categories, k))
    category = rng.integers(0, cfg.num_categories, n_items)
    brand_category = np.arange(cfg.num_brands) % cfg.num_categories
    brands_of = [np.flatnonzero(brand_category == c) for c in range(cfg.num_categories)]
    brand = np.array([rng.choice(brands_of[c]) for c in category])
    brand_quality = rng.normal(0, 0.7, cfg.num_brands)
    item_vec = cat_centroids[category] + 0.7 * rng.normal(0, 1, (n_items, k))
    quality = brand_quality[brand] + 0.3 * rng.normal(0, 1, n_items)
    log_price = 3.0 + 0.6 * quality + 0.4 * rng.normal(0, 1, n_items) + 0.3 * (category % 5)
    price_bucket = np.clip(np.digitize(log_price, np.quantile(log_price, np.linspace(0.1, 0.9, 9))), 0, 9)

    # Tags: each latent direction owns NUM_TAGS/(2k) words for its positive and negative side.
    tags_per_side = NUM_TAGS // (2 * k)
    order = np.argsort(-np.abs(item_vec), axis=1)
    n_tags = rng.integers(1, 4, n_items)
    tag_lists = []
    for i in range(n_items):
        tags = []
        for d in order[i, : n_tags[i]]:
            side = 0 if item_vec[i, d] > 0 else 1
            tags.append(int((2 * d + side) * tags_per_side + rng.integers(0, tags_per_side)))
        tag_lists.append(sorted(set(tags)))
    item_tags_all = Jagged.from_lists(tag_lists)

    popularity = rng.zipf(1.6, n_items).astype(np.float64)
    popularity = np.minimum(popularity, 1000.0)
    item_popularity_feat = np.log1p(popularity)

    names = _brand_names(cfg.num_brands, rng)
    q_word = np.digitize(quality, np.quantile(quality, [0.1, 0.3, 0.5, 0.7, 0.9]))
    p_word = np.minimum(price_bucket // 2, 4)
    item_text = [
        f"{_QUALITY_WORDS[q_word[i]]} {' '.join(_TAG_WORDS[t] for t in tag_lists[i])} "
        f"{_CATEGORY_NOUNS[category[i]]} by {names[brand[i]]}, {_PRICE_WORDS[p_word[i]]}"
        for i in range(n_items)
    ]

    # Impressions: active users and popular items are shown more.
    u = rng.choice(U, size=N, p=user_activity / user_activity.sum())
    item_weights = popularity / popularity.sum()
    it = rng.choice(n_items, size=N, p=item_weights)
    position = rng.integers(1, NUM_POSITIONS + 1, N)
    device = rng.integers(0, NUM_DEVICES, N)

    affinity = np.einsum("nk,nk->n", user_vec[u], item_vec[it]) / np.sqrt(k)
    device_bias = np.array([0.0, -0.3, 0.2])[device]
    click_logit = affinity + quality[it] + user_bias[u] - 0.2 * (position - 1) + device_bias - 1.2
    p_click = _sigmoid(click_logit)
    click = rng.random(N) < p_click

    # Conversion follows a rotated affinity (partly the same taste), quality and price sensitivity.
    rot = np.linalg.qr(rng.normal(0, 1, (k, k)))[0]
    conv_item_vec = 0.7 * item_vec + 0.3 * item_vec @ rot
    conv_aff = np.einsum("nk,nk->n", user_vec[u], conv_item_vec[it]) / np.sqrt(k)
    price_z = (log_price[it] - log_price.mean()) / log_price.std()
    cvr_logit = 1.2 * conv_aff + 0.9 * quality[it] - price_sensitivity[u] * price_z - 1.3
    p_cvr = _sigmoid(cvr_logit)
    conversion = click & (rng.random(N) < p_cvr)

    rating_mean = 2.9 + 0.8 * affinity + 0.8 * quality[it] - 0.3 * price_sensitivity[u] * price_z
    rating = np.clip(np.round(rating_mean + rng.normal(0, 0.5, N)), 1, 5)
    rating = np.where(conversion, rating, np.nan)

    columns = {
        "user_id": u.astype(np.int64),
        "item_id": it.astype(np.int64),
        "user_segment": user_segment[u].astype(np.int64),
        "user_age": user_age[u].astype(np.int64),
        "category": category[it].astype(np.int64),
        "brand": brand[it].astype(np.int64),
        "price_bucket": price_bucket[it].astype(np.int64),
        "item_tags": item_tags_all.take(it),
        "device": device.astype(np.int64),
        "position": ((position - 5.5) / 2.9).astype(np.float32),
        "log_price": ((log_price[it] - log_price.mean()) / log_price.std()).astype(np.float32),
        "item_popularity": (
            (item_popularity_feat[it] - item_popularity_feat.mean()) / item_popularity_feat.std()
        ).astype(np.float32),
        "click": click.astype(np.float32),
        "conversion": conversion.astype(np.float32),
        "rating": rating.astype(np.float32),
    }
    if cfg.history_length:
        columns["item_history"] = _click_histories(cfg, user_vec, item_vec, quality, user_bias, item_weights).take(u)
    table = ColumnTable(columns)
    idx = split_rows(N, cfg.val_fraction, cfg.test_fraction, cfg.seed + 1)
    splits = {name: table.take(rows) for name, rows in idx.items()}
    click_prob = {name: p_click[rows] for name, rows in idx.items()}
    return SyntheticData(schema=synthetic_schema(cfg), splits=splits, item_text=item_text, click_prob=click_prob)
