"""The MovieLens-100K multi-task protocol: derived impressions, time split, cold items, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mtl_torchrec.config import DataConfig, MovieLensConfig
from mtl_torchrec.data.movielens import item_texts, load_movielens, read_items
from mtl_torchrec.data.schema import DataError
from mtl_torchrec.data.sources import load_data

ML100K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ml-100k"
needs_ml100k = pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="MovieLens-100K not present")

GENRES = "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\nCrime|6\nDocumentary|7\nDrama|8\n" \
    "Fantasy|9\nFilm-Noir|10\nHorror|11\nMusical|12\nMystery|13\nRomance|14\nSci-Fi|15\nThriller|16\nWar|17\nWestern|18\n"


def _flags(*on: int) -> str:
    return "|".join("1" if g in on else "0" for g in range(19))


def write_tiny(folder: Path, n_users: int = 6, n_items: int = 12, seed: int = 0) -> Path:
    """A GroupLens-layout folder: items 11-12 are only rated late (cold)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.genre").write_text(GENRES)
    (folder / "u.user").write_text(
        "".join(f"{u}|{20 + 5 * u}|{'MF'[u % 2]}|{['student', 'writer', 'other'][u % 3]}|{u}2345\n" for u in range(1, n_users + 1))
    )
    (folder / "u.item").write_text(
        "".join(f"{i}|Movie {i} ({1990 + i})|01-Jan-{1990 + i}||http://x|{_flags(i % 19, (i + 3) % 19)}\n"
                for i in range(1, n_items + 1))
    )
    pairs = [(u, i) for u in range(1, n_users + 1) for i in rng.choice(np.arange(1, n_items - 1), size=4, replace=False)]
    # Users' early ratings interleave in time, so every split mixes users and items.
    times = 1000 + rng.permutation(len(pairs))
    rows = [f"{u}\t{i}\t{rng.integers(1, 6)}\t{t}\n" for (u, i), t in zip(pairs, times)]
    t = 1000 + len(pairs)
    for u in range(1, n_users + 1):
        t += 1
        rows.append(f"{u}\t{n_items - 1 + u % 2}\t{rng.integers(1, 6)}\t{t}\n")
    (folder / "u.data").write_text("".join(rows))
    return folder


def test_protocol_on_tiny_data(tmp_path: Path) -> None:
    root = write_tiny(tmp_path / "ml")
    b = load_movielens(MovieLensConfig(path=str(root), negatives_per_positive=2, test_fraction=0.2, val_fraction=0.1))
    b.validate()
    total = sum(len(t) for t in b.splits.values())
    assert total == 30 * 3
    for t in b.splits.values():
        click, conv, rating = t["click"], t["conversion"], t["rating"]
        assert click.mean() == pytest.approx(1 / 3)
        assert np.all(np.isnan(rating) == (click == 0)), "rating is masked exactly on negatives"
        assert np.all(conv <= click) and np.all(conv[click == 1] == (rating[click == 1] >= 4))
    rated = set()
    for line in (root / "u.data").read_text().splitlines():
        u, i, _, _ = line.split("\t")
        rated.add((int(u) - 1, int(i) - 1))
    for t in b.splits.values():
        neg = t["click"] == 0
        assert not any((u, i) in rated for u, i in zip(t["user_id"][neg], t["item_id"][neg]))
    cold = b.slices["test"]["cold_items"]
    assert set(b.splits["test"]["item_id"][cold]) == {10, 11}
    for name in ("train", "val"):
        assert not np.isin(b.splits[name]["item_id"], [10, 11]).any()
    # Item text rows are item id + 1 (row 0: no text), so cold items read their own text.
    text = b.texts["item_text"]
    assert text.texts[1] == "Movie 1. Year: 1991. Genres: Action, Children's."
    t = b.splits["test"]
    assert all(text.texts[r] is not None for r in t["item_text"][cold])
    np.testing.assert_array_equal(t["item_text"], t["item_id"] + 1)


def test_malformed_files_name_file_and_line(tmp_path: Path) -> None:
    root = write_tiny(tmp_path / "ml")
    lines = (root / "u.data").read_text().splitlines()
    lines[4] = "1\t2\tfive\t100"
    (root / "u.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"u.data:5: rating must be an integer"):
        load_movielens(MovieLensConfig(path=str(root)))
    root = write_tiny(tmp_path / "ml2")
    (root / "u.item").write_text((root / "u.item").read_text() + "13|Broken|no flags\n")
    with pytest.raises(DataError, match=r"u.item:13: expected 24 '\|'-separated fields"):
        load_movielens(MovieLensConfig(path=str(root)))
    root = write_tiny(tmp_path / "ml3")
    (root / "u.user").unlink()
    with pytest.raises(DataError, match=r"u.user: file not found"):
        load_movielens(MovieLensConfig(path=str(root)))
    root = write_tiny(tmp_path / "ml4")
    (root / "u.data").write_text((root / "u.data").read_text() + "99\t1\t3\t5000\n")
    with pytest.raises(DataError, match=r"1 ids missing from .*u.user"):
        load_movielens(MovieLensConfig(path=str(root)))
    with pytest.raises(DataError, match="data.movielens.path"):
        load_movielens(MovieLensConfig(path=str(tmp_path / "nowhere")))
    # An id 0 or a repeated id took another entry's row without a word; an empty file was a traceback;
    # one huge id sized every per-id array by it (tens of GB). Each is one error naming the file.
    item_line = "|Zero Movie (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 19) + "\n"
    cases = [("u.item", "0" + item_line, r"u\.item:13: movie id must be >= 1 .*got 0"),
             ("u.item", "3" + item_line, r"u\.item:13: movie id 3 repeats line 3"),
             ("u.item", "2000000000" + item_line, r"u\.item: movie id 2000000000 is above both the number of entries"),
             ("u.user", "0|30|M|writer|12345\n", r"u\.user:7: user id must be >= 1"),
             ("u.user", "2|30|M|writer|12345\n", r"u\.user:7: user id 2 repeats line 2")]
    for k, (name, extra, says) in enumerate(cases):
        root = write_tiny(tmp_path / f"ids{k}")
        (root / name).write_text((root / name).read_text() + extra)
        with pytest.raises(DataError, match=says):
            load_movielens(MovieLensConfig(path=str(root)))
    for name, says in (("u.item", "no movies"), ("u.user", "no users"), ("u.genre", "no genres")):
        root = write_tiny(tmp_path / f"empty_{name}")
        (root / name).write_text("")
        with pytest.raises(DataError, match=rf"{name}: {says}"):
            load_movielens(MovieLensConfig(path=str(root)))


def test_a_missing_folder_says_where_to_get_movielens(tmp_path: Path, capsys) -> None:
    """MovieLens-100K is not shipped: a missing folder (the built-in source and the export example) or
    file is one error naming the path, the setting that points at it and the GroupLens page and zip."""
    import importlib.util

    where = r"download ml-100k\.zip from https://grouplens\.org/datasets/movielens/100k/, unzip it and set "
    missing = tmp_path / "nowhere"
    at = re.escape(str(missing))
    with pytest.raises(DataError, match=rf"^data\.movielens\.path: {at} \(here {at}\) is not a folder\. "
                                        rf"MovieLens-100K is not shipped \(its licence forbids redistribution\): "
                                        rf"{where}data\.movielens\.path to the folder it holds, ml-100k/"):
        load_data(DataConfig(source="movielens", movielens=MovieLensConfig(path=str(missing))))
    root = write_tiny(tmp_path / "ml")
    (root / "u.item").unlink()
    with pytest.raises(DataError, match=rf"u\.item: file not found .*{where}"):
        load_movielens(MovieLensConfig(path=str(root)))
    path = Path(__file__).resolve().parents[2] / "examples" / "movielens" / "export_csv.py"
    module_spec = importlib.util.spec_from_file_location("export_csv", path)
    export = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(export)
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, says in ((missing, rf"--path: {at} .*is not a folder\. .*{where}--path to the folder"),
                         (root, rf"--path: .* lacks u\.item of the GroupLens ml-100k layout\. .*{where}--path to"),
                         (empty, rf"lacks u\.data, u\.item, u\.user, u\.genre .*{where}--path to")):
        with pytest.raises(SystemExit) as e:
            export.main(["--out", str(tmp_path / "out"), "--path", str(folder)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert re.search(says, err) and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_unknown_title_has_no_text(tmp_path: Path) -> None:
    root = write_tiny(tmp_path / "ml")
    (root / "u.item").write_text((root / "u.item").read_text() + f"13|unknown||||{_flags(0)}\n")
    items = read_items(root / "u.item")
    texts = item_texts(items, GENRES and [g.split("|")[0] for g in GENRES.splitlines()], 13)
    assert texts[12] is None and texts[1].startswith("Movie 2. Year: 1992.")


@needs_ml100k
def test_ml100k_time_split_and_cold_items() -> None:
    b = load_data(DataConfig(source="movielens", movielens=MovieLensConfig(path=str(ML100K))))
    positives = sum(int(t["click"].sum()) for t in b.splits.values())
    assert positives == 100000
    assert len(b.splits["test"]) == pytest.approx(0.2 * 500000, rel=0.01)
    assert b.schema.sparse[1].num_embeddings == 1682 and b.texts["item_text"].num_rows == 1683
    cold_ids = np.unique(b.splits["test"]["item_id"][b.slices["test"]["cold_items"]])
    assert len(cold_ids) > 20
    for name in ("train", "val"):
        assert not np.isin(b.splits[name]["item_id"], cold_ids).any()
    assert sum(t is None for t in b.texts["item_text"].texts[1:]) == 1  # the one "unknown" title
