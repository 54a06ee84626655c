"""Settings of the data sources: built-in synthetic data, MovieLens, or a YAML data spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class SyntheticConfig:
    """Sizes and seed of the built-in synthetic e-commerce data (see ``data/synthetic.py``)."""

    num_users: int = 5000
    num_items: int = 5000
    num_impressions: int = 500000
    num_categories: int = 40
    num_brands: int = 300
    latent_dim: int = 8
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass
class MovieLensConfig:
    """The MovieLens multi-task protocol (see ``data/movielens.py``)."""

    path: str = "../shared/data/ml-100k"
    negatives_per_positive: int = 4
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    seed: int = 0


@dataclass
class DataConfig:
    source: Literal["synthetic", "movielens", "spec"] = "synthetic"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    movielens: MovieLensConfig = field(default_factory=MovieLensConfig)
    # Path to a YAML data spec (bring-your-own CSV/Parquet data), used when source == "spec".
    spec: Optional[str] = None
    batch_size: int = 1024
    eval_batch_size: int = 4096
    num_workers: int = 0
