"""Building blocks of the torchx components in :mod:`mtl_torchrec.components` (kept here so that
torchx lists only the components themselves).

Example::

    app = torchrun_job("train", ["train.epochs=1"], "default", "demo", "1x2", None, ...)
    command_line(app)  # ['bash', '-c', 'PATH=/repo/.venv/bin:$PATH', 'torchrun', '--max_restarts', '0', ...]
"""

import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torchx.specs as specs
from torchx.components.dist import ddp

# The package version in the default image tags; tests/test_components.py checks it against pyproject.toml.
IMAGE_VERSION = "0.1.0"
# Tags that packaging/Dockerfile builds (docs/jobs.md, "Images"): the CPU stack, and CUDA for jobs with GPUs.
CPU_IMAGE = f"mtl-torchrec:{IMAGE_VERSION}-cpu"
CUDA_IMAGE = f"mtl-torchrec:{IMAGE_VERSION}-cuda"


def default_image(gpu: int) -> str:
    """The image a component runs in when none is given: :data:`CUDA_IMAGE` for jobs that ask for
    GPUs, else :data:`CPU_IMAGE` (both built from ``packaging/Dockerfile``)."""
    return CUDA_IMAGE if gpu > 0 else CPU_IMAGE


def launcher_dir() -> Optional[Path]:
    """The folder of the interpreter running torchx when it holds ``torchrun`` (a virtual
    environment's ``bin/``), else None.

    torchx's ``dist.ddp`` runs ``torchrun`` from the job's ``PATH``; a venv that was not activated
    is not on it, and a local job then fails with ``torchrun: command not found``. The job's command
    puts this folder first on ``PATH``: a local job (``local_cwd``) runs the very environment that
    submitted it, while in a container or on a node without this folder the lookup falls through to
    the ``PATH`` of the image or node.
    """
    folder = Path(sys.executable).parent
    return folder if (folder / "torchrun").is_file() else None


def torchrun_job(
    subcommand: str,
    args: List[str],
    config: Optional[str],
    name: str,
    j: str,
    image: Optional[str],
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
    app, with torchrun's ``--max_restarts`` added (ddp itself only offers scheduler retries), the
    submitting environment's ``bin/`` first on ``PATH`` (:func:`launcher_dir`) and ``image``
    defaulting to :func:`default_image`. Raises ValueError for a negative ``max_restarts``."""
    if max_restarts < 0:
        raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
    script_args = [subcommand] + (["--config", config] if config else []) + list(args)
    app = ddp(
        *script_args,
        m="mtl_torchrec",
        image=image or default_image(gpu),
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
    folder = launcher_dir()
    # "$PATH" is expanded by the job's bash; torchx's macro substitution leaves unknown names alone.
    path = f'PATH={shlex.quote(str(folder))}:"$PATH" ' if folder is not None else ""
    role.args = [flag, f"{path}torchrun --max_restarts {max_restarts} " + cmd[len("torchrun "):]]
    return app


def command_line(app: specs.AppDef) -> List[str]:
    """The shell words a component runs (for inspection and tests)."""
    role = app.roles[0]
    return [role.entrypoint, role.args[0]] + shlex.split(role.args[1])
