"""Bring your own tabular data: a YAML data spec turns CSV/Parquet files into a Schema and
ColumnTables that the loader, model and trainer take unchanged.

Files are read in chunks twice: the first pass fits vocabularies and normalisers on training rows
only, the second converts every chunk to compact numpy columns (int64 ids, float32 dense and
labels), so only the converted columns, never the raw text, have to fit in memory.

Modules, in the order a spec goes through them:

* ``sections`` / ``data_spec``: the spec's dataclasses and :func:`load_spec`; ``checks``: the
  checks across fields, each naming the dotted key;
* ``reading``: file globs and CSV/Parquet chunks with file/line positions; ``records``: each CSV
  record's real file line and field count, walked beside pandas' parser;
* ``bad_rows``, ``splits``, ``rows``: per-row parsing and checks, ``on_bad_rows`` error/skip
  counting, the split of each row;
* ``fitting`` (first pass: vocabularies, normalisers, schema) and ``build`` (second pass:
  ``SpecReader`` converts chunk by chunk, :func:`build_bundle` keeps every split), with
  ``sequences`` (the training-split checks of behaviour sequences);
* ``stream``: one split read chunk by chunk with a run's fitted preprocessing, for evaluation
  (``SplitStream``: the rows of each chunk, then the split's slices and statistics);
  ``features``: rows without labels, for scoring.

A spec (paths are relative to the spec file)::

    files: data/*.csv                 # a glob, a list, or {train: ..., val: ..., test: ...}
    csv: {separator: ",", header: true, na_values: ["", "?"]}
    split: {by: user_id, val_fraction: 0.1, test_fraction: 0.1, seed: 0}   # or {column: split}
    sparse:
      - {column: user_id, vocab: build, min_count: 2}
      - {column: item_id, vocab: hash, hash_buckets: 100000}
      - {column: genres, separator: "|", vocab: file, vocab_file: genres.txt}
      - {column: history, separator: "|", vocab: shared, shared_with: item_id, max_length: 50}
    dense:
      - {column: price, normalize: log_standard, fill_missing: mean}
    labels:
      - {task: click, column: clicked, type: binary, positive: ["yes", "1"]}
      - {task: rating, column: stars, type: regression, maskable: true, weight_column: w}
    group: user_id
    text:                             # language-model text features (docs/text.md)
      - {key: item_id, items: {file: items.csv}, columns: [title, genres], template: "{title}. {genres}"}
      - {columns: [review]}           # each row's own text
    slices: [{column: item_id, cold_warm: true}, {column: device, top: 5}]
    on_bad_rows: error                # or skip: bad rows are dropped and counted

Example::

    spec = load_spec("my_data.yaml")
    bundle = build_bundle(spec)                   # fits on train, converts all splits
    bundle.preprocessing.save(run_dir / "preprocessing")
    again = build_bundle(spec, Preprocessing.load(run_dir / "preprocessing"))   # no refit
"""

from mtl_torchrec.data.spec.bad_rows import BadRows
from mtl_torchrec.data.spec.build import build_bundle
from mtl_torchrec.data.spec.data_spec import DataSpec, load_spec, spec_from_dict
from mtl_torchrec.data.spec.fitting import fit_preprocessing, group_column, schema_for, weight_column
from mtl_torchrec.data.spec.kinds import (
    FEATURE_KINDS,
    BucketColumn,
    DenseColumn,
    FeatureKind,
    ItemTable,
    SparseColumn,
    TextFeatureSpec,
    register_kind,
)
from mtl_torchrec.data.spec.reading import Chunk, iter_chunks, spec_files
from mtl_torchrec.data.spec.sections import ALL_SPLIT, SPLITS, CsvOptions, LabelColumn, SliceSpec, SplitRule

__all__ = [
    "ALL_SPLIT",
    "FEATURE_KINDS",
    "SPLITS",
    "BadRows",
    "BucketColumn",
    "Chunk",
    "CsvOptions",
    "DataSpec",
    "DenseColumn",
    "FeatureKind",
    "ItemTable",
    "LabelColumn",
    "SliceSpec",
    "SparseColumn",
    "SplitRule",
    "TextFeatureSpec",
    "build_bundle",
    "fit_preprocessing",
    "group_column",
    "iter_chunks",
    "load_spec",
    "register_kind",
    "schema_for",
    "spec_files",
    "spec_from_dict",
    "weight_column",
]
