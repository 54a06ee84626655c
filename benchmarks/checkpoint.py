"""Checkpoint cost: time to save / load a run checkpoint (model with sharded tables, fused and
dense optimizer state, RNG) and its size, against the time of one training step.

    OMP_NUM_THREADS=1 python benchmarks/checkpoint.py [k=v config overrides]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mtl_torchrec.config import load_config
from mtl_torchrec.core.packaged import config_path
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.distributed.checkpoint.run_dir import latest_checkpoint
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.launch.args import doc_summary
from mtl_torchrec.launch.quiet import silence_known_warnings
from mtl_torchrec.workflows.training import make_trainer


def main() -> None:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("overrides", nargs="*", help="config overrides on top of the default config, e.g. model.embedding_dim=32")
    args = p.parse_args()
    silence_known_warnings()  # the library notices checked to be harmless, as the commands do
    torch.set_num_threads(1)
    overrides = ["train.progress=false", "train.log_every=0", "train.max_steps=50", "train.epochs=1", *args.overrides]
    cfg = load_config(config_path("default"), overrides)
    ctx = init_distributed("gloo")
    data = load_data(cfg.data)
    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(d)
        trainer = make_trainer(cfg, data, ctx, run_dir)
        t0 = time.perf_counter()
        trainer.fit()  # also writes the final checkpoint once (warm-up)
        fit_s = time.perf_counter() - t0
        reps = 3
        t0 = time.perf_counter()
        for _ in range(reps):
            trainer.state.global_step += 1
            trainer.save()
        save_s = (time.perf_counter() - t0) / reps
        ckpt = latest_checkpoint(run_dir)
        size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
        other = make_trainer(cfg, data, ctx, run_dir / "other")
        t0 = time.perf_counter()
        for _ in range(reps):
            other.restore(ckpt)
        load_s = (time.perf_counter() - t0) / reps
        trainer.close()
        other.close()
    close_distributed(ctx)
    params = sum(p.numel() for p in trainer.dmp.parameters())
    print(f"parameters (incl. tables): {params:,}; checkpoint size {size / 2**20:.1f} MiB")
    print(f"train step (incl. one checkpoint): {fit_s / cfg.train.max_steps * 1000:.1f} ms")
    print(f"save: {save_s * 1000:.0f} ms   load: {load_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
