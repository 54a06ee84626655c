"""Text encoding, the vector store/cache, the frozen sharded text table and its adapter."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mtl_torchrec.config import ConfigError, TextConfig, TextEncoderConfig, load_config
from mtl_torchrec.data.schema import DataError
from mtl_torchrec.model.text import build_text_feature
from mtl_torchrec.modules.frozen_ebc import FrozenEmbeddingBagCollection
from mtl_torchrec.modules.text_feature import TextFeature, table_width
from mtl_torchrec.text.encoder import TextEncoder
from mtl_torchrec.text.items import read_item_texts
from mtl_torchrec.text.store import INDEX_FILE, VECTORS_FILE, TextStore, build_store
from tests.distributed import run_ranks

WORDS = "the a toy story gold eye four rooms drama comedy action year genres movie love war night day".split()


def make_tiny_model(folder: Path) -> str:
    """A randomly initialised 2-layer BERT with a small word-level vocabulary (no weights needed)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789.,:")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


def enc_cfg(model: str, **kw: Any) -> TextEncoderConfig:
    return TextEncoderConfig(model=model, **{"max_length": 32, "batch_size": 4, **kw})


TEXTS = ["toy story", "gold eye", "four rooms drama", "a love story of war and night", "comedy", "action movie year"]


# ----------------------------------------------------------------------------- encoder


def test_mean_pooling_matches_manual_and_is_normalised(tiny_model: str) -> None:
    enc = TextEncoder(enc_cfg(tiny_model, normalize=False))
    vecs, stats = enc.encode(TEXTS)
    assert vecs.shape == (len(TEXTS), 32) and stats.encoded == len(TEXTS) and stats.truncated == 0
    with torch.no_grad():
        t = enc.tokenizer([TEXTS[3]], return_tensors="pt")
        manual = enc.model(**t).last_hidden_state[0].mean(0)
    torch.testing.assert_close(vecs[3], manual, atol=1e-5, rtol=1e-5)
    normed, _ = TextEncoder(enc_cfg(tiny_model)).encode(TEXTS)
    torch.testing.assert_close(normed.norm(dim=1), torch.ones(len(TEXTS)))
    torch.testing.assert_close(normed, torch.nn.functional.normalize(vecs, dim=1), atol=1e-5, rtol=1e-5)


def test_cls_pooling_and_batching_invariance(tiny_model: str) -> None:
    one, _ = TextEncoder(enc_cfg(tiny_model, pooling="cls", batch_size=1)).encode(TEXTS)
    many, _ = TextEncoder(enc_cfg(tiny_model, pooling="cls", batch_size=8)).encode(TEXTS)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)
    mean, _ = TextEncoder(enc_cfg(tiny_model, pooling="mean")).encode(TEXTS)
    assert not torch.allclose(one, mean)


def test_overlong_text_is_truncated_and_counted(tiny_model: str) -> None:
    long_text = " ".join(["story"] * 200)
    enc = TextEncoder(enc_cfg(tiny_model, max_length=16))
    vecs, stats = enc.encode([long_text, "toy story"])
    assert stats.truncated == 1
    cut, _ = enc.encode([" ".join(["story"] * 14)])  # 14 words + [CLS] + [SEP] = 16 tokens
    torch.testing.assert_close(vecs[0], cut[0], atol=1e-5, rtol=1e-5)


def test_unknown_model_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.text.encoder.model.*does not exist"):
        TextEncoder(TextEncoderConfig(model=str(tmp_path / "no_such_model")))
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(ConfigError, match="cannot load text model"):
        TextEncoder(TextEncoderConfig(model=str(empty)))


def test_remote_code_is_refused_unless_asked_for(tmp_path: Path, tiny_model: str) -> None:
    folder = tmp_path / "custom"
    folder.mkdir()
    for f in Path(tiny_model).iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom-bert", auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                                       "AutoModel": "modeling_custom.CustomModel"})
    (folder / "config.json").write_text(json.dumps(config))
    # The code file would fail loudly if it ever ran.
    (folder / "configuration_custom.py").write_text("raise RuntimeError('remote code executed')\n")
    assert TextEncoderConfig().trust_remote_code is False
    with pytest.raises(ConfigError, match="cannot load text model"):
        TextEncoder(TextEncoderConfig(model=str(folder)))


# ----------------------------------------------------------------------------- store / cache


def test_store_cache_reuse_and_partial_reencode(tmp_path: Path, tiny_model: str) -> None:
    cfg = enc_cfg(tiny_model)
    texts: List[Any] = list(TEXTS) + [None, ""]
    store, stats = build_store(texts, tmp_path / "s", cfg)
    assert (stats.encoded, stats.reused, stats.empty, stats.written) == (6, 0, 2, True)
    assert store.has_text.tolist() == [True] * 6 + [False, False]
    assert torch.count_nonzero(store.vectors[6:]) == 0
    files = {n: (tmp_path / "s" / n).read_bytes() for n in (VECTORS_FILE, INDEX_FILE)}
    mtimes = {n: os.stat(tmp_path / "s" / n).st_mtime_ns for n in files}

    again, stats = build_store(texts, tmp_path / "s", cfg)
    assert (stats.encoded, stats.reused, stats.written) == (0, 6, False)
    assert {n: os.stat(tmp_path / "s" / n).st_mtime_ns for n in files} == mtimes
    torch.testing.assert_close(again.vectors, store.vectors, rtol=0, atol=0)

    texts[2] = "four rooms comedy"
    changed, stats = build_store(texts, tmp_path / "s", cfg)
    assert (stats.encoded, stats.reused, stats.written) == (1, 5, True)
    keep = [0, 1, 3, 4, 5]
    assert torch.equal(changed.vectors[keep], store.vectors[keep])
    assert not torch.allclose(changed.vectors[2], store.vectors[2])
    loaded = TextStore.load(tmp_path / "s")
    assert torch.equal(loaded.vectors, changed.vectors) and loaded.info["revision"].startswith("sha256:")

    # A setting that changes vectors invalidates the whole cache.
    _, stats = build_store(texts, tmp_path / "s", enc_cfg(tiny_model, max_length=8))
    assert (stats.encoded, stats.reused) == (6, 0)


def test_bad_text_input(tmp_path: Path, tiny_model: str) -> None:
    with pytest.raises(DataError, match="item 1: text is not valid UTF-8"):
        build_store(["ok", b"caf\xe9"], tmp_path / "a", enc_cfg(tiny_model))
    with pytest.raises(DataError, match="item 0: text is not valid UTF-8"):
        build_store([b"\xff\xfe".decode("utf-8", "surrogateescape")], tmp_path / "b", enc_cfg(tiny_model))
    with pytest.raises(DataError, match="item 2: text must be a string"):
        build_store(["a", "b", 3], tmp_path / "c", enc_cfg(tiny_model))
    assert not (tmp_path / "a").exists()
    store, stats = build_store(["  ", "", None, "toy"], tmp_path / "d", enc_cfg(tiny_model))
    assert stats.empty == 3 and store.has_text.tolist() == [False, False, False, True]
    bad_csv = tmp_path / "items.csv"
    bad_csv.write_bytes(b"item_id,title\n0,fine\n1,caf\xe9\n")
    with pytest.raises(DataError, match=r"items.csv:3: not valid UTF-8"):
        read_item_texts(str(bad_csv), "item_id", ["title"])


def test_item_table_file_and_template(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("item_id,title,genres\n0,Toy Story,Comedy\n2,,\n1,Heat,\n", encoding="utf-8")
    texts = read_item_texts(str(path), "item_id", ["title", "genres"], "{title}. Genres: {genres}")
    assert texts == {0: "Toy Story. Genres: Comedy", 1: "Heat. Genres: ", 2: None}
    with pytest.raises(DataError, match="template: field"):
        read_item_texts(str(path), "item_id", ["title"], "{title} {year}")
    with pytest.raises(DataError, match="missing column"):
        read_item_texts(str(path), "movie", ["title"])


def test_store_errors_name_missing_ids_and_corruption(tmp_path: Path, tiny_model: str) -> None:
    store, _ = build_store({0: "toy", 1: "story", 4: "drama"}, tmp_path / "s", enc_cfg(tiny_model))
    with pytest.raises(DataError, match=r"2 of 5 item ids have no vector \(e.g. 2, 3\)"):
        store.table(5)
    w, has = store.table(2)
    assert w.shape == (2, 32) and has.tolist() == [True, True]
    data = bytearray((tmp_path / "s" / VECTORS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "s" / VECTORS_FILE).write_bytes(bytes(data))
    with pytest.raises(DataError, match="does not match"):
        TextStore.load(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="index.json not found"):
        TextStore.load(tmp_path / "nothing")


# ----------------------------------------------------------------------------- model side


def _store_from(vectors: torch.Tensor, has_text: np.ndarray) -> TextStore:
    n = len(vectors)
    return TextStore(ids=np.arange(n), vectors=vectors, has_text=has_text, hashes=np.zeros((n, 16), np.uint8),
                     info={"normalize": True})


def test_text_feature_unsharded_frozen_and_no_text_vector() -> None:
    torch.manual_seed(0)
    vecs = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    has = np.array([True, True, False, True, True, True])
    vecs[2] = 0
    feature = build_text_feature(TextConfig(enabled=True, adapter_layers=[16, 4]), _store_from(vecs, has), 6)
    assert isinstance(feature.table, FrozenEmbeddingBagCollection) and feature.out_features == 4
    assert table_width(8) == 12
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user_id", "item_id"], values=torch.tensor([0, 1, 1, 2]), lengths=torch.tensor([1, 1, 1, 1])
    )
    out = feature(kjt)
    assert out.shape == (2, 4)
    out.sum().backward()
    table_w = feature.table.embedding_bags["text_item_id"].weight
    assert table_w.grad is None and not table_w.requires_grad
    # Row 1 uses item 2 (no text): the learned no-text vector (flag-column weights) got a gradient.
    assert feature.adapter[0].weight.grad[:, 8].abs().sum() > 0
    # Items with text never touch it: with only item 1 in the batch its gradient is zero.
    feature.zero_grad()
    feature(KeyedJaggedTensor.from_lengths_sync(keys=["item_id"], values=torch.tensor([1]),
                                                lengths=torch.tensor([1]))).sum().backward()
    assert feature.adapter[0].weight.grad[:, 8].abs().sum() == 0
    trainable = build_text_feature(TextConfig(enabled=True, trainable_table=True), _store_from(vecs, has), 6)
    assert trainable.table.embedding_bags["text_item_id"].weight.requires_grad
    with pytest.raises(DataError, match="1 of 7 item ids have no vector"):
        build_text_feature(TextConfig(enabled=True), _store_from(vecs, has), 7)


def _train_ranks(rank: int, world: int, store_dir: str, overrides: List[str], run_dir: str) -> Dict[str, Any]:
    """Trains a few steps with text on tiny synthetic data; returns this rank's table shards and adapter."""
    from mtl_torchrec.data.sources import load_data
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.launch.train_cmd import make_trainer

    cfg = load_config(None, [
        "data.synthetic.num_impressions=6000", "data.synthetic.num_items=300", "data.synthetic.num_users=400",
        "data.batch_size=128", "train.epochs=1", "train.progress=false", "model.text.enabled=true",
        f"model.text.store={store_dir}", "model.text.adapter_layers=[8]",
    ] + overrides)
    ctx = init_distributed()
    trainer = make_trainer(cfg, load_data(cfg.data), ctx, Path(run_dir) / str(rank))

    def snapshot() -> Dict[str, Any]:
        out = {}
        for k, v in trainer.dmp.state_dict().items():
            if "feature_modules.text" not in k:
                continue
            if hasattr(v, "local_shards"):
                out[k] = [(list(s.metadata.shard_offsets), s.tensor.detach().clone()) for s in v.local_shards()]
            else:
                out[k] = v.detach().clone()
        return out

    feature = next(m for m in trainer.dmp.modules() if isinstance(m, TextFeature))
    before = snapshot()
    summary = trainer.fit()
    after = snapshot()
    trainer.close()
    close_distributed(ctx)
    return {"before": before, "after": after, "initial": feature.initial_weights, "steps": summary["steps"]}


def _tiny_synthetic_store(tmp_path: Path, tiny_model: str) -> str:
    from mtl_torchrec.config import SyntheticConfig
    from mtl_torchrec.data.synthetic import generate_synthetic

    data = generate_synthetic(SyntheticConfig(num_impressions=6000, num_items=300, num_users=400))
    texts: List[Any] = list(data.item_text)
    # The most shown item has no text, so training must use (and move) the learned no-text vector.
    texts[int(np.bincount(data.splits["train"]["item_id"]).argmax())] = None
    build_store(texts, tmp_path / "store", enc_cfg(tiny_model))
    return str(tmp_path / "store")


def _table_key(state: Dict[str, Any]) -> str:
    return next(k for k in state if "embedding_bags" in k)


@pytest.mark.slow
def test_two_rank_training_keeps_frozen_table_and_moves_adapter(tmp_path: Path, tiny_model: str) -> None:
    store = _tiny_synthetic_store(tmp_path, tiny_model)
    results = run_ranks(_train_ranks, 2, store, ["train.sharding=row_wise"], str(tmp_path / "runs"))
    for res in results:
        assert res["steps"] > 10
        key = _table_key(res["before"])
        for (offs, b), (_, a) in zip(res["before"][key], res["after"][key]):
            assert torch.equal(a, b), "the frozen text table changed during training"
            # The shard holds the store's vectors (copied in after sharding).
            rows = slice(offs[0], offs[0] + b.shape[0])
            cols = slice(offs[1], offs[1] + b.shape[1])
            assert torch.equal(b, res["initial"][rows, cols])
        adapter = next(k for k in res["before"] if k.endswith("adapter.0.weight"))
        assert not torch.equal(res["before"][adapter], res["after"][adapter]), "the adapter did not train"
        # The flag column (index text_dim = 32 for the tiny model) holds the learned no-text vector.
        assert not torch.equal(res["before"][adapter][:, 32], res["after"][adapter][:, 32]), "no-text vector did not train"
    assert sum(len(r["before"][_table_key(r["before"])]) for r in results) >= 1


@pytest.mark.slow
def test_trainable_table_mode_fine_tunes_the_vectors(tmp_path: Path, tiny_model: str) -> None:
    store = _tiny_synthetic_store(tmp_path, tiny_model)
    results = run_ranks(_train_ranks, 1, store, ["train.sharding=table_wise", "model.text.trainable_table=true"],
                        str(tmp_path / "runs"))
    changed = 0
    for res in results:
        key = _table_key(res["before"])
        changed += sum(not torch.equal(b, a) for (_, b), (_, a) in zip(res["before"][key], res["after"][key]))
    assert changed >= 1


def _encode_rank(rank: int, world: int, texts: List[Any], model: str, out: str) -> List[List[float]]:
    from mtl_torchrec.distributed.context import close_distributed, init_distributed

    ctx = init_distributed()
    store, stats = build_store(texts, out, enc_cfg(model) if model else TextEncoderConfig())
    close_distributed(ctx)
    return store.vectors.tolist()


@pytest.mark.slow
def test_minilm_two_rank_encoding_equals_one_rank_and_cache_is_byte_identical(tmp_path: Path) -> None:
    from mtl_torchrec.launch.cli import main

    texts = [f"{w} {v}. Year: {1990 + i % 9}." for i, (w, v) in enumerate(zip(WORDS, reversed(WORDS)))]
    texts[3] = ""
    one, _ = build_store(texts, tmp_path / "one", TextEncoderConfig())
    assert one.dim == 384 and one.info["model"].startswith("all-MiniLM-L6-v2")
    two = run_ranks(_encode_rank, 2, texts, "", str(tmp_path / "two"))
    assert two[0] == two[1]
    torch.testing.assert_close(torch.tensor(two[0]), one.vectors, atol=2e-5, rtol=1e-4)

    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n" + "".join(f"{i},{t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    argv = ["encode-text", "--store", str(tmp_path / "cli"), "--input", str(items), "--text-columns", "title",
            "--no-progress"]
    assert main(argv) == 0
    first = {n: (tmp_path / "cli" / n).read_bytes() for n in (VECTORS_FILE, INDEX_FILE)}
    assert main(argv) == 0
    assert {n: (tmp_path / "cli" / n).read_bytes() for n in first} == first
    assert main(["encode-text", "--store", str(tmp_path / "x"), "--input", str(items), "--text-columns", "title",
                 "--model", str(tmp_path / "missing")]) == 2


def test_unseen_id_dropout_trains_and_replaces_unseen_ids() -> None:
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from mtl_torchrec.modules.id_dropout import UnseenIdDropout

    ebc = EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name="u", embedding_dim=4, num_embeddings=10, feature_names=["user_id"]),
        EmbeddingBagConfig(name="i", embedding_dim=4, num_embeddings=10, feature_names=["item_id"]),
    ])

    def kjt(users: List[int], items: List[int]) -> KeyedJaggedTensor:
        return KeyedJaggedTensor.from_lengths_sync(
            keys=["user_id", "item_id"], values=torch.tensor(users + items),
            lengths=torch.ones(len(users) + len(items), dtype=torch.int32))

    drop = UnseenIdDropout("item_id", 10, 4, p=0.5)
    torch.manual_seed(0)
    batch = kjt(list(range(8)), [1, 2, 3, 1, 2, 3, 1, 2])
    ref = ebc(batch).to_dict()
    out = drop(ebc(batch), batch).to_dict()
    assert torch.equal(out["user_id"], ref["user_id"])
    dropped = (out["item_id"] != ref["item_id"]).any(1)
    assert 0 < int(dropped.sum()) < 8 and torch.all(out["item_id"][dropped] == 0)
    assert drop.seen.nonzero().flatten().tolist() == [1, 2, 3]
    drop.eval()
    test = kjt([0, 1], [2, 7])
    out = drop(ebc(test), test).to_dict()
    assert torch.equal(out["item_id"][0], ebc(test).to_dict()["item_id"][0])
    assert torch.equal(out["item_id"][1], drop.unseen.detach())


@pytest.mark.slow
def test_train_command_encodes_into_the_cache_once(tmp_path: Path, tiny_model: str) -> None:
    from mtl_torchrec.launch.cli import main

    argv = ["train", "data.synthetic.num_impressions=3000", "data.synthetic.num_items=200",
            "data.synthetic.num_users=300", "data.batch_size=256", "train.epochs=1", "train.progress=false",
            "model.text.enabled=true", f"model.text.cache_dir={tmp_path / 'cache'}",
            f"model.text.encoder.model={tiny_model}", f"output_dir={tmp_path / 'runs'}"]
    assert main(argv) == 0
    (folder,) = (tmp_path / "cache").iterdir()
    assert folder.name.startswith("synthetic-")
    index = folder / INDEX_FILE
    stamp = os.stat(index).st_mtime_ns
    assert json.loads(index.read_text())["num_items"] == 200
    assert main(argv) == 0
    assert os.stat(index).st_mtime_ns == stamp
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all((r / "metrics.json").is_file() for r in runs)


def test_text_cache_folder_is_keyed_by_the_data_config(tmp_path: Path) -> None:
    from mtl_torchrec.model.text import text_cache_folder

    def folder(*overrides: str) -> Path:
        cfg = load_config(None, list(overrides))
        return text_cache_folder(cfg.model.text, cfg.data, cfg.output_dir)

    base = folder()
    assert base.parent == Path("runs") / "text_cache" and base.name.startswith("synthetic-")
    # Batching does not change which rows exist; the data's size or seed does.
    assert folder("data.batch_size=64", "data.eval_batch_size=128") == base
    assert folder("data.synthetic.num_items=100") != base
    assert folder("data.synthetic.seed=1") != base
    assert folder(f"model.text.cache_dir={tmp_path}").parent == tmp_path
    # A spec's content is part of the key, not only its path.
    spec = tmp_path / "spec.yaml"
    spec.write_text("files: a.csv\n")
    first = folder("data.source=spec", f"data.spec={spec}")
    spec.write_text("files: b.csv\n")
    assert folder("data.source=spec", f"data.spec={spec}") != first


def test_id_dropouts_on_user_and_item_ids() -> None:
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from mtl_torchrec.config import ConfigError, ModelConfig
    from mtl_torchrec.data.schema import Schema, SparseFeature
    from mtl_torchrec.model.text import item_id_dropout
    from mtl_torchrec.modules.id_dropout import IdDropouts, UnseenIdDropout

    ebc = EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name="u", embedding_dim=4, num_embeddings=10, feature_names=["user_id"]),
        EmbeddingBagConfig(name="i", embedding_dim=4, num_embeddings=10, feature_names=["item_id"]),
    ])
    batch = KeyedJaggedTensor.from_lengths_sync(keys=["user_id", "item_id"], values=torch.tensor([1, 2, 3, 4]),
                                                lengths=torch.ones(4, dtype=torch.int32))
    drops = IdDropouts([UnseenIdDropout("user_id", 10, 4, p=0.5), UnseenIdDropout("item_id", 10, 4, p=0.5)])
    with torch.no_grad():
        drops.drops[0].unseen.fill_(1.0)
        drops.drops[1].unseen.fill_(2.0)
    drops(ebc(batch), batch)  # training: users 1, 2 and items 3, 4 are seen
    drops.eval()
    test = KeyedJaggedTensor.from_lengths_sync(keys=["user_id", "item_id"], values=torch.tensor([1, 7, 8, 4]),
                                               lengths=torch.ones(4, dtype=torch.int32))
    ref = ebc(test).to_dict()
    out = drops(ebc(test), test).to_dict()
    assert torch.equal(out["user_id"][0], ref["user_id"][0]) and torch.all(out["user_id"][1] == 1.0)
    assert torch.all(out["item_id"][0] == 2.0) and torch.equal(out["item_id"][1], ref["item_id"][1])
    with pytest.raises(ValueError, match="distinct"):
        IdDropouts([UnseenIdDropout("item_id", 10, 4, 0.1), UnseenIdDropout("item_id", 10, 4, 0.1)])

    schema = Schema(sparse=[SparseFeature("user_id", 10), SparseFeature("item_id", 10)], dense=[], labels=[])
    cfg = ModelConfig(embedding_dim=4)
    cfg.text.id_dropout = 0.2
    assert isinstance(item_id_dropout(cfg, schema), UnseenIdDropout)
    cfg.text.id_dropout_features = ["user_id", "item_id"]
    both = item_id_dropout(cfg, schema)
    assert [d.feature for d in both.drops] == ["user_id", "item_id"]
    cfg.text.id_dropout_features = ["user_id", "zip"]
    with pytest.raises(ConfigError, match="model.text.id_dropout_features: 'zip'"):
        item_id_dropout(cfg, schema)
