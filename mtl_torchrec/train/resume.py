"""The training position in a checkpoint's ``meta.json``: written by the trainer, read back on resume.

A run checkpoint records the position (epoch, batches of it trained on, global step), the batch
size and world size it was trained with, the config, the learning-rate schedule's position and
``train.select_by``'s state. Read back, every count is checked (a :class:`CheckpointError` naming
``meta.json`` and the key) and a position from another world size or batch size is converted
through the number of samples seen (global batches are slices of the same seeded permutation).

Example::

    meta = checkpoint_meta(state, cfg.data.batch_size, to_dict(cfg), scheduler, selection)
    ...
    state, same_layout = read_position(meta, ckpt, ctx.world_size, cfg.data.batch_size)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from mtl_torchrec.core.errors import CheckpointError
from mtl_torchrec.distributed.checkpoint.manifest import META
from mtl_torchrec.distributed.checkpoint.run_dir import best_checkpoint, set_best_checkpoint, step_name
from mtl_torchrec.train.selection import ModelSelection
from mtl_torchrec.train.view import TrainState

logger = logging.getLogger(__name__)


def checkpoint_meta(
    state: TrainState,
    batch_size: int,
    config: Dict[str, Any],
    scheduler: Any,
    selection: Optional[ModelSelection],
) -> Dict[str, Any]:
    """The ``meta.json`` entries a checkpoint needs to resume from ``state``: the position,
    ``batch_size`` (rows per rank), the resolved ``config`` (plain dicts), the learning-rate
    ``scheduler``'s position and rates, and ``selection``'s state when there is one."""
    meta = {
        "epoch": state.epoch,
        "batch_in_epoch": state.batch_in_epoch,
        "global_step": state.global_step,
        "batch_size": batch_size,
        "config": config,
        # The schedule's position (restore() rebuilds it there) and its rates, for reference.
        "lr_scheduler": {
            "last_epoch": scheduler.last_epoch,
            "base_lrs": [float(x) for x in scheduler.base_lrs],
            "last_lr": [float(x) for x in scheduler.get_last_lr()],
        },
    }
    if selection is not None:
        meta["selection"] = selection.state_dict()
    return meta


def read_position(meta: Dict[str, Any], path: Path, world_size: int, batch_size: int) -> Tuple[TrainState, bool]:
    """The position to continue from, and whether the checkpoint was trained with this world size
    and batch size (then the position and the RNG states are exact).

    With another layout the batches of the epoch are converted through the samples seen (rounded
    down). Raises CheckpointError naming ``path/meta.json`` and the key when a count is missing,
    negative or not an integer.
    """

    def count(key: str, default: Optional[int] = None) -> int:
        value = meta.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"{Path(path) / META}: '{key}' must be a count, got {value!r}")
        return value

    epoch, in_epoch = count("epoch"), count("batch_in_epoch")
    saved_world = count("world_size", world_size)
    saved_bs = count("batch_size", batch_size)
    same = (saved_world, saved_bs) == (world_size, batch_size)
    if not same:
        in_epoch = in_epoch * saved_bs * saved_world // (batch_size * world_size)
    return TrainState(epoch=epoch, batch_in_epoch=in_epoch, global_step=count("global_step")), same


def scheduler_steps(meta: Dict[str, Any], path: Path, global_step: int) -> int:
    """The learning-rate schedule's position in ``meta`` (a checkpoint from before schedules: at
    ``global_step``); CheckpointError naming ``path/meta.json`` when it is not a count."""
    sched = meta.get("lr_scheduler")
    steps = sched.get("last_epoch") if isinstance(sched, dict) else global_step
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise CheckpointError(f"{Path(path) / META}: 'lr_scheduler.last_epoch' must be a count, got {steps!r}")
    return steps


def restore_selection(
    selection: Optional[ModelSelection], meta: Dict[str, Any], path: Path, run_dir: Path, is_main: bool
) -> None:
    """Takes the selection state of the checkpoint's ``meta.json`` and makes ``checkpoints/best``
    agree with it (a crash between moving ``latest`` and ``best`` leaves them apart); rank 0
    (``is_main``) moves the pointer and logs a note when the checkpoint was selected by another rule.

    Raises CheckpointError naming ``path/meta.json`` for a selection state that cannot be read.
    """
    if selection is None or "selection" not in meta:
        return
    try:
        same_rule = selection.load_state_dict(meta["selection"])
    except ValueError as e:
        raise CheckpointError(f"{Path(path) / META}: 'selection': {e}") from None
    if not same_rule:
        if is_main:
            logger.info("note: %s selected by '%s', this run by '%s': model selection starts afresh",
                        Path(path) / META, meta["selection"].get("select_by"), selection.select_by)
        return
    step = selection.best_step
    if is_main and step is not None and run_dir.resolve() == Path(path).resolve().parent.parent:
        current = best_checkpoint(run_dir)
        if (Path(path).parent / step_name(step)).is_dir() and (current is None or current.name != step_name(step)):
            set_best_checkpoint(run_dir, step)
