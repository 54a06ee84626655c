"""The export workflow: an inference artifact of a trained run (TorchScript or ``torch.export``
model with fp32 or INT8 tables, the fitted preprocessing as JSON, the calibration); see
:mod:`mtl_torchrec.serve.export` and docs/serving.md. ``mtl-torchrec export`` is :func:`export`
behind a command line.

Example::

    folder = export(run, "artifacts/census")
    load_artifact(folder).predict(frame)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from mtl_torchrec.serve.export import export_run
from mtl_torchrec.workflows.run import RunLike, run_dir_of


def export(
    run: RunLike,
    out: Union[str, Path],
    *,
    int8: bool = False,
    fmt: str = "torchscript",
    checkpoint: Optional[str] = None,
    calibrate: bool = True,
    overwrite: bool = False,
) -> Path:
    """Writes the artifact of ``run`` (a :class:`~mtl_torchrec.workflows.run.Run` or a run directory,
    trained on a data spec) to the folder ``out`` (under a temporary name, then renamed); returns
    ``out``, which :func:`~mtl_torchrec.serve.export.load_artifact` loads. One process.

    ``int8``: embedding tables quantised row-wise to int8 (TorchScript only). ``fmt``:
    ``torchscript`` (``model.pt``) or ``export`` (``model.pt2``, ``torch.export`` with a dynamic
    batch dimension). ``checkpoint``: ``latest``, ``best`` or ``step_N`` (default as ``evaluate``
    chooses). ``calibrate``: include the run's ``calibration.json`` fitted for that checkpoint.
    ``overwrite``: replace an existing ``out``.

    Raises what :func:`~mtl_torchrec.serve.export.export_run` raises: ConfigError (an unknown
    ``fmt``, ``int8`` with ``export``, an existing ``out``), DataError (a run without fitted
    preprocessing), FileNotFoundError and CheckpointError.
    """
    return export_run(run_dir_of(run), Path(out), int8=int8, fmt=fmt, checkpoint=checkpoint, calibrate=calibrate,
                      overwrite=overwrite)
