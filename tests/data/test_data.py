import numpy as np
import pytest
import torch

from mtl_torchrec.config import DataConfig, SyntheticConfig
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.loader import BatchDataset, make_loader
from mtl_torchrec.data.schema import ColumnTable, DataError, DenseFeature, Jagged, LabelSpec, Schema, SparseFeature
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.data.synthetic import generate_synthetic


def _schema():
    return Schema(
        sparse=[SparseFeature("user", 10), SparseFeature("tags", 5, multi_valued=True)],
        dense=[DenseFeature("price")],
        labels=[LabelSpec("click", "binary"), LabelSpec("rating", "regression", maskable=True)],
        group="user",
    )


def _table(n=6, **replace):
    cols = {
        "user": np.arange(n, dtype=np.int64) % 10,
        "tags": Jagged.from_lists([[i % 5, (i + 1) % 5][: i % 3] for i in range(n)]),
        "price": np.linspace(-1, 1, n).astype(np.float32),
        "click": (np.arange(n) % 2).astype(np.float32),
        "rating": np.where(np.arange(n) % 2 == 1, 4.0, np.nan).astype(np.float32),
    }
    cols.update(replace)
    return ColumnTable(cols)


def test_valid_table_passes():
    _schema().validate(_table(), source="t.csv")


@pytest.mark.parametrize(
    "replace, drop, pattern",
    [
        ({"user": np.array([0, 1, 2, 10, 3, 4])}, None, r"t\.csv: column 'user' row 3: id 10 is outside"),
        ({"tags": Jagged.from_lists([[0], [1], [], [7], [], []])}, None, r"column 'tags' row 3: id 7"),
        ({"click": np.array([0, 1, np.nan, 0, 1, 0], dtype=np.float32)}, None, r"'click' row 2 is NaN.*not maskable"),
        ({"click": np.array([0, 1, 2, 0, 1, 0], dtype=np.float32)}, None, r"'click' row 2: binary label must be 0 or 1"),
        ({"price": np.array([0, 1, np.inf, 0, 1, 0], dtype=np.float32)}, None, r"dense column 'price' row 2"),
        ({"user": np.linspace(0, 1, 6)}, None, r"'user' must hold integer ids"),
        ({"user": Jagged.from_lists([[1]] * 6)}, None, r"'user' should be single-valued"),
        ({}, "price", r"missing column\(s\) \['price'\]"),
    ],
)
def test_schema_errors_name_the_problem(replace, drop, pattern):
    table = _table(**replace)
    if drop:
        del table.columns[drop]
    with pytest.raises(DataError, match=pattern):
        _schema().validate(table, source="t.csv")


def test_schema_rejects_conflicting_roles():
    with pytest.raises(DataError, match="two roles"):
        Schema(sparse=[SparseFeature("x", 3)], dense=[DenseFeature("x")], labels=[])


def test_jagged_take():
    j = Jagged.from_lists([[1, 2], [], [3], [4, 5, 6]])
    t = j.take(np.array([3, 0, 1]))
    assert t.values.tolist() == [4, 5, 6, 1, 2]
    assert t.lengths.tolist() == [3, 2, 0]


def test_batch_from_table_and_masks():
    b = Batch.from_table(_table(), _schema(), pad_rows=2)
    assert b.batch_size == 8
    kjt = b.sparse
    assert kjt.keys() == ["user", "tags"]
    assert kjt["user"].lengths().tolist() == [1] * 8
    assert kjt["tags"].lengths().tolist() == [0, 1, 2, 0, 1, 2, 0, 0]
    assert b.masks["click"].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert b.masks["rating"].tolist() == [0, 1, 0, 1, 0, 1, 0, 0]
    assert b.labels["rating"].tolist() == [0, 4, 0, 4, 0, 4, 0, 0]
    moved = b.to(torch.device("cpu"))
    assert torch.equal(moved.dense, b.dense)


def _rows_seen(ds_kwargs, world, workers):
    table = _table(103, user=np.arange(103, dtype=np.int64) % 10)
    # Tag each row with its index through the dense column to recover row identity.
    table.columns["price"] = np.arange(103, dtype=np.float32)
    seen = []
    for rank in range(world):
        ds = BatchDataset(table, _schema(), rank=rank, world_size=world, **ds_kwargs)
        n = 0
        for b in make_loader(ds, num_workers=workers):
            real = b.masks["click"] > 0
            seen += b.dense[real, 0].long().tolist()
            n += 1
        assert n == len(ds)
    return seen


@pytest.mark.parametrize("world, workers", [(1, 0), (2, 0), (2, 2), (3, 1)])
def test_eval_split_covers_every_row_once(world, workers):
    seen = _rows_seen(dict(batch_size=8, shuffle=False), world, workers)
    assert sorted(seen) == list(range(103))


@pytest.mark.parametrize("world, workers", [(1, 2), (2, 2)])
def test_train_split_has_no_duplicates(world, workers):
    seen = _rows_seen(dict(batch_size=8, shuffle=True, seed=3), world, workers)
    assert len(seen) == len(set(seen)) == (103 // (8 * world)) * 8 * world


def test_loader_order_independent_of_workers():
    table = _table(64)
    table.columns["price"] = np.arange(64, dtype=np.float32)
    orders = []
    for workers in (0, 2):
        ds = BatchDataset(table, _schema(), batch_size=8, shuffle=True, seed=1)
        orders.append([b.dense[:, 0].tolist() for b in make_loader(ds, num_workers=workers)])
    assert orders[0] == orders[1]


def test_skip_batches_resumes_mid_epoch():
    table = _table(64)
    table.columns["price"] = np.arange(64, dtype=np.float32)
    full = [b.dense[:, 0].tolist() for b in BatchDataset(table, _schema(), batch_size=8, shuffle=True, seed=1)]
    rest = [b.dense[:, 0].tolist() for b in BatchDataset(table, _schema(), batch_size=8, shuffle=True, seed=1, skip_batches=3)]
    assert rest == full[3:]


def test_synthetic_is_deterministic_and_valid():
    cfg = SyntheticConfig(num_users=300, num_items=200, num_impressions=5000, seed=4)
    a, b = generate_synthetic(cfg), generate_synthetic(cfg)
    for split in ("train", "val", "test"):
        a.schema.validate(a.splits[split], source=split)
        np.testing.assert_array_equal(a.splits[split]["item_id"], b.splits[split]["item_id"])
        np.testing.assert_array_equal(a.splits[split]["click"], b.splits[split]["click"])
    assert sum(len(t) for t in a.splits.values()) == 5000
    train = a.splits["train"]
    click, conv, rating = train["click"], train["conversion"], train["rating"]
    # Conversion only after a click; rating only where converted.
    assert np.all(conv <= click)
    assert np.array_equal(~np.isnan(rating), conv == 1)
    assert len(a.item_text) == 200 and all(a.item_text)
    # As a data source: a text feature whose rows are item id + 1 (row 0: no text).
    bundle = load_data(DataConfig(synthetic=cfg))
    assert bundle.texts["item_text"].texts[1:] == a.item_text
    np.testing.assert_array_equal(bundle.splits["train"]["item_text"], bundle.splits["train"]["item_id"] + 1)
    other = generate_synthetic(SyntheticConfig(num_users=300, num_items=200, num_impressions=5000, seed=5))
    assert not np.array_equal(other.splits["train"]["item_id"], train["item_id"])
