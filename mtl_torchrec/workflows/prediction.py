"""The prediction workflow: per-row scores of a trained run for raw rows (a DataFrame) or files.

A DataFrame is scored in this process and the scores come back as a DataFrame; CSV / Parquet files
(or a YAML data spec) are streamed chunk by chunk into a Parquet file, in one process or under
``torchrun``. Columns: ``row``, the ``keep`` columns, one prediction per task (see
:mod:`mtl_torchrec.serve.predict`). ``mtl-torchrec predict`` is :func:`predict` behind a command line.

Example::

    scores = predict(run, frame)                                    # DataFrame: row, income, ...
    written = predict(run, "new.csv", "scores.parquet")             # PredictionFile
    written.rows, written.read()
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import pandas as pd

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.distributed.context import DistContext
from mtl_torchrec.serve.predict import predict_files, predict_frame
from mtl_torchrec.serve.runs import load_run
from mtl_torchrec.workflows.common import process_group
from mtl_torchrec.workflows.run import RunLike, run_dir_of


@dataclass(frozen=True)
class PredictionFile:
    """The scores :func:`predict` wrote: the Parquet file, its rows (0 on ranks other than 0), the
    checkpoint that scored them and whether the run's calibration was applied."""

    path: Path
    rows: int
    checkpoint: Path
    calibrated: bool

    def read(self) -> pd.DataFrame:
        """The scores as a DataFrame (``pandas.read_parquet`` of :attr:`path`)."""
        return pd.read_parquet(self.path)


def predict(
    run: RunLike,
    data: Union[pd.DataFrame, str, Path],
    out: Union[str, Path, None] = None,
    *,
    keep: Sequence[str] = (),
    checkpoint: Optional[str] = None,
    calibrate: bool = True,
    batch_size: Optional[int] = None,
    ctx: Optional[DistContext] = None,
) -> Union[pd.DataFrame, PredictionFile]:
    """Scores ``data`` with ``run`` (a :class:`~mtl_torchrec.workflows.run.Run` or a run directory,
    trained on a data spec: its fitted preprocessing maps the raw rows as in training).

    ``data``: a DataFrame of the run's feature columns (labels optional and ignored): the scores are
    returned as a DataFrame (one process; ``out`` must be None). Or a CSV / Parquet file (or glob)
    read with the run's spec options, or a YAML data spec: the scores are streamed into the Parquet
    file ``out`` (written to a temporary file, then renamed) and a :class:`PredictionFile` is
    returned. ``keep``: input columns copied into the output. ``checkpoint``: ``latest``, ``best`` or
    ``step_N`` (default as ``evaluate`` chooses); ``calibrate``: apply the run's ``calibration.json``
    fitted for that checkpoint. ``batch_size``: rows per step (default ``data.eval_batch_size``).
    ``ctx``: as in :func:`~mtl_torchrec.workflows.train` (files only).

    Raises ConfigError for a missing or directory ``out`` with files (or an ``out`` with a DataFrame)
    and ``keep`` columns the data lacks, and what :func:`~mtl_torchrec.serve.runs.load_run` raises
    (a run without fitted preprocessing is a DataError saying so); DataError naming missing feature
    columns or a bad row.
    """
    run_dir = run_dir_of(run)
    if isinstance(data, pd.DataFrame):
        if out is not None:
            raise ConfigError("out: a DataFrame's scores are returned, not written; leave out out, or pass a file")
        return predict_frame(load_run(run_dir, checkpoint, calibrate=calibrate), data, keep=keep,
                             batch_size=batch_size)
    if out is None:
        raise ConfigError(f"out: name the Parquet file to write the scores of '{data}' to")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"out: '{out}' is a directory; name the file to write")
    with process_group(ctx) as group:
        loaded = load_run(run_dir, checkpoint, calibrate=calibrate)
        rows = predict_files(loaded, str(data), out, group, keep=keep, batch_size=batch_size)
    return PredictionFile(out, rows, loaded.checkpoint, loaded.calibration is not None)
