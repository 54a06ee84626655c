"""The first pass over a spec's files: vocabularies and normalisers fitted on the training split's
good rows only, and the :class:`Schema` they imply."""

from __future__ import annotations

from typing import Dict, List, Mapping

import numpy as np
import pandas as pd

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.preprocessing import (
    Normalizer,
    Preprocessing,
    Vocabulary,
    canonical_tokens,
    skipped_rows_suffix,
)
from mtl_torchrec.data.schema import DenseFeature, LabelSpec, Schema, SparseFeature
from mtl_torchrec.data.spec.data_spec import DataSpec
from mtl_torchrec.data.spec.reading import Chunk, iter_chunks
from mtl_torchrec.data.spec.rows import check_chunk, sparse_tokens
from mtl_torchrec.data.spec.sections import SparseColumn


def fit_preprocessing(spec: DataSpec) -> Preprocessing:
    """Reads every file once and fits vocabularies (``build``: token counts of training rows) and
    normalisers on the training split's good rows, and collects the raw keys of cold/warm slice
    columns seen in training; ``stats["fit_train_rows"]`` counts those rows. Text features' rows
    are found while the bundle is built (:func:`~mtl_torchrec.data.spec.build.build_bundle`).

    Raises ConfigError when the spec has no training split (no split rule and no per-split files),
    DataError when the training split is empty or (without ``on_bad_rows: skip``) at a bad row,
    and whatever reading the files raises (see :func:`iter_chunks`).
    """
    counts: Dict[str, pd.Series] = {s.feature: pd.Series(dtype=np.int64) for s in spec.sparse if s.vocab == "build"}
    norms = {d.feature: Normalizer(d.normalize, d.fill_missing) for d in spec.dense}
    seen: Dict[str, set] = {sl.column: set() for sl in spec.slices if sl.cold_warm}
    skipped: Dict[str, int] = {}
    train_rows = 0
    if spec.split is None and not isinstance(spec.files, dict):
        raise ConfigError("split: fitting needs a training split: give a split rule (split.column, or "
                          "split.by / fractions) or files per split")
    for chunk in iter_chunks(spec):
        checked = check_chunk(spec, chunk, spec.on_bad_rows == "skip", skipped)
        keep = (checked.split == "train") & ~checked.bad.bad
        train_rows += int(keep.sum())
        frame = chunk.frame[keep]
        for s in spec.sparse:
            if s.vocab != "build":
                continue
            tokens, _ = sparse_tokens(s, frame)
            tokens = canonical_tokens(tokens)
            tokens = tokens[~pd.isna(tokens)]
            vc = pd.Series(tokens, dtype=object).value_counts()
            counts[s.feature] = counts[s.feature].add(vc, fill_value=0)
        for column, keys in seen.items():
            tokens = canonical_tokens(frame[spec.raw_column_of(column)])
            keys.update(t for t in tokens if t is not None)
        for i, d in enumerate(spec.dense):
            _fit_dense(norms[d.feature], checked.dense[d.feature], keep, chunk, f"dense[{i}]", d.column)
    if train_rows == 0:
        raise DataError("data spec: the training split has no rows (check files and split rule)"
                        + skipped_rows_suffix(skipped))
    vocabs = {s.feature: _vocabulary(spec, s, counts) for s in spec.sparse if s.vocab != "shared"}
    # vocab: shared: the owner's vocabulary (validate() checked that the owner has one of its own).
    vocabs.update({s.feature: vocabs[str(s.shared_with)] for s in spec.sparse if s.vocab == "shared"})
    vocabs = {s.feature: vocabs[s.feature] for s in spec.sparse}
    return Preprocessing(vocabs=vocabs, normalizers=norms, stats={"fit_train_rows": train_rows},
                         seen={c: sorted(k) for c, k in seen.items()}, features=spec.feature_layout())


def _fit_dense(norm: Normalizer, values: np.ndarray, keep: np.ndarray, chunk: Chunk, key: str, column: str) -> None:
    """Adds a chunk's training ``values[keep]`` to ``norm``; its DataError (values too large to
    normalise) is raised again naming the file, the line of the largest value and the column."""
    try:
        norm.update(values[keep])
    except DataError as e:
        rows = np.flatnonzero(keep)
        i = int(rows[np.nanargmax(np.abs(values[rows]))])
        raise DataError(f"{chunk.where(i)} column '{column}' ({key}): {e}") from None


def _vocabulary(spec: DataSpec, column: SparseColumn, counts: Dict[str, pd.Series]) -> Vocabulary:
    """The vocabulary of ``column`` in its mode (``counts``: training token counts for ``build``)."""
    if column.vocab == "build":
        return Vocabulary.build({str(k): int(v) for k, v in counts[column.feature].items()}, column.min_count)
    if column.vocab == "file":
        vf = spec.resolve(column.vocab_file)
        return Vocabulary.from_file(vf)
    if column.vocab == "hash":
        return Vocabulary.hashed(column.hash_buckets)
    return Vocabulary.identity(column.num_embeddings)


def schema_for(spec: DataSpec, pre: Preprocessing) -> Schema:
    """The schema of the spec's tables: table sizes from the fitted vocabularies and text rows, a
    task masked when it is ``maskable`` or has a ``mask_column``, weighted (:func:`weight_column`)
    when it has a ``weight_column``. Raises DataError when ``pre`` lacks a feature."""
    for s in spec.sparse:
        if s.feature not in pre.vocabs:
            raise DataError(f"fitted preprocessing has no vocabulary for sparse feature '{s.feature}'")
    sparse = id_features(spec, {f: v.num_embeddings for f, v in pre.vocabs.items()})
    for t in spec.text:
        if t.feature not in pre.texts:
            raise DataError(f"fitted preprocessing has no text rows for text feature '{t.feature}'")
        sparse.append(SparseFeature(t.feature, pre.texts[t.feature].num_rows, kind="text"))
    for d in spec.dense:
        if d.feature not in pre.normalizers:
            raise DataError(f"fitted preprocessing has no normaliser for dense feature '{d.feature}'")
    labels = [LabelSpec(lab.task, lab.type, maskable=lab.maskable or lab.mask_column is not None,
                        weight=weight_column(lab.task) if lab.weight_column else None) for lab in spec.labels]
    return Schema(
        sparse=sparse, dense=[DenseFeature(d.feature) for d in spec.dense], labels=labels,
        group=group_column(spec.group) if spec.group else None,
    )


def id_features(spec: DataSpec, sizes: Mapping[str, int]) -> List[SparseFeature]:
    """The spec's sparse columns as the schema's id features, in spec order: multi-valued with a
    separator, a ``vocab: shared`` feature on the table of its ``shared_with`` feature; ``sizes``:
    feature -> table rows (features it lacks get 1)."""
    out = []
    for s in spec.sparse:
        table = s.table
        if s.vocab == "shared":
            owner = spec.sparse_by_feature(str(s.shared_with))
            table = owner.table or owner.feature
        out.append(SparseFeature(s.feature, sizes.get(s.feature, 1), multi_valued=s.separator is not None,
                                 table=table, pooling=s.pooling))
    return out


def unfitted_schema(spec: DataSpec) -> Schema:
    """What the schema will be as far as the spec alone tells, before any row is read: its id
    features (names, multi-valued or not, tables; every table of size 1, sizes come from fitting)
    and dense features, no labels. For checking a model config against the data in seconds."""
    return Schema(sparse=id_features(spec, {}), dense=[DenseFeature(d.feature) for d in spec.dense], labels=[])


def group_column(raw: str) -> str:
    """The table column holding group ids (a 63-bit hash of the raw group value)."""
    return f"group:{raw}"


def weight_column(task: str) -> str:
    """The table column holding task ``task``'s sample weights (float32)."""
    return f"weight:{task}"
