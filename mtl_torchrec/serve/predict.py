"""Per-row scores of a trained run for any rows with its feature columns (labels optional).

Rows are mapped with the run's saved preprocessing by the training data path
(:mod:`mtl_torchrec.data.spec.features`) and scored by the model restored unsharded from its DCP
checkpoint, batch by batch. Files are streamed chunk by chunk (``chunk_rows`` of the spec): each
chunk is converted, scored and appended to the output Parquet file (a ``pyarrow.ParquetWriter`` on a
temporary file, renamed over ``--out`` at the end), so memory does not grow with the rows. Under
torchrun every rank holds the whole model and scores its share of each chunk; rank 0 gathers the
scores and writes them.

Output columns: ``row`` (0-based position of the input row; rows that ``on_bad_rows: skip`` drops are
absent), the passed-through key columns, then one column per prediction: a probability per binary
task, a value per regression task; an ESMM task ``t`` with parent ``p`` gives ``p`` (pCTR),
``t_given_p`` (pCVR) and ``t`` (pCTCVR). With the run's ``calibration.json`` (fitted for the scored
checkpoint) the prediction columns are calibrated and ``<name>_raw`` holds the model's own.

Example::

    scores = predict_frame(Path("runs/census"), df)           # DataFrame: row, click, rating, ...
    predict_files(load_run(Path("runs/census")), "new.csv", Path("scores.parquet"), ctx)
"""

from __future__ import annotations

import contextlib
import glob
import logging
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.core.io import atomic_path
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.preprocessing import skipped_rows_suffix
from mtl_torchrec.data.schema import ColumnTable
from mtl_torchrec.data.spec import load_spec, spec_files
from mtl_torchrec.data.spec.features import FeatureChunk, FeatureRows, feature_spec, files_spec
from mtl_torchrec.distributed.context import DistContext
from mtl_torchrec.model.tasks import predictions
from mtl_torchrec.serve.runs import LoadedRun, load_run

logger = logging.getLogger(__name__)

RAW_SUFFIX = "_raw"


def rows_per_step(batch_size: Optional[int], default: int) -> int:
    """``batch_size``, or ``default`` when it is None; ValueError naming ``batch_size`` below 1."""
    if batch_size is None:
        return int(default)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
    return batch_size


def score_table(run: LoadedRun, table: ColumnTable, rows: FeatureRows, batch_size: int) -> Dict[str, np.ndarray]:
    """Predictions (float64, ``{name: [N]}``) for every row of a converted ``table``; with the run's
    calibration the names hold calibrated values and ``<name>_raw`` the model's own."""
    model = run.module.model
    parts: Dict[str, List[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, len(table), batch_size):
            idx = np.arange(start, min(start + batch_size, len(table)))
            batch = Batch.from_table(table.take(idx), rows.schema)
            out = model(batch)
            preds = predictions(out.logits, run.tasks)
            for name, value in preds.items():
                parts.setdefault(name, []).append(value.double().cpu().numpy())
    raw = {k: np.concatenate(v) for k, v in parts.items()}
    if not raw:
        raw = {k: np.zeros(0) for k in output_names(run)}
    if run.calibration is None:
        return raw
    calibrated = run.calibration.apply_numpy(raw)
    out = dict(calibrated)
    out.update({f"{k}{RAW_SUFFIX}": v for k, v in raw.items()})
    return out


def output_names(run: LoadedRun) -> List[str]:
    """The prediction names of the run's model (tasks, then ESMM conditional entries)."""
    names = [t.name for t in run.tasks]
    names += [f"{t.name}_given_{t.esmm_parent}" for t in run.tasks if t.esmm_parent is not None]
    return names


def _frame_of(part: FeatureChunk, scores: Dict[str, np.ndarray], keep: Sequence[str]) -> pd.DataFrame:
    cols: Dict[str, object] = {"row": part.rows.astype(np.int64)}
    for c in keep:
        cols[c] = part.frame[c].to_numpy()
    cols.update(scores)
    return pd.DataFrame(cols)


def _check_keep(keep: Sequence[str], columns: Iterable[str], name: str, source: str) -> None:
    have = set(columns)
    missing = [c for c in keep if c not in have]
    if missing:
        raise ConfigError(f"{name}: column(s) {missing} are not in {source} (columns: {sorted(have)})")


def predict_frame(run: Union[Path, str, LoadedRun], frame: pd.DataFrame, keep: Sequence[str] = (),
                  batch_size: Optional[int] = None, checkpoint: Optional[str] = None) -> pd.DataFrame:
    """Scores the raw rows of ``frame`` (the run's feature columns; label columns optional and
    ignored) with a run directory or a :func:`load_run` result; one process.

    Returns a DataFrame of ``row``, the ``keep`` columns and the predictions (see the module
    docstring). Raises DataError naming missing feature columns or a bad row, and what
    :func:`load_run` raises.
    """
    if not isinstance(run, LoadedRun):
        run = load_run(Path(run), checkpoint)
    spec = feature_spec(run.spec, list(frame.columns), text=run.cfg.model.text.enabled, where="the DataFrame",
                        labels=False)
    _check_keep(keep, frame.columns, "keep", "the DataFrame")
    rows = FeatureRows(spec, run.preprocessing)
    part = rows.convert_frame(frame)
    warn_about_rows(rows)
    scores = score_table(run, part.table, rows, rows_per_step(batch_size, run.cfg.data.eval_batch_size))
    return _frame_of(FeatureChunk(part.table, part.rows, frame.reset_index(drop=True).iloc[part.rows]), scores, keep)


def data_rows(run: LoadedRun, data: str) -> FeatureRows:
    """The converter of ``data``: a CSV / Parquet file (or glob) read with the run's spec options, or
    a YAML data spec (its files and column options; labels optional). DataError naming missing
    feature columns per file."""
    text = run.cfg.model.text.enabled
    if data.endswith((".yaml", ".yml")):
        own = load_spec(data)
        spec = files_spec(own, [p for p, _ in spec_files(own)], text, labels=False)
    else:
        found = sorted(glob.glob(data))
        if not found:
            raise FileNotFoundError(f"--data: nothing matches '{data}'")
        spec = files_spec(run.spec, found, text, labels=False)
    return FeatureRows(spec, run.preprocessing)


def predict_files(run: LoadedRun, data: str, out: Path, ctx: DistContext, keep: Sequence[str] = (),
                  batch_size: Optional[int] = None) -> int:
    """Scores ``data`` (see :func:`data_rows`) chunk by chunk into the Parquet file ``out`` (written by
    rank 0: a temporary file renamed at the end). All ranks call it; each scores its contiguous share
    of every chunk. Returns the rows written (on rank 0; 0 elsewhere)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = data_rows(run, data)
    read = set(rows.spec.raw_columns())
    _check_keep(keep, read, "--keep", "the columns read from the data")
    batch_size = rows_per_step(batch_size, run.cfg.data.eval_batch_size)
    out = Path(out)
    writer: Optional[pq.ParquetWriter] = None
    written = 0
    # Rank 0 writes into a temporary file beside --out, renamed over it only when every chunk is in.
    with (atomic_path(out) if ctx.is_main else contextlib.nullcontext(None)) as tmp:
        try:
            for part in rows.read_files():
                n = len(part.rows)
                lo, hi = n * ctx.rank // ctx.world_size, n * (ctx.rank + 1) // ctx.world_size
                mine = FeatureChunk(part.table.take(np.arange(lo, hi)), part.rows[lo:hi], part.frame.iloc[lo:hi])
                frame = _frame_of(mine, score_table(run, mine.table, rows, batch_size), keep)
                frames = _gather(frame, ctx)
                if not ctx.is_main:
                    continue
                whole = pd.concat(frames, ignore_index=True)
                table = pa.Table.from_pandas(whole, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(str(tmp), table.schema)
                writer.write_table(table)
                written += len(whole)
            if ctx.is_main and written == 0:
                # Nothing is renamed over --out: an empty prediction file would read as a success.
                raise DataError(f"--data: '{data}' has no rows to score"
                                + skipped_rows_suffix(rows.skipped))
        finally:
            if writer is not None:
                writer.close()
    if ctx.is_main:
        warn_about_rows(rows)
    return written


def warn_about_rows(rows: FeatureRows) -> None:
    """Logs ``warning: ...`` (a WARNING of this module's logger; the command line shows it on
    stderr) for each of :meth:`FeatureRows.skipped_rows_warnings` (rows dropped under
    ``on_bad_rows: skip``: they have no prediction) and :meth:`FeatureRows.unknown_id_warnings` (ids
    mostly unknown to the run, in another form than in training): the lines ``evaluate`` logs."""
    for message in rows.skipped_rows_warnings() + rows.unknown_id_warnings():
        logger.warning("warning: %s", message)


def _gather(frame: pd.DataFrame, ctx: DistContext) -> List[pd.DataFrame]:
    if ctx.world_size == 1 or not dist.is_initialized():
        return [frame]
    got: List[Optional[pd.DataFrame]] = [None] * ctx.world_size if ctx.is_main else []  # type: ignore[assignment]
    dist.gather_object(frame, got if ctx.is_main else None, dst=0)
    return [f for f in got if f is not None] if ctx.is_main else []
