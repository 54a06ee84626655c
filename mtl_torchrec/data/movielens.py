"""MovieLens 100K (GroupLens layout) as a three-task, time-split data set with item text.

MovieLens has ratings but no impressions, so impressions are derived:

* **click**: every rating is a positive impression; for each one, ``negatives_per_positive`` items
  the user never rated are drawn as negatives (same user, same split), weighted by their rating
  count *within that split's time window* (so negatives follow the positives' item
  distribution and item popularity alone does not separate them; cold items appear as both).
* **conversion**: rating >= 4, over all impressions (0 on negatives); i.e. the click-and-convert
  space (what ESMM's pCTCVR predicts).
* **rating**: the 1-5 value, masked (no label) on negatives.

Time split: one global cut; the last ``test_fraction`` of ratings by timestamp is test, the
``val_fraction`` before it is validation, the rest train. **Cold-start items** are those first
rated after the test cut: their ids never occur in training, only their text can help. Test rows
of those items are the ``cold_items`` slice (``DataBundle.slices["test"]["cold_items"]``).

Features: ``user_id``, ``item_id``, ``user_age`` (7 buckets), ``user_gender``,
``user_occupation``, ``user_zip`` (first digit, or "other"); with ``history_length > 0``
``item_history``: the movies the user rated strictly before the impression's time (a negative
impression has its positive's time), oldest first, at most ``history_length`` most recent ones, on
``item_id``'s table (see :func:`rated_before`). Item text: "title. Year: y.
Genres: a, b." (items whose title is "unknown" have no text).

The files are not shipped (the GroupLens licence forbids redistributing them): download
``ml-100k.zip`` from https://grouplens.org/datasets/movielens/100k/ and unzip it; its folder
``ml-100k/`` (``u.data``, ``u.item``, ``u.user``, ``u.genre``, ...) is what ``data.movielens.path``
names (:func:`download_hint`).

Example::

    bundle = load_movielens(MovieLensConfig(path="../shared/data/ml-100k"))
    bundle.splits["train"]["click"].mean()          # 1 / (1 + negatives_per_positive)
    bundle.slices["test"]["cold_items"].sum()
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from mtl_torchrec.data.bundle import DataBundle, item_text_feature
from mtl_torchrec.data.config import MovieLensConfig
from mtl_torchrec.data.schema import (
    ColumnTable,
    DataError,
    Jagged,
    Schema,
    SparseFeature,
    impression_labels,
)

AGE_EDGES = (18, 25, 35, 45, 50, 56)  # buckets <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+
NUM_GENRE_FLAGS = 19
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")
# Where MovieLens-100K comes from; its licence forbids redistribution, so no copy is shipped.
ML100K_PAGE = "https://grouplens.org/datasets/movielens/100k/"
ML100K_ZIP = "ml-100k.zip"


def download_hint(key: str = "data.movielens.path") -> str:
    """How to get MovieLens-100K, for errors about a missing folder or file; ``key`` names the setting
    (config key or command-line flag) that points at the folder."""
    return (f"MovieLens-100K is not shipped (its licence forbids redistribution): download {ML100K_ZIP} from "
            f"{ML100K_PAGE}, unzip it and set {key} to the folder it holds, ml-100k/ (u.data, u.item, u.user, "
            f"u.genre; a relative path is from the working directory)")


# The files of the GroupLens layout that the loader reads.
ML100K_FILES = ("u.data", "u.item", "u.user", "u.genre")


def _read_lines(path: Path) -> List[str]:
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected the GroupLens ml-100k layout); {download_hint()}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # The GroupLens files are ISO-8859-1 where they are not plain ASCII.
        text = raw.decode("latin-1")
    return text.splitlines()


def _int(value: str, path: Path, line: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}:{line}: {what} must be an integer, got {value!r}") from None


def _check_new_id(value: int, known: Dict[int, Any], lines: Dict[int, int], path: Path, n: int, what: str) -> None:
    """Ids of u.item / u.user start at 1 and appear once: a 0 or a repeat would silently take another
    entry's row (ids index arrays from 1)."""
    if value < 1:
        raise DataError(f"{path}:{n}: {what} must be >= 1 (the GroupLens ids start at 1), got {value}")
    if value in known:
        raise DataError(f"{path}:{n}: {what} {value} repeats line {lines[value]}")


def _check_id_range(ids: Dict[int, Any], rated: int, path: Path, what: str) -> int:
    """The id range ``max(ids, rated)``; DataError when an id of ``path`` exceeds both the number of
    its entries and the largest rated id (GroupLens ids are dense, 1..N; a stray huge id would size
    every per-id array by it)."""
    top = max(ids)
    if top > max(len(ids), rated):
        raise DataError(f"{path}: {what} {top} is above both the number of entries ({len(ids)}) and the largest "
                        f"rated id ({rated}); ids are 1..N in the GroupLens layout")
    return max(top, rated)


def read_ratings(path: Path) -> np.ndarray:
    """``[n, 4]`` int64: user (1-based), item (1-based), rating, timestamp."""
    rows = []
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 4:
            raise DataError(f"{path}:{n}: expected 4 tab-separated fields (user, item, rating, timestamp), got {len(parts)}")
        u, i, r, t = (_int(p, path, n, w) for p, w in zip(parts, ("user id", "item id", "rating", "timestamp")))
        if not 1 <= r <= 5:
            raise DataError(f"{path}:{n}: rating must be 1-5, got {r}")
        if u < 1 or i < 1:
            raise DataError(f"{path}:{n}: user and item ids start at 1, got user {u}, item {i}")
        rows.append((u, i, r, t))
    if not rows:
        raise DataError(f"{path}: no ratings")
    return np.array(rows, dtype=np.int64)


def read_items(path: Path) -> Dict[int, Tuple[str, Optional[int], List[int]]]:
    """item id -> (title without year, year or None, genre flag indices)."""
    items: Dict[int, Tuple[str, Optional[int], List[int]]] = {}
    lines: Dict[int, int] = {}
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 5 + NUM_GENRE_FLAGS:
            raise DataError(f"{path}:{n}: expected {5 + NUM_GENRE_FLAGS} '|'-separated fields, got {len(parts)}")
        item = _int(parts[0], path, n, "movie id")
        flags = parts[5:]
        if any(f not in ("0", "1") for f in flags):
            raise DataError(f"{path}:{n}: genre flags must be 0 or 1")
        title, year = parts[1].strip(), None
        m = _TITLE_YEAR.match(title)
        if m:
            title, year = m.group(1), int(m.group(2))
        elif parts[2][-4:].isdigit():
            year = int(parts[2][-4:])
        _check_new_id(item, items, lines, path, n, "movie id")
        lines[item] = n
        items[item] = (title, year, [g for g, f in enumerate(flags) if f == "1"])
    if not items:
        raise DataError(f"{path}: no movies")
    return items


def read_genres(path: Path) -> List[str]:
    """Genre names by flag index from ``u.genre`` (``name|index`` lines); ``genre<i>`` where an index is missing.

    Raises DataError naming the file and line of a malformed line.
    """
    names = {}
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 2:
            raise DataError(f"{path}:{n}: expected 'name|index', got {line!r}")
        names[_int(parts[1], path, n, "genre index")] = parts[0]
    if not names:
        # Item texts would name genres genre0..genre18 without a word.
        raise DataError(f"{path}: no genres")
    return [names.get(g, f"genre{g}") for g in range(NUM_GENRE_FLAGS)]


def read_users(path: Path) -> Dict[int, Tuple[int, str, str, str]]:
    """user id -> (age, gender, occupation, zip)."""
    users: Dict[int, Tuple[int, str, str, str]] = {}
    lines: Dict[int, int] = {}
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 5:
            raise DataError(f"{path}:{n}: expected 5 '|'-separated fields (id, age, gender, occupation, zip), got {len(parts)}")
        uid = _int(parts[0], path, n, "user id")
        _check_new_id(uid, users, lines, path, n, "user id")
        lines[uid] = n
        age = _int(parts[1], path, n, "age")
        if parts[2] not in ("M", "F"):
            raise DataError(f"{path}:{n}: gender must be M or F, got {parts[2]!r}")
        users[uid] = (age, parts[2], parts[3], parts[4])
    if not users:
        raise DataError(f"{path}: no users")
    return users


def item_texts(items: Dict[int, Tuple[str, Optional[int], List[int]]], genres: List[str], num_items: int) -> List[Optional[str]]:
    """Text per 0-based item id: title, year and genres; ``None`` for unknown titles."""
    out: List[Optional[str]] = [None] * num_items
    for item, (title, year, gs) in items.items():
        if not title or title.lower() == "unknown":
            continue
        parts = [title]
        if year is not None:
            parts.append(f"Year: {year}")
        names = [genres[g] for g in gs if genres[g] != "unknown"]
        if names:
            parts.append("Genres: " + ", ".join(names))
        out[item - 1] = ". ".join(parts) + "."
    return out


def movielens_schema(num_users: int, num_items: int, num_occupations: int) -> Schema:
    """The schema :func:`load_movielens` produces: six single-valued id features, no dense feature, the
    impression labels, grouped by ``user_id``, item text indexed by ``item_id``.
    """
    return Schema(
        sparse=[
            SparseFeature("user_id", num_users),
            SparseFeature("item_id", num_items),
            SparseFeature("user_age", len(AGE_EDGES) + 1),
            SparseFeature("user_gender", 2),
            SparseFeature("user_occupation", num_occupations),
            SparseFeature("user_zip", 11),
        ],
        dense=[],
        labels=impression_labels(),
        group="user_id",
    )


def _sample_negatives(
    users: np.ndarray, items_in_split: np.ndarray, rated: np.ndarray, num_items: int, k: int, rng: np.random.Generator
) -> np.ndarray:
    """``[len(users) * k]`` item ids (0-based) the user never rated, popularity-weighted within the split."""
    counts = np.bincount(items_in_split, minlength=num_items).astype(np.float64)
    p = counts / counts.sum()
    want_users = np.repeat(users, k)
    out = rng.choice(num_items, size=len(want_users), p=p)
    rated_codes = np.sort(rated)
    for _ in range(1000):
        bad = np.flatnonzero(np.isin(want_users * num_items + out, rated_codes))
        if not len(bad):
            return out
        out[bad] = rng.choice(num_items, size=len(bad), p=p)
    raise DataError("movielens: could not draw unrated negatives (a user rated nearly every item of a split)")


def rated_before(ratings: np.ndarray, users: np.ndarray, items: np.ndarray, times: np.ndarray, max_length: int) -> Jagged:
    """Each impression's history: the items its user rated **strictly before** its time, oldest first
    (ties in time by item id), at most the ``max_length`` most recent, never the impression's own item.

    Args:
        ratings: ``[n, 4]`` (user, item, rating, timestamp), any order, ids as in ``users``/``items``.
        users, items, times: one entry per impression (a negative impression carries its positive's time).
        max_length: most recent items kept per row (>= 1).

    Returns:
        Jagged: one row per impression.
    """
    order = np.lexsort((ratings[:, 1], ratings[:, 3], ratings[:, 0]))
    r_user, r_item, r_time = ratings[order, 0], ratings[order, 1], ratings[order, 3]
    # Position of each impression among its user's ratings sorted by time: the first rating at or
    # after the impression's time; everything before it is strictly earlier.
    user_start = np.searchsorted(r_user, users, side="left")
    all_times = np.concatenate([r_time, times])
    base, span = int(all_times.min()), int(all_times.max() - all_times.min()) + 1
    # (user, time) as one sortable int64: ratings are sorted by it.
    key = r_user.astype(np.int64) * span + (r_time - base)
    end = np.searchsorted(key, users.astype(np.int64) * span + (times - base), side="left")
    start = np.maximum(user_start, end - max_length)
    lengths = end - start
    idx = np.repeat(start, lengths) + (np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    values = r_item[idx]
    own = values == np.repeat(items, lengths)
    if own.any():
        # Impossible for strictly earlier ratings of a movie rated once per user; kept out regardless.
        keep = ~own
        lengths = np.bincount(np.repeat(np.arange(len(users)), lengths)[keep], minlength=len(users))
        values = values[keep]
    return Jagged(values.astype(np.int64), lengths)


def load_movielens(cfg: MovieLensConfig) -> DataBundle:
    """Reads ml-100k from ``cfg.path`` and derives the impression data described in the module docstring.

    Raises DataError naming the ``data.movielens`` key for bad settings (a missing folder: with
    :func:`download_hint`), and the file and line for malformed input files.
    """
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(f"data.movielens.path: {root} (here {root.resolve()}) is not a folder. {download_hint()}")
    if cfg.negatives_per_positive < 1:
        raise DataError("data.movielens.negatives_per_positive must be >= 1")
    if not (0 < cfg.test_fraction < 1 and 0 <= cfg.val_fraction < 1 and cfg.test_fraction + cfg.val_fraction < 1):
        raise DataError("data.movielens: test_fraction and val_fraction must be in (0, 1) and sum below 1")
    ratings = read_ratings(root / "u.data")
    items = read_items(root / "u.item")
    users = read_users(root / "u.user")
    genres = read_genres(root / "u.genre")
    num_items = _check_id_range(items, int(ratings[:, 1].max()), root / "u.item", "movie id")
    num_users = _check_id_range(users, int(ratings[:, 0].max()), root / "u.user", "user id")
    for col, known, name in ((1, items, "u.item"), (0, users, "u.user")):
        unknown = np.setdiff1d(np.unique(ratings[:, col]), np.fromiter(known, dtype=np.int64))
        if len(unknown):
            raise DataError(f"{root / 'u.data'}: {len(unknown)} ids missing from {root / name} (e.g. {unknown[:5].tolist()})")

    occupations = sorted({u[2] for u in users.values()})
    occ_index = {o: j for j, o in enumerate(occupations)}
    user_age = np.zeros(num_users, dtype=np.int64)
    user_gender = np.zeros(num_users, dtype=np.int64)
    user_occ = np.zeros(num_users, dtype=np.int64)
    user_zip = np.full(num_users, 10, dtype=np.int64)
    for uid, (age, gender, occ, zipcode) in users.items():
        user_age[uid - 1] = int(np.searchsorted(AGE_EDGES, age, side="right"))
        user_gender[uid - 1] = int(gender == "F")
        user_occ[uid - 1] = occ_index[occ]
        if zipcode[:1].isdigit():
            user_zip[uid - 1] = int(zipcode[0])

    u = ratings[:, 0] - 1
    it = ratings[:, 1] - 1
    rating = ratings[:, 2]
    ts = ratings[:, 3]
    order = np.argsort(ts, kind="stable")
    n = len(ts)
    test_cut = ts[order[int(n * (1 - cfg.test_fraction))]]
    val_cut = ts[order[int(n * (1 - cfg.test_fraction - cfg.val_fraction))]]
    split_of = np.where(ts >= test_cut, 2, np.where(ts >= val_cut, 1, 0))
    first_seen = np.full(num_items, np.iinfo(np.int64).max)
    np.minimum.at(first_seen, it, ts)
    cold = first_seen >= test_cut

    rng = np.random.default_rng(cfg.seed)
    rated_codes = np.unique(u * num_items + it)
    k = cfg.negatives_per_positive
    splits: Dict[str, ColumnTable] = {}
    slices: Dict[str, Dict[str, np.ndarray]] = {}
    for s, name in enumerate(("train", "val", "test")):
        rows = np.flatnonzero(split_of == s)
        pu, pi, pr = u[rows], it[rows], rating[rows].astype(np.float32)
        neg_items = _sample_negatives(pu, pi, rated_codes, num_items, k, rng)
        users_all = np.concatenate([pu, np.repeat(pu, k)])
        items_all = np.concatenate([pi, neg_items])
        # A negative is shown when its positive was rated.
        times_all = np.concatenate([ts[rows], np.repeat(ts[rows], k)])
        npos = len(rows)
        click = np.concatenate([np.ones(npos), np.zeros(npos * k)]).astype(np.float32)
        conversion = np.concatenate([(pr >= 4).astype(np.float32), np.zeros(npos * k, dtype=np.float32)])
        rating_col = np.concatenate([pr, np.full(npos * k, np.nan, dtype=np.float32)])
        perm = rng.permutation(len(users_all))
        users_all, items_all, times_all = users_all[perm], items_all[perm], times_all[perm]
        history = {}
        if cfg.history_length:
            history["item_history"] = rated_before(np.stack([u, it, rating, ts], axis=1), users_all, items_all,
                                                   times_all, cfg.history_length)
        splits[name] = ColumnTable(
            {
                "user_id": users_all.astype(np.int64),
                "item_id": items_all.astype(np.int64),
                "user_age": user_age[users_all],
                "user_gender": user_gender[users_all],
                "user_occupation": user_occ[users_all],
                "user_zip": user_zip[users_all],
                "click": click[perm],
                "conversion": conversion[perm],
                "rating": rating_col[perm],
                **history,
            }
        )
        slices[name] = {"cold_items": cold[items_all]}
    schema = movielens_schema(num_users, num_items, len(occupations))
    if cfg.history_length:
        schema.sparse.append(SparseFeature("item_history", num_items, multi_valued=True, table="item_id"))
    schema, splits, texts = item_text_feature(
        schema, splits, "item_id", item_texts(items, genres, num_items)
    )
    return DataBundle(schema=schema, splits=splits, texts=texts, slices=slices)
