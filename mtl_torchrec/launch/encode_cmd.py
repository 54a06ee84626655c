"""``mtl-torchrec encode-text``: encode texts once, ahead of training.

Two uses:

* the configured data's text features (``--config``/overrides, e.g. ``data.spec=my.yaml``) into the
  encoding cache (``model.text.cache_dir``, default ``<output_dir>/text_cache``; ``--cache-dir``), so
  that training finds every vector there (the cache is found by the text itself, any spec reuses it);
* an item file (``--input`` with ``--id-column``, ``--text-columns`` and an optional ``--template``)
  into a store keyed by the raw item key (``--store``), which a data spec names with
  ``text: [{key: item_id, store: ...}]``; the store records the column it is keyed by.

Under ``torchrun`` every rank encodes a slice. Re-running with unchanged texts does no model work.

    mtl-torchrec encode-text data.source=spec data.spec=examples/reviews/spec.yaml
    mtl-torchrec encode-text --store stores/items --input items.csv --id-column item_id \\
        --text-columns title genres --template "{title}. Genres: {genres}."
    torchrun --nproc_per_node 2 -m mtl_torchrec encode-text --store ... --input ...
"""

from __future__ import annotations

import argparse
import os
from typing import Any, List, Tuple

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.launch.args import config_arg, config_help

# torch and the packages that use it are imported inside run(), not here: the command line imports
# this module to build its parser, and `mtl-torchrec --help` must start without torch.


def add_parser(sub: Any) -> None:
    """Registers ``encode-text`` and its options."""
    p = sub.add_parser("encode-text", help="encode texts with a language model into the cache or a keyed store")
    p.add_argument("--store", default=None, help="with --input: output folder of a store keyed by --id-column")
    p.add_argument("--input", default=None, help="CSV/TSV/JSONL/Parquet file of items (default: the configured data)")
    p.add_argument("--id-column", default="item_id", help="the raw item key column of --input")
    p.add_argument("--cache-dir", default=None, help="without --input: the cache root (default: model.text.cache_dir)")
    p.add_argument("--text-columns", nargs="+", default=None, help="text column(s) of --input")
    p.add_argument("--template", default=None, help='str.format pattern over the text columns, e.g. "{title}. {genres}"')
    p.add_argument("--config", type=config_arg, default=None,
                   help=config_help("YAML config (data and model.text.encoder settings)"))
    p.add_argument("--model", default=None, help="AutoModel/AutoTokenizer path or hub name (default: packaged MiniLM-L6)")
    p.add_argument("--pooling", choices=("mean", "cls"), default=None)
    p.add_argument("--no-normalize", action="store_true", help="keep raw pooled vectors (default: L2-normalised)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per text; longer texts are truncated and counted")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with the model to run")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.source=movielens")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Encodes ``--input`` into the keyed store ``--store``, or the configured data's text features into
    the cache, and prints the counts.

    Returns 0. Raises ConfigError when ``--input`` comes without ``--store`` or ``--text-columns``,
    ``--store`` without ``--input``, or the configured data has no text feature.
    """
    from mtl_torchrec.config import load_config

    cfg = load_config(args.config, args.overrides)  # a config error is reported before torch is imported
    if args.input is not None and not args.store:
        raise ConfigError("--store: required with --input (the folder of the store keyed by --id-column)")
    if args.input is not None and not args.text_columns:
        raise ConfigError("--text-columns: required with --input")
    if args.input is None and args.store:
        raise ConfigError("--store: only with --input; the configured data's texts go to the cache (--cache-dir)")
    if args.input is None:
        given = [flag for flag, value in (("--text-columns", args.text_columns), ("--template", args.template),
                                          ("--id-column", args.id_column != "item_id" or None)) if value]
        if given:
            raise ConfigError(f"{given[0]}: only with --input; the configured data's text features say which "
                              f"columns and templates they use")
    if args.input is not None and args.cache_dir:
        raise ConfigError("--cache-dir: only without --input (a keyed store is written to --store)")
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.model.text import text_cache_root
    from mtl_torchrec.text.store import StoreStats, build_store, encode_texts

    enc = cfg.model.text.encoder
    if args.model is not None:
        enc.model = args.model
    if args.pooling is not None:
        enc.pooling = args.pooling
    if args.no_normalize:
        enc.normalize = False
    if args.max_length is not None:
        enc.max_length = args.max_length
    if args.batch_size is not None:
        enc.batch_size = args.batch_size
    if args.trust_remote_code:
        enc.trust_remote_code = True
    jobs: List[Tuple[str, Any]] = []
    if args.input is not None:
        from mtl_torchrec.data.item_table import read_item_table

        keys, item_texts = read_item_table(args.input, args.id_column, args.text_columns, args.template)
        jobs.append((args.input, dict(zip(keys, item_texts))))
    else:
        from mtl_torchrec.data.sources import load_data

        data = load_data(cfg.data)
        tables = [t for t in data.texts.values() if t.texts is not None]
        if not tables:
            raise ConfigError(f"data.source: '{cfg.data.source}' has no text feature to encode; pass --input")
        # Row 0 of every text table is the reserved "no text" row, not data.
        jobs += [(f"text feature '{t.feature}'", t.texts[1:]) for t in tables]
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    ctx = init_distributed() if "RANK" in os.environ else None
    progress = not args.no_progress
    cache_root = args.cache_dir or text_cache_root(cfg.model.text, cfg.output_dir)
    try:
        for what, texts in jobs:
            stats: StoreStats
            if args.input is not None:
                store, stats = build_store(texts, args.store, enc, args.id_column, os.path.basename(args.input),
                                           progress=progress, source=what)
                where, dim = args.store, store.dim
            else:
                vectors, _, stats = encode_texts(texts, cache_root, enc, progress=progress, source=what)
                where, dim = str(cache_root), int(vectors.shape[1])
            if ctx is None or ctx.is_main:
                print(
                    f"{what}: {stats.items} entries ({stats.with_text} with text, {stats.empty} without): "
                    f"{stats.encoded} distinct texts encoded, {stats.reused} reused, {stats.truncated} truncated "
                    f"to {enc.max_length} tokens; dim {dim}; "
                    + (f"written to {where}" if stats.written else f"{where} unchanged")
                )
    finally:
        if ctx is not None:
            close_distributed(ctx)
    return 0
