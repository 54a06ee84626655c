"""Text keyed by raw keys on users' own data: item tables, per-row text, keyed stores, cold slices by data."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
import pytest
import torch

from mtl_torchrec.config import ConfigError, TextEncoderConfig, load_config
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.preprocessing import Preprocessing
from mtl_torchrec.data.schema import DataError
from mtl_torchrec.data.spec import build_bundle, load_spec
from mtl_torchrec.model.builder import build_train_module
from mtl_torchrec.model.text import text_feature_modules
from mtl_torchrec.modules.text_feature import TextFeature
from mtl_torchrec.text.store import build_store, cache_folder, encode_texts
from tests.ranks import run_ranks
from tests.text.test_text import WORDS, make_tiny_model

ITEMS = [f"sku-{k:03d}" for k in range(40)]
# Distinct titles in the tiny model's word vocabulary (it has no digits or unseen words).
TITLES = [f"{WORDS[k % len(WORDS)]} {WORDS[k // len(WORDS)]} story" for k in range(40)]
REVIEWS = ["a love story", "war and night", "gold eye drama", "", "four rooms comedy", "day movie"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_bert_keys"))


def write_data(folder: Path, n: int = 600, seed: int = 0, extra_spec: str = "", text: Optional[str] = None) -> Path:
    """Rows whose test split holds only items unseen in training (cold), an item table, a spec."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    split = rng.choice(["train", "val", "test"], n, p=[0.7, 0.1, 0.2])
    item = rng.choice(ITEMS[:30], n).astype(object)
    item[split == "test"] = rng.choice(ITEMS[30:], int((split == "test").sum()))
    review = rng.choice(REVIEWS, n)
    click = (rng.random(n) < np.where(pd.Series(review).str.contains("love|gold"), 0.8, 0.2)).astype(int)
    pd.DataFrame({"user": rng.integers(0, 25, n), "item": item, "click": click,
                  "rating": np.where(click == 1, rng.integers(1, 6, n), np.nan), "review": review,
                  "split": split}).to_csv(folder / "rows.csv", index=False)
    pd.DataFrame({"item_key": ITEMS, "title": TITLES}).to_csv(folder / "items.csv", index=False)
    text = text if text is not None else """
        text:
          - {key: item, items: {file: items.csv, key: item_key}, columns: [title]}
          - {columns: [review]}
    """
    (folder / "spec.yaml").write_text(textwrap.dedent("""
        files: rows.csv
        split: {column: split}
        sparse:
          - {column: user, vocab: build}
          - {column: item, vocab: build}
        labels:
          - {task: click, column: click, type: binary}
          - {task: rating, column: rating, type: regression, maskable: true}
        slices: [{column: item, cold_warm: true}]
    """) + textwrap.dedent(text) + textwrap.dedent(extra_spec))
    return folder / "spec.yaml"


def model_cfg(tiny_model: str, cache: Path, *overrides: str) -> Any:
    return load_config(None, [
        "data.source=spec", "data.spec=unused.yaml", "model.text.enabled=true", f"model.text.encoder.model={tiny_model}",
        f"model.text.cache_dir={cache}", "model.text.adapter_layers=[4]", "model.embedding_dim=4",
        "model.tasks=[{name: click, type: binary}, {name: rating, type: regression}]", *overrides])


def test_items_unseen_in_training_read_their_own_text(tmp_path: Path, tiny_model: str) -> None:
    bundle = build_bundle(load_spec(write_data(tmp_path)))
    test = bundle.splits["test"]
    # Every test item is out of the id vocabulary (one shared OOV row) ...
    assert (test["item"] == 0).all()
    # ... but each reads its own item-table row: the text of its raw key.
    table = bundle.texts["item_text"]
    raw = pd.read_csv(tmp_path / "rows.csv")
    raw_test = raw[raw.split == "test"].item.to_numpy()
    assert [table.keys[r] for r in test["item_text"]] == list(raw_test)
    assert [table.texts[r] for r in test["item_text"]] == [TITLES[ITEMS.index(k)] for k in raw_test]

    cfg = model_cfg(tiny_model, tmp_path / "cache")
    module = build_train_module(cfg.model, bundle, text_cache=tmp_path / "cache").eval()
    feature = module.model.feature_modules["item_text"]
    assert isinstance(feature, TextFeature)
    batch = Batch.from_table(test, bundle.schema)
    with torch.no_grad():
        out = feature(batch.sparse)
    # Two cold items with different titles get different text outputs, the same item the same one.
    first = {}
    for k, row in zip(raw_test, out):
        first.setdefault(k, row)
        torch.testing.assert_close(first[k], row)
    assert len(first) >= 5 and len({tuple(v.tolist()) for v in first.values()}) == len(first)


def test_cold_slice_is_by_data_in_every_vocabulary_mode(tmp_path: Path) -> None:
    raw = None
    for mode, extra in [("build", ""), ("hash", ", hash_buckets: 64"), ("file", ", vocab_file: vocab.txt")]:
        folder = tmp_path / mode
        spec = write_data(folder)
        (folder / "vocab.txt").write_text("\n".join(ITEMS) + "\n")
        spec.write_text(spec.read_text().replace("{column: item, vocab: build}", f"{{column: item, vocab: {mode}{extra}}}"))
        bundle = build_bundle(load_spec(spec))
        raw = pd.read_csv(folder / "rows.csv")
        train_items = set(raw[raw.split == "train"].item)
        for split in ("val", "test"):
            expected = ~raw[raw.split == split].item.isin(train_items).to_numpy()
            np.testing.assert_array_equal(bundle.slices[split]["item=cold"], expected)
        assert bundle.slices["test"]["item=cold"].all(), mode
    # The run's saved preprocessing keeps the training keys: evaluation data gets the same slices.
    pre = Preprocessing.from_json(bundle.preprocessing.to_json())
    again = build_bundle(load_spec(tmp_path / "file" / "spec.yaml"), pre)
    np.testing.assert_array_equal(again.slices["val"]["item=cold"], bundle.slices["val"]["item=cold"])


def test_item_key_missing_from_the_item_table(tmp_path: Path) -> None:
    spec = write_data(tmp_path)
    items = pd.read_csv(tmp_path / "items.csv")
    items[items.item_key != "sku-035"].to_csv(tmp_path / "items.csv", index=False)
    raw = pd.read_csv(tmp_path / "rows.csv")
    line = int(np.flatnonzero(raw.item == "sku-035")[0]) + 2
    with pytest.raises(DataError, match=rf"rows.csv line {line} column 'item' \(text\[0\]\.key\): item key "
                                        r"'sku-035' is not in the item table .*items.csv .*missing: no_text"):
        build_bundle(load_spec(spec))
    spec.write_text(spec.read_text().replace("columns: [title]}", "columns: [title], missing: no_text}"))
    bundle = build_bundle(load_spec(spec))
    test = bundle.splits["test"]
    rows = raw[raw.split == "test"].item.to_numpy() == "sku-035"
    assert rows.any() and (test["item_text"][rows] == 0).all() and (test["item_text"][~rows] > 0).all()


def test_spec_text_errors_name_the_key(tmp_path: Path) -> None:
    spec = write_data(tmp_path, text="item_text: {item: item, columns: [review]}\n")
    with pytest.raises(ConfigError, match=r"spec.yaml: item_text: replaced by `text:`"):
        load_spec(spec)
    spec = write_data(tmp_path, text="text: [{key: item, items: {file: nowhere.csv}, columns: [title]}]\n")
    with pytest.raises(ConfigError, match=r"text\[0\]\.items\.file: .*nowhere.csv not found"):
        build_bundle(load_spec(spec))
    spec = write_data(tmp_path, text="text: [{columns: [click]}]\n")
    with pytest.raises(ConfigError, match=r"text\[0\]\.columns: 'click' is a label column"):
        load_spec(spec)


def test_a_store_keyed_by_other_ids_is_refused(tmp_path: Path, tiny_model: str) -> None:
    enc = TextEncoderConfig(model=tiny_model)
    # Catalogue numbers 0..39 in another order than the data's item ids 0..39: every key is in the
    # store, so only the key column tells them apart. Refused unless the spec says they are the same ids.
    order = np.random.default_rng(1).permutation(40)
    build_store({str(int(order[i])): t for i, t in enumerate(TITLES)}, tmp_path / "by_number", enc, "catalog_no", "c.csv")
    build_store({str(i): t for i, t in enumerate(TITLES)}, tmp_path / "by_id", enc, "item", "items.csv")
    build_store(dict(zip(ITEMS, TITLES)), tmp_path / "by_sku", enc, "item", "items.csv")
    cfg = model_cfg(tiny_model, tmp_path / "cache")
    folder = tmp_path / "numbers"
    spec = write_data(folder, text=f"text: [{{key: item, store: {tmp_path / 'by_number'}}}]\n")
    raw = pd.read_csv(folder / "rows.csv")
    raw["item"] = raw["item"].str[4:].astype(int)
    raw.to_csv(folder / "rows.csv", index=False)
    bundle = build_bundle(load_spec(spec))
    with pytest.raises(DataError, match=r"keyed by column catalog_no of c.csv, the data reads column 'item'; .*"
                                        r"store_key: catalog_no"):
        text_feature_modules(cfg.model.text, bundle, tmp_path / "cache")
    # The same ids, and the store named by its own key column: the data's keys find their own titles.
    spec.write_text(spec.read_text().replace("by_number}", "by_id}"))
    table = build_bundle(load_spec(spec)).texts["item_text"]
    feature = text_feature_modules(cfg.model.text, build_bundle(load_spec(spec)), tmp_path / "cache")["item_text"]
    vectors, _, _ = encode_texts([None] + [TITLES[int(k)] for k in table.keys[1:]], tmp_path / "c2", enc)
    torch.testing.assert_close(feature.initial_weights[:, :vectors.shape[1]] / np.sqrt(vectors.shape[1]), vectors)
    # A store of SKUs read by numeric ids: keys missing from the store, named.
    spec.write_text(spec.read_text().replace("by_id}", "by_sku}"))
    with pytest.raises(DataError, match=r"40 of .* item keys of the data are not in the store \(keyed by column "
                                        r"item of items.csv; e.g. '"):
        text_feature_modules(cfg.model.text, build_bundle(load_spec(spec)), tmp_path / "cache")


def test_item_file_problems_are_one_error_naming_the_file(tmp_path: Path, tiny_model: str) -> None:
    spec = write_data(tmp_path)
    for content, message in ((b"", "empty file"), (b"item_key,title\nsku-000,a,b,c\n", "cannot be read as csv"),
                             (b'item_key,title\nsku-000,"open\n', "cannot be read as csv"),
                             (b"\x1f\x8b\x08\x00\xff", "compressed files are not read")):
        (tmp_path / "items.csv").write_bytes(content)
        with pytest.raises(DataError, match=rf"text\[0\]\.items: .*items.csv.*{message}"):
            build_bundle(load_spec(spec))
    # A cache folder that cannot be written is refused before any encoding.
    (tmp_path / "cache_file").write_text("")
    with pytest.raises(ConfigError, match=r"model.text.cache_dir \(the encoding cache\): cannot create"):
        encode_texts(["toy story"], tmp_path / "cache_file", TextEncoderConfig(model=tiny_model))


def test_evaluation_data_with_new_or_changed_items(tmp_path: Path) -> None:
    spec = write_data(tmp_path)
    fitted = build_bundle(load_spec(spec)).preprocessing
    pre = Preprocessing.from_json(fitted.to_json())
    # New data: an item added to the item table since training, and one changed title.
    items = pd.read_csv(tmp_path / "items.csv")
    items.loc[0, "title"] = "gold eye"
    items = pd.concat([items, pd.DataFrame({"item_key": ["sku-new"], "title": ["war night story"]})])
    items.to_csv(tmp_path / "items.csv", index=False)
    rows = pd.read_csv(tmp_path / "rows.csv")
    rows.loc[rows.index[:5], "item"] = "sku-new"
    rows.to_csv(tmp_path / "rows.csv", index=False)
    bundle = build_bundle(load_spec(spec), pre)
    assert bundle.preprocessing.stats["text_changed"] == {"item_text": 1}
    assert (bundle.splits[str(rows.split[0])]["item_text"][:1] == 0).all()
    oov = bundle.preprocessing.stats["oov"]
    assert sum(c["item_text"]["unknown"] for c in oov.values()) == 5
    # An item table feature read as per-row text at evaluation: refused by kind.
    other = tmp_path / "other.yaml"
    other.write_text(spec.read_text().replace("- {key: item, items: {file: items.csv, key: item_key}, columns: [title]}",
                                              "- {columns: [review], name: item_text}"))
    with pytest.raises(DataError, match=r"the run's text feature 'item_text' is of kind 'item', this spec declares "
                                        r"kind 'row'"):
        build_bundle(load_spec(other), pre)


def test_encode_text_refuses_options_it_would_ignore(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mtl_torchrec.launch.cli import main

    monkeypatch.chdir(tmp_path)
    for argv, flag in ((["--text-columns", "title"], "--text-columns: only with --input"),
                       (["--template", "{title}"], "--template: only with --input"),
                       (["--id-column", "sku"], "--id-column: only with --input"),
                       (["--input", "items.csv", "--store", "s", "--text-columns", "t", "--cache-dir", "c"],
                        "--cache-dir: only without --input")):
        assert main(["encode-text", *argv]) == 2
        assert flag in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "c").exists()


def test_numbers_in_exponent_form_are_numbers() -> None:
    cfg = load_config(None, ["model.text.adapter_lr=1e-4", "train.dense_lr=2E-3"])
    assert cfg.model.text.adapter_lr == pytest.approx(1e-4) and cfg.train.dense_lr == pytest.approx(2e-3)


def test_switching_specs_reencodes_nothing_already_encoded(tmp_path: Path, tiny_model: str) -> None:
    cfg = model_cfg(tiny_model, tmp_path / "cache")
    first = build_bundle(load_spec(write_data(tmp_path / "a")))
    text_feature_modules(cfg.model.text, first, tmp_path / "cache")
    # Another spec over other rows (same item table, other seed): every text is in the cache already.
    second = build_bundle(load_spec(write_data(tmp_path / "b", seed=3)))
    texts = [t for table in second.texts.values() for t in table.texts]
    _, _, stats = encode_texts(texts, tmp_path / "cache", cfg.model.text.encoder)
    assert stats.encoded == 0 and stats.reused == sum(t is not None for t in texts)
    assert list((tmp_path / "cache").iterdir()) == [cache_folder(tmp_path / "cache", cfg.model.text.encoder)]


def test_adapter_gets_its_own_learning_rate_and_weight_decay(tmp_path: Path, tiny_model: str) -> None:
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.workflows.training import make_trainer

    cfg = model_cfg(tiny_model, tmp_path / "cache", "data.batch_size=64", "train.epochs=1", "train.progress=false",
                    "model.text.adapter_lr=0.0003", "model.text.adapter_weight_decay=0.01", "train.dense_lr=0.002",
                    f"data.spec={write_data(tmp_path)}")
    from mtl_torchrec.data.sources import load_data

    ctx = init_distributed()
    try:
        trainer = make_trainer(cfg, load_data(cfg.data), ctx, tmp_path / "run")
        groups: Dict[str, Any] = {}
        for opt in trainer.optimizer.optimizers:
            for group in opt[1].param_groups if isinstance(opt, tuple) else opt.param_groups:
                for p in group["params"]:
                    groups[id(p)] = (group["lr"], group.get("weight_decay", 0.0))
        adapters = [p for m in trainer.dmp.modules() if isinstance(m, TextFeature) for p in m.adapter.parameters()]
        assert len(adapters) == 4 and all(groups[id(p)] == (0.0003, 0.01) for p in adapters)
        towers = [p for n, p in trainer.dmp.named_parameters() if "towers" in n]
        assert towers and all(groups[id(p)][0] == 0.002 for p in towers)
        trainer.close()
    finally:
        close_distributed(ctx)


def _per_row_ranks(rank: int, world: int, spec: str, model: str, run_dir: str) -> Dict[str, Any]:
    from mtl_torchrec.data.sources import load_data
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.workflows.training import make_trainer

    cfg = model_cfg(model, Path(run_dir) / "cache", f"data.spec={spec}", "data.batch_size=64", "train.epochs=2",
                    "train.progress=false", "train.sharding=row_wise", "model.text.dropout=0.0")
    ctx = init_distributed()
    trainer = make_trainer(cfg, load_data(cfg.data), ctx, Path(run_dir) / str(rank))
    feature = next(m for m in trainer.dmp.modules() if isinstance(m, TextFeature) and "review" in m.table_name)
    before = feature.adapter[0].weight.detach().clone()
    summary = trainer.fit()
    shards: List[Any] = []
    for k, v in trainer.dmp.state_dict().items():
        if "text_review_text" in k and hasattr(v, "local_shards"):
            shards += [(list(s.metadata.shard_offsets), s.tensor.detach().clone()) for s in v.local_shards()]
    out = {"steps": summary["steps"], "moved": not torch.equal(before, feature.adapter[0].weight.detach()),
           "shards": shards, "initial": feature.initial_weights, "loss": trainer.history[-1] if trainer.history else None}
    trainer.close()
    close_distributed(ctx)
    return out


@pytest.mark.slow
def test_per_row_text_trains_under_two_ranks(tmp_path: Path, tiny_model: str) -> None:
    spec = write_data(tmp_path, text="text: [{columns: [review], name: review_text}]\n")
    bundle = build_bundle(load_spec(spec))
    table = bundle.texts["review_text"]
    assert table.kind == "row" and sorted(t for t in table.texts if t) == sorted(t for t in REVIEWS if t)
    results = run_ranks(_per_row_ranks, 2, str(spec), tiny_model, str(tmp_path / "runs"))
    assert sum(len(r["shards"]) for r in results) >= 2  # row-wise: the text table is split over both ranks
    for res in results:
        assert res["steps"] > 5 and res["moved"]
        for offs, shard in res["shards"]:
            rows = slice(offs[0], offs[0] + shard.shape[0])
            cols = slice(offs[1], offs[1] + shard.shape[1])
            assert torch.equal(shard, res["initial"][rows, cols])


@pytest.mark.slow
def test_train_then_evaluate_with_text_features(tmp_path: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from mtl_torchrec.launch.cli import main

    spec = write_data(tmp_path / "data")
    common = [f"model.text.encoder.model={tiny_model}", f"model.text.cache_dir={tmp_path / 'cache'}"]
    argv = ["train", "data.source=spec", f"data.spec={spec}", "model.text.enabled=true", "data.batch_size=64",
            "train.epochs=1", "train.progress=false", "model.embedding_dim=4", "model.text.adapter_layers=[4]",
            "model.tasks=[{name: click, type: binary}, {name: rating, type: regression}]",
            f"run_dir={tmp_path / 'run'}", *common]
    assert main(argv) == 0
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    slices = json.loads((tmp_path / "run" / "metrics_by_slice.json").read_text())
    assert slices["item=cold"]["rows"] > 0 and slices["item=warm"]["rows"] == 0
    saved = json.loads((tmp_path / "run" / "preprocessing" / "preprocessing.json").read_text())
    assert saved["texts"]["item_text"]["kind"] == "item" and len(saved["texts"]["review_text"]["keys"]) == 5
    # evaluate reads the run's text rows and the checkpoint's vectors: the same metrics as training's test.
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    for task in ("click", "rating"):
        for metric, value in trained[task].items():
            if isinstance(value, float):
                assert report["tasks"][task][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, metric)
    # New data with a review the run never encoded: a warning naming the feature, the row reads "no text".
    frame = pd.read_csv(tmp_path / "data" / "rows.csv")
    frame.loc[frame.index[:30], "review"] = "a brand new review"
    frame.to_csv(tmp_path / "data" / "other.csv", index=False)
    other = tmp_path / "data" / "other.yaml"
    other.write_text(spec.read_text().replace("files: rows.csv", "files: other.csv"))
    capsys.readouterr()
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--data", str(other), "--split", "train",
                 "--out", str(tmp_path / "eval2")]) == 0
    err = capsys.readouterr().err
    assert "text feature 'review_text':" in err and "did not encode in training" in err
