"""Behaviour sequences with DIN target attention: the attention module, the shared-table feature
module, the model and config checks, the data sources (synthetic, MovieLens, data spec)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mtl_torchrec.config import load_config
from mtl_torchrec.core.errors import ConfigError, DataError
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.bundle import DataBundle
from mtl_torchrec.data.config import MovieLensConfig, SyntheticConfig
from mtl_torchrec.data.movielens import load_movielens, rated_before
from mtl_torchrec.data.schema import Jagged
from mtl_torchrec.data.spec import build_bundle, load_spec
from mtl_torchrec.data.synthetic import generate_synthetic
from mtl_torchrec.model.builder import build_model, build_train_module
from mtl_torchrec.modules.target_attention import HistoryAttentionFeature, TargetAttention, recent_padded
from tests.data.test_movielens import write_tiny
from tests.mtl_helpers import SMALL

DIM = 8


def _feature(max_length: int = 6, layers=(16,), seed: int = 0) -> HistoryAttentionFeature:
    torch.manual_seed(seed)
    ec = EmbeddingCollection(tables=[EmbeddingConfig(name="t_item", embedding_dim=DIM, num_embeddings=30,
                                                     feature_names=["item", "history"])])
    return HistoryAttentionFeature(ec, "item", "history", max_length, list(layers))


def _kjt(items, histories) -> KeyedJaggedTensor:
    """A KJT of a user feature, the candidate ``item`` and the ``history`` lists."""
    n = len(items)
    values = [5] * n + list(items) + [v for h in histories for v in h]
    lengths = [1] * n + [1] * n + [len(h) for h in histories]
    return KeyedJaggedTensor(keys=["user", "item", "history"], values=torch.tensor(values),
                             lengths=torch.tensor(lengths, dtype=torch.int32))


HISTORIES = [[1, 2, 3, 4], [7], [], [9, 8, 7, 6, 5, 4, 3, 2, 1]]
ITEMS = [3, 7, 11, 2]


# ---- the attention unit ----------------------------------------------------------------------


def test_attention_shapes_weights_sum_to_one_and_zero_on_padding() -> None:
    torch.manual_seed(0)
    attn = TargetAttention(DIM, [16, 8])
    lengths = torch.tensor([6, 3, 1, 0])
    mask = torch.arange(6).unsqueeze(0) < lengths.unsqueeze(1)
    history = torch.randn(4, 6, DIM, requires_grad=True)
    target = torch.randn(4, DIM)
    interest, weights = attn(history, mask, target)
    assert interest.shape == (4, DIM) and weights.shape == (4, 6)
    sums = weights.sum(dim=1)
    torch.testing.assert_close(sums[:3], torch.ones(3))
    assert torch.all(weights[~mask] == 0)
    # An empty history: weights 0, interest the zero vector, and no NaN in the gradient.
    assert torch.all(weights[3] == 0) and torch.all(interest[3] == 0)
    interest.sum().backward()
    assert torch.isfinite(history.grad).all() and all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_interest_is_the_weighted_sum_and_follows_the_target() -> None:
    """The output is sum_l w_l h_l (the weights are used), and a unit that scores h . t puts the
    weight on the history item equal to the target: attention depends on the candidate."""
    attn = TargetAttention(4, [])
    with torch.no_grad():
        attn.unit[0].weight.zero_()
        attn.unit[0].bias.zero_()
        attn.unit[0].weight[0, 12:16] = 20.0  # the h * t block: score = 20 * <h, t>
    history = torch.eye(4).unsqueeze(0).repeat(2, 1, 1)  # four one-hot items
    mask = torch.ones(2, 4, dtype=torch.bool)
    target = torch.stack([torch.eye(4)[2], torch.eye(4)[0]])
    interest, weights = attn(history, mask, target)
    torch.testing.assert_close(interest, torch.einsum("bl,bld->bd", weights, history))
    assert weights[0].argmax() == 2 and weights[1].argmax() == 0
    assert weights[0, 2] > 0.99 and weights[1, 0] > 0.99


def test_padding_values_and_amount_do_not_change_the_output() -> None:
    torch.manual_seed(1)
    attn = TargetAttention(DIM, [8])
    history = torch.randn(3, 4, DIM)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    target = torch.randn(3, DIM)
    ref, ref_w = attn(history, mask, target)
    # Eight more padded positions holding garbage.
    padded = torch.cat([history.masked_fill(~mask.unsqueeze(-1), 0.0), 100 * torch.randn(3, 8, DIM)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 8, dtype=torch.bool)], dim=1)
    got, got_w = attn(padded, padded_mask, target)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_w[:, :4], ref_w, rtol=0, atol=1e-7)
    # Each row alone, unpadded, gives the same output as in the padded batch.
    for b in range(3):
        n = int(mask[b].sum())
        alone, _ = attn(history[b:b + 1, :n], torch.ones(1, n, dtype=torch.bool), target[b:b + 1])
        torch.testing.assert_close(alone[0], ref[b], rtol=0, atol=1e-6)


def test_recent_padded_keeps_the_most_recent_ids() -> None:
    values = torch.arange(10, dtype=torch.float32).unsqueeze(1)  # rows [0 1 2], [], [3 .. 9]
    padded, mask = recent_padded(values, torch.tensor([3, 0, 7]), 4)
    assert padded.shape == (3, 4, 1)
    assert padded[0, :, 0].tolist() == [0, 1, 2, 0] and mask[0].tolist() == [True, True, True, False]
    assert not mask[1].any() and torch.all(padded[1] == 0)
    assert padded[2, :, 0].tolist() == [6, 7, 8, 9] and mask[2].all()
    # A batch without any id.
    empty, empty_mask = recent_padded(torch.zeros(0, 2), torch.tensor([0, 0]), 3)
    assert empty.shape == (2, 3, 2) and not empty_mask.any()


# ---- the feature module ------------------------------------------------------------------------


def test_feature_shapes_shared_table_and_empty_history() -> None:
    feature = _feature()
    kjt = _kjt(ITEMS, HISTORIES)
    out = feature(kjt)
    assert out.shape == (4, 2 * DIM) and feature.out_features == 2 * DIM
    assert feature.groups == [("item", DIM), ("history", DIM)]
    table = feature.embedding.embeddings["t_item"].weight
    # The candidate's half is its row of the one shared table.
    torch.testing.assert_close(out[:, :DIM], table[torch.tensor(ITEMS)])
    assert torch.all(out[2, DIM:] == 0) and torch.isfinite(out).all()
    weights, mask = feature.attention_weights(kjt)
    assert mask.sum(dim=1).tolist() == [4, 1, 0, 6]  # max_length 6: the 6 most recent of 9
    torch.testing.assert_close(weights.sum(dim=1), torch.tensor([1.0, 1.0, 0.0, 1.0]))


def test_feature_reads_the_most_recent_and_padding_length_does_not_matter() -> None:
    short, long = _feature(max_length=9), _feature(max_length=40)
    long.load_state_dict(short.state_dict())
    kjt = _kjt(ITEMS, HISTORIES)
    torch.testing.assert_close(short(kjt), long(kjt), rtol=0, atol=1e-6)
    # Cut to 6, the 9-long history equals the history of its 6 most recent ids.
    six = _feature(max_length=6)
    six.load_state_dict(short.state_dict())
    recent = _kjt(ITEMS, [*HISTORIES[:3], HISTORIES[3][-6:]])
    torch.testing.assert_close(six(_kjt(ITEMS, HISTORIES)), short(recent), rtol=0, atol=1e-6)


def test_feature_refuses_other_tables() -> None:
    ec = EmbeddingCollection(tables=[EmbeddingConfig(name="t", embedding_dim=DIM, num_embeddings=5,
                                                     feature_names=["item"])])
    with pytest.raises(ValueError, match="one table over"):
        HistoryAttentionFeature(ec, "item", "history", 5, [4])
    with pytest.raises(ValueError, match="TargetAttention needs positive widths"):
        TargetAttention(DIM, [0])


def test_attention_traces_with_fx_and_feature_scripts() -> None:
    attn = TargetAttention(DIM, [8])
    traced = torch.fx.symbolic_trace(attn)
    history, target = torch.randn(2, 3, DIM), torch.randn(2, DIM)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    for a, b in zip(traced(history, mask, target), attn(history, mask, target)):
        torch.testing.assert_close(a, b)
    # The feature module under TorchRec's tracer, the collection kept a leaf as a sharded one is.
    from torchrec.fx import symbolic_trace

    feature = _feature()
    kjt = _kjt(ITEMS, HISTORIES)
    graph = symbolic_trace(feature, leaf_modules=["EmbeddingCollection"])
    torch.testing.assert_close(graph(kjt), feature(kjt))
    scripted = torch.jit.script(feature)
    torch.testing.assert_close(scripted(kjt), feature(kjt))
    for a, b in zip(scripted.attention_weights(kjt), feature.attention_weights(kjt)):
        torch.testing.assert_close(a, b)


# ---- model and config --------------------------------------------------------------------------

SEQ = [*SMALL, "data.synthetic.history_length=8", "model.sequence.enabled=true", "model.sequence.max_length=8",
       "model.sequence.attention_layers=[8]"]


def _synthetic(overrides=()):
    cfg = load_config(None, [*SEQ, *overrides])
    syn = generate_synthetic(cfg.data.synthetic)
    return cfg, DataBundle(syn.schema, syn.splits)


def test_model_shares_the_item_table_between_candidate_and_history() -> None:
    cfg, data = _synthetic()
    model = build_model(cfg.model, data.schema)
    feature = model.feature_modules["item_history"]
    assert isinstance(feature, HistoryAttentionFeature)
    [table] = feature.embedding.embedding_configs()
    assert table.name == "t_item_id" and table.feature_names == ["item_id", "item_history"]
    # The EBC leaves the item table out: one table for the item, in the EC.
    ebc_tables = [c.name for c in model.embedding.embedding_bag_configs()]
    assert "t_item_id" not in ebc_tables and len(ebc_tables) == 8
    assert model.feature_group_names[-2:] == ["item_id", "item_history"]
    batch = Batch.from_table(data.splits["train"].take(np.arange(32)), data.schema)
    out = model(batch)
    assert out.logits["click"].shape == (32,) and torch.isfinite(out.shared).all()


def test_sequence_feeds_feature_attention_as_its_own_group() -> None:
    cfg, data = _synthetic(["model.feature_attention.enabled=true"])
    model = build_model(cfg.model, data.schema)
    assert model.feature_attention is not None
    groups = model.feature_group_names
    assert groups.count("item_history") == 1 and groups.count("item_id") == 1
    assert len(model.feature_attention.proj) == len(groups)


@pytest.mark.parametrize("override, key", [
    (["model.sequence.history=item_tags_nope"], "model.sequence.history"),
    (["model.sequence.history=user_id"], "model.sequence.history"),
    (["model.sequence.candidate=item_tags"], "model.sequence.candidate"),
    (["model.sequence.candidate=user_id"], "model.sequence.history: 'item_history' has its own table"),
    (["model.text.id_dropout=0.2"], "model.text.item_feature"),
    (["model.text.id_dropout=0.2", "model.text.id_dropout_features=[user_id, item_id]"],
     "model.text.id_dropout_features"),
])
def test_config_refusals_name_the_key(override, key) -> None:
    cfg, data = _synthetic(override)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        build_train_module(cfg.model, data)


def test_history_needs_history_data() -> None:
    cfg = load_config(None, [*SMALL, "model.sequence.enabled=true"])
    syn = generate_synthetic(cfg.data.synthetic)
    with pytest.raises(ConfigError, match="model.sequence.history: 'item_history' is not a multi-valued"):
        build_model(cfg.model, syn.schema)
    with pytest.raises(Exception, match="max_length"):
        load_config(None, ["model.sequence.max_length=0"])


# ---- data: synthetic, MovieLens --------------------------------------------------------------


def test_synthetic_history_is_past_clicks_and_leaves_the_rest_unchanged() -> None:
    base = SyntheticConfig(num_users=300, num_items=200, num_impressions=3000, num_brands=50)
    plain = generate_synthetic(base)
    with_history = generate_synthetic(SyntheticConfig(**{**base.__dict__, "history_length": 6}))
    assert "item_history" not in plain.splits["train"]
    for name, table in plain.splits.items():
        for col in table.columns:
            a, b = table[col], with_history.splits[name][col]
            if isinstance(a, Jagged):
                assert np.array_equal(a.values, b.values) and np.array_equal(a.lengths, b.lengths)
            else:
                assert np.array_equal(a, b, equal_nan=True), col
    hist = with_history.splits["train"]["item_history"]
    assert hist.lengths.max() <= 6 and hist.lengths.mean() > 3
    users = with_history.splits["train"]["user_id"]
    # One history per user: rows of the same user carry the same list.
    first = {}
    for r in range(len(users)):
        h = tuple(hist.values[hist.offsets[r]:hist.offsets[r + 1]])
        assert first.setdefault(int(users[r]), h) == h
    with_history.schema.validate(with_history.splits["train"], source="synthetic")


def test_movielens_history_is_strictly_before_and_never_the_candidate() -> None:
    # user, item, rating, time: user 0 rated 5 (t10), 6 and 7 (t20, a tie), 8 (t30); user 1 rated 5 (t5).
    ratings = np.array([[0, 5, 4, 10], [0, 7, 5, 20], [0, 6, 3, 20], [0, 8, 2, 30], [1, 5, 1, 5]])
    users = np.array([0, 0, 0, 0, 1, 0])
    items = np.array([7, 9, 8, 2, 5, 5])
    times = np.array([20, 20, 30, 40, 5, 10])
    got = rated_before(ratings, users, items, times, 2)
    rows = [got.values[a:b].tolist() for a, b in zip(got.offsets[:-1], got.offsets[1:])]
    # t20: only the t10 rating (the tie at t20, the candidate's own time, is not before it).
    # t30: the two most recent before it, oldest first; t40: likewise; user 1 at t5: nothing; t10: nothing.
    assert rows == [[5], [5], [6, 7], [7, 8], [], []]


def test_movielens_history_has_no_future_on_tiny_data(tmp_path: Path) -> None:
    root = write_tiny(tmp_path / "ml")
    cfg = MovieLensConfig(path=str(root), negatives_per_positive=2, test_fraction=0.2, val_fraction=0.1,
                          history_length=3)
    bundle = load_movielens(cfg)
    bundle.validate()
    assert "item_history" in bundle.schema.sparse_names
    raw = np.loadtxt(root / "u.data", dtype=np.int64)
    rated_at = {(u - 1, i - 1): t for u, i, _, t in raw}
    checked = 0
    for table in bundle.splits.values():
        hist = table["item_history"]
        for r in range(len(table)):
            u, i = int(table["user_id"][r]), int(table["item_id"][r])
            h = hist.values[hist.offsets[r]:hist.offsets[r + 1]].tolist()
            assert i not in h and len(h) <= 3
            times = [rated_at[(u, j)] for j in h]
            assert times == sorted(times)  # oldest first
            if table["click"][r] == 1:
                # A positive's time is its rating's: every history item was rated strictly before it.
                assert all(t < rated_at[(u, i)] for t in times)
                before = sorted(t for (uu, _), t in rated_at.items() if uu == u and t < rated_at[(u, i)])
                assert times == before[-3:]  # the most recent ones, none missing
                checked += 1
    assert checked == 30
    plain = load_movielens(MovieLensConfig(**{**cfg.__dict__, "history_length": 0}))
    assert "item_history" not in plain.schema.sparse_names


def test_movielens_export_writes_and_names_the_history_spec(tmp_path: Path, capsys) -> None:
    """examples/movielens/export_csv.py --history-length H prints every file it writes, and its
    spec_history.yaml says max_length: H (docs/mtl.md shows it) and reads the exported column."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "examples" / "movielens" / "export_csv.py"
    module_spec = importlib.util.spec_from_file_location("export_csv", path)
    export = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(export)
    root = write_tiny(tmp_path / "ml")
    out = tmp_path / "out"
    assert export.main(["--out", str(out), "--path", str(root), "--history-length", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    names = ["impressions.csv", "items.csv", "spec.yaml", "spec_history.yaml"]
    assert [line.split(":")[0] for line in printed] == [f"wrote {out / n}" for n in names]
    spec = load_spec(out / "spec_history.yaml")
    history = spec.sparse_by_feature("item_history")
    assert (history.vocab, history.shared_with, history.max_length) == ("shared", "item_id", 3)
    bundle = build_bundle(spec)
    assert int(bundle.splits["train"]["item_history"].lengths.max()) <= 3


# ---- data: the spec ------------------------------------------------------------------------------


def _spec_case(tmp: Path, histories, fmt: str = "csv", **column) -> Path:
    n = len(histories)
    frame = pd.DataFrame({
        "user": [f"u{r % 3}" for r in range(n)],
        "item": [f"i{r % 4}" for r in range(n)],
        "history": histories,
        "click": [r % 2 for r in range(n)],
        "split": ["train"] * (n - 2) + ["test"] * 2,
    })
    spec = {
        "files": f"data.{fmt}", "split": {"column": "split"},
        "sparse": [{"column": "user", "vocab": "build"}, {"column": "item", "vocab": "build"},
                   {"column": "history", "separator": "|", "vocab": "shared", "shared_with": "item", **column}],
        "labels": [{"task": "click", "column": "click", "type": "binary"}],
    }
    tmp.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        frame.to_parquet(tmp / "data.parquet", index=False)
    else:
        frame.to_csv(tmp / "data.csv", index=False)
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp / "spec.yaml"


def _rows(col: Jagged):
    return [col.values[a:b].tolist() for a, b in zip(col.offsets[:-1], col.offsets[1:])]


def test_spec_history_shares_the_item_vocabulary_and_table(tmp_path: Path) -> None:
    histories = ["i1|i2", "", "i3|zz|i0", "i2", "i0|i1|i2|i3", "i9"]
    bundle = build_bundle(load_spec(_spec_case(tmp_path, histories)))
    vocab = bundle.preprocessing.vocabs["item"]
    item_ids = dict(zip([f"i{r % 4}" for r in range(6)], bundle.splits["train"]["item"].tolist()))
    hist = _rows(bundle.splits["train"]["history"]) + _rows(bundle.splits["test"]["history"])
    # The same raw key, the same row; unknown keys (zz, i9: never a training item) row 0 in both.
    assert hist[0] == [item_ids["i1"], item_ids["i2"]] and hist[1] == []
    assert hist[2] == [item_ids["i3"], 0, item_ids["i0"]] and hist[5] == [0]
    assert bundle.preprocessing.vocabs["history"].num_embeddings == vocab.num_embeddings
    feature = {f.name: f for f in bundle.schema.sparse}
    assert feature["history"].multi_valued and feature["history"].table_name == feature["item"].table_name


def test_spec_max_length_keeps_the_most_recent(tmp_path: Path) -> None:
    bundle = build_bundle(load_spec(_spec_case(tmp_path, ["i0|i1|i2|i3", "i3", "", "i1|i2|i3", "i0", "i1"],
                                               max_length=2)))
    ids = dict(zip([f"i{r % 4}" for r in range(6)], bundle.splits["train"]["item"].tolist()))
    assert _rows(bundle.splits["train"]["history"])[:2] == [[ids["i2"], ids["i3"]], [ids["i3"]]]


def test_spec_parquet_list_column(tmp_path: Path) -> None:
    bundle = build_bundle(load_spec(_spec_case(tmp_path, [["i1", "i2"], [], ["i3"], ["i2"], ["i0"], ["i1"]],
                                               fmt="parquet")))
    ids = dict(zip([f"i{r % 4}" for r in range(6)], bundle.splits["train"]["item"].tolist()))
    assert _rows(bundle.splits["train"]["history"])[:3] == [[ids["i1"], ids["i2"]], [], [ids["i3"]]]


def test_spec_bad_elements_name_file_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.csv line 4.*column 'history'.*empty or null element"):
        build_bundle(load_spec(_spec_case(tmp_path / "csv", ["i1", "i2", "i3||i1", "i2", "i0", "i1"])))
    with pytest.raises(DataError, match=r"data.parquet.*column 'history'.*empty or null element"):
        build_bundle(load_spec(_spec_case(tmp_path / "pq", [["i1"], ["i2", None], ["i3"], [], ["i0"], ["i1"]],
                                          fmt="parquet")))


@pytest.mark.parametrize("column, key", [
    ({"shared_with": None}, r"sparse\[2\].shared_with: required"),
    ({"shared_with": "nope"}, r"sparse\[2\].shared_with: 'nope' is not another sparse feature"),
    ({"shared_with": "history"}, r"sparse\[2\].shared_with: 'history' is not another"),
    ({"table": "other"}, r"sparse\[2\].table: 'other'"),
    ({"max_length": 0}, r"sparse\[2\].max_length: must be >= 1"),
    ({"separator": None, "max_length": 3}, r"sparse\[2\].max_length: only for multi-valued"),
    ({"separator": None, "allow_unknown_ids": True}, r"sparse\[2\].allow_unknown_ids: only for a behaviour sequence"),
])
def test_spec_refusals_name_the_key(tmp_path: Path, column, key) -> None:
    path = _spec_case(tmp_path, ["i1"] * 6)
    spec = yaml.safe_load(path.read_text())
    spec["sparse"][2].update(column)
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=key):
        load_spec(path)


def _spec_with(path: Path, **changes) -> Path:
    """The spec at ``path`` with top-level keys and ``sparse[i]`` entries (``sparse2={...}``) changed."""
    spec = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if key.startswith("sparse"):
            spec["sparse"][int(key[6:])].update(value)
        else:
            spec[key] = value
    path.write_text(yaml.safe_dump(spec))
    return path


def _identity_case(tmp: Path, histories) -> Path:
    """:func:`_spec_case` whose items are integer ids of an ``identity`` vocabulary (size 10)."""
    path = _spec_case(tmp, histories)
    frame = pd.read_csv(tmp / "data.csv", dtype={"history": str}, keep_default_na=False)
    frame["item"] = frame["item"].str[1:].astype(int)
    frame.to_csv(tmp / "data.csv", index=False)
    return _spec_with(path, sparse1={"vocab": "identity", "num_embeddings": 10})


@pytest.mark.parametrize("value", ["-5", "2.5", "abc", "10", "nan"])
def test_history_of_identity_ids_is_checked_like_the_candidate(tmp_path: Path, value: str) -> None:
    """A history sharing an identity vocabulary: an element outside [0, N) is a bad row naming file,
    line and column (as the candidate's own ids are), or dropped and counted with on_bad_rows: skip."""
    histories = ["1|2", "", f"3|{value}|0", "2", "1", "0"]
    with pytest.raises(DataError, match=rf"data.csv line 4 column 'history': an element is not an integer id in "
                                        rf"\[0, 10\) \(the ids of 'item', vocab: shared\) \(value '{value}'\)"):
        build_bundle(load_spec(_identity_case(tmp_path, histories)))
    spec = _spec_with(tmp_path / "spec.yaml", on_bad_rows="skip")
    bundle = build_bundle(load_spec(spec))
    assert len(bundle.splits["train"]) == 3
    assert bundle.preprocessing.stats["skipped_by_reason"] == {
        "history: an element is not an integer id in [0, 10) (the ids of 'item', vocab: shared)": 1}


def test_history_of_identity_ids_is_checked_when_evaluating_and_scoring(tmp_path: Path) -> None:
    """A run's fitted preprocessing (evaluate) and label-free rows (predict) check the history's ids too."""
    from mtl_torchrec.data.spec.features import FeatureRows, feature_spec

    spec = load_spec(_identity_case(tmp_path, ["1|2", "", "3|4|0", "2", "1", "0"]))
    pre = build_bundle(spec).preprocessing
    frame = pd.read_csv(tmp_path / "data.csv", dtype={"history": str}, keep_default_na=False)
    frame.loc[5, "history"] = "4|99"
    frame.to_csv(tmp_path / "eval.csv", index=False)
    import dataclasses

    with pytest.raises(DataError, match=r"eval.csv line 7 column 'history': an element is not an integer id.*'99'"):
        build_bundle(dataclasses.replace(spec, files="eval.csv"), pre)
    rows = FeatureRows(feature_spec(spec, list(frame.columns)), pre)
    with pytest.raises(DataError, match=r"DataFrame row 5 column 'history': an element is not an integer id.*'99'"):
        rows.convert_frame(frame)
    skipping = FeatureRows(feature_spec(dataclasses.replace(spec, on_bad_rows="skip"), list(frame.columns)), pre)
    assert skipping.convert_frame(frame).rows.tolist() == [0, 1, 2, 3, 4]


def test_history_in_another_form_than_the_candidate_is_refused(tmp_path: Path) -> None:
    """Ids written as "1" against the candidate's "i1" all miss the shared vocabulary: refused naming both
    columns and a few unmatched values, unless the history sets allow_unknown_ids."""
    path = _spec_case(tmp_path, ["1|2", "", "3|0|1", "2", "1", "0"])
    with pytest.raises(DataError, match=r"column 'history' \(sparse\[2\], vocab: shared, shared_with: item\): "
                                        r"100.0% of its ids on the training split \(6 of 6\) are unknown to the "
                                        r"vocabulary of 'item', against 0.0% .*Unmatched history values: "
                                        r"\['1', '2', '3', '0'\]; values of 'item': \['i0', 'i1', 'i2', 'i3'\]\. .*allow_unknown_ids: true"):
        build_bundle(load_spec(path))
    bundle = build_bundle(load_spec(_spec_with(path, sparse2={"allow_unknown_ids": True})))
    assert bundle.preprocessing.stats["sequences"]["history"]["unknown_rate"] == 1.0
    # A few unknown ids (an item never shown in training) are normal and pass.
    bundle = build_bundle(load_spec(_spec_case(tmp_path / "few", ["i1|i2", "", "i3|zz|i0", "i2", "i0", "i1"])))
    assert bundle.preprocessing.stats["sequences"]["history"]["unknown"] == 1


def test_history_empty_on_every_training_row_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"column 'history' \(sparse\[2\]\): the behaviour sequence is empty on "
                                        r"all 4 training rows"):
        build_bundle(load_spec(_spec_case(tmp_path, ["", "", "", "", "i1", "i2"])))


def test_history_holding_the_rows_own_candidate_is_a_warning(tmp_path: Path) -> None:
    """Items are i0, i1, i2, i3, ...: rows 0 and 2 of 4 training rows hold their own item."""
    bundle = build_bundle(load_spec(_spec_case(tmp_path, ["i0", "i3", "i1|i2", "", "i0", "i1"])))
    stats = bundle.preprocessing.stats
    assert stats["sequences"]["history"]["rows_with_candidate"] == 2
    assert len(stats["warnings"]) == 1
    assert "50.0% of the training rows (2 of 4) have their own 'item' id in the history" in stats["warnings"][0]
    clean = build_bundle(load_spec(_spec_case(tmp_path / "clean", ["i1", "i3", "i0|i3", "", "i0", "i1"])))
    assert clean.preprocessing.stats["warnings"] == []


def test_multi_valued_column_of_numbers_is_refused(tmp_path: Path) -> None:
    """A Parquet int column is not a list of ids (each cell would be read as a one-id history); a text
    column is split at the separator like CSV."""
    path = _spec_case(tmp_path / "int", [7, 3, 1, 2, 0, 1], fmt="parquet")
    with pytest.raises(DataError, match=r"data.parquet: column 'history' \(sparse\[2\]\) holds int64 values; a "
                                        r"multi-valued column \(separator '\|'\) must be a list column \(Parquet "
                                        r"list<...>\) or text with the ids joined by '\|'"):
        build_bundle(load_spec(path))
    text = build_bundle(load_spec(_spec_case(tmp_path / "text", ["i1|i2", "", "i3", "i2", "i0", "i1"], fmt="parquet")))
    listed = build_bundle(load_spec(_spec_case(tmp_path / "list", [["i1", "i2"], [], ["i3"], ["i2"], ["i0"], ["i1"]],
                                               fmt="parquet")))
    assert _rows(text.splits["train"]["history"]) == _rows(listed.splits["train"]["history"])
    # Mixed cells (a DataFrame to score): a number among lists is a bad row.
    from mtl_torchrec.data.spec.features import FeatureRows, feature_spec

    spec = load_spec(tmp_path / "list" / "spec.yaml")
    frame = pd.read_parquet(tmp_path / "list" / "data.parquet")
    frame["history"] = pd.Series([["i1"], 5, [], ["i2"], ["i0"], ["i1"]], dtype=object)
    with pytest.raises(DataError, match=r"DataFrame row 1 column 'history': neither a list of ids nor text"):
        FeatureRows(feature_spec(spec, list(frame.columns)), listed.preprocessing).convert_frame(frame)


@pytest.mark.parametrize("override, key", [
    (["model.sequence.history=user"], r"model.sequence.history: 'user' is not a multi-valued id feature of the data "
                                      r"\(multi-valued id features: \['history'\]\)"),
    (["model.sequence.candidate=history"], "model.sequence.candidate: 'history' is not a single-valued"),
    (["model.sequence.candidate=user"], "model.sequence.history: 'history' has its own table"),
])
def test_sequence_config_is_checked_against_the_spec_before_reading_rows(tmp_path: Path, override, key) -> None:
    """train refuses a model.sequence the spec cannot satisfy before it reads a row or makes a folder
    (the data file is gone here: reading it would fail differently)."""
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.workflows import train

    spec = _spec_case(tmp_path, ["i1"] * 6)
    (tmp_path / "data.csv").unlink()
    cfg = load_config(None, [*SMALL, "data.source=spec", f"data.spec={spec}", f"run_dir={tmp_path / 'run'}",
                             "model.tasks=[{name: click, type: binary}]", "model.sequence.enabled=true",
                             "model.sequence.history=history", "model.sequence.candidate=item", *override])
    ctx = init_distributed()
    try:
        with pytest.raises(ConfigError, match=key):
            train(cfg, ctx)
    finally:
        close_distributed(ctx)
    assert not (tmp_path / "run").exists()


# ---- sharded (2 gloo ranks) vs unsharded -----------------------------------------------------

# data_parallel: the sequence table is then sharded row-wise (SequenceTableSharder), the rest replicated.
SHARDED_STRATEGIES = ["row_wise", "table_wise", "column_wise", "data_parallel", "planner"]
SHARD_LR = 0.1
SHARD_BATCH = 48


def _sharding_setup():
    from mtl_torchrec.train.trainer import seed_everything

    cfg, data = _synthetic(["model.dense_layers=[8]"])
    seed_everything(0)
    module = build_train_module(cfg.model, data, cfg.train.loss_balance, cfg.train.balance)
    return data, module


def _shard_batch(data, rank: int) -> Batch:
    rows = np.arange(rank * SHARD_BATCH, (rank + 1) * SHARD_BATCH)
    return Batch.from_table(data.splits["train"].take(rows), data.schema)


def _sharded_rank(rank: int, world_size: int):
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    from mtl_torchrec.distributed.context import init_distributed
    from mtl_torchrec.distributed.optim import make_optimizer
    from mtl_torchrec.distributed.sharding import shard_module
    from mtl_torchrec.distributed.state import copy_unsharded_state

    ctx = init_distributed()
    results = {}
    for strategy in SHARDED_STRATEGIES:
        data, module = _sharding_setup()
        initial = {k: v.clone() for k, v in module.state_dict().items()}
        dmp = shard_module(module, ctx, strategy=strategy, sparse_optimizer="sgd", sparse_lr=SHARD_LR)
        copy_unsharded_state(dmp, initial)
        batch = _shard_batch(data, rank)
        dmp.train()
        opt = make_optimizer(dmp, "sgd", SHARD_LR, sparse_optimizer="sgd", sparse_lr=SHARD_LR)
        opt.zero_grad()
        loss, out = dmp(batch)
        logits = {k: v.detach().clone() for k, v in out.model_output.logits.items()}
        loss.backward()
        opt.step()
        after = {}
        for k, v in dmp.state_dict().items():
            if "embedding.embeddings" not in k:
                continue
            shards = v.local_shards() if isinstance(v, ShardedTensor) else None
            after[k] = ([(list(s.metadata.shard_offsets), s.tensor.detach().clone()) for s in shards] if shards is not None
                        else [([0, 0], v.detach().clone())])
        results[strategy] = {"logits": logits, "after": after}
    torch.distributed.destroy_process_group()
    return results


@pytest.mark.slow
def test_sharded_sequence_table_matches_unsharded() -> None:
    """The sequence table (an EmbeddingCollection) sharded over 2 gloo ranks row-, table-, column-wise
    or as the planner chooses: the same forward (logits) and the same one-step SGD update of its rows as the
    unsharded model trained on the mean of the two ranks' losses."""
    from tests.ranks import run_ranks

    per_rank = run_ranks(_sharded_rank, 2)
    data, module = _sharding_setup()
    module.train()
    losses, logits = [], []
    for r in range(2):
        loss, out = module(_shard_batch(data, r))
        losses.append(loss)
        logits.append({k: v.detach() for k, v in out.model_output.logits.items()})
    (sum(losses) / 2).backward()
    with torch.no_grad():
        for p in module.parameters():
            if p.grad is not None:
                p -= SHARD_LR * p.grad
    reference = module.state_dict()
    key = "model.feature_modules.item_history.embedding.embeddings.t_item_id.weight"
    for strategy in SHARDED_STRATEGIES:
        rows_checked = 0
        for r, res in enumerate(r[strategy] for r in per_rank):
            for task, v in res["logits"].items():
                torch.testing.assert_close(v, logits[r][task], rtol=1e-5, atol=1e-5, msg=f"{strategy}: {task}")
            assert list(res["after"]) == [key], (strategy, list(res["after"]))
            for offsets, t in res["after"][key]:
                idx = tuple(slice(o, o + s) for o, s in zip(offsets, t.shape))
                torch.testing.assert_close(t, reference[key][idx], rtol=1e-4, atol=1e-5, msg=strategy)
                rows_checked += t.shape[0] * t.shape[1]
        # Every entry of the table was compared on some rank.
        assert rows_checked >= reference[key].numel(), strategy
    assert not torch.equal(reference[key], _sharding_setup()[1].state_dict()[key]), "the step moved the table"
