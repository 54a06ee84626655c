"""The run's TensorBoard scalars (``run_dir/tensorboard``), written by rank 0 only.

The ``SummaryWriter`` is created on first use, so that building a trainer writes nothing into the
run directory (a start that ``Trainer.resume`` refuses leaves an existing run untouched), and
tensorboard is imported only by the process that writes.

Example::

    scalars = ScalarLog(run_dir, is_main=ctx.is_main)
    scalars.log("val", {"click": {"auc": 0.71, "ne": 0.93}}, step=120)   # val/click/auc, val/click/ne
    scalars.close()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional


class ScalarLog:
    """TensorBoard scalars of ``run_dir/tensorboard`` on rank 0 (``is_main``); nothing elsewhere."""

    def __init__(self, run_dir: Path, is_main: bool) -> None:
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self._writer: Optional[Any] = None

    @property
    def writer(self) -> Optional[Any]:
        """The ``SummaryWriter`` on rank 0 (None elsewhere), created on first use."""
        if self._writer is None and self.is_main:
            from torch.utils.tensorboard import (
                SummaryWriter,  # imports tensorboard: only where it writes
            )

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._writer

    def log(self, prefix: str, values: Dict[str, Any], step: int) -> None:
        """Numbers (nested one level: ``{task: {metric: x}}``) as ``prefix/task/metric`` (or
        ``prefix/task``) at ``step``; anything that is not an int or float is skipped."""
        if not self.is_main:
            return
        for task, v in values.items():
            if isinstance(v, dict):
                for k, x in v.items():
                    if isinstance(x, (int, float)):
                        self.writer.add_scalar(f"{prefix}/{task}/{k}", x, step)
            elif isinstance(v, (int, float)):
                self.writer.add_scalar(f"{prefix}/{task}", v, step)

    def close(self) -> None:
        """Closes the writer (if one was opened)."""
        if self._writer is not None:
            self._writer.close()
