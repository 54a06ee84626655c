"""``mtl-torchrec encode-text``: encode every item's text into a vector store (and cache).

Texts come from a table file (``--input`` with ``--id-column``, ``--text-columns`` and an optional
``--template``) or from the configured data's item texts (``--config``/overrides, e.g.
``data.source=movielens``). Under ``torchrun`` every rank encodes a slice. Re-running with
unchanged texts does no model work; a changed text re-encodes only that item.

    mtl-torchrec encode-text --store stores/movielens data.source=movielens
    mtl-torchrec encode-text --store stores/items --input items.csv --id-column item_id \\
        --text-columns title genres --template "{title}. Genres: {genres}."
    torchrun --nproc_per_node 2 -m mtl_torchrec encode-text --store ... --input ...
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.launch.args import config_arg, config_help

# torch and the packages that use it are imported inside run(), not here: the command line imports
# this module to build its parser, and `mtl-torchrec --help` must start without torch.


def add_parser(sub: Any) -> None:
    """Registers ``encode-text`` and its options."""
    p = sub.add_parser("encode-text", help="encode item texts with a language model into a vector store")
    p.add_argument("--store", required=True, help="output folder (also the cache: unchanged items are reused)")
    p.add_argument("--input", default=None, help="CSV/TSV/JSONL/Parquet file of items (default: the configured data)")
    p.add_argument("--id-column", default="item_id")
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
    """Encodes the texts of ``--input`` (or of the configured data) into ``--store`` and prints the counts.

    Returns 0. Raises ConfigError when ``--input`` comes without ``--text-columns`` or the configured
    data has no item text.
    """
    from mtl_torchrec.config import load_config

    cfg = load_config(args.config, args.overrides)  # a config error is reported before torch is imported
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.text.store import build_store

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
    if args.input is not None:
        from mtl_torchrec.text.items import read_item_texts

        if not args.text_columns:
            raise ConfigError("--text-columns: required with --input")
        texts: Any = read_item_texts(args.input, args.id_column, args.text_columns, args.template)
        source = args.input
    else:
        from mtl_torchrec.data.sources import load_data

        data = load_data(cfg.data)
        if data.item_text is None:
            raise ConfigError(f"data.source: '{cfg.data.source}' has no item text; pass --input")
        texts, source = data.item_text, f"data.source={cfg.data.source}"
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    ctx = init_distributed() if "RANK" in os.environ else None
    try:
        store, stats = build_store(texts, args.store, enc, progress=not args.no_progress, source=source)
    finally:
        if ctx is not None:
            close_distributed(ctx)
    if ctx is None or ctx.is_main:
        print(
            f"{stats.items} items ({stats.with_text} with text, {stats.empty} without): "
            f"{stats.encoded} encoded, {stats.reused} reused from cache, {stats.truncated} truncated "
            f"to {enc.max_length} tokens; dim {store.dim}; "
            + (f"written to {args.store}" if stats.written else f"{args.store} unchanged")
        )
    return 0
