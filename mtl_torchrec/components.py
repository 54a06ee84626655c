"""torchx components: ``mtl-torchrec`` training, evaluation and text encoding as cluster jobs.

Each component builds ``torchrun ... -m mtl_torchrec <sub-command> [--config FILE] [k=v ...]``
on top of torchx's ``dist.ddp`` (so rendezvous, node counts, resources, mounts and retries work
on every torchx scheduler) and adds torchrun's in-job restarts (``max_restarts``). ``train``
gives every job a fixed run directory (``runs/<app id>`` unless ``run_dir=`` is among the
overrides), so a restarted or retried job finds its latest checkpoint there and resumes
(``train.resume=auto``); on several nodes that directory must be on a shared filesystem.

The job's ``PATH`` starts with the ``bin/`` folder of the environment that runs torchx, so a local
job finds that environment's ``torchrun`` without activating it; in a container that folder does
not exist and the image's ``torchrun`` runs. The default image is ``mtl-torchrec:0.1.0-cpu``, or
``mtl-torchrec:0.1.0-cuda`` when the job asks for GPUs: both are built from ``packaging/Dockerfile``
(docs/jobs.md, "Images"); push them to your registry and pass ``--image``.

Examples (from the repository root; every one is run by tests/test_components.py)::

    .venv/bin/torchx run -s local_cwd mtl_torchrec/components.py:train -j 1x2 --config default -- train.epochs=1
    .venv/bin/torchx run -s kubernetes --dryrun -cfg queue=default --workspace "" mtl_torchrec.train -j 2x8 \\
        --gpu 8 --image my/image:tag --config default --max_restarts 3 -- run_dir=/mnt/runs/exp1
    .venv/bin/torchx run -s local_cwd mtl_torchrec/components.py:evaluate --run_dir runs/exp1
"""

# No `from __future__ import annotations` here: torchx decodes CLI arguments from the real types.
from typing import Dict, List, Optional

import torchx.specs as specs

from mtl_torchrec.launch.jobs import torchrun_job

DEFAULT_MEM_MB = 8192


def train(
    *overrides: str,
    config: Optional[str] = None,
    name: str = "mtl-torchrec-train",
    j: str = "1x2",
    image: Optional[str] = None,
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = DEFAULT_MEM_MB,
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
        h: named resource (takes precedence over cpu, gpu, memMB)
        cpu: cpus per node
        gpu: gpus per node
        memMB: memory per node in MB
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
    return torchrun_job("train", args, config, name, j, image, h, cpu, gpu, memMB, env, max_retries, max_restarts,
                rdzv_port, mounts)


def evaluate(
    *args: str,
    run_dir: Optional[str] = None,
    name: str = "mtl-torchrec-evaluate",
    j: str = "1x1",
    image: Optional[str] = None,
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = DEFAULT_MEM_MB,
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
        h: named resource (takes precedence over cpu, gpu, memMB)
        cpu: cpus per node
        gpu: gpus per node
        memMB: memory per node in MB
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
    return torchrun_job("evaluate", full, None, name, j, image, h, cpu, gpu, memMB, env, max_retries,
                        max_restarts, rdzv_port, mounts)


def encode_text(
    *args: str,
    config: Optional[str] = None,
    name: str = "mtl-torchrec-encode-text",
    j: str = "1x1",
    image: Optional[str] = None,
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = DEFAULT_MEM_MB,
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
        h: named resource (takes precedence over cpu, gpu, memMB)
        cpu: cpus per node
        gpu: gpus per node
        memMB: memory per node in MB
        env: extra environment variables
        max_retries: scheduler-level retries of the whole job
        max_restarts: torchrun restarts of the workers inside the job
        rdzv_port: c10d rendezvous port on node 0 (multi-node)
        mounts: mounts, e.g. ``type=bind,src=/data,dst=/data``
    """
    return torchrun_job("encode-text", list(args), config, name, j, image, h, cpu, gpu, memMB, env, max_retries,
                max_restarts, rdzv_port, mounts)

