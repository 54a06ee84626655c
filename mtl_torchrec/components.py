"""torchx components: ``mtl-torchrec`` training, evaluation and text encoding as cluster jobs.

Each component builds ``torchrun ... -m mtl_torchrec <sub-command> [--config FILE] [k=v ...]``
on top of torchx's ``dist.ddp`` (so rendezvous, node counts, resources, mounts and retries work
on every torchx scheduler) and adds torchrun's in-job restarts (``max_restarts``). ``train``
gives every job a fixed run directory (``runs/<app id>`` unless ``run_dir=`` is among the
overrides), so a restarted or retried job finds its latest checkpoint there and resumes
(``train.resume=auto``); on several nodes that directory must be on a shared filesystem.

Resources per node come from the GPU count (:func:`mtl_torchrec.launch.jobs.role_resource`):
with ``--gpu N``, ``6 N`` CPUs and ``32 N + 2 N`` GB of memory, the second part for shared memory
(override with ``--cpu_per_gpu``, ``--mem_gb_per_gpu``, ``--shm_gb_per_gpu``, or ``--cpu`` /
``--memMB`` outright, or a torchx named resource ``-h``); without GPUs 2 CPUs and 8192 MB.

A cluster job's spec names no path of the submitting machine: the job runs ``torchrun`` and
``python -m mtl_torchrec`` from the image's (or Slurm node's) ``PATH``, in the image's working
directory (``-cfg job_dir=`` on Slurm). A local job (``local_cwd``) finds the environment that runs
torchx without activating it, through ``$MTL_TORCHREC_LAUNCHER_BIN``, which the component sets in
torchx's own environment and local schedulers hand on to the job. The default image is
``mtl-torchrec:0.1.0-cpu``, or ``mtl-torchrec:0.1.0-cuda`` when the job asks for GPUs: both are
built from ``packaging/Dockerfile`` (docs/jobs.md, "Images"); push them to your registry and pass
``--image``.

Examples (from the repository root; every one is run by tests/launch/test_components.py)::

    .venv/bin/torchx run -s local_cwd mtl_torchrec/components.py:train -j 1x2 --config default -- train.epochs=1
    .venv/bin/torchx run -s kubernetes --dryrun -cfg queue=default --workspace "" mtl_torchrec.train -j 2x8 \\
        --gpu 8 --image my/image:tag --config default --max_restarts 3 -- run_dir=/mnt/runs/exp1
    .venv/bin/torchx run -s local_cwd mtl_torchrec/components.py:evaluate --run_dir runs/exp1
"""

# No `from __future__ import annotations` here: torchx decodes CLI arguments from the real types.
from typing import Dict, List, Optional

import torchx.specs as specs

from mtl_torchrec.launch.jobs import (
    DEFAULT_CPU_PER_GPU,
    DEFAULT_MEM_GB_PER_GPU,
    DEFAULT_SHM_GB_PER_GPU,
    role_resource,
    torchrun_job,
)


def train(
    *overrides: str,
    config: Optional[str] = None,
    name: str = "mtl-torchrec-train",
    j: str = "1x2",
    image: Optional[str] = None,
    h: Optional[str] = None,
    gpu: int = 0,
    cpu: int = 0,
    memMB: int = 0,
    cpu_per_gpu: int = DEFAULT_CPU_PER_GPU,
    mem_gb_per_gpu: int = DEFAULT_MEM_GB_PER_GPU,
    shm_gb_per_gpu: int = DEFAULT_SHM_GB_PER_GPU,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    max_restarts: int = 0,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Trains a multi-task model (``mtl-torchrec train``) on ``j`` = nodes x processes.

    Args:
        overrides: config overrides ``key=value`` (e.g. ``train.epochs=3 run_dir=/mnt/runs/a``)
        config: YAML config file (as the job sees it) or a packaged config's name (``default``)
        name: job name, ``{experiment}/{run}`` or ``{run}``
        j: ``[{min_nnodes}:]{nnodes}x{nproc_per_node}``
        image: container image (default: mtl-torchrec:0.1.0-cpu, or mtl-torchrec:0.1.0-cuda with gpu > 0);
            local_cwd runs in the current directory instead
        h: torchx named resource per node (takes precedence over the resource options below)
        gpu: gpus per node
        cpu: cpus per node (0: gpu x cpu_per_gpu, or 2 without GPUs)
        memMB: memory per node in MB, shared memory included (0: 1024 x gpu x (mem_gb_per_gpu +
            shm_gb_per_gpu), or 8192 without GPUs)
        cpu_per_gpu: cpus per GPU when cpu is 0
        mem_gb_per_gpu: memory per GPU in GB (besides shared memory) when memMB is 0
        shm_gb_per_gpu: shared memory (/dev/shm) per GPU in GB, part of the memory when memMB is 0
        env: extra environment variables
        max_retries: scheduler-level retries of the whole job
        max_restarts: torchrun restarts of the workers inside the job
        rdzv_port: c10d rendezvous port on node 0 (multi-node)
        mounts: mounts, e.g. ``type=bind,src=/data,dst=/data``
    """
    args = list(overrides)
    if not any(a.split("=", 1)[0].strip() == "run_dir" for a in args):
        # Fixed per job, so torchrun restarts and scheduler retries resume in the same place.
        args.append(f"run_dir=runs/{specs.macros.app_id}")
    resource = role_resource(gpu, cpu, memMB, cpu_per_gpu, mem_gb_per_gpu, shm_gb_per_gpu, h)
    return torchrun_job("train", args, config, name, j, image, resource, env, max_retries, max_restarts, rdzv_port,
                        mounts)


def evaluate(
    *args: str,
    run_dir: Optional[str] = None,
    name: str = "mtl-torchrec-evaluate",
    j: str = "1x1",
    image: Optional[str] = None,
    h: Optional[str] = None,
    gpu: int = 0,
    cpu: int = 0,
    memMB: int = 0,
    cpu_per_gpu: int = DEFAULT_CPU_PER_GPU,
    mem_gb_per_gpu: int = DEFAULT_MEM_GB_PER_GPU,
    shm_gb_per_gpu: int = DEFAULT_SHM_GB_PER_GPU,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    max_restarts: int = 0,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Evaluates a trained run (``mtl-torchrec evaluate --run-dir RUN_DIR``); ``args`` (after
    ``--``) are further options of that sub-command, e.g. ``--split val --slice user``.

    Raises ValueError when no run is named (neither ``run_dir`` nor ``--run-dir`` / ``--compare``
    among ``args``), before anything is submitted.

    Args:
        args: further options of ``mtl-torchrec evaluate``
        run_dir: the run directory to evaluate (as the job sees it)
        name: job name, ``{experiment}/{run}`` or ``{run}``
        j: ``[{min_nnodes}:]{nnodes}x{nproc_per_node}``
        image: container image (default: mtl-torchrec:0.1.0-cpu, or mtl-torchrec:0.1.0-cuda with gpu > 0);
            local_cwd runs in the current directory instead
        h: torchx named resource per node (takes precedence over the resource options below)
        gpu: gpus per node
        cpu: cpus per node (0: gpu x cpu_per_gpu, or 2 without GPUs)
        memMB: memory per node in MB, shared memory included (0: 1024 x gpu x (mem_gb_per_gpu +
            shm_gb_per_gpu), or 8192 without GPUs)
        cpu_per_gpu: cpus per GPU when cpu is 0
        mem_gb_per_gpu: memory per GPU in GB (besides shared memory) when memMB is 0
        shm_gb_per_gpu: shared memory (/dev/shm) per GPU in GB, part of the memory when memMB is 0
        env: extra environment variables
        max_retries: scheduler-level retries of the whole job
        max_restarts: torchrun restarts of the workers inside the job
        rdzv_port: c10d rendezvous port on node 0 (multi-node)
        mounts: mounts, e.g. ``type=bind,src=/data,dst=/data``
    """
    named = {a.split("=", 1)[0] for a in args} & {"--run", "--run-dir", "--compare"}
    if run_dir is None and not named:
        raise ValueError("evaluate: name the run to evaluate with --run_dir RUN_DIR")
    # --run-dir, not --run: under torchrun, torchrun's own parser would take "--run" for its --run-path.
    full = (["--run-dir", run_dir] if run_dir is not None else []) + list(args)
    resource = role_resource(gpu, cpu, memMB, cpu_per_gpu, mem_gb_per_gpu, shm_gb_per_gpu, h)
    return torchrun_job("evaluate", full, None, name, j, image, resource, env, max_retries, max_restarts, rdzv_port,
                        mounts)


def encode_text(
    *args: str,
    config: Optional[str] = None,
    name: str = "mtl-torchrec-encode-text",
    j: str = "1x1",
    image: Optional[str] = None,
    h: Optional[str] = None,
    gpu: int = 0,
    cpu: int = 0,
    memMB: int = 0,
    cpu_per_gpu: int = DEFAULT_CPU_PER_GPU,
    mem_gb_per_gpu: int = DEFAULT_MEM_GB_PER_GPU,
    shm_gb_per_gpu: int = DEFAULT_SHM_GB_PER_GPU,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    max_restarts: int = 0,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Encodes texts with the language model into the encoding cache or a store keyed by item
    (``mtl-torchrec encode-text``); ``args`` are that sub-command's arguments.

    Args:
        args: arguments of ``mtl-torchrec encode-text``
        config: YAML config file or a packaged config's name, passed as ``--config``
        name: job name, ``{experiment}/{run}`` or ``{run}``
        j: ``[{min_nnodes}:]{nnodes}x{nproc_per_node}``
        image: container image (default: mtl-torchrec:0.1.0-cpu, or mtl-torchrec:0.1.0-cuda with gpu > 0);
            local_cwd runs in the current directory instead
        h: torchx named resource per node (takes precedence over the resource options below)
        gpu: gpus per node
        cpu: cpus per node (0: gpu x cpu_per_gpu, or 2 without GPUs)
        memMB: memory per node in MB, shared memory included (0: 1024 x gpu x (mem_gb_per_gpu +
            shm_gb_per_gpu), or 8192 without GPUs)
        cpu_per_gpu: cpus per GPU when cpu is 0
        mem_gb_per_gpu: memory per GPU in GB (besides shared memory) when memMB is 0
        shm_gb_per_gpu: shared memory (/dev/shm) per GPU in GB, part of the memory when memMB is 0
        env: extra environment variables
        max_retries: scheduler-level retries of the whole job
        max_restarts: torchrun restarts of the workers inside the job
        rdzv_port: c10d rendezvous port on node 0 (multi-node)
        mounts: mounts, e.g. ``type=bind,src=/data,dst=/data``
    """
    resource = role_resource(gpu, cpu, memMB, cpu_per_gpu, mem_gb_per_gpu, shm_gb_per_gpu, h)
    return torchrun_job("encode-text", list(args), config, name, j, image, resource, env, max_retries, max_restarts,
                        rdzv_port, mounts)

