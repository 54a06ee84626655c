"""Per-task offline metrics through ``torchrec.metrics``, aggregated across ranks.

Binary tasks: AUC, NE, calibration (mean prediction / observed rate), positive rate, logloss.
Regression tasks: RMSE, MAE. Rows are weighted by the task's label mask, so masked rows (no
label) and padding rows never count.

Example::

    metrics = TaskMetrics(tasks, world_size=1, rank=0, batch_size=1024)
    metrics.update(predictions, batch)
    metrics.compute()   # {"click": {"auc": ..., "ne": ..., ...}, "rating": {"rmse": ..., ...}}
"""

from __future__ import annotations

from typing import Dict, List

import torch
from torchrec.metrics.auc import AUCMetric
from torchrec.metrics.calibration import CalibrationMetric
from torchrec.metrics.ctr import CTRMetric
from torchrec.metrics.mae import MAEMetric
from torchrec.metrics.metrics_config import RecComputeMode, RecTaskInfo
from torchrec.metrics.mse import MSEMetric
from torchrec.metrics.ne import NEMetric

from mtl_torchrec.data.batch import Batch
from mtl_torchrec.model.tasks import TaskSpec

_BINARY = {"auc": AUCMetric, "ne": NEMetric, "calibration": CalibrationMetric, "positive_rate": CTRMetric}
_REGRESSION = {"mse": MSEMetric, "mae": MAEMetric}


class TaskMetrics:
    def __init__(self, tasks: List[TaskSpec], world_size: int, rank: int, batch_size: int) -> None:
        self.tasks = tasks
        self._metrics: Dict[str, Dict[str, object]] = {}
        # Sum of weighted logloss / count per binary task, kept here since torchrec reports NE only.
        self._logloss: Dict[str, torch.Tensor] = {}
        for t in tasks:
            info = RecTaskInfo(name=t.name, label_name=t.name, prediction_name=t.name, weight_name=t.name)
            kinds = _BINARY if t.type == "binary" else _REGRESSION
            self._metrics[t.name] = {
                key: cls(
                    world_size=world_size,
                    my_rank=rank,
                    batch_size=batch_size,
                    tasks=[info],
                    compute_mode=RecComputeMode.UNFUSED_TASKS_COMPUTATION,
                    window_size=10**9,
                    compute_on_all_ranks=True,
                )
                for key, cls in kinds.items()
            }
            if t.type == "binary":
                self._logloss[t.name] = torch.zeros(2, dtype=torch.float64)

    def update(self, predictions: Dict[str, torch.Tensor], batch: Batch) -> None:
        for t in self.tasks:
            p = predictions[t.name].detach().float()
            y = batch.labels[t.name].float()
            w = batch.masks[t.name].float()
            for m in self._metrics[t.name].values():
                m.update(predictions={t.name: p}, labels={t.name: y}, weights={t.name: w})
            if t.type == "binary":
                pc = p.clamp(1e-7, 1 - 1e-7)
                ll = -(y * pc.log() + (1 - y) * (1 - pc).log())
                self._logloss[t.name] += torch.stack([(ll * w).sum(), w.sum()]).double()

    def compute(self) -> Dict[str, Dict[str, float]]:
        import torch.distributed as dist

        out: Dict[str, Dict[str, float]] = {}
        for t in self.tasks:
            res: Dict[str, float] = {}
            for key, m in self._metrics[t.name].items():
                values = m.compute()
                # AUC keeps only a window (sized to hold the whole evaluation); others have lifetime.
                chosen = [v for k, v in values.items() if "lifetime" in k] or [
                    v for k, v in values.items() if "window" in k
                ]
                res[key] = float(chosen[0].reshape(-1)[0]) if chosen else float("nan")
            if t.type == "binary":
                ll = self._logloss[t.name].clone()
                if dist.is_initialized() and dist.get_world_size() > 1:
                    dist.all_reduce(ll)
                res["logloss"] = float(ll[0] / ll[1].clamp_min(1.0))
                res["count"] = float(ll[1])
            else:
                res["rmse"] = res["mse"] ** 0.5
            out[t.name] = res
        return out


def format_table(metrics: Dict[str, Dict[str, float]]) -> str:
    """A fixed-width per-task table of metric values."""
    cols: List[str] = []
    for values in metrics.values():
        cols += [k for k in values if k not in cols and k != "count"]
    lines = [f"{'task':<14}" + "".join(f"{c:>14}" for c in cols)]
    for task, values in metrics.items():
        cells = [f"{values[c]:>14.4f}" if c in values else f"{'-':>14}" for c in cols]
        lines.append(f"{task:<14}" + "".join(cells))
    return "\n".join(lines)
