"""Building blocks of the torchx components in :mod:`mtl_torchrec.components` (kept here so that
torchx lists only the components themselves): the job's command, its default image and the
resources a role asks for.

Example::

    app = torchrun_job("train", ["train.epochs=1"], "default", "demo", "2x8", None, role_resource(gpu=8),
                       None, 0, 0, 29500, None)
    app.roles[0].resource  # Resource(cpu=48, gpu=8, memMB=278528, ...): 6 CPUs, 32 GB + 2 GB shm per GPU
    command_line(app)  # ['bash', '-c', 'PATH=${MTL_TORCHREC_LAUNCHER_BIN:+...}$PATH', 'torchrun', ...]
"""

import os
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torchx.specs as specs
from torchx.components.dist import ddp

# The package version in the default image tags; tests/launch/test_components.py checks it against pyproject.toml.
IMAGE_VERSION = "0.1.0"
# Tags that packaging/Dockerfile builds (docs/jobs.md, "Images"): the CPU stack, and CUDA for jobs with GPUs.
CPU_IMAGE = f"mtl-torchrec:{IMAGE_VERSION}-cpu"
CUDA_IMAGE = f"mtl-torchrec:{IMAGE_VERSION}-cuda"

# A role without GPUs asks for what the components always asked for.
CPU_ROLE_CPUS = 2
CPU_ROLE_MEM_MB = 8192
# A role with GPUs asks for these per GPU (docs/jobs.md, "Resources"). 6 CPUs and 32 GB + 2 GB of
# shared memory per GPU fit the common GPU nodes (8 GPUs with 64-208 vCPUs and 488 GB or more; one
# GPU with 8 vCPUs and 61 GB) with room left for the node's own daemons, and give each rank a few
# DataLoader workers.
DEFAULT_CPU_PER_GPU = 6
DEFAULT_MEM_GB_PER_GPU = 32
DEFAULT_SHM_GB_PER_GPU = 2

# The variable through which a local job finds the environment that submitted it (see launcher_dir).
LAUNCHER_ENV = "MTL_TORCHREC_LAUNCHER_BIN"


def default_image(gpu: int) -> str:
    """The image a component runs in when none is given: :data:`CUDA_IMAGE` for jobs that ask for
    GPUs, else :data:`CPU_IMAGE` (both built from ``packaging/Dockerfile``)."""
    return CUDA_IMAGE if gpu > 0 else CPU_IMAGE


def role_resource(
    gpu: int = 0,
    cpu: int = 0,
    memMB: int = 0,
    cpu_per_gpu: int = DEFAULT_CPU_PER_GPU,
    mem_gb_per_gpu: int = DEFAULT_MEM_GB_PER_GPU,
    shm_gb_per_gpu: int = DEFAULT_SHM_GB_PER_GPU,
    h: Optional[str] = None,
) -> specs.Resource:
    """What one node (replica) of a job asks the scheduler for, as torchx's ``specs.Resource``.

    A named resource ``h`` (torchx's registry, e.g. ``aws_p4d.24xlarge``) wins, as in torchx's
    ``dist.ddp``. Otherwise, with ``gpu`` > 0: ``cpu = gpu * cpu_per_gpu`` and ``memMB = 1024 * gpu *
    (mem_gb_per_gpu + shm_gb_per_gpu)``. Shared memory is part of the memory request because both
    schedulers charge it there: torchx's Kubernetes pods mount ``/dev/shm`` as a memory-backed volume
    without a size of its own, and Slurm counts the node's ``/dev/shm`` pages against the job's
    ``--mem``. Without GPUs: 2 CPUs and 8192 MB, as before GPUs were counted. A ``cpu`` or ``memMB``
    above 0 (the total, shared memory included) replaces the derived value (0 means derive, as
    torchx's own ``specs.resource`` treats it).

    Raises ValueError naming the argument for a negative ``gpu``, ``cpu``, ``memMB`` or
    ``shm_gb_per_gpu``, or ``cpu_per_gpu`` / ``mem_gb_per_gpu`` below 1.

    Example::

        role_resource(gpu=8)                              # Resource(cpu=48, gpu=8, memMB=278528)
        role_resource(gpu=8, cpu_per_gpu=12, shm_gb_per_gpu=8)
        role_resource()                                   # Resource(cpu=2, gpu=0, memMB=8192)
    """
    if h:
        return specs.resource(h=h)
    for key, value, least in (("gpu", gpu, 0), ("cpu", cpu, 0), ("memMB", memMB, 0), ("cpu_per_gpu", cpu_per_gpu, 1),
                              ("mem_gb_per_gpu", mem_gb_per_gpu, 1), ("shm_gb_per_gpu", shm_gb_per_gpu, 0)):
        if value < least:
            raise ValueError(f"{key} must be >= {least}, got {value}")
    if gpu > 0:
        derived_cpu, derived_mem = gpu * cpu_per_gpu, 1024 * gpu * (mem_gb_per_gpu + shm_gb_per_gpu)
    else:
        derived_cpu, derived_mem = CPU_ROLE_CPUS, CPU_ROLE_MEM_MB
    return specs.Resource(cpu=cpu or derived_cpu, gpu=gpu, memMB=memMB or derived_mem)


def launcher_dir() -> Optional[Path]:
    """The folder of the interpreter running torchx when it holds ``torchrun`` (a virtual
    environment's ``bin/``), else None.

    torchx's ``dist.ddp`` runs ``torchrun`` from the job's ``PATH``; a venv that was not activated
    is not on it, and a local job then fails with ``torchrun: command not found``. The job's command
    puts ``$MTL_TORCHREC_LAUNCHER_BIN`` first on ``PATH`` when that variable is set, and
    :func:`torchrun_job` sets it to this folder in the submitting process's environment: torchx's
    local schedulers start jobs with a copy of that environment, so a local job (``local_cwd``) runs
    the very environment that submitted it, while the job spec itself names no path of this machine.
    A Kubernetes pod never sees the variable and runs the image's ``torchrun``; Slurm copies the
    submitter's environment into the job (``srun --export=ALL``), as it does an activated venv's
    ``PATH``, so a folder that also exists on the nodes is used and any other falls through to the
    nodes' own ``PATH``.
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
    resource: specs.Resource,
    env: Optional[Dict[str, str]],
    max_retries: int,
    max_restarts: int,
    rdzv_port: int,
    mounts: Optional[List[str]],
) -> specs.AppDef:
    """``torchrun -m mtl_torchrec <subcommand> [--config FILE] ARGS`` as a torchx ``dist.ddp``
    app, with torchrun's ``--max_restarts`` added (ddp itself only offers scheduler retries),
    ``resource`` (see :func:`role_resource`) as every node's request, ``image`` defaulting to :func:`default_image` of its GPU count, and
    ``$MTL_TORCHREC_LAUNCHER_BIN`` first on the job's ``PATH`` (:func:`launcher_dir`; sets that
    variable in this process's environment unless it is set already). Raises ValueError for a
    negative ``max_restarts``."""
    if max_restarts < 0:
        raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
    script_args = [subcommand] + (["--config", config] if config else []) + list(args)
    app = ddp(
        *script_args,
        m="mtl_torchrec",
        image=image or default_image(resource.gpu),
        name=name,
        cpu=resource.cpu,
        gpu=resource.gpu,
        memMB=resource.memMB,
        j=j,
        env=dict(env or {}),
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
    )
    role = app.roles[0]
    role.resource = resource
    # ddp runs `bash -c "torchrun ..."`; torchrun restarts all local workers when one dies.
    flag, cmd = role.args
    if flag != "-c" or not cmd.startswith("torchrun "):
        raise RuntimeError(f"unexpected ddp command {role.args}")
    folder = launcher_dir()
    if folder is not None:
        os.environ.setdefault(LAUNCHER_ENV, str(folder))
    # Expanded by the job's bash (torchx's macro substitution leaves unknown names alone): the
    # variable's folder first when it is set, else the image's or node's PATH as it is.
    path = f'PATH="${{{LAUNCHER_ENV}:+${LAUNCHER_ENV}:}}$PATH" '
    role.args = [flag, f"{path}torchrun --max_restarts {max_restarts} " + cmd[len("torchrun "):]]
    return app


def command_line(app: specs.AppDef) -> List[str]:
    """The shell words a component runs (for inspection and tests)."""
    role = app.roles[0]
    return [role.entrypoint, role.args[0]] + shlex.split(role.args[1])
