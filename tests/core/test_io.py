"""Atomic writes: all-or-nothing, and the file mode a plain ``open()`` would give."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import pytest

from mtl_torchrec.core.io import atomic_path, atomic_write_text, write_json


@pytest.fixture
def umask() -> Iterator[None]:
    """Restores the process umask that a test sets."""
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(umask, tmp_path: Path, mask: int, mode: int) -> None:
    os.umask(mask)
    atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
    write_json(tmp_path / "metrics.json", {"auc": 0.7})
    for name in ("config.yaml", "metrics.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    # The same mode as a file written with plain open() under that umask.
    (tmp_path / "plain.txt").write_text("x")
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == mode


def test_replacing_a_file_gives_it_the_new_mode(umask, tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    target.write_text("old")
    target.chmod(0o600)
    os.umask(0o022)
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_the_temporary_is_a_fresh_hidden_file_beside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    with atomic_path(target) as outer:
        with atomic_path(target) as inner:
            assert inner != outer
            assert inner.parent == tmp_path / "sub" and inner.name.startswith(".a.txt.")
            assert inner.exists() and inner.stat().st_size == 0
            inner.write_text("inner")
        assert target.read_text() == "inner"
        outer.write_text("outer")
    # The later rename wins, and both temporaries are gone.
    assert target.read_text() == "outer"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.txt"]


def test_json_files_are_valid_json_with_null_for_undefined_numbers(tmp_path: Path) -> None:
    """NaN and +-inf (an undefined metric) are written as null, in nested dicts, lists and tuples;
    every other value is kept."""
    import json
    import math

    import numpy as np

    from mtl_torchrec.core.io import json_text, write_json

    obj = {"auc": float("nan"), "n": 3, "rates": [1.5, float("inf"), (float("-inf"), np.float64("nan"))],
           "ok": np.float64(0.25), "name": "x", "flag": True, "none": None}
    write_json(tmp_path / "a.json", obj)

    def refuse(constant):
        raise ValueError(constant)

    back = json.loads((tmp_path / "a.json").read_text(), parse_constant=refuse)
    assert back == {"auc": None, "n": 3, "rates": [1.5, None, [None, None]], "ok": 0.25, "name": "x", "flag": True,
                    "none": None}
    assert json_text({"x": math.nan}, indent=None) == '{"x": null}'
