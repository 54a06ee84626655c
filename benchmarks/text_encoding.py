"""Text encoding speed (texts/s) with length-bucketed batches vs batches in the given order, in one run.

Encodes the same texts with the packaged MiniLM (``model.text.encoder`` defaults) in alternating
rounds, once with :meth:`TextEncoder.encode`'s default (texts sorted by token length, so a batch
pads little) and once in the given order, and checks that both give the same vectors. The texts are
review-like: 1 to 12 sentences drawn from examples/reviews/make_data.py's phrase banks, so lengths
vary as real per-row text does (item titles vary less, and gain less).

    OMP_NUM_THREADS=1 python benchmarks/text_encoding.py              # 2,000 texts, 3 rounds
    OMP_NUM_THREADS=2 python benchmarks/text_encoding.py --texts 500 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from mtl_torchrec.launch.args import doc_summary
from mtl_torchrec.text.config import TextEncoderConfig
from mtl_torchrec.text.encoder import TextEncoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "reviews"))
from make_data import NEGATIVE, NEUTRAL, POSITIVE  # noqa: E402  (the phrase banks of the reviews example)


def review_texts(n: int, seed: int = 0) -> List[str]:
    """``n`` texts of 1 to 12 sentences each."""
    rng = np.random.default_rng(seed)
    bank = POSITIVE + NEGATIVE + NEUTRAL
    return [". ".join(rng.choice(bank, size=int(rng.integers(1, 13)))) + "." for _ in range(n)]


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=None, help="model.text.encoder.batch_size (default: its default)")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = TextEncoderConfig() if args.batch_size is None else TextEncoderConfig(batch_size=args.batch_size)
    encoder = TextEncoder(cfg)
    texts = review_texts(args.texts)
    encoder.encode(texts[:64])  # warm-up
    rates: Dict[str, List[float]] = {"by length": [], "given order": []}
    vectors = {}
    for r in range(args.rounds):
        for name in (list(rates) if r % 2 == 0 else list(rates)[::-1]):
            t0 = time.perf_counter()
            vectors[name], _ = encoder.encode(texts, by_length=name == "by length")
            rates[name].append(len(texts) / (time.perf_counter() - t0))
    diff = float((vectors["by length"] - vectors["given order"]).abs().max())
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{len(texts)} texts, batch {cfg.batch_size}, {torch.get_num_threads()} thread(s), {args.rounds} rounds; "
          f"largest vector difference between the two orders {diff:.1e}")
    for name, v in rates.items():
        print(f"{name:<12} median {med[name]:8.1f} texts/s   rounds: {', '.join(f'{x:.1f}' for x in v)}")
    print(f"by length / given order: {med['by length'] / med['given order']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
