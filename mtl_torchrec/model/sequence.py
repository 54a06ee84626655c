"""Builds the behaviour-sequence feature (``model.sequence``): the candidate item and the user's
history in one shared ``EmbeddingCollection`` table, read by DIN target attention.

The checks here run before any table is allocated, each naming the ``model.sequence.*`` key (or the
``model.text.*`` key of an option that cannot apply to the shared table).

Example::

    feature = build_sequence_feature(cfg.model, bundle.schema)       # None when not enabled
    table = sequence_table(cfg.model, bundle.schema)                 # "item_id": left out of the EBC
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.schema import ColumnTable, Jagged, Schema, SparseFeature
from mtl_torchrec.data.spec.data_spec import DataSpec
from mtl_torchrec.data.spec.fitting import unfitted_schema
from mtl_torchrec.model.config import ModelConfig
from mtl_torchrec.modules.target_attention import HistoryAttentionFeature


def sequence_features(cfg: ModelConfig, schema: Schema) -> Tuple[SparseFeature, SparseFeature]:
    """``(candidate, history)`` of ``model.sequence``, checked against the data's schema.

    Raises ConfigError naming ``model.sequence.history`` (not a multi-valued id feature of the data,
    or not sharing the candidate's table), ``model.sequence.candidate`` (not a single-valued id
    feature), ``model.sequence`` (another feature also uses the shared table) or
    ``model.text.id_dropout_features`` (id dropout on a feature of the shared table: its pooled
    unseen-id vector has no place in a sequence table).
    """
    seq = cfg.sequence
    by_name = {f.name: f for f in schema.id_features}
    history = by_name.get(seq.history)
    if history is None or not history.multi_valued:
        multi = [f.name for f in schema.id_features if f.multi_valued]
        raise ConfigError(f"model.sequence.history: '{seq.history}' is not a multi-valued id feature of the data "
                          f"(multi-valued id features: {multi}); a data spec declares one with a separator, see "
                          f"docs/mtl.md")
    candidate = by_name.get(seq.candidate)
    if candidate is None or candidate.multi_valued:
        single = [f.name for f in schema.id_features if not f.multi_valued]
        raise ConfigError(f"model.sequence.candidate: '{seq.candidate}' is not a single-valued id feature of the "
                          f"data (single-valued id features: {single})")
    if history.table_name != candidate.table_name:
        raise ConfigError(f"model.sequence.history: '{history.name}' has its own table '{history.table_name}'; it "
                          f"must share the candidate's table '{candidate.table_name}' (and its vocabulary: in a "
                          f"data spec, vocab: shared, shared_with: {candidate.name})")
    others = [f.name for f in schema.id_features
              if f.table_name == candidate.table_name and f.name not in (history.name, candidate.name)]
    if others:
        raise ConfigError(f"model.sequence: features {others} also use the item table '{candidate.table_name}'; "
                          f"only the candidate and the history may (give them a table of their own)")
    if cfg.text.id_dropout > 0:
        dropped = list(cfg.text.id_dropout_features) or [cfg.text.item_feature]
        key = "model.text.id_dropout_features" if cfg.text.id_dropout_features else "model.text.item_feature"
        clash = [n for n in dropped if n in (history.name, candidate.name)]
        if clash:
            raise ConfigError(f"{key}: id dropout on {clash}, whose table is the sequence table of model.sequence; "
                              f"leave it out of the id dropout features")
    return candidate, history


def check_sequence_spec(cfg: ModelConfig, spec: DataSpec) -> None:
    """``model.sequence`` against a data spec before any of its rows is read (the checks of
    :func:`sequence_features` on :func:`~mtl_torchrec.data.spec.fitting.unfitted_schema`), so that a
    config the data cannot satisfy is refused in seconds, not after the data is loaded. Raises what
    :func:`sequence_features` raises; nothing when ``model.sequence.enabled`` is false."""
    if cfg.sequence.enabled:
        sequence_features(cfg, unfitted_schema(spec))


def sequence_table(cfg: ModelConfig, schema: Schema) -> Optional[str]:
    """The table name (``SparseFeature.table_name``) the sequence feature owns, which the model's EBC
    leaves out; None when ``model.sequence.enabled`` is false."""
    if not cfg.sequence.enabled:
        return None
    candidate, _ = sequence_features(cfg, schema)
    return candidate.table_name


def build_sequence_feature(
    cfg: ModelConfig, schema: Schema, device: Optional[torch.device] = None
) -> Optional[HistoryAttentionFeature]:
    """The :class:`HistoryAttentionFeature` of ``model.sequence`` (None when not enabled): one
    ``EmbeddingCollection`` table ``t_<table>`` of width ``model.embedding_dim`` over the candidate
    and the history. Raises what :func:`sequence_features` raises."""
    if not cfg.sequence.enabled:
        return None
    candidate, history = sequence_features(cfg, schema)
    table = EmbeddingConfig(
        name=f"t_{candidate.table_name}",
        embedding_dim=cfg.embedding_dim,
        num_embeddings=candidate.num_embeddings,
        feature_names=[candidate.name, history.name],
    )
    ec = EmbeddingCollection(tables=[table], device=device)
    return HistoryAttentionFeature(ec, candidate.name, history.name, cfg.sequence.max_length,
                                   list(cfg.sequence.attention_layers))


def truncation_note(cfg: ModelConfig, table: ColumnTable) -> Optional[str]:
    """A line saying how many rows of ``table`` have a longer history than ``model.sequence.max_length``
    (the model reads their most recent ids only); None when there is none or no sequence."""
    if not cfg.sequence.enabled or cfg.sequence.history not in table:
        return None
    col = table[cfg.sequence.history]
    if not isinstance(col, Jagged):
        return None
    longer = int(np.sum(col.lengths > cfg.sequence.max_length))
    if not longer:
        return None
    return (f"model.sequence.max_length={cfg.sequence.max_length}: {longer} of {len(col)} rows have a longer "
            f"'{cfg.sequence.history}' (up to {int(col.lengths.max())}); the model reads their "
            f"{cfg.sequence.max_length} most recent ids")

