"""One entry point from ``DataConfig`` to a schema and train/val/test tables."""

from __future__ import annotations

from typing import Any, Optional

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.bundle import DataBundle, item_text_feature
from mtl_torchrec.data.config import DataConfig
from mtl_torchrec.data.movielens import load_movielens
from mtl_torchrec.data.spec import build_bundle, load_spec
from mtl_torchrec.data.spec.train_stream import build_streaming_bundle
from mtl_torchrec.data.synthetic import generate_synthetic


def load_data(cfg: DataConfig, preprocessing: Optional[Any] = None) -> DataBundle:
    """The configured source as a validated :class:`DataBundle`; raises ConfigError or DataError.

    ``preprocessing``: a run's fitted preprocessing to reuse instead of fitting (``source: spec``).
    With ``data.shuffle_buffer`` > 0 the training split is streamed (the bundle's ``train_stream``)."""
    if cfg.source == "synthetic":
        syn = generate_synthetic(cfg.synthetic)
        schema, splits, texts = item_text_feature(syn.schema, syn.splits, "item_id", syn.item_text)
        bundle = DataBundle(schema=schema, splits=splits, texts=texts)
    elif cfg.source == "spec":
        if not cfg.spec:
            raise ConfigError("data.spec: required when data.source is 'spec' (path to a YAML data spec)")
        spec = load_spec(cfg.spec)
        if cfg.shuffle_buffer:
            bundle = build_streaming_bundle(spec, cfg.shuffle_buffer, preprocessing)
        else:
            bundle = build_bundle(spec, preprocessing)
    elif cfg.source == "movielens":
        bundle = load_movielens(cfg.movielens)
    else:
        raise ConfigError(f"data.source: '{cfg.source}' is not available")
    bundle.validate()
    return bundle
