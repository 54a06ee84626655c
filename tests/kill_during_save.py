"""``mtl-torchrec train`` with one rank SIGKILLing itself while a checkpoint is being written.

Run under torchrun: ``python -m torch.distributed.run ... tests/kill_during_save.py RANK STEP [overrides]``.
Rank RANK kills itself once its shards of the step-STEP checkpoint are on disk, on the first
attempt only (torchrun's ``TORCHELASTIC_RESTART_COUNT`` is 0), so the restarted job must resume
from the last complete checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from mtl_torchrec.config import load_config
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.launch.cli import show_logs_on_console
from mtl_torchrec.train.callbacks import Callback
from mtl_torchrec.workflows import train


class KillDuringSave(Callback):
    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_checkpoint_shards_written(self, trainer, path: Path) -> None:
        first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0
        if first_attempt and trainer.ctx.rank == self.rank and trainer.state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    # The train command's console (the test reads its 'resuming from' line).
    show_logs_on_console()
    rank, step, overrides = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    cfg = load_config(None, overrides)
    ctx = init_distributed()
    try:
        result = train(cfg, ctx, extra_callbacks=[KillDuringSave(rank, step)])
    finally:
        close_distributed(ctx)
    if ctx.is_main:
        print(result.run_dir)


if __name__ == "__main__":
    main()
