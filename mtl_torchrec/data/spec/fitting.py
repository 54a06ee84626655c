"""The first pass over a spec's files: vocabularies and normalisers fitted on the training split's
good rows only, and the :class:`Schema` they imply."""

from __future__ import annotations

from typing import Dict, List

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.preprocessing import Preprocessing, skipped_rows_suffix
from mtl_torchrec.data.schema import DenseFeature, LabelSpec, Schema, SparseFeature
from mtl_torchrec.data.spec.data_spec import DataSpec
from mtl_torchrec.data.spec.kinds import FeatureKind, SchemaFeature, kinds
from mtl_torchrec.data.spec.reading import iter_chunks
from mtl_torchrec.data.spec.rows import check_chunk
from mtl_torchrec.data.tokens import canonical_tokens


def fit_preprocessing(spec: DataSpec) -> Preprocessing:
    """Reads every file once and fits what each feature kind fits on the training split's good rows
    (vocabularies from ``build`` token counts, normalisers, bucket boundaries, ...), and collects
    the raw keys of cold/warm slice columns seen in training; ``stats["fit_train_rows"]`` counts those
    rows. Text features' rows are found while the bundle is built
    (:func:`~mtl_torchrec.data.spec.build.build_bundle`).

    Raises ConfigError when the spec has no training split (no split rule and no per-split files),
    DataError when the training split is empty or (without ``on_bad_rows: skip``) at a bad row,
    whatever a kind's fitting raises, and whatever reading the files raises (see :func:`iter_chunks`).
    """
    sections = [(kind, spec.entries(kind)) for kind in _kinds_of(spec)]
    fitters = [(kind, f) for kind, entries in sections for f in [kind.fitter(entries, spec)] if f is not None]
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
        for kind, fitter in fitters:
            fitter.update(frame, checked.features[kind.section], keep, chunk)
        for column, keys in seen.items():
            tokens = canonical_tokens(frame[spec.raw_column_of(column)])
            keys.update(t for t in tokens if t is not None)
    if train_rows == 0:
        raise DataError("data spec: the training split has no rows (check files and split rule)"
                        + skipped_rows_suffix(skipped))
    pre = Preprocessing(stats={"fit_train_rows": train_rows}, seen={c: sorted(k) for c, k in seen.items()},
                        features=spec.feature_layout())
    for _, fitter in fitters:
        fitter.finish(pre)
    return pre


def _kinds_of(spec: DataSpec) -> List[FeatureKind]:
    """The kinds with entries in ``spec``, in kind order."""
    return [k for k in kinds() if spec.entries(k)]


def schema_for(spec: DataSpec, pre: Preprocessing) -> Schema:
    """The schema of the spec's tables: each feature kind's features from the fitted ``pre`` (id
    tables with their sizes, text tables, dense columns, in kind order), a task masked when it is
    ``maskable`` or has a ``mask_column``, weighted (:func:`weight_column`) when it has a
    ``weight_column``. Raises DataError when ``pre`` lacks a feature."""
    features: List[SchemaFeature] = []
    for kind in _kinds_of(spec):
        features += kind.schema(spec.entries(kind), pre, spec)
    labels = [LabelSpec(lab.task, lab.type, maskable=lab.maskable or lab.mask_column is not None,
                        weight=weight_column(lab.task) if lab.weight_column else None) for lab in spec.labels]
    return Schema(
        sparse=[f for f in features if isinstance(f, SparseFeature)],
        dense=[f for f in features if isinstance(f, DenseFeature)], labels=labels,
        group=group_column(spec.group) if spec.group else None,
    )


def unfitted_schema(spec: DataSpec) -> Schema:
    """What the schema will be as far as the spec alone tells, before any row is read: its id
    features (names, multi-valued or not, tables; every table of size 1, sizes come from fitting)
    and dense features, no labels. For checking a model config against the data in seconds."""
    features: List[SchemaFeature] = []
    for kind in _kinds_of(spec):
        features += kind.unfitted_schema(spec.entries(kind), spec)
    return Schema(sparse=[f for f in features if isinstance(f, SparseFeature)],
                  dense=[f for f in features if isinstance(f, DenseFeature)], labels=[])


def group_column(raw: str) -> str:
    """The table column holding group ids (a 63-bit hash of the raw group value)."""
    return f"group:{raw}"


def weight_column(task: str) -> str:
    """The table column holding task ``task``'s sample weights (float32)."""
    return f"weight:{task}"
