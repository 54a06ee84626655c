"""Settings of the data sources: built-in synthetic data, MovieLens, or a YAML data spec."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal, Optional

from pydantic import Field, model_validator

from mtl_torchrec.core.config.fields import Fraction, NonNegativeInt, PositiveInt, config_dataclass, problem


def _check_split(val_fraction: float, test_fraction: float) -> None:
    if val_fraction + test_fraction >= 1:
        raise problem(
            f"val_fraction + test_fraction must be < 1 (something is left to train on), "
            f"got {val_fraction} + {test_fraction}",
            "test_fraction",
        )


@config_dataclass
class SyntheticConfig:
    """Sizes and seed of the built-in synthetic e-commerce data (see ``data/synthetic.py``)."""

    num_users: PositiveInt = 5000
    num_items: PositiveInt = 5000
    num_impressions: PositiveInt = 500000
    num_categories: PositiveInt = 40
    num_brands: PositiveInt = 300
    latent_dim: PositiveInt = 8
    seed: int = 0
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1
    # > 0: an ``item_history`` feature, each user's up to history_length past clicked items (oldest
    # first), drawn from the same click model; 0: no history feature (the data as before).
    history_length: NonNegativeInt = 0

    @model_validator(mode="after")
    def _split(self) -> "SyntheticConfig":
        _check_split(self.val_fraction, self.test_fraction)
        return self


@config_dataclass
class MovieLensConfig:
    """The MovieLens multi-task protocol (see ``data/movielens.py``)."""

    path: str = "../shared/data/ml-100k"
    negatives_per_positive: PositiveInt = 4
    # The last test_fraction of ratings by time (in (0, 1): the protocol needs a test part).
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    val_fraction: Fraction = 0.1
    seed: int = 0
    # > 0: an ``item_history`` feature, the user's up to history_length most recently rated movies
    # strictly before the impression's time (oldest first); 0: no history feature (the data as before).
    history_length: NonNegativeInt = 0

    @model_validator(mode="after")
    def _split(self) -> "MovieLensConfig":
        _check_split(self.val_fraction, self.test_fraction)
        return self


@config_dataclass
class DataConfig:
    """``data.*``: which source, its settings, and the per-rank batch sizes."""

    source: Literal["synthetic", "movielens", "spec"] = "synthetic"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    movielens: MovieLensConfig = field(default_factory=MovieLensConfig)
    # Path to a YAML data spec (bring-your-own CSV/Parquet data), used when source == "spec".
    spec: Optional[str] = None
    batch_size: PositiveInt = 1024
    eval_batch_size: PositiveInt = 4096
    num_workers: NonNegativeInt = 0
    # > 0 (data.source: spec): the training split is read from its files every epoch, each rank its
    # own share, through shuffle windows of this many rows (data/spec/train_stream.py), never held
    # in memory; 0: the training split is held in memory.
    shuffle_buffer: NonNegativeInt = 0

    @model_validator(mode="after")
    def _stream(self) -> "DataConfig":
        if self.shuffle_buffer and self.source != "spec":
            raise problem(f"streams a data spec's training files; data.source is '{self.source}' (set 0, or "
                          f"data.source: spec)", "shuffle_buffer")
        if self.shuffle_buffer and self.num_workers:
            raise problem("streamed training (data.shuffle_buffer > 0) reads in the main process, a background "
                          "thread reading the next window; set data.num_workers: 0", "num_workers")
        return self
