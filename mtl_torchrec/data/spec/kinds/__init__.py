"""Feature kinds: each kind of feature a data spec declares is one module owning its section.

* :mod:`~mtl_torchrec.data.spec.kinds.base`: the :class:`FeatureKind` stages and the
  :data:`FEATURE_KINDS` registry that the spec reader, the fitting pass, the chunk conversion
  (training, ``evaluate``, ``predict``, export) and the schema iterate;
* :mod:`~mtl_torchrec.data.spec.kinds.ids` (``sparse:``): id columns with their vocabulary modes
  and behaviour sequences;
* :mod:`~mtl_torchrec.data.spec.kinds.dense` (``dense:``): normalised numeric columns;
* :mod:`~mtl_torchrec.data.spec.kinds.text` (``text:``): language-model text by item table,
  per row, or from an encoded store;
* :mod:`~mtl_torchrec.data.spec.kinds.buckets` (``buckets:``): numeric columns cut at given or
  fitted quantile boundaries into id features.

Adding a kind is one module that defines its entry dataclass and a :class:`FeatureKind` subclass and
calls :func:`register_kind` (docs/data.md, "Adding a feature kind"): a kind shipped with the package
is imported below; one of your own is registered when your code imports its module.
Each kind's ``position`` orders the sections in the schema and the saved feature layout.
"""

from mtl_torchrec.data.spec.kinds.base import (
    FEATURE_KINDS,
    ConvertContext,
    FeatureKind,
    OovCounts,
    SchemaFeature,
    SectionFitter,
    kinds,
    register_kind,
)
from mtl_torchrec.data.spec.kinds.buckets import BUCKETS, BucketColumn, BucketKind
from mtl_torchrec.data.spec.kinds.dense import DENSE, DenseColumn, DenseKind
from mtl_torchrec.data.spec.kinds.ids import IDS, IdKind, SparseColumn
from mtl_torchrec.data.spec.kinds.text import TEXT, ItemTable, TextFeatureSpec, TextKind, TextParts

__all__ = [
    "BUCKETS",
    "DENSE",
    "FEATURE_KINDS",
    "IDS",
    "TEXT",
    "BucketColumn",
    "BucketKind",
    "ConvertContext",
    "DenseColumn",
    "DenseKind",
    "FeatureKind",
    "IdKind",
    "ItemTable",
    "OovCounts",
    "SchemaFeature",
    "SectionFitter",
    "SparseColumn",
    "TextFeatureSpec",
    "TextKind",
    "TextParts",
    "kinds",
    "register_kind",
]
