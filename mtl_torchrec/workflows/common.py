"""The two setup steps every workflow shares: the run config from what the caller gave, and the
process group it runs in.

Example::

    cfg = resolve_config("default", ["train.epochs=1"])   # a packaged config's name, a YAML path or a Config
    with process_group() as ctx:                            # torchrun's group, or a one-process one
        ...
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch

from mtl_torchrec.config import Config, config_class, load_config, to_dict
from mtl_torchrec.core.config.overrides import apply_overrides
from mtl_torchrec.core.config.validate import from_dict
from mtl_torchrec.core.packaged import config_path
from mtl_torchrec.distributed.context import DistContext, close_distributed, init_distributed

ConfigLike = Union[Config, str, Path, None]


def resolve_config(config: ConfigLike = None, overrides: Sequence[str] = ()) -> Config:
    """The run config of ``config`` with the dotted ``overrides`` (``train.epochs=3``, list entries by
    index: ``model.tasks.0.weight=2``) applied, checked as ``mtl-torchrec train`` checks it.

    ``config``: a Config object (used as is without overrides; never modified), a YAML file, the name
    of a packaged config (``default``, ``ple_esmm``, ...; :func:`~mtl_torchrec.core.packaged.config_path`)
    or None (the built-in defaults: the synthetic e-commerce data).

    Raises ConfigError listing every problem (one line each, naming the dotted key), or naming
    ``config`` when it is neither a file nor a packaged config.
    """
    if isinstance(config, config_class()):
        if not overrides:
            return config
        return from_dict(type(config), apply_overrides(to_dict(config), overrides))
    path = config_path(str(config)) if config is not None else None
    return load_config(path, overrides)


def use_thread_setting() -> None:
    """Sets torch's intra-op threads to ``OMP_NUM_THREADS`` when it is set (torchrun sets it to 1 per
    rank by default; torch reads it only at import, so a value set later would be ignored)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


@contextlib.contextmanager
def process_group(ctx: Optional[DistContext] = None) -> Iterator[DistContext]:
    """``ctx`` as it is (the caller's group stays open), or a new :class:`DistContext` closed on exit:
    the torchrun group when started by ``torchrun`` (every rank runs the workflow), else a
    one-process group of its own. A new one first applies :func:`use_thread_setting`."""
    if ctx is not None:
        yield ctx
        return
    use_thread_setting()
    ctx = init_distributed()
    try:
        yield ctx
    finally:
        close_distributed(ctx)
