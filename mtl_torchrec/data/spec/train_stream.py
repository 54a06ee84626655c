"""Training rows streamed from a spec's files: each rank reads its own share of the files, through a
bounded shuffle window, never the whole training split in memory.

The files are cut into **units**: a CSV file, or one row group of a Parquet file. The conversion
pass that follows fitting (:func:`~mtl_torchrec.data.spec.build.build_bundle` with ``stream_train``)
counts each unit's good training rows (:class:`TrainUnits`), which is what makes everything below
deterministic without any collective:

* every epoch permutes the units (seeded by ``[seed, epoch]``) and deals them to the ranks in turn;
* a rank groups its units, in that order, into **windows** of at least ``shuffle_buffer`` training
  rows (the last one may be smaller); a window is read and converted whole (its units in file order),
  shuffled, and cut into batches of ``batch_size`` rows; the rows of a window that do not fill a
  batch are dropped for this epoch (at most ``batch_size - 1`` per window; the next epoch's
  permutation puts them elsewhere), as the in-memory path drops an epoch's last partial global batch;
* every rank runs the same number of steps, the smallest rank's batch count (computed from the
  counts by every rank alike), so an uneven share never hangs a collective; a rank with no unit is
  refused before training (fewer units than ranks);
* the read position is the step: resuming at batch ``k`` of an epoch reads only the window holding
  batch ``k``, so a resumed run sees exactly the batches an uninterrupted one sees;
* the next window is read by a background thread while the current one trains.

Memory: one window (``shuffle_buffer`` rows, or more when a unit is larger) plus the window being
read ahead. With one rank and ``shuffle_buffer`` covering the whole training split, the batches are
those of the in-memory path (:class:`~mtl_torchrec.data.loader.BatchDataset`): the same rows in file
order, the same permutation.

A unit whose training-row count differs from the one counted when the run was fitted (a file
changed or truncated since), a file that disappears, or a row group that cannot be decoded is one
DataError naming the file.

Example::

    bundle = build_bundle(spec, stream_train=True)            # fits, keeps val/test, counts train units
    ds = StreamingBatchDataset(spec, bundle.preprocessing, bundle.schema, bundle.train_units,
                               batch_size=512, shuffle_buffer=100_000, seed=0, rank=0, world_size=1)
    for batch in make_loader(ds): ...
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.schema import ColumnTable, Jagged, Schema
from mtl_torchrec.data.spec.build import ConvertedChunk, build_bundle, convert_chunk, reader_states, take_rows
from mtl_torchrec.data.spec.data_spec import DataSpec
from mtl_torchrec.data.spec.reading import Chunk, file_chunks, file_format, parquet_row_group_chunks


@dataclass
class TrainUnit:
    """One unit of the training files: ``file``, ``part`` (the Parquet row group, -1 for a whole CSV
    file), ``global_start`` (the position of its first row among all rows of all files, which
    row-position splits hash), ``split`` (the file's split when files are given per split) and
    ``train_rows`` (its good training rows when the run was fitted)."""

    file: str
    part: int
    global_start: int
    split: Optional[str]
    train_rows: int


@dataclass
class TrainUnits:
    """Every unit of a spec's files with training rows, in file order (see the module docstring)."""

    units: List[TrainUnit]

    @property
    def train_rows(self) -> int:
        """Good training rows over every unit."""
        return sum(u.train_rows for u in self.units)

    def to_json(self) -> List[Dict[str, Any]]:
        """The JSON form saved with the run (``preprocessing.json``, ``stats["train_units"]``)."""
        return [asdict(u) for u in self.units]

    @staticmethod
    def from_json(d: List[Dict[str, Any]]) -> "TrainUnits":
        """The units saved by :meth:`to_json`."""
        return TrainUnits([TrainUnit(str(u["file"]), int(u["part"]), int(u["global_start"]),
                                     None if u["split"] is None else str(u["split"]), int(u["train_rows"]))
                           for u in d])


def unit_chunks(spec: DataSpec, unit: TrainUnit) -> Iterator[Chunk]:
    """The chunks of one unit, positioned as :func:`~mtl_torchrec.data.spec.reading.iter_chunks`
    positions them. Raises DataError naming the file when it is gone or cannot be decoded."""
    try:
        if unit.part >= 0:
            yield from parquet_row_group_chunks(spec, unit.file, unit.part, unit.global_start, unit.split)
        else:
            yield from file_chunks(spec, unit.file, unit.global_start, unit.split)
    except FileNotFoundError:
        raise DataError(f"{unit.file}: the file is gone (it held {unit.train_rows} training rows when the run "
                        f"was fitted)") from None
    except OSError as e:
        raise DataError(f"{unit.file}: cannot be read ({type(e).__name__}: {e})") from None


class StreamingBatchDataset(IterableDataset):
    """This rank's training batches of one epoch, streamed from the spec's files (see the module docstring).

    Args:
        spec: the data spec (its files are read again every epoch).
        pre: the run's fitted preprocessing (never refitted here).
        schema: the schema batches are built with.
        units: the training units counted when the run was fitted.
        batch_size: rows per batch on each rank (> 0).
        shuffle_buffer: training rows per window (> 0).
        seed, rank, world_size, epoch, skip_batches: as for
            :class:`~mtl_torchrec.data.loader.BatchDataset`.

    Raises ConfigError when there are fewer units than ranks (a rank would read nothing).
    """

    def __init__(self, spec: DataSpec, pre: Preprocessing, schema: Schema, units: TrainUnits, batch_size: int,
                 shuffle_buffer: int, seed: int = 0, rank: int = 0, world_size: int = 1, epoch: int = 0,
                 skip_batches: int = 0) -> None:
        super().__init__()
        if batch_size <= 0 or shuffle_buffer <= 0:
            raise ValueError("batch_size and shuffle_buffer must be positive")
        if len(units.units) < world_size:
            raise ConfigError(
                f"data.shuffle_buffer: streaming deals whole units (a CSV file, a Parquet row group) to the ranks, "
                f"and the training files have {len(units.units)} unit(s) with training rows for {world_size} ranks; "
                f"split the files (or write Parquet with smaller row groups)"
            )
        self.spec, self.pre, self.schema, self.units = spec, pre, schema, units
        self.batch_size, self.shuffle_buffer = batch_size, shuffle_buffer
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.skip_batches = epoch, skip_batches

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Selects the epoch (its unit permutation) and how many of its first batches to skip."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def __len__(self) -> int:
        return self.num_batches() - self.skip_batches

    def windows(self, rank: Optional[int] = None) -> List[List[int]]:
        """The unit indices of each window of ``rank`` (default: this rank) in this epoch."""
        rank = self.rank if rank is None else rank
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.units.units))
        mine = [int(i) for i in order[rank::self.world_size]]
        out: List[List[int]] = [[]]
        rows = 0
        for i in mine:
            out[-1].append(i)
            rows += self.units.units[i].train_rows
            if rows >= self.shuffle_buffer:
                out.append([])
                rows = 0
        return [w for w in out if w]

    def _window_batches(self, rank: int) -> List[int]:
        return [sum(self.units.units[i].train_rows for i in w) // self.batch_size for w in self.windows(rank)]

    def num_batches(self) -> int:
        """Batches per epoch on each rank, before ``skip_batches``: the smallest rank's (the same on every rank)."""
        return min(sum(self._window_batches(r)) for r in range(self.world_size))

    def read_window(self, window: List[int]) -> ColumnTable:
        """The good training rows of the window's units, in file order (units sorted), as one table.
        Raises DataError naming the file when a unit's rows differ from those counted at fitting."""
        states = reader_states(self.spec, self.pre, fitting=False)
        parts: Dict[str, List[Any]] = {}
        for i in sorted(window):
            unit = self.units.units[i]
            got = 0
            for chunk in unit_chunks(self.spec, unit):
                columns, split, _ = convert_chunk(self.spec, self.pre, chunk, states, {})
                train = take_rows(columns, np.flatnonzero(split == "train"))
                got += int((split == "train").sum())
                for name, value in train.items():
                    parts.setdefault(name, []).append(value)
            if got != unit.train_rows:
                raise DataError(f"{unit.file}: {got} training rows now, {unit.train_rows} when the run was fitted"
                                f"{'' if unit.part < 0 else f' (row group {unit.part})'}: the file changed or was "
                                f"truncated since; train again from the files as they are")
        return ColumnTable({name: _join(values) for name, values in parts.items()})

    def _window_rng(self, w: int) -> np.random.Generator:
        # Rank 0's first window draws from the in-memory path's generator, so that one window holding
        # the whole split on one rank is batched exactly as BatchDataset batches the split.
        key = [self.seed, self.epoch] if (self.rank, w) == (0, 0) else [self.seed, self.epoch, self.rank, w]
        return np.random.default_rng(key)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise ConfigError("data.num_workers: streamed training reads in the main process (a background thread "
                              "reads the next window); set data.num_workers: 0")
        windows = self.windows()
        counts = self._window_batches(self.rank)
        total = self.num_batches()
        # The window holding the first batch to produce, and that batch's place in it.
        start, first = 0, self.skip_batches
        while start < len(windows) and first >= counts[start]:
            first -= counts[start]
            start += 1
        produced = self.skip_batches
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="train-window") as pool:
            ahead: Optional[Future] = pool.submit(self.read_window, windows[start]) if start < len(windows) else None
            for w in range(start, len(windows)):
                table = ahead.result() if ahead is not None else None
                ahead = pool.submit(self.read_window, windows[w + 1]) if w + 1 < len(windows) else None
                if produced >= total or table is None:
                    break
                perm = self._window_rng(w).permutation(len(table))
                for b in range(first if w == start else 0, counts[w]):
                    if produced >= total:
                        break
                    rows = perm[b * self.batch_size:(b + 1) * self.batch_size]
                    yield Batch.from_table(table.take(rows), self.schema)
                    produced += 1
            if ahead is not None:
                ahead.cancel()


def _join(values: List[Any]) -> Any:
    if isinstance(values[0], Jagged):
        return Jagged(np.concatenate([v.values for v in values]), np.concatenate([v.lengths for v in values]))
    return np.concatenate(values)


@dataclass
class TrainStream:
    """A training split read from the files every epoch instead of held in memory: the spec, the run's
    preprocessing, the counted units and, per task, the mean of the training labels (NaN without one;
    the model's regression towers start from it, as they start from the in-memory split's mean)."""

    spec: DataSpec
    preprocessing: Preprocessing
    units: TrainUnits
    label_means: Dict[str, float]
    shuffle_buffer: int

    @property
    def train_rows(self) -> int:
        """Good training rows over every unit."""
        return self.units.train_rows

    def dataset(self, schema: Schema, batch_size: int, seed: int, rank: int, world_size: int) -> StreamingBatchDataset:
        """This rank's :class:`StreamingBatchDataset` (epoch 0; the trainer selects epochs)."""
        return StreamingBatchDataset(self.spec, self.preprocessing, schema, self.units, batch_size,
                                     self.shuffle_buffer, seed=seed, rank=rank, world_size=world_size)


def build_streaming_bundle(spec: DataSpec, shuffle_buffer: int,
                           preprocessing: Optional[Preprocessing] = None) -> DataBundle:
    """:func:`~mtl_torchrec.data.spec.build.build_bundle` without the training rows: fits (unless
    ``preprocessing`` is given), keeps the validation and test splits, and counts each unit's
    training rows and the training labels' sums on the way; the bundle's ``train_stream`` reads the
    training rows again, epoch by epoch (the training split's table is empty). The counts are saved
    in the preprocessing's ``stats["train_units"]``.

    Raises what :func:`~mtl_torchrec.data.spec.build.build_bundle` raises, and DataError when the
    training split has no rows."""
    counter = UnitCounter(spec)
    sums: Dict[str, List[float]] = {}

    def count(part: ConvertedChunk) -> None:
        rows = part.split_rows.get("train", np.zeros(0, dtype=np.int64))
        train = np.zeros(len(part.chunk.frame), dtype=bool)
        train[np.flatnonzero(part.keep)[rows]] = True
        counter.add(part.chunk, train)
        for lab in spec.labels:
            y = np.asarray(part.columns[lab.task], dtype=np.float64)[rows]
            y = y[~np.isnan(y)]
            acc = sums.setdefault(lab.task, [0.0, 0])
            acc[0] += float(y.sum())
            acc[1] += len(y)

    bundle = build_bundle(spec, preprocessing, on_chunk=count, drop_splits=("train",))
    units = counter.units()
    if units.train_rows == 0:
        raise DataError("data spec: the training split has no rows (check files and split rule)")
    bundle.preprocessing.stats["train_units"] = units.to_json()
    means = {task: (total / n if n else float("nan")) for task, (total, n) in sums.items()}
    bundle.train_stream = TrainStream(spec, bundle.preprocessing, units, means, shuffle_buffer)
    return bundle


def check_same_units(saved: Preprocessing, now: TrainUnits) -> None:
    """Refuses a resumed streamed run whose training files changed since the run was fitted: the
    units counted now (``now``) must be the ones the run saved (``saved.stats["train_units"]``; a run
    saved without them passes). Raises DataError naming the first file that differs: the batches of
    the remaining steps would otherwise come from other rows than the uninterrupted run's."""
    before = saved.stats.get("train_units")
    if before is None:
        return
    old = TrainUnits.from_json(before).units
    for a, b in zip(old + [None] * len(now.units), now.units + [None] * len(old)):
        if a != b:
            unit = a or b
            assert unit is not None
            was = f"{a.train_rows} training rows" if a is not None else "no training rows"
            has = f"{b.train_rows}" if b is not None else "none"
            raise DataError(f"{unit.file}: the run was fitted when it held {was}"
                            f"{'' if unit.part < 0 else f' in row group {unit.part}'}, it has {has} now: the training "
                            f"files changed since, so a resumed streamed run would not see its batches; restore the "
                            f"files, or train a new run")


class UnitCounter:
    """Counts the good training rows of each unit while a spec's chunks are converted in file order
    (:func:`build_streaming_bundle`): a CSV file is one unit, a Parquet row group another."""

    def __init__(self, spec: DataSpec) -> None:
        self.spec = spec
        self.counts: Dict[Tuple[str, int], TrainUnit] = {}
        self._row_groups: Dict[str, np.ndarray] = {}
        self._file_start: Dict[str, int] = {}

    def add(self, chunk: Chunk, train: np.ndarray) -> None:
        """One chunk (as :func:`~mtl_torchrec.data.spec.reading.iter_chunks` gives it) and which of its
        rows are good training rows (bool over the chunk's rows)."""
        path = chunk.file
        if path not in self._file_start:
            self._file_start[path] = chunk.global_start - int(chunk.positions[0]) if file_format(
                self.spec, path) == "parquet" else chunk.global_start
        if file_format(self.spec, path) != "parquet":
            self._add((path, -1), self._file_start[path], chunk.file_split, int(train.sum()))
            return
        starts = self._row_groups.get(path)
        if starts is None:
            import pyarrow.parquet as pq  # only when a Parquet file is read

            meta = pq.ParquetFile(path).metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            starts = self._row_groups[path] = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        groups = np.searchsorted(starts, chunk.positions, side="right") - 1
        counts = np.bincount(groups[train], minlength=len(starts))
        for g in np.unique(groups):
            self._add((path, int(g)), self._file_start[path] + int(starts[g]), chunk.file_split, int(counts[g]))

    def _add(self, key: Tuple[str, int], global_start: int, split: Optional[str], rows: int) -> None:
        unit = self.counts.get(key)
        if unit is None:
            unit = self.counts[key] = TrainUnit(key[0], key[1], global_start, split, 0)
        unit.train_rows += rows

    def units(self) -> TrainUnits:
        """The units with training rows, in file order."""
        return TrainUnits([u for u in self.counts.values() if u.train_rows > 0])
