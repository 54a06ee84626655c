"""Text encoding, the vector store/cache, the frozen sharded text table and its adapter."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mtl_torchrec.config import ConfigError, TextConfig, TextEncoderConfig, load_config
from mtl_torchrec.core import progress
from mtl_torchrec.core.progress import progress_bar
from mtl_torchrec.data.item_table import read_item_table
from mtl_torchrec.data.schema import DataError
from mtl_torchrec.model.text import build_text_feature
from mtl_torchrec.modules.frozen_ebc import FrozenEmbeddingBagCollection
from mtl_torchrec.modules.text_feature import TextFeature, table_width
from mtl_torchrec.text.encoder import LOG_MIN_TEXTS, TextEncoder
from mtl_torchrec.text.store import (
    BY_TEXT,
    INDEX_FILE,
    VECTORS_FILE,
    TextStore,
    build_store,
    cache_folder,
    encode_texts,
)
from tests.ranks import run_ranks

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


def test_encoding_progress_in_a_log_file_is_lines(tiny_model: str, tmp_path: Path, monkeypatch) -> None:
    """stderr in a file (a job's log): 512 texts or more encoded without a bar still print where they are
    (docs/text.md: a line every 15 s, a last one at 100%), and a bar (progress=True) is written as the
    same lines; never a '\\r'. The interval is shortened here; its default is the documented 15 s."""
    bar = progress_bar(total=1, desc="x", lines=True)
    assert bar.mininterval == 15.0
    bar.close()
    texts = [f"item {i} " + "word " * (i % 7) for i in range(LOG_MIN_TEXTS + 88)]
    enc = TextEncoder(enc_cfg(tiny_model, batch_size=64))
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    for shown in (False, True):
        log = tmp_path / f"stderr_{shown}.log"
        with open(log, "w") as f, monkeypatch.context() as m:
            m.setattr(sys, "stderr", f)
            enc.encode(texts, progress=shown, desc="encode text")
        text = log.read_text()
        assert "\r" not in text
        lines = [line for line in text.splitlines() if line.startswith("encode text: ") and "text/s" in line]
        assert len(lines) >= 5, text
        assert lines[-1].startswith("encode text: 100% 600/600 ["), lines[-1]
    # Below LOG_MIN_TEXTS without a bar: nothing.
    with open(tmp_path / "small.log", "w") as f, monkeypatch.context() as m:
        m.setattr(sys, "stderr", f)
        enc.encode(texts[:10], desc="encode text")
    assert (tmp_path / "small.log").read_text() == ""


def test_log_lines_keep_their_interval(tmp_path: Path) -> None:
    """A log bar writes at most one line per interval while it advances (no extra redraws a second
    or two after a line, as tqdm's monitor thread made) and the final counts once at the end."""
    import time

    from mtl_torchrec.core.progress import LogLines

    log = tmp_path / "bar.log"
    with open(log, "w") as f:
        bar = LogLines(total=40, desc="steps", file=f, mininterval=0.2)
        for _ in range(40):
            time.sleep(0.03)
            bar.update(1)
        bar.close()
    lines = log.read_text().splitlines()
    assert lines[-1].startswith("steps: 100% 40/40") and "\r" not in log.read_text()
    # 1.2 s of updates at one line per 0.2 s: at most 6 lines before the last, never one per update.
    assert 3 <= len(lines) <= 7, lines
    assert sum(line.startswith("steps: 100%") for line in lines) == 1, lines


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


def test_cache_is_content_addressed_and_reused_by_any_caller(tmp_path: Path, tiny_model: str) -> None:
    cfg = enc_cfg(tiny_model)
    texts: List[Any] = list(TEXTS) + [None, ""]
    vectors, has_text, stats = encode_texts(texts, tmp_path / "cache", cfg)
    assert (stats.encoded, stats.reused, stats.empty, stats.written) == (6, 0, 2, True)
    assert has_text.tolist() == [True] * 6 + [False, False]
    assert torch.count_nonzero(vectors[6:]) == 0
    (folder,) = (tmp_path / "cache").iterdir()
    assert folder == cache_folder(tmp_path / "cache", cfg)
    files = {n: (folder / n).read_bytes() for n in (VECTORS_FILE, INDEX_FILE)}

    # The same texts in another order (another spec, another feature): nothing encoded, nothing written.
    again, _, stats = encode_texts(list(reversed(texts)), tmp_path / "cache", cfg)
    assert (stats.encoded, stats.reused, stats.written) == (0, 6, False)
    assert {n: (folder / n).read_bytes() for n in files} == files
    torch.testing.assert_close(again, vectors.flip(0), rtol=0, atol=0)

    # One new text: only it is encoded, and it is appended to the cache.
    changed, _, stats = encode_texts(texts[:2] + ["four rooms comedy"], tmp_path / "cache", cfg)
    assert (stats.encoded, stats.reused, stats.written) == (1, 2, True)
    assert torch.equal(changed[:2], vectors[:2]) and not torch.allclose(changed[2], vectors[2])
    cache = TextStore.load(folder)
    assert len(cache) == 7 and cache.keyed_by == BY_TEXT and cache.info["revision"].startswith("sha256:")

    # A setting that changes vectors is another cache folder.
    _, _, stats = encode_texts(texts, tmp_path / "cache", enc_cfg(tiny_model, max_length=8))
    assert (stats.encoded, stats.reused) == (6, 0) and len(list((tmp_path / "cache").iterdir())) == 2


def test_bad_text_input(tmp_path: Path, tiny_model: str) -> None:
    with pytest.raises(DataError, match="text 1: text is not valid UTF-8"):
        encode_texts(["ok", b"caf\xe9"], tmp_path / "a", enc_cfg(tiny_model))
    with pytest.raises(DataError, match="text 0: text is not valid UTF-8"):
        encode_texts([b"\xff\xfe".decode("utf-8", "surrogateescape")], tmp_path / "b", enc_cfg(tiny_model))
    with pytest.raises(DataError, match="text 2: text must be a string"):
        encode_texts(["a", "b", 3], tmp_path / "c", enc_cfg(tiny_model))
    assert not (tmp_path / "a").exists()
    _, has_text, stats = encode_texts(["  ", "", None, "toy"], tmp_path / "d", enc_cfg(tiny_model))
    assert stats.empty == 3 and has_text.tolist() == [False, False, False, True]
    bad_csv = tmp_path / "items.csv"
    bad_csv.write_bytes(b"item_id,title\n0,fine\n1,caf\xe9\n")
    with pytest.raises(DataError, match=r"items.csv:3: not valid UTF-8"):
        read_item_table(str(bad_csv), "item_id", ["title"])


def test_item_table_file_and_template(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("item_id,title,genres\n0,Toy Story,Comedy\n2,,\n1.0,Heat,\n B7 ,Up,Kids\n", encoding="utf-8")
    keys, texts = read_item_table(str(path), "item_id", ["title", "genres"], "{title}. Genres: {genres}")
    assert keys == ["0", "2", "1", "B7"]
    assert texts == ["Toy Story. Genres: Comedy", None, "Heat. Genres:", "Up. Genres: Kids"]
    assert read_item_table(str(path), "item_id", ["title", "genres"])[1][3] == "Up | Kids"
    with pytest.raises(ConfigError, match="template: field"):
        read_item_table(str(path), "item_id", ["title"], "{title} {year}")
    with pytest.raises(DataError, match="missing column"):
        read_item_table(str(path), "movie", ["title"])
    path.write_text("item_id,title\n3,a\n4,b\n3.0,c\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"items.csv: line 4: column 'item_id': item key '3' given twice"):
        read_item_table(str(path), "item_id", ["title"])


def test_keyed_store_refuses_keys_it_lacks_and_corruption(tmp_path: Path, tiny_model: str) -> None:
    store, _ = build_store({"7": "toy", "x9": "story", "4": ""}, tmp_path / "s", enc_cfg(tiny_model),
                           "clothing_id", "items.csv")
    vectors, has_text = store.lookup([None, "x9", "4", "7"])
    assert vectors.shape == (4, 32) and has_text.tolist() == [False, True, False, True]
    assert torch.equal(vectors[3], store.vectors[0])
    loaded = TextStore.load(tmp_path / "s")
    assert loaded.keys == ["7", "x9", "4"] and loaded.keyed_by == "column clothing_id of items.csv"
    assert loaded.key_column == "clothing_id"
    # A store keyed by other ids than the data's: an error naming a few keys, never another item's text.
    with pytest.raises(DataError, match=r"2 of 3 item keys of the data are not in the store \(keyed by column "
                                        r"clothing_id of items.csv; e.g. '1', '2'\)"):
        loaded.lookup(["1", "2", "7"])
    # The cache is keyed by text, not by item: it cannot serve item keys.
    encode_texts(["toy"], tmp_path / "cache", enc_cfg(tiny_model))
    (folder,) = (tmp_path / "cache").iterdir()
    with pytest.raises(DataError, match="keyed by text"):
        TextStore.load(folder).lookup(["7"])
    data = bytearray((tmp_path / "s" / VECTORS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "s" / VECTORS_FILE).write_bytes(bytes(data))
    with pytest.raises(DataError, match="does not match"):
        TextStore.load(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="index.json not found"):
        TextStore.load(tmp_path / "nothing")
    # A store of the first format (keyed by id-vocabulary index) is refused, not misread.
    index = json.loads((tmp_path / "s" / INDEX_FILE).read_text())
    (tmp_path / "s" / INDEX_FILE).write_text(json.dumps({**index, "format": 1}))
    with pytest.raises(DataError, match="unsupported text-store format 1"):
        TextStore.load(tmp_path / "s")


# ----------------------------------------------------------------------------- model side


def test_text_feature_unsharded_frozen_and_no_text_vector() -> None:
    torch.manual_seed(0)
    vecs = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    has = torch.tensor([True, True, False, True, True, True])
    vecs[2] = 0
    cfg = TextConfig(enabled=True, adapter_layers=[16, 4], dropout=0.0)
    feature = build_text_feature(cfg, "item_text", vecs, has, normalized=True)
    assert isinstance(feature.table, FrozenEmbeddingBagCollection) and feature.out_features == 4
    assert table_width(8) == 12
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user_id", "item_text"], values=torch.tensor([0, 1, 1, 2]), lengths=torch.tensor([1, 1, 1, 1])
    )
    out = feature(kjt)
    assert out.shape == (2, 4)
    out.sum().backward()
    table_w = feature.table.embedding_bags["text_item_text"].weight
    assert table_w.grad is None and not table_w.requires_grad
    # Row 1 reads table row 2 (no text): the learned no-text vector (flag-column weights) got a gradient.
    assert feature.adapter[0].weight.grad[:, 8].abs().sum() > 0
    # Rows with text never touch it: with only row 1 in the batch its gradient is zero.
    feature.zero_grad()
    one = KeyedJaggedTensor.from_lengths_sync(keys=["item_text"], values=torch.tensor([1]), lengths=torch.tensor([1]))
    feature(one).sum().backward()
    assert feature.adapter[0].weight.grad[:, 8].abs().sum() == 0
    trainable = build_text_feature(TextConfig(enabled=True, trainable_table=True), "item_text", vecs, has, True)
    assert trainable.table.embedding_bags["text_item_text"].weight.requires_grad


def test_text_dropout_trains_the_no_text_vector_in_training_only() -> None:
    torch.manual_seed(0)
    vecs = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    feature = build_text_feature(TextConfig(enabled=True, adapter_layers=[4], dropout=0.5), "t", vecs,
                                 torch.ones(5, dtype=torch.bool), normalized=True)
    batch = KeyedJaggedTensor.from_lengths_sync(keys=["t"], values=torch.arange(1, 5).repeat(16),
                                                lengths=torch.ones(64, dtype=torch.int32))
    # Every row has text: without dropout the no-text vector would never get a gradient.
    feature(batch).sum().backward()
    assert feature.adapter[0].weight.grad[:, 8].abs().sum() > 0
    feature.eval()
    torch.testing.assert_close(feature(batch), feature(batch))
    no_drop = build_text_feature(TextConfig(enabled=True, adapter_layers=[4], dropout=0.0), "t", vecs,
                                 torch.ones(5, dtype=torch.bool), normalized=True)
    no_drop.load_state_dict(feature.state_dict())
    torch.testing.assert_close(feature(batch), no_drop(batch), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="model.text.dropout"):
        TextFeature(feature.table, 8, [4], dropout=1.0)


def _train_ranks(rank: int, world: int, model: str, overrides: List[str], run_dir: str) -> Dict[str, Any]:
    """Trains a few steps with text on tiny synthetic data; returns this rank's table shards and adapter."""
    from mtl_torchrec.data.sources import load_data
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.workflows.training import make_trainer

    cfg = load_config(None, [
        "data.synthetic.num_impressions=6000", "data.synthetic.num_items=300", "data.synthetic.num_users=400",
        "data.batch_size=128", "train.epochs=1", "train.progress=false", "model.text.enabled=true",
        f"model.text.encoder.model={model}", f"model.text.cache_dir={Path(run_dir) / 'cache'}",
        "model.text.adapter_layers=[8]",
    ] + overrides)
    ctx = init_distributed()
    trainer = make_trainer(cfg, load_data(cfg.data), ctx, Path(run_dir) / str(rank))

    def snapshot() -> Dict[str, Any]:
        out = {}
        for k, v in trainer.dmp.state_dict().items():
            if "feature_modules.item_text" not in k:
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


def _table_key(state: Dict[str, Any]) -> str:
    return next(k for k in state if "embedding_bags" in k)


@pytest.mark.slow
def test_two_rank_training_keeps_frozen_table_and_moves_adapter(tmp_path: Path, tiny_model: str) -> None:
    results = run_ranks(_train_ranks, 2, tiny_model, ["train.sharding=row_wise"], str(tmp_path / "runs"))
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
        # The flag column (index text_dim = 32 for the tiny model) holds the learned no-text vector;
        # every synthetic item has text, so only text dropout (model.text.dropout) trains it.
        assert not torch.equal(res["before"][adapter][:, 32], res["after"][adapter][:, 32]), "no-text vector did not train"
    assert sum(len(r["before"][_table_key(r["before"])]) for r in results) >= 1


@pytest.mark.slow
def test_trainable_table_mode_fine_tunes_the_vectors(tmp_path: Path, tiny_model: str) -> None:
    results = run_ranks(_train_ranks, 1, tiny_model, ["train.sharding=table_wise", "model.text.trainable_table=true"],
                        str(tmp_path / "runs"))
    changed = 0
    for res in results:
        key = _table_key(res["before"])
        changed += sum(not torch.equal(b, a) for (_, b), (_, a) in zip(res["before"][key], res["after"][key]))
    assert changed >= 1


def _encode_rank(rank: int, world: int, texts: List[Any], model: str, out: str) -> List[List[float]]:
    from mtl_torchrec.distributed.context import close_distributed, init_distributed

    ctx = init_distributed()
    vectors, _, _ = encode_texts(texts, out, enc_cfg(model) if model else TextEncoderConfig())
    close_distributed(ctx)
    return vectors.tolist()


@pytest.mark.slow
def test_minilm_two_rank_encoding_equals_one_rank_and_cache_is_byte_identical(tmp_path: Path) -> None:
    from mtl_torchrec.launch.cli import main

    texts = [f"{w} {v}. Year: {1990 + i % 9}." for i, (w, v) in enumerate(zip(WORDS, reversed(WORDS)))]
    texts[3] = ""
    one, _, _ = encode_texts(texts, tmp_path / "one", TextEncoderConfig())
    (folder,) = (tmp_path / "one").iterdir()
    assert one.shape[1] == 384 and TextStore.load(folder).info["model"].startswith("all-MiniLM-L6-v2")
    two = run_ranks(_encode_rank, 2, texts, "", str(tmp_path / "two"))
    assert two[0] == two[1]
    torch.testing.assert_close(torch.tensor(two[0]), one, atol=2e-5, rtol=1e-4)

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
    assert folder == cache_folder(tmp_path / "cache", TextEncoderConfig(model=tiny_model))
    index = folder / INDEX_FILE
    stamp = os.stat(index).st_mtime_ns
    assert json.loads(index.read_text())["entries"] == 200
    assert main(argv) == 0
    assert os.stat(index).st_mtime_ns == stamp
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all((r / "metrics.json").is_file() for r in runs)


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


def test_unused_text_note_only_for_a_spec_that_declares_text(tmp_path: Path, capsys) -> None:
    """``train`` notes that text features are not used only when the user's data spec declares ``text:``
    and ``model.text.enabled`` is false; never for a built-in source (whose item text always exists) nor
    for a spec without text."""
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.workflows import train
    from tests.eval_fixtures import spec_dict, train_spec_run, write_case
    from tests.mtl_helpers import SMALL_SYNTHETIC

    note = "but model.text.enabled is false: they are not used"
    train_spec_run(write_case(tmp_path / "text"), tmp_path / "run_text", ["train.max_steps=1"])
    out = capsys.readouterr().out
    assert "note: the data has text features ['title_text'], " + note in out, out
    train_spec_run(write_case(tmp_path / "plain", spec=spec_dict(text=[])), tmp_path / "run_plain",
                   ["train.max_steps=1"])
    assert note not in capsys.readouterr().out
    cfg = load_config(None, [*SMALL_SYNTHETIC, "data.synthetic.num_impressions=3000", "train.max_steps=1",
                             "train.progress=false", f"run_dir={tmp_path / 'run_syn'}"])
    ctx = init_distributed()
    try:
        train(cfg, ctx)
    finally:
        close_distributed(ctx)
    assert note not in capsys.readouterr().out
