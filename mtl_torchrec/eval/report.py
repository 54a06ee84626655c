"""Markdown evaluation report and run comparison tables.

Example::

    text = markdown_report(summary, plot_paths, rows, tasks)        # report.md content
    table = compare_table(load_eval("runs/a"), load_eval("runs/b"))  # fixed-width text, side by side
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from mtl_torchrec.data.label_kinds import LABEL_KINDS

# The per-task columns of each label kind are its ``report_columns`` (data/label_kinds.py).
# The before / after columns of a calibrated evaluation.
CALIBRATION_COLUMNS = ("calibration", "ece", "logloss", "auc")
# For --compare: higher is better (+), lower is better (-), calibration is best at 1.
_DIRECTION = {"auc": 1, "gauc": 1, "gauc_unweighted": 1, "logloss": -1, "ne": -1, "ece": -1, "rmse": -1, "mae": -1,
              "mse": -1}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.4f}"
    return str(v)


def _metric(block: Dict[str, Any], value: Any) -> str:
    """A metric of a task's ``block`` for :func:`compare_table`: ``n/a`` for an undefined one (NaN in
    memory, ``null`` in eval.json), ``-`` when the evaluation has no such task."""
    return "n/a" if value is None and block else _fmt(value)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats with 4 decimals, ``n/a`` for NaN, ``-`` for None."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _task_tables(tasks: Dict[str, Dict[str, Any]]) -> List[str]:
    """One table per label kind present (in registration order), of its ``report_columns``."""
    out = []
    for name, kind in LABEL_KINDS.items():
        of_kind = {k: v for k, v in tasks.items() if v.get("type") == name}
        if of_kind:
            cols = kind.report_columns
            out.append(md_table(["task", *cols], [[k, *(v.get(c) for c in cols)] for k, v in of_kind.items()]))
    return out


def regression_bins(pred: np.ndarray, label: np.ndarray, bins: int = 5,
                    weight: Optional[np.ndarray] = None) -> List[List[Any]]:
    """Rows of (label range, count, mean label, mean prediction, RMSE, MAE) by label quantile.

    With ``weight`` (per row, sample weights), the means and errors are weighted; the bin edges
    and counts stay those of the rows."""
    if len(label) == 0:
        return []
    w = np.ones(len(label)) if weight is None else np.asarray(weight, dtype=np.float64)
    edges = np.unique(np.quantile(label, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        edges = np.array([label.min(), label.max()])
    idx = np.clip(np.searchsorted(edges, label, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        sel = idx == b
        if not sel.any():
            continue
        err = pred[sel] - label[sel]
        if weight is None:
            means = [label[sel].mean(), pred[sel].mean(), np.sqrt((err**2).mean()), np.abs(err).mean()]
        else:
            ws = w[sel] if w[sel].sum() > 0 else np.ones(int(sel.sum()))
            means = [np.average(label[sel], weights=ws), np.average(pred[sel], weights=ws),
                     np.sqrt(np.average(err**2, weights=ws)), np.average(np.abs(err), weights=ws)]
        rows.append([f"[{edges[b]:.3g}, {edges[b + 1]:.3g}{']' if b == len(edges) - 2 else ')'}", int(sel.sum()),
                     *(float(v) for v in means)])
    return rows


def calibration_table(block: Dict[str, Any]) -> str:
    """A Markdown table of an evaluation's ``calibration`` block: per binary entry, calibration,
    ECE, logloss and AUC before and after."""
    header = ["task", *(f"{c} {when}" for c in CALIBRATION_COLUMNS for when in ("before", "after"))]
    body = [[task, *(v[when].get(c) for c in CALIBRATION_COLUMNS for when in ("before", "after"))]
            for task, v in block["tasks"].items()]
    return md_table(header, body)


def markdown_report(summary: Dict[str, Any], plots: Sequence[Path], rows: Any, tasks: Sequence[Any],
                    out_dir: Optional[Path] = None) -> str:
    """The ``report.md`` text of an :func:`~mtl_torchrec.eval.evaluate.evaluate_run` summary: run and
    data, metrics per task, regression errors by label range, slices, and the plots (linked relative
    to ``out_dir`` when given).
    """
    s = summary
    parts = [
        f"# Evaluation: {Path(s['run']).name} on split `{s['split']}`",
        "",
        f"- run: `{s['run']}`",
        f"- checkpoint: `{s['checkpoint']}` (step {s.get('checkpoint_step')})",
        f"- data: source `{s['data']['source']}`" + (f", spec `{s['data']['spec']}`" if s['data'].get('spec') else ""),
        f"- rows: {s['rows']} evaluated on {s['world_size']} rank(s), "
        f"{s['timing']['rows_per_s']:.0f} rows/s scoring",
    ]
    stats = s["data"].get("stats") or {}
    if stats.get("skipped_rows"):
        parts.append(f"- bad rows skipped while reading: {stats['skipped_rows']} "
                     f"({', '.join(f'{k}: {v}' for k, v in stats['skipped_by_reason'].items())})")
    for message in s.get("warnings", []):
        parts.append(f"- **warning:** {message}")
    for message in s.get("notes", []):
        parts.append(f"- note: {message}")
    parts += ["", "## Metrics per task", ""]
    parts += [t + "\n" for t in _task_tables(s["tasks"])]
    notes = []
    for name, v in s["tasks"].items():
        if "groups" in v:
            notes.append(f"- `{name}` GAUC by `{s['group']}`: {v['groups_used']} of {v['groups']} groups have both "
                         f"classes; {v['groups_one_class']} one-class groups skipped. `gauc` weights groups by rows.")
        if "weight_sum" in v:
            notes.append(f"- `{name}` is weighted by its sample weights (total {v['weight_sum']:.6g} over {v['count']} "
                         f"rows): every metric counts a row of weight k as k copies of it.")
        if "space" in v:
            notes.append(f"- `{name}` is evaluated in the {v['space']} space.")
    parts += notes + ([""] if notes else [])
    parts.append("AUC counts tied scores as half. NE is logloss divided by the entropy of the observed positive "
                 "rate; calibration is mean prediction / observed rate (1 is calibrated); ECE averages "
                 "|mean prediction - positive rate| over 20 bins of equal row count.\n")
    if s.get("calibration"):
        c = s["calibration"]
        parts += ["## Calibration", "",
                  f"Predictions above are calibrated by `{c['method']}`, fitted on split `{c['fitted_on']}` for step "
                  f"{c['checkpoint_step']} (`calibration.json`); the model's own predictions before:", "",
                  calibration_table(c), ""]
    reg = [t for t in tasks if not LABEL_KINDS.get(t.type).probability]
    if reg and rows is not None:
        parts += ["## Regression by label range", ""]
        for t in reg:
            m = rows.masks[t.name]
            w = getattr(rows, "weights", {}).get(t.name)
            if w is not None and s["tasks"].get(t.name, {}).get("weight_sum") is not None:
                m = m & (w > 0)
                w = w[m]
            else:
                w = None
            table = regression_bins(rows.predictions[t.name][m].astype(np.float64),
                                    rows.labels[t.name][m].astype(np.float64), weight=w)
            parts += [f"**{t.name}**", "", md_table(["label range", "count", "mean label", "mean prediction",
                                                       "RMSE", "MAE"], table), ""]
    if s.get("slices"):
        parts += ["## Slices", ""]
        for task in s["tasks"]:
            cols = LABEL_KINDS.get(s["tasks"][task].get("type")).slice_columns
            body = [[name, sl["rows"], *(sl["tasks"][task].get(c) for c in cols)] for name, sl in s["slices"].items()]
            parts += [f"**{task}**", "", md_table(["slice", "rows", *cols], body), ""]
    if plots:
        parts += ["## Plots", ""]
        for p in plots:
            rel = Path(p).relative_to(out_dir) if out_dir is not None else Path(p)
            parts += [f"![{Path(p).stem}]({rel.as_posix()})", ""]
    return "\n".join(parts).rstrip() + "\n"


def load_eval(path: str, split: str = "test") -> Dict[str, Any]:
    """``eval.json`` from a file path, an evaluation folder or a run directory."""
    p = Path(path)
    for cand in (p, p / "eval.json", p / "eval" / split / "eval.json"):
        if cand.is_file():
            return json.loads(cand.read_text(encoding="utf-8"))
    raise FileNotFoundError(f"{path}: no eval.json (run `mtl-torchrec evaluate --run {path}` first)")


def compare_table(a: Dict[str, Any], b: Dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """Fixed-width side-by-side metrics of two evaluations with B - A and which one is better."""
    lines = [f"{'task':<16}{'metric':<18}{name_a[:16]:>16}{name_b[:16]:>16}{'B - A':>12}  better"]
    for task in list(dict.fromkeys([*a["tasks"], *b["tasks"]])):
        ta, tb = a["tasks"].get(task, {}), b["tasks"].get(task, {})
        cols = LABEL_KINDS.get(ta.get("type") or tb.get("type")).report_columns
        for c in cols:
            va, vb = ta.get(c), tb.get(c)
            diff = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
            better = ""
            if diff is not None and not math.isnan(diff) and diff != 0:
                if c in _DIRECTION:
                    better = "B" if diff * _DIRECTION[c] > 0 else "A"
                elif c == "calibration":
                    better = "B" if abs(vb - 1) < abs(va - 1) else "A"
            lines.append(f"{task:<16}{c:<18}{_metric(ta, va):>16}{_metric(tb, vb):>16}{_fmt(diff):>12}  {better}")
    if a.get("split") != b.get("split") or a.get("rows") != b.get("rows"):
        lines.append(f"note: A is {a.get('rows')} rows of '{a.get('split')}', B is {b.get('rows')} rows of "
                     f"'{b.get('split')}': not the same evaluation data")
    return "\n".join(lines)
