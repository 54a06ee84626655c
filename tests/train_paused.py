"""``mtl-torchrec train`` that pauses at the start of training until told to go on (lock tests).

    python tests/train_paused.py STARTED GO [overrides]

Writes its pid to the file STARTED once training is about to start (the run directory's lock is
held then), and waits until the file GO exists before training on.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mtl_torchrec.config import load_config
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.train.callbacks import Callback
from mtl_torchrec.workflows import train


class PauseAtFitStart(Callback):
    def __init__(self, started: Path, go: Path) -> None:
        self.started, self.go = started, go

    def on_fit_start(self, trainer) -> None:
        self.started.write_text(str(os.getpid()))
        deadline = time.monotonic() + 600
        while not self.go.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.go} never appeared")
            time.sleep(0.05)


def main() -> None:
    started, go, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    cfg = load_config(None, overrides)
    ctx = init_distributed()
    try:
        train(cfg, ctx, extra_callbacks=[PauseAtFitStart(started, go)])
    finally:
        close_distributed(ctx)


if __name__ == "__main__":
    main()
