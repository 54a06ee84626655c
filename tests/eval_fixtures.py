"""Small generated tabular data sets and specs for the spec / evaluation tests (plain module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import pandas as pd
import yaml


def make_frame(n: int = 600, seed: int = 0, num_users: int = 40, num_items: int = 60) -> pd.DataFrame:
    """Impressions with a learnable click: users and items have a hidden affinity."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, num_users, n)
    item = rng.integers(0, num_items, n)
    u_bias = np.random.default_rng(99).normal(0, 1.5, num_users)
    i_bias = np.random.default_rng(98).normal(0, 1.5, num_items)
    price = rng.lognormal(3, 1, n)
    logit = u_bias[user] + i_bias[item] - 0.3 * np.log(price)
    click = rng.random(n) < 1 / (1 + np.exp(-logit))
    rating = np.where(click, np.clip(np.round(3 + logit + rng.normal(0, 0.5, n)), 1, 5), np.nan)
    tags = ["|".join(f"t{t}" for t in rng.choice(8, rng.integers(0, 3), replace=False)) for _ in range(n)]
    split = np.where(np.arange(n) % 10 == 8, "val", np.where(np.arange(n) % 10 == 9, "test", "train"))
    return pd.DataFrame({
        "user": [f"u{u}" for u in user],
        "item": [f"i{i}" for i in item],
        "tags": tags,
        "price": np.round(price, 2),
        "click": np.where(click, "yes", "no"),
        "rating": rating,
        "title": [f"item number {i}" for i in item],
        "split": split,
    })


def int_id_frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """:func:`make_frame` with integer user and item ids (``u12`` -> 12)."""
    frame = make_frame(n=n, seed=seed)
    frame["user"] = frame["user"].str[1:].astype(np.int64)
    frame["item"] = frame["item"].str[1:].astype(np.int64)
    return frame


def spec_dict(files: Any = "data.csv", **overrides: Any) -> Dict[str, Any]:
    spec: Dict[str, Any] = {
        "files": files,
        "split": {"column": "split"},
        "sparse": [
            {"column": "user", "vocab": "build"},
            {"column": "item", "vocab": "build", "min_count": 1},
            {"column": "tags", "separator": "|", "vocab": "hash", "hash_buckets": 16},
        ],
        "dense": [{"column": "price", "normalize": "log_standard"}],
        "labels": [
            {"task": "click", "column": "click", "type": "binary", "positive": ["yes"], "negative": ["no"]},
            {"task": "rating", "column": "rating", "type": "regression", "maskable": True},
        ],
        "group": "user",
        "text": [{"columns": ["title"]}],
        "slices": [{"column": "item", "cold_warm": True}],
        "chunk_rows": 128,
    }
    spec.update(overrides)
    return spec


def write_case(tmp: Path, frame: Optional[pd.DataFrame] = None, spec: Optional[Dict[str, Any]] = None,
               name: str = "data.csv", spec_name: str = "spec.yaml") -> Path:
    """Writes ``frame`` (CSV or Parquet by extension) and a spec beside it; returns the spec path."""
    tmp.mkdir(parents=True, exist_ok=True)
    frame = make_frame() if frame is None else frame
    if name.endswith(".parquet"):
        frame.to_parquet(tmp / name, index=False)
    else:
        frame.to_csv(tmp / name, index=False)
    path = tmp / spec_name
    path.write_text(yaml.safe_dump(spec if spec is not None else spec_dict(name)), encoding="utf-8")
    return path


TRAIN_CONFIG = [
    "model.embedding_dim=8",
    "model.dense_layers=[16,8]",
    "model.mmoe.num_experts=2",
    "model.mmoe.expert_layers=[16]",
    "model.tower_layers=[8]",
    "model.tasks=[{name: click, type: binary}, {name: rating, type: regression}]",
    "data.batch_size=64",
    "data.eval_batch_size=50",
    "train.epochs=1",
    "train.max_steps=6",
    "train.sharding=table_wise",
    "train.progress=false",
    "train.log_every=2",
]


def evaluate_1rank(run_dir: Path, **kw: Any) -> Any:
    """``evaluate_run`` of ``run_dir`` in a one-process group (``kw``: its options)."""
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.eval.evaluate import evaluate_run

    ctx = init_distributed()
    try:
        return evaluate_run(run_dir, ctx, **kw)
    finally:
        close_distributed(ctx)


def train_spec_run(spec: Path, run_dir: Path, overrides: Sequence[str] = ()) -> Path:
    """Trains :data:`TRAIN_CONFIG` (plus ``overrides``) on the data spec ``spec`` into ``run_dir``
    (one process); returns ``run_dir``."""
    from mtl_torchrec.config import load_config
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.workflows import train

    cfg = load_config(None, [*TRAIN_CONFIG, "data.source=spec", f"data.spec={spec}", f"run_dir={run_dir}",
                             *overrides])
    ctx = init_distributed()
    try:
        train(cfg, ctx)
    finally:
        close_distributed(ctx)
    return run_dir
