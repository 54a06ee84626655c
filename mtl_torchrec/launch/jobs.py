"""Building blocks of the torchx components in :mod:`mtl_torchrec.components` (kept here so that
torchx lists only the components themselves).

Example::

    app = torchrun_job("train", ["train.epochs=1"], "default", "demo", "1x2", ...)
    command_line(app)  # ['bash', '-c', 'torchrun', '--max_restarts', '0', ...]
"""

import shlex
from typing import Dict, List, Optional

import torchx.specs as specs
from torchx.components.dist import ddp


def torchrun_job(
    subcommand: str,
    args: List[str],
    config: Optional[str],
    name: str,
    j: str,
    image: str,
    h: Optional[str],
    cpu: int,
    gpu: int,
    memMB: int,
    env: Optional[Dict[str, str]],
    max_retries: int,
    max_restarts: int,
    rdzv_port: int,
    mounts: Optional[List[str]],
) -> specs.AppDef:
    """``torchrun -m mtl_torchrec <subcommand> [--config FILE] ARGS`` as a torchx ``dist.ddp``
    app, with torchrun's ``--max_restarts`` added (ddp itself only offers scheduler retries)."""
    if max_restarts < 0:
        raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
    script_args = [subcommand] + (["--config", config] if config else []) + list(args)
    app = ddp(
        *script_args,
        m="mtl_torchrec",
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=j,
        env=dict(env or {}),
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
    )
    role = app.roles[0]
    # ddp runs `bash -c "torchrun ..."`; torchrun restarts all local workers when one dies.
    flag, cmd = role.args
    if flag != "-c" or not cmd.startswith("torchrun "):
        raise RuntimeError(f"unexpected ddp command {role.args}")
    role.args = [flag, f"torchrun --max_restarts {max_restarts} " + cmd[len("torchrun "):]]
    return app


def command_line(app: specs.AppDef) -> List[str]:
    """The shell words a component runs (for inspection and tests)."""
    role = app.roles[0]
    return [role.entrypoint, role.args[0]] + shlex.split(role.args[1])
