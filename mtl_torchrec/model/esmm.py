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

import functools
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.schema import ColumnTable

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
    column in the data is left to the model builder to report. (:class:`LabelCheck` does the same
    piece by piece, for rows read in chunks.)
    """
    check = LabelCheck(tasks, {lab.task: lab.column_name for lab in data.schema.labels})
    # Messages list train, val, test first (the bundle's order follows the files).
    names = sorted(splits if splits is not None else data.splits, key=lambda s: (_ORDER.get(s, len(_ORDER)), s))
    for split in names:
        origin = None if data.row_origin is None else functools.partial(data.row_origin, split)
        check.check(split, data.splits[split], origin=origin)
    return check.finish()


class LabelCheck:
    """The ESMM and AITM label checks of :func:`check_esmm_labels`, over a split's rows given piece
    by piece (a streamed split, chunk by chunk): :meth:`check` each piece in row order (labels are
    derived in place where a task asks for it), then :meth:`finish` raises or returns the notes,
    with the same messages as for the whole split at once.

    Args:
        tasks: ``model.tasks`` entries (``name``, ``esmm_parent``, ``esmm_derive_and_label``,
            ``aitm_parent``).
        labels: task -> its label column in the tables.

    Raises ConfigError for ``esmm_derive_and_label`` on a task without ``esmm_parent``.
    """

    def __init__(self, tasks: Sequence[Any], labels: Dict[str, str]) -> None:
        self.tasks = list(tasks)
        self.labels = labels
        for i, task in enumerate(self.tasks):
            if task.esmm_parent is None and getattr(task, "esmm_derive_and_label", False):
                raise ConfigError(f"model.tasks[{i}].esmm_derive_and_label: only for an ESMM task (set esmm_parent)")
        # Task index -> split -> rows labelled 1 where the parent is labelled 0.
        self.bad: Dict[int, Dict[str, int]] = {}
        # Task index -> the first SHOWN_ROWS such rows, as "<split> row <i> (<file> line <n>)".
        self.shown: Dict[int, List[str]] = {}

    def _parent(self, task: Any) -> Optional[str]:
        return task.esmm_parent if task.esmm_parent is not None else getattr(task, "aitm_parent", None)

    def _derives(self, task: Any) -> bool:
        return task.esmm_parent is not None and bool(getattr(task, "esmm_derive_and_label", False))

    def check(self, split: str, table: ColumnTable, start: int = 0,
              origin: Optional[Callable[[Sequence[int]], List[Optional[str]]]] = None) -> None:
        """Checks one piece of split ``split``: ``table`` holds its rows ``start, start + 1, ...``;
        ``origin`` names the file line of table rows (called for the few rows a message shows, only
        for a task that will fail). Labels of ``esmm_derive_and_label`` tasks are set to ``parent AND
        task`` in ``table``."""
        for i, task in enumerate(self.tasks):
            parent = self._parent(task)
            if parent is None or task.name not in self.labels or parent not in self.labels:
                continue
            column = self.labels[task.name]
            rows = np.flatnonzero((table[self.labels[parent]] == 0) & (table[column] == 1))
            if not len(rows):
                continue
            counts = self.bad.setdefault(i, {})
            counts[split] = counts.get(split, 0) + len(rows)
            if self._derives(task):
                y = np.array(table[column], dtype=np.float32, copy=True)
                y[rows] = 0.0
                table.columns[column] = y
                continue
            shown = self.shown.setdefault(i, [])
            take = [int(r) for r in rows[: SHOWN_ROWS - len(shown)]]
            if take:
                where = origin(take) if origin is not None else [None] * len(take)
                shown += [f"{split} row {start + r}" + (f" ({o})" if o else "") for r, o in zip(take, where)]

    def may_fail(self) -> bool:
        """Whether some task's labels can be refused (an AITM task, or an ESMM one without
        ``esmm_derive_and_label``, whose labels are both present)."""
        return any(self._parent(t) is not None and not self._derives(t) and t.name in self.labels
                   and self._parent(t) in self.labels for t in self.tasks)

    @property
    def failed(self) -> bool:
        """Whether some task has rows that :meth:`finish` will refuse."""
        return any(not self._derives(self.tasks[i]) for i in self.bad)

    def finish(self) -> List[str]:
        """The notes of the derived tasks, or DataError for the first task (in ``tasks`` order) with
        rows labelled 1 where its parent is 0 (naming their count and the first few rows)."""
        notes: List[str] = []
        for i, task in enumerate(self.tasks):
            counts = self.bad.get(i)
            if not counts:
                continue
            total = sum(counts.values())
            parent = self._parent(task)
            example = ", ".join(self.shown.get(i, []))
            if task.esmm_parent is None:
                raise DataError(
                    f"model.tasks[{i}] '{task.name}' (aitm_parent '{parent}'): {total} row(s) have {task.name} = 1 "
                    f"where {parent} = 0, e.g. {example}; AITM trains {task.name} as {parent} AND {task.name} and "
                    f"calibrates p({task.name}) <= p({parent}). Fix the labels"
                )
            what = f"model.tasks[{i}] '{task.name}' (esmm_parent '{parent}')"
            if not self._derives(task):
                raise DataError(
                    f"{what}: {total} row(s) have {task.name} = 1 where {parent} = 0, e.g. {example}; ESMM trains "
                    f"and scores {task.name} as {parent} AND {task.name}. Fix the labels, or set "
                    f"model.tasks[{i}].esmm_derive_and_label: true to use {parent} AND {task.name}"
                )
            per_split = ", ".join(f"{split} {n}" for split, n in counts.items())
            notes.append(f"{what}: label set to {parent} AND {task.name} on {total} row(s) ({per_split}) "
                         f"(esmm_derive_and_label)")
        return notes
