"""Streamed training data (data/spec/train_stream.py): units, windows, equal steps on every rank,
exact positions, the in-memory path's batches when one window holds the split, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtl_torchrec.config import load_config
from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.loader import BatchDataset
from mtl_torchrec.data.spec import build_bundle, load_spec
from mtl_torchrec.data.spec.train_stream import (
    StreamingBatchDataset,
    TrainUnits,
    build_streaming_bundle,
    check_same_units,
)
from tests.eval_fixtures import TRAIN_CONFIG, make_frame, spec_dict, train_spec_run, write_case
from tests.ranks import run_ranks


def _same(a: Batch, b: Batch) -> bool:
    return (torch.equal(a.dense, b.dense) and torch.equal(a.sparse.values(), b.sparse.values())
            and torch.equal(a.sparse.lengths(), b.sparse.lengths()) and a.sparse.keys() == b.sparse.keys()
            and all(torch.equal(a.labels[t], b.labels[t]) and torch.equal(a.masks[t], b.masks[t]) for t in a.labels)
            and torch.equal(a.group, b.group))


def _parquet_case(tmp: Path, files: int = 3, row_group: int = 50, n: int = 600) -> Path:
    """``files`` Parquet files of the fixture's rows, row groups of ``row_group`` rows."""
    frame = make_frame(n)
    tmp.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(n), files)):
        frame.iloc[part].to_parquet(tmp / f"part-{i}.parquet", index=False, row_group_size=row_group)
    return write_case(tmp / "spec", frame, spec_dict(str(tmp / "part-*.parquet")))


def _stream(bundle, batch_size: int, buffer: int, rank: int = 0, world: int = 1) -> StreamingBatchDataset:
    bundle.train_stream.shuffle_buffer = buffer
    return bundle.train_stream.dataset(bundle.schema, batch_size, seed=3, rank=rank, world_size=world)


def test_one_window_of_the_whole_split_is_the_in_memory_path(tmp_path: Path) -> None:
    spec = load_spec(write_case(tmp_path, make_frame()))
    whole = build_bundle(spec)
    streamed = build_streaming_bundle(spec, shuffle_buffer=10**6)
    assert len(streamed.splits["train"]) == 0 and streamed.train_stream.train_rows == len(whole.splits["train"])
    assert len(streamed.splits["val"]) == len(whole.splits["val"])
    expected = BatchDataset(whole.splits["train"], whole.schema, 32, shuffle=True, seed=3)
    got = _stream(streamed, 32, 10**6)
    for epoch in (0, 1):
        expected.set_epoch(epoch)
        got.set_epoch(epoch)
        a, b = list(expected), list(got)
        assert len(a) == len(b) == got.num_batches() == 480 // 32
        assert all(_same(x, y) for x, y in zip(a, b))
    # The regression tower starts from the streamed mean, as from the in-memory split's.
    ratings = whole.splits["train"]["rating"]
    assert streamed.train_stream.label_means["rating"] == pytest.approx(float(np.nanmean(ratings)), rel=1e-12)


def test_parquet_row_groups_are_units_dealt_to_ranks(tmp_path: Path) -> None:
    spec = load_spec(_parquet_case(tmp_path))
    bundle = build_streaming_bundle(spec, shuffle_buffer=100)
    units = bundle.train_stream.units.units
    # 3 files of 200 rows, row groups of 50: 12 units, 480 training rows in all.
    assert len(units) == 12 and {u.part for u in units} == {0, 1, 2, 3}
    assert bundle.train_stream.train_rows == 480
    ranks = [_stream(bundle, 16, 100, rank=r, world=2) for r in range(2)]
    steps = ranks[0].num_batches()
    assert steps == ranks[1].num_batches() > 0
    shares = [sorted(i for w in ds.windows() for i in w) for ds in ranks]
    # Each rank reads its own units, together every unit once per epoch, a different deal every epoch.
    assert not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == list(range(12))
    ranks[0].set_epoch(1)
    assert sorted(i for w in ranks[0].windows() for i in w) != shares[0]
    for ds in ranks:
        ds.set_epoch(0)
        assert len(list(ds)) == steps


def test_windows_bound_memory_and_the_position_resumes_exactly(tmp_path: Path) -> None:
    spec = load_spec(_parquet_case(tmp_path))
    bundle = build_streaming_bundle(spec, shuffle_buffer=90)
    ds = _stream(bundle, 16, 90)
    windows = ds.windows()
    sizes = [len(ds.read_window(w)) for w in windows]
    # At least the buffer per window but the last, never more than the buffer plus one unit (40 training rows).
    assert all(90 <= s < 90 + 40 for s in sizes[:-1]) and sum(sizes) == 480
    ds.set_epoch(2)
    full = list(ds)
    for skip in (1, 5, len(full) - 1):
        ds.set_epoch(2, skip_batches=skip)
        tail = list(ds)
        assert len(tail) == len(full) - skip and all(_same(x, y) for x, y in zip(tail, full[skip:]))


def test_bad_files_are_one_error_naming_the_file(tmp_path: Path) -> None:
    spec = load_spec(_parquet_case(tmp_path))
    bundle = build_streaming_bundle(spec, shuffle_buffer=50)
    ds = _stream(bundle, 16, 50)
    # A file rewritten with fewer rows since the run was fitted.
    part = tmp_path / "part-1.parquet"
    frame = pd.read_parquet(part)
    frame.iloc[:120].to_parquet(part, index=False, row_group_size=50)
    with pytest.raises(DataError, match=r"part-1\.parquet: .*(training rows now|row group)"):
        for _ in ds:
            pass
    part.unlink()
    with pytest.raises(DataError, match=r"part-1\.parquet: the file is gone"):
        for _ in ds:
            pass
    with pytest.raises(ConfigError, match=r"12 unit\(s\) with training rows for 16 ranks"):
        _stream(bundle, 16, 50, world=16)


def test_a_resumed_run_refuses_training_files_changed_since_fitting(tmp_path: Path) -> None:
    spec = load_spec(_parquet_case(tmp_path))
    saved = build_streaming_bundle(spec, shuffle_buffer=50).preprocessing
    check_same_units(saved, TrainUnits.from_json(saved.stats["train_units"]))  # unchanged: passes
    part = tmp_path / "part-2.parquet"
    pd.read_parquet(part).iloc[:150].to_parquet(part, index=False, row_group_size=50)
    now = build_streaming_bundle(spec, shuffle_buffer=50).train_stream.units
    with pytest.raises(DataError, match=r"part-2\.parquet: the run was fitted when it held 40 training rows in row "
                                        r"group 3, it has none now: the training files changed since"):
        check_same_units(saved, now)


def test_a_damaged_row_group_is_one_error_naming_the_file(tmp_path: Path) -> None:
    spec = load_spec(_parquet_case(tmp_path, files=1, row_group=100))
    bundle = build_streaming_bundle(spec, shuffle_buffer=50)
    path = tmp_path / "part-0.parquet"
    data = bytearray(path.read_bytes())
    # Scramble the middle of the file (column data) and keep the footer readable.
    data[len(data) // 3: len(data) // 3 + 200] = bytes(200)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"part-0\.parquet: "):
        for _ in _stream(bundle, 16, 50):
            pass


def _runs_equal(a: Path, b: Path) -> None:
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())


@pytest.mark.slow
def test_streamed_training_equals_in_memory_training_on_one_rank(tmp_path: Path) -> None:
    """One window holding the split: the same batches, so the same run to the last digit."""
    spec = write_case(tmp_path, make_frame())
    steps = ["train.epochs=2", "train.max_steps=0"]
    memory = train_spec_run(spec, tmp_path / "memory", steps)
    streamed = train_spec_run(spec, tmp_path / "streamed", [*steps, "data.shuffle_buffer=100000"])
    _runs_equal(memory, streamed)
    summary = json.loads((streamed / "train_summary.json").read_text())
    assert summary["steps"] == 2 * (480 // 64)


def _stream_worker(rank: int, world_size: int, root: str) -> None:
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.workflows import train

    root_p = Path(root)
    spec = root_p / "data" / "spec" / "spec.yaml"
    base = [*TRAIN_CONFIG, "data.source=spec", f"data.spec={spec}", "data.shuffle_buffer=60", "data.batch_size=16",
            "train.epochs=2", "train.max_steps=0", "train.checkpoint_every=4"]
    ctx = init_distributed("gloo")
    try:
        # Uninterrupted; and stopped mid-epoch (inside a window), then resumed from that step.
        train(load_config(None, [*base, f"run_dir={root_p / 'full'}"]), ctx)
        train(load_config(None, [*base, f"run_dir={root_p / 'part'}", "train.max_steps=9"]), ctx)
        train(load_config(None, [*base, f"run_dir={root_p / 'part'}"]), ctx)
    finally:
        close_distributed(ctx)


@pytest.mark.slow
def test_two_ranks_streaming_resume_exactly(tmp_path: Path) -> None:
    _parquet_case(tmp_path / "data")
    run_ranks(_stream_worker, 2, str(tmp_path))
    full, part = tmp_path / "full", tmp_path / "part"
    _runs_equal(full, part)
    summary = json.loads((part / "train_summary.json").read_text())
    total = json.loads((full / "train_summary.json").read_text())["steps"]
    # The second invocation trained only the steps after 9, two ranks of 16 rows each.
    assert summary["steps"] == total > 9 and summary["samples"] == (total - 9) * 16 * 2
