"""The evaluation workflow: score a trained run on a split (or other data) and write its report.

Writes ``eval.json``, ``report.md`` and PNG plots to ``RUN/eval/<split>/`` (or ``out``); works in
one process or under ``torchrun``. ``mtl-torchrec evaluate`` is :func:`evaluate` behind a command line.

Example::

    result = evaluate("runs/census")                     # or a Run from train()
    result.summary["tasks"]["income"]["auc"]
    evaluate(run, "new/*.parquet", write=False)          # other rows (split "all"), no files
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from mtl_torchrec.core.io import atomic_write_text, write_json
from mtl_torchrec.distributed.context import DistContext
from mtl_torchrec.eval.evaluate import evaluate_run
from mtl_torchrec.eval.plots import write_plots
from mtl_torchrec.eval.report import markdown_report
from mtl_torchrec.eval.scoring import EvalResult
from mtl_torchrec.workflows.common import process_group
from mtl_torchrec.workflows.run import RunLike, run_dir_of


def evaluate(
    run: RunLike,
    data: Optional[str] = None,
    *,
    split: str = "test",
    checkpoint: Optional[str] = None,
    calibrate: bool = True,
    batch_size: Optional[int] = None,
    slices: Sequence[str] = (),
    slice_top: int = 10,
    out: Union[str, Path, None] = None,
    write: bool = True,
    plots: bool = True,
    progress: bool = False,
    ctx: Optional[DistContext] = None,
) -> EvalResult:
    """Evaluates ``run`` (a :class:`~mtl_torchrec.workflows.run.Run` or a run directory) and, with
    ``write``, writes ``eval.json``, ``report.md`` and (with ``plots``) ``plots/*.png`` to ``out``
    (default :func:`eval_dir`) on rank 0. Returns the
    :class:`~mtl_torchrec.eval.scoring.EvalResult`: ``summary`` (the ``eval.json`` content,
    ``summary["tasks"]``: the metrics per task) and, on rank 0, the scored rows.

    ``data``: another YAML data spec, or CSV / Parquet files (a path or glob) read with the run's
    spec (every row then in split ``all``); default the run's own data. ``checkpoint``: ``latest``,
    ``best`` or ``step_N`` (default: best for a run trained with ``train.select_by``, else latest).
    ``calibrate``: apply the run's ``calibration.json``. ``slices``: categorical columns to report
    per value (their ``slice_top`` most frequent values). ``progress``: stage messages and a bar on
    stderr. ``batch_size``: rows per rank per step (default ``data.eval_batch_size``). ``ctx``: as in
    :func:`~mtl_torchrec.workflows.train`.

    Raises what :func:`~mtl_torchrec.eval.evaluate.evaluate_run` raises: FileNotFoundError (no run
    directory or checkpoint), ConfigError (``split``, ``slices``, ``data``), DataError (bad data, an
    empty split) and CheckpointError.
    """
    run_dir = run_dir_of(run)
    with process_group(ctx) as group:
        result = evaluate_run(run_dir, group, data_spec=data, split=split, batch_size=batch_size,
                              slice_columns=slices, slice_top=slice_top, progress=progress,
                              checkpoint=checkpoint, calibrate=calibrate)
        if write and group.is_main:
            write_outputs(result, Path(out) if out else eval_dir(run_dir, result.summary["split"]),
                          plots=plots)
    return result


def eval_dir(run_dir: Union[str, Path], split: str) -> Path:
    """Where an evaluation of ``split`` is written by default: ``RUN/eval/<split>``."""
    return Path(run_dir) / "eval" / split


def write_outputs(result: EvalResult, out_dir: Path, plots: bool = True) -> Path:
    """eval.json, plots/*.png and report.md (which links the plots) under ``out_dir``; returns ``out_dir``."""
    out_dir = Path(out_dir)
    paths = write_plots(result.rows, result.tasks, out_dir / "plots", result.summary) if plots else []
    result.summary["plots"] = [p.relative_to(out_dir).as_posix() for p in paths]
    write_json(out_dir / "eval.json", result.summary)
    atomic_write_text(out_dir / "report.md", markdown_report(result.summary, paths, result.rows, result.tasks, out_dir))
    return out_dir
