"""One split of a spec's files, read chunk by chunk and converted with a run's fitted preprocessing:
what streamed evaluation reads instead of a whole :class:`~mtl_torchrec.data.bundle.DataBundle`.

Every chunk goes through :class:`~mtl_torchrec.data.spec.build.SpecReader`, the path
:func:`~mtl_torchrec.data.spec.build.build_bundle` takes (same conversion, bad-row handling, split
rule, unknown-id counts and statistics), and only the requested split's rows are handed on, one
table per chunk. Per row, only the slice membership stays behind (:class:`SliceRows`: a boolean per
cold/warm slice, an int32 code per top-value slice); memory is bounded by ``chunk_rows``, not by
the files.

Example::

    stream = SplitStream(load_spec("data.yaml"), Preprocessing.load(run_dir / "preprocessing"), "test")
    stream.model_data.schema                 # what the model is built from (no rows)
    for piece in stream.pieces():            # SplitPiece: .table (ColumnTable), .where(i) -> "<file> line <n>"
        ...
    stream.slice_masks(), stream.stats()     # once every piece is read
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, NamedTuple

import numpy as np

from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.schema import ColumnTable
from mtl_torchrec.data.spec.build import SliceRows, SpecReader, checked_chunk, take_rows
from mtl_torchrec.data.spec.data_spec import DataSpec
from mtl_torchrec.data.spec.fitting import schema_for
from mtl_torchrec.data.spec.reading import Chunk, iter_chunks


class SplitPiece(NamedTuple):
    """The rows of one chunk that belong to the split: ``table`` (converted columns), ``chunk`` (the
    raw chunk they were read from) and ``rows`` (the chunk row of each table row)."""

    table: ColumnTable
    chunk: Chunk
    rows: np.ndarray

    def where(self, i: int) -> str:
        """``"<file> line <n>"`` (CSV) or ``"<file> row <n>"`` (Parquet) of table row ``i``."""
        return self.chunk.where(int(self.rows[i]))


class SplitStream:
    """Split ``split`` of ``spec``'s files, chunk by chunk (see the module docstring).

    Args:
        spec: the data spec to read.
        pre: the run's fitted preprocessing (never refitted).
        split: one of :meth:`split_names` (the caller resolves it).
        text: False leaves the text features out of the tables and of :attr:`model_data` (a run
            trained without them), as :meth:`DataBundle.without_text` does; they are still
            converted, so unknown text keys are counted in :meth:`stats` as before.
        check_layout: checks the spec's feature layout against ``pre`` first (False when the
            caller has checked the spec the one given was narrowed from).

    Raises what :class:`~mtl_torchrec.data.spec.build.SpecReader` raises (before any row is read).
    """

    def __init__(self, spec: DataSpec, pre: Preprocessing, split: str, text: bool = True,
                 check_layout: bool = True) -> None:
        self.spec = spec
        self.split = split
        self.reader = SpecReader(spec, pre, check_layout=check_layout)
        whole = DataBundle(schema=schema_for(spec, pre), splits={}, texts=self.reader.texts.tables(), preprocessing=pre)
        # Row-less: the schema and text tables the model is built from.
        self.model_data = whole if text else whole.without_text()
        self._dropped = set(whole.texts) - set(self.model_data.texts)
        self.slices = SliceRows(spec, pre)
        self.rows = 0

    def split_names(self) -> List[str]:
        """The splits the files give (see :meth:`SpecReader.split_names`)."""
        return self.reader.split_names()

    def pieces(self) -> Iterator[SplitPiece]:
        """The split's rows of every chunk that has some, in file order. Raises what reading and
        converting a chunk raises (bad rows, item keys), when it reaches that chunk."""
        for part in self.reader.chunks():
            rows = part.split_rows.get(self.split)
            if rows is None:
                continue
            columns = take_rows({k: v for k, v in part.columns.items() if k not in self._dropped}, rows)
            tokens = part.slice_tokens(self.spec, rows)
            self.slices.add(tokens, columns)
            self.rows += len(rows)
            yield SplitPiece(ColumnTable(columns), part.chunk, np.flatnonzero(part.keep)[rows])

    def label_pieces(self) -> Iterator[SplitPiece]:
        """The split's labels of every chunk (table columns: one per task, NaN where masked), in file
        order: a cheaper first pass than :meth:`pieces` (rows are read and checked, bad rows dropped
        or refused alike, but nothing is converted), for checks that must see every label before
        any row is scored."""
        skip = self.spec.on_bad_rows == "skip"
        for chunk in iter_chunks(self.spec):
            checked, _ = checked_chunk(self.spec, self.reader.pre, chunk, skip, {})
            rows = np.flatnonzero(~checked.bad.bad & (checked.split == self.split))
            if len(rows):
                yield SplitPiece(ColumnTable({task: y[rows] for task, y in checked.labels.items()}), chunk, rows)

    def slice_masks(self) -> Dict[str, np.ndarray]:
        """The split's slices (``spec.slices``) over every row read so far, as
        :func:`~mtl_torchrec.data.spec.build.build_bundle` gives them in ``DataBundle.slices``."""
        return self.slices.masks()

    def stats(self) -> Dict[str, Any]:
        """The statistics of the files read so far (see :meth:`SpecReader.stats`)."""
        return self.reader.stats()
