"""PNG plots for evaluation reports (matplotlib, Agg backend: no display needed).

Example::

    paths = write_plots(rows, tasks, out_dir / "plots", summary)
    # binary tasks: roc_<task>.png, scores_<task>.png, calibration.png; regression tasks: regression_<task>.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from mtl_torchrec.core.io import atomic_path
from mtl_torchrec.data.label_kinds import LABEL_KINDS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_curve(pred: np.ndarray, label: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct score threshold."""
    order = np.argsort(-pred, kind="stable")
    p, y = pred[order], label[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(p) != 0), len(p) - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(1 - y)[last_of_tie]
    tpr = np.r_[0.0, tp / max(tp[-1], 1e-12)] if len(tp) else np.zeros(1)
    fpr = np.r_[0.0, fp / max(fp[-1], 1e-12)] if len(fp) else np.zeros(1)
    return fpr, tpr


def reliability_bins(pred: np.ndarray, label: np.ndarray, bins: int = 10) -> Dict[str, np.ndarray]:
    """Quantile bins of the score: mean prediction, observed rate and rows per bin.

    Quantile (not equal-width) bins keep every bin populated for skewed scores such as CTRs.
    """
    if len(pred) == 0:
        return {"mean_prediction": np.zeros(0), "observed_rate": np.zeros(0), "count": np.zeros(0)}
    edges = np.unique(np.quantile(pred, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, max(len(edges) - 2, 0))
    count = np.bincount(idx, minlength=max(len(edges) - 1, 1)).astype(np.float64)
    keep = count > 0
    mp = np.bincount(idx, weights=pred, minlength=len(count))[keep] / count[keep]
    rate = np.bincount(idx, weights=label, minlength=len(count))[keep] / count[keep]
    return {"mean_prediction": mp, "observed_rate": rate, "count": count[keep]}


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Quantiles ``q`` (in [0, 1]) of ``values`` with per-row ``weights`` (> 0): the smallest value
    whose cumulative weight reaches ``q`` of the total, so a row of weight k gives the same
    quantiles as k copies of it."""
    order = np.argsort(values, kind="stable")
    v, cw = values[order], np.cumsum(weights[order])
    idx = np.searchsorted(cw, np.asarray(q) * cw[-1], side="left")
    return v[np.clip(idx, 0, len(v) - 1)]


def residual_bins(pred: np.ndarray, label: np.ndarray, weight: Optional[np.ndarray] = None,
                  bins: int = 10) -> Dict[str, np.ndarray]:
    """Residuals (observed - predicted) by quantile bucket of the prediction: per non-empty bucket
    the mean prediction, mean residual, its standard deviation (population, ddof 0), rows and
    weight.

    With ``weight`` (sample weights > 0, one per row) the bucket edges are weighted quantiles and the
    means and deviations weighted, so a row of weight k counts as k copies of it (as every metric
    does); without it every row weighs 1.
    """
    w = np.ones(len(pred)) if weight is None else np.asarray(weight, dtype=np.float64)
    keys = ("mean_prediction", "mean_residual", "sd_residual", "count", "weight")
    if len(pred) == 0:
        return {k: np.zeros(0) for k in keys}
    edges = np.unique(weighted_quantiles(pred, w, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, max(len(edges) - 2, 0))
    n = max(len(edges) - 1, 1)
    wsum = np.bincount(idx, weights=w, minlength=n)
    count = np.bincount(idx, minlength=n).astype(np.float64)
    keep = wsum > 0
    res = label - pred
    mean_res = np.bincount(idx, weights=w * res, minlength=n)[keep] / wsum[keep]
    mean_pred = np.bincount(idx, weights=w * pred, minlength=n)[keep] / wsum[keep]
    dev = res - np.bincount(idx, weights=w * res, minlength=n)[idx] / np.maximum(wsum[idx], 1e-300)
    sd = np.sqrt(np.bincount(idx, weights=w * dev**2, minlength=n)[keep] / wsum[keep])
    return {"mean_prediction": mean_pred, "mean_residual": mean_res, "sd_residual": sd, "count": count[keep],
            "weight": wsum[keep]}


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def plot_roc(pred: np.ndarray, label: np.ndarray, task: str, auc: float, path: Path) -> Path:
    """Writes the ROC curve of one binary task, its AUC in the legend, as a PNG at ``path``; returns ``path``."""
    plt = _pyplot()
    fpr, tpr = roc_curve(pred, label)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"{task} (AUC {auc:.4f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {task}", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_calibration(data: Dict[str, Tuple[np.ndarray, np.ndarray]], path: Path, bins: int = 10) -> Path:
    """Reliability diagram: observed rate against mean prediction per score bin, all binary tasks."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    top = 0.0
    for task, (pred, label) in data.items():
        b = reliability_bins(pred, label, bins)
        if len(b["count"]) == 0:
            continue
        ax.plot(b["mean_prediction"], b["observed_rate"], marker="o", label=f"{task} ({bins} quantile bins)")
        top = max(top, float(b["mean_prediction"].max()), float(b["observed_rate"].max()))
    top = min(1.0, top * 1.05 + 1e-3)
    ax.plot([0, top], [0, top], ls="--", c="grey", lw=1, label="perfectly calibrated")
    ax.set(xlabel="mean prediction in bin", ylabel="observed positive rate in bin", title="Calibration",
           xlim=(0, top), ylim=(0, top))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_score_histogram(pred: np.ndarray, label: np.ndarray, task: str, path: Path) -> Path:
    """Writes the score densities of label-0 and label-1 rows as a PNG at ``path``; returns ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    edges = np.linspace(float(pred.min()) if len(pred) else 0.0, float(pred.max()) if len(pred) else 1.0, 41)
    for value, name, color in ((0, "label 0", "tab:blue"), (1, "label 1", "tab:orange")):
        sel = pred[label == value]
        if len(sel):
            ax.hist(sel, bins=edges, density=True, alpha=0.55, color=color, label=f"{name} (n={len(sel)})")
    ax.set(xlabel="predicted probability", ylabel="density", title=f"Scores by label: {task}")
    ax.legend()
    ax.grid(alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_regression(pred: np.ndarray, label: np.ndarray, task: str, path: Path,
                    weight: Optional[np.ndarray] = None, bins: int = 10) -> Path:
    """Writes two panels for one regression task as a PNG at ``path``; returns ``path``.

    Left: predicted against observed as a hexbin (colour: rows, or total sample weight with
    ``weight``) with the y = x line. Right: residuals (observed - predicted) by quantile bucket of
    the prediction, mean +- one standard deviation (:func:`residual_bins`). With ``weight`` both
    panels are weighted and the title says so.
    """
    plt = _pyplot()
    w = np.ones(len(pred)) if weight is None else np.asarray(weight, dtype=np.float64)
    how = "weighted by sample weights" if weight is not None else "unweighted"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.3), layout="constrained")
    lo = float(min(pred.min(), label.min())) if len(pred) else 0.0
    hi = float(max(pred.max(), label.max())) if len(pred) else 1.0
    pad = 0.02 * (hi - lo) + 1e-6
    lo, hi = lo - pad, hi + pad
    if len(pred):
        hb = left.hexbin(pred, label, C=w, reduce_C_function=np.sum, gridsize=30, cmap="Blues", mincnt=1,
                         extent=(lo, hi, lo, hi))
        fig.colorbar(hb, ax=left, label="total sample weight" if weight is not None else "rows")
    left.plot([lo, hi], [lo, hi], ls="--", c="grey", lw=1, label="y = x")
    left.set(xlabel="predicted", ylabel="observed", xlim=(lo, hi), ylim=(lo, hi), title=f"Predicted vs observed: {task}")
    left.legend(loc="upper left")
    left.grid(alpha=0.3)
    b = residual_bins(pred, label, weight, bins)
    right.errorbar(b["mean_prediction"], b["mean_residual"], yerr=b["sd_residual"], marker="o", capsize=3,
                   label=f"mean \u00b1 sd ({bins} quantile buckets)")
    right.axhline(0.0, ls="--", c="grey", lw=1)
    right.set(xlabel="mean prediction in bucket", ylabel="observed - predicted", title=f"Residuals by prediction: {task}")
    right.legend(loc="best", fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(f"{task}: {len(pred)} rows, {how}")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def write_plots(rows, tasks, out_dir: Path, summary: Dict) -> List[Path]:
    """All plots of ``rows`` (a :class:`~mtl_torchrec.eval.evaluate.ScoredRows`): ROC, score
    histograms and one calibration diagram for the tasks whose label kind predicts probabilities
    (binary), :func:`plot_regression` for the others (regression) (weighted by their sample weights where the task has them, i.e. where
    ``summary["tasks"][task]`` has ``weight_sum``)."""
    out_dir = Path(out_dir)
    paths: List[Path] = []
    calib: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for t in tasks:
        if not LABEL_KINDS.get(t.type).probability:
            paths += _regression_plot(rows, t.name, out_dir, summary)
            continue
        m = rows.masks[t.name]
        p, y = rows.predictions[t.name][m].astype(np.float64), rows.labels[t.name][m].astype(np.float64)
        if len(p) == 0:
            continue
        calib[t.name] = (p, y)
        auc = summary["tasks"][t.name].get("auc", float("nan"))
        if 0 < y.sum() < len(y):
            paths.append(plot_roc(p, y, t.name, auc, out_dir / f"roc_{t.name}.png"))
        paths.append(plot_score_histogram(p, y, t.name, out_dir / f"scores_{t.name}.png"))
    if calib:
        paths.append(plot_calibration(calib, out_dir / "calibration.png"))
    return paths


def _regression_plot(rows, task: str, out_dir: Path, summary: Dict) -> List[Path]:
    m = rows.masks[task]
    w = getattr(rows, "weights", {}).get(task)
    weighted = w is not None and summary["tasks"].get(task, {}).get("weight_sum") is not None
    if weighted:
        m = m & (w > 0)  # weight-0 rows count nowhere, as in the metrics
    if not m.any():
        return []
    p, y = rows.predictions[task][m].astype(np.float64), rows.labels[task][m].astype(np.float64)
    return [plot_regression(p, y, task, out_dir / f"regression_{task}.png", w[m] if weighted else None)]
