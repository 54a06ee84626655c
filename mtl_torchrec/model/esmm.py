"""ESMM (and AITM) labels checked against the data, where both the data and the tasks are known.

ESMM (Ma et al., SIGIR 2018) trains ``p(parent) * p(task | parent)`` against the label
``parent AND task`` over all impressions, and evaluation scores that product against the same
label (see :mod:`mtl_torchrec.model.tasks`), so the data's task label must already be that AND. A
row with ``conversion = 1`` where ``click = 0`` breaks it silently: the product can never reach 1
on a non-click, and the "click AND conversion" metric would be computed on the raw label.

:func:`check_esmm_labels` runs at the start of ``train`` and ``evaluate``, before any model is
built or file written. Such rows are an error naming their count and the first few (split, row
and, for data specs, file line), unless the ESMM task sets ``esmm_derive_and_label: true``; then
the label is replaced by ``parent AND task`` on those rows and a note says how many changed. Rows
whose parent label is missing (masked) are left as they are: the AND is unknown there.
An AITM task (``aitm_parent``) is trained against the same ``parent AND task``: such rows are an
error for it (there is no derive option).

Example::

    notes = check_esmm_labels(bundle, cfg.model.tasks)          # every split (train)
    notes = check_esmm_labels(bundle, cfg.model.tasks, ["test"])  # the evaluated split
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.bundle import DataBundle

# Rows named in the error message.
SHOWN_ROWS = 5
_ORDER = {"train": 0, "val": 1, "test": 2}


def check_esmm_labels(data: DataBundle, tasks: Sequence[Any], splits: Optional[Sequence[str]] = None) -> List[str]:
    """Checks each ESMM task of ``tasks`` (``model.tasks`` entries: ``name``, ``esmm_parent``,
    ``esmm_derive_and_label``) on ``splits`` of ``data`` (default: all).

    Returns notes for the tasks whose labels were derived (``esmm_derive_and_label``): the labels
    of ``data`` are changed in place to ``parent AND task``. Raises ConfigError for
    ``esmm_derive_and_label`` on a task without ``esmm_parent``, DataError for rows with the task
    label 1 where the parent label is 0 on a task without it. A task or parent without a label
    column in the data is left to the model builder to report.
    """
    notes: List[str] = []
    labels = {lab.task: lab.column_name for lab in data.schema.labels}
    # Messages list train, val, test first (the bundle's order follows the files).
    names = sorted(splits if splits is not None else data.splits, key=lambda s: (_ORDER.get(s, len(_ORDER)), s))
    for i, task in enumerate(tasks):
        derive = bool(getattr(task, "esmm_derive_and_label", False))
        parent = task.esmm_parent
        if parent is None:
            if derive:
                raise ConfigError(f"model.tasks[{i}].esmm_derive_and_label: only for an ESMM task (set esmm_parent)")
            aitm = getattr(task, "aitm_parent", None)
            if aitm is not None:
                _check_aitm_labels(data, i, task.name, aitm, labels, names)
            continue
        if task.name not in labels or parent not in labels:
            continue
        bad: Dict[str, np.ndarray] = {}
        for split in names:
            table = data.splits[split]
            rows = np.flatnonzero((table[labels[parent]] == 0) & (table[labels[task.name]] == 1))
            if len(rows):
                bad[split] = rows
        total = sum(len(r) for r in bad.values())
        if total == 0:
            continue
        what = f"model.tasks[{i}] '{task.name}' (esmm_parent '{parent}')"
        if not derive:
            raise DataError(
                f"{what}: {total} row(s) have {task.name} = 1 where {parent} = 0, e.g. {_first_rows(data, bad)}; "
                f"ESMM trains and scores {task.name} as {parent} AND {task.name}. Fix the labels, or set "
                f"model.tasks[{i}].esmm_derive_and_label: true to use {parent} AND {task.name}"
            )
        for split, rows in bad.items():
            table = data.splits[split]
            y = np.array(table[labels[task.name]], dtype=np.float32, copy=True)
            y[rows] = 0.0
            table.columns[labels[task.name]] = y
        per_split = ", ".join(f"{split} {len(rows)}" for split, rows in bad.items())
        notes.append(f"{what}: label set to {parent} AND {task.name} on {total} row(s) ({per_split}) "
                     f"(esmm_derive_and_label)")
    return notes


def _check_aitm_labels(
    data: DataBundle, index: int, task: str, parent: str, labels: Dict[str, str], splits: Sequence[str]
) -> None:
    """DataError for rows of an AITM task (``model.tasks[index]``, ``aitm_parent``) labelled 1
    where the parent is labelled 0: AITM trains the task against ``parent AND task`` and its
    calibrator pushes p(task) below p(parent), so such a label contradicts both."""
    if task not in labels or parent not in labels:
        return
    bad: Dict[str, np.ndarray] = {}
    for split in splits:
        table = data.splits[split]
        rows = np.flatnonzero((table[labels[parent]] == 0) & (table[labels[task]] == 1))
        if len(rows):
            bad[split] = rows
    total = sum(len(r) for r in bad.values())
    if total:
        raise DataError(
            f"model.tasks[{index}] '{task}' (aitm_parent '{parent}'): {total} row(s) have {task} = 1 where "
            f"{parent} = 0, e.g. {_first_rows(data, bad)}; AITM trains {task} as {parent} AND {task} and "
            f"calibrates p({task}) <= p({parent}). Fix the labels"
        )


def _first_rows(data: DataBundle, bad: Dict[str, np.ndarray]) -> str:
    """The first :data:`SHOWN_ROWS` rows of ``bad`` as ``"<split> row <i> (<file> line <n>)"``."""
    shown: List[str] = []
    for split, rows in bad.items():
        take = [int(r) for r in rows[: SHOWN_ROWS - len(shown)]]
        origin = data.row_origin(split, take) if data.row_origin is not None else [None] * len(take)
        shown += [f"{split} row {r}" + (f" ({o})" if o else "") for r, o in zip(take, origin)]
        if len(shown) >= SHOWN_ROWS:
            break
    return ", ".join(shown)
