"""A finished training run, as :func:`~mtl_torchrec.workflows.train` returns it and
:meth:`Run.load` reads it back from its directory: the input of ``evaluate``, ``predict`` and
``export``.

Example::

    run = Run.load("runs/census")
    run.metrics["income"]["auc"]   # the test metrics of metrics.json
    run.checkpoint                 # runs/census/checkpoints/step_000027 (the tested one)
    run.preprocessing              # runs/census/preprocessing (None for a built-in source)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

from mtl_torchrec.config import Config
from mtl_torchrec.core.errors import DataError
from mtl_torchrec.data.preprocessing import FILE_NAME as PREPROCESSING_FILE
from mtl_torchrec.distributed.checkpoint.run_dir import CHECKPOINTS
from mtl_torchrec.eval.calibration import CALIBRATION_FILE
from mtl_torchrec.eval.evaluate import load_run_config
from mtl_torchrec.serve.runs import PREPROCESSING_DIR

METRICS_FILE = "metrics.json"
SLICE_METRICS_FILE = "metrics_by_slice.json"
SUMMARY_FILE = "train_summary.json"
# Keys of train_summary.json that Run.summary leaves out: the process count and the loss history
# (one entry per logged step, long in a long run), read with Run.history.
HISTORY_KEYS = ("world_size", "history", "epoch_losses")


@dataclass(frozen=True)
class Run:
    """A finished training run: its directory and config, and what training wrote there.

    ``metrics``: the test metrics per task (``metrics.json``: ``{task: {metric: value}}``; empty
    when the data has no test rows); ``slices``: the same per slice (``metrics_by_slice.json``:
    ``{slice: {"rows": N, "tasks": {...}}}``); ``summary``: ``train_summary.json`` but for the
    loss history (steps, samples/s, the tested checkpoint, selection and calibration blocks; the
    history: :meth:`history`);
    ``test_calibration``: with ``train.calibration``, the test metrics before / after calibration
    (``{"tasks": {task: {"before": {...}, "after": {...}}}}``), else None.

    On ranks other than 0 of a multi-rank training, ``metrics`` and ``slices`` are what that rank
    computed (the exact metrics exist on rank 0, which writes the files).
    """

    run_dir: Path
    config: Config
    metrics: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    slices: Dict[str, Any] = field(default_factory=dict)
    summary: Dict[str, Any] = field(default_factory=dict)
    test_calibration: Optional[Dict[str, Any]] = None

    @property
    def checkpoint(self) -> Optional[Path]:
        """The checkpoint folder the test metrics come from (``checkpoints/step_N``: the best one
        with ``train.select_by``, else the final state); None when the summary does not name it."""
        name = self.summary.get("tested_checkpoint")
        return self.run_dir / CHECKPOINTS / name if name else None

    @property
    def preprocessing(self) -> Optional[Path]:
        """The folder of the fitted preprocessing (``preprocessing/``) of a data-spec run, which
        ``predict`` and ``export`` need; None for a run of a built-in source."""
        folder = self.run_dir / PREPROCESSING_DIR
        return folder if (folder / PREPROCESSING_FILE).is_file() else None

    @property
    def calibration_file(self) -> Optional[Path]:
        """``calibration.json`` (with ``train.calibration``), which evaluate and predict apply; else None."""
        path = self.run_dir / CALIBRATION_FILE
        return path if path.is_file() else None

    def history(self) -> Dict[str, Any]:
        """The loss history of ``train_summary.json``: ``history`` (losses and learning rates per logged
        step), ``epoch_losses`` (per-epoch mean losses) and ``world_size`` (read from the file)."""
        full = _read_json(self.run_dir / SUMMARY_FILE)
        return {k: full.get(k) for k in HISTORY_KEYS}

    @classmethod
    def load(cls, run_dir: Union[str, Path]) -> Run:
        """The run that training left in ``run_dir`` (``config.yaml``, ``metrics.json``,
        ``train_summary.json`` and, when written, ``metrics_by_slice.json``).

        Raises FileNotFoundError when ``run_dir`` is not a run directory (no ``config.yaml``) or its
        training has not finished (no ``metrics.json`` / ``train_summary.json``), ConfigError when
        its ``config.yaml`` cannot be read, DataError when one of its JSON files cannot be read.
        """
        run_dir = Path(run_dir)
        config = load_run_config(run_dir)
        metrics = _read_json(run_dir / METRICS_FILE)
        summary = {k: v for k, v in _read_json(run_dir / SUMMARY_FILE).items() if k not in HISTORY_KEYS}
        slices_path = run_dir / SLICE_METRICS_FILE
        slices = _read_json(slices_path) if slices_path.is_file() else {}
        tested = (summary.get("calibration") or {}).get("test")
        return cls(run_dir, config, metrics, slices, summary, {"tasks": tested} if tested else None)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing: the run's training has not finished (or it is not a run directory)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot be read: {e}") from None


RunLike = Union[Run, str, Path]


def run_dir_of(run: RunLike) -> Path:
    """The directory of ``run``: a :class:`Run` or a run directory's path."""
    return run.run_dir if isinstance(run, Run) else Path(run)
