"""One entry point from ``DataConfig`` to a schema and train/val/test tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from mtl_torchrec.config import ConfigError, DataConfig
from mtl_torchrec.data.schema import ColumnTable, Schema


@dataclass
class DataBundle:
    schema: Schema
    splits: Dict[str, ColumnTable]
    # Text per item id (index = id) for text features; None where the data has no item text.
    item_text: Optional[List[Optional[str]]] = None
    # Named boolean row masks per split for sliced reports, e.g. {"test": {"cold_items": mask}}.
    slices: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    # Fitted preprocessing (vocabularies, normalisers) with save(dir) / load(dir); None when the
    # source needs none. The train command saves it in the run directory.
    preprocessing: Optional[Any] = None

    def validate(self) -> None:
        for name, table in self.splits.items():
            self.schema.validate(table, source=f"{name} split")


def load_data(cfg: DataConfig, preprocessing: Optional[Any] = None) -> DataBundle:
    """``preprocessing``: a run's fitted preprocessing to reuse instead of fitting (``source: spec``)."""
    if cfg.source == "synthetic":
        from mtl_torchrec.data.synthetic import generate_synthetic

        syn = generate_synthetic(cfg.synthetic)
        bundle = DataBundle(schema=syn.schema, splits=syn.splits, item_text=list(syn.item_text))
    elif cfg.source == "spec":
        from mtl_torchrec.data.spec import build_bundle, load_spec

        if not cfg.spec:
            raise ConfigError("data.spec: required when data.source is 'spec' (path to a YAML data spec)")
        bundle = build_bundle(load_spec(cfg.spec), preprocessing)
    elif cfg.source == "movielens":
        from mtl_torchrec.data.movielens import load_movielens

        bundle = load_movielens(cfg.movielens)
    else:
        raise ConfigError(f"data.source: '{cfg.source}' is not available")
    bundle.validate()
    return bundle
