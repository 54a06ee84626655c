"""``vocab: zch``: ids without a fitted vocabulary, remapped inside the model by TorchRec's
managed-collision modules: the data side's keys, the spec's checks, lookups that never insert, and
runs on 1 and 2 (gloo) ranks that resume bitwise, predict and export, ids never seen included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.schema import ManagedCollision, SparseFeature
from mtl_torchrec.data.spec import build_bundle, load_spec
from mtl_torchrec.data.vocabulary import MAX_MANAGED_KEY, Vocabulary, managed_keys
from mtl_torchrec.modules.managed_collision import (
    ManagedCollisionFeatures,
    lookup_only,
    managed_collision_stats,
)
from tests.eval_fixtures import make_frame, spec_dict, train_spec_run, write_case
from tests.ranks import run_ranks

ITEM_ZCH = {"column": "item", "vocab": "zch", "zch": {"size": 16, "eviction": "lru"}}
TAGS_ZCH = {"column": "tags", "separator": "|", "vocab": "zch", "zch": {"size": 4}}


def _zch_spec() -> Dict[str, Any]:
    """Every id feature on vocab: zch (the model's plain EBC has no table), tags multi-valued."""
    spec = spec_dict("data.csv", text=[])
    spec["sparse"][0] = {"column": "user", "vocab": "zch", "zch": {"size": 64, "eviction": "distance_lfu"}}
    spec["sparse"][1] = dict(ITEM_ZCH)
    spec["sparse"][2] = dict(TAGS_ZCH)
    return spec


def _resume_spec() -> Dict[str, Any]:
    """Single-valued zch features only: TorchRec's MCH module sizes the buffer of keys it counts per
    step at 1.25 x the first training batch's keys of the process, so the keys of a multi-valued
    feature that a resumed run counts can differ from an uninterrupted run's (see docs/data.md)."""
    spec = spec_dict("data.csv", text=[])
    spec["sparse"][0] = {"column": "user", "vocab": "zch", "zch": {"size": 24, "eviction": "lfu"}}
    spec["sparse"][1] = dict(ITEM_ZCH)
    return spec


def _errors_spec(tmp: Path, entry: Dict[str, Any], index: int = 1) -> Path:
    spec = _zch_spec()
    spec["sparse"][index] = entry
    return write_case(tmp, make_frame(n=100), spec)


def test_managed_keys_are_stable_63_bit_keys_in_canonical_token_form() -> None:
    keys = managed_keys(np.array(["5", "u1", "u2", None], dtype=object))
    assert keys.dtype == np.int64 and keys[-1] == 0
    assert ((keys[:3] >= 1) & (keys[:3] <= MAX_MANAGED_KEY)).all() and len(set(keys[:3].tolist())) == 3
    vocab = Vocabulary.managed(100)
    # 5, 5.0 and "5.0" are the token "5": one key, whatever the file's column type.
    np.testing.assert_array_equal(vocab.lookup(np.array([5, 5.0, "5.0"], dtype=object)), [keys[0]] * 3)
    # A fixed SipHash key: the same key in every process and machine (a change would remap saved runs).
    assert int(managed_keys(np.array(["u1"], dtype=object))[0]) == int(keys[1])
    again = Vocabulary.from_json(json.loads(json.dumps(vocab.to_json())))
    assert again.mode == "zch" and again.num_embeddings == 100
    np.testing.assert_array_equal(again.lookup(np.array(["u1"], dtype=object)), keys[1:2])


def test_zch_spec_needs_no_fitting_pass_and_gives_keys(tmp_path: Path) -> None:
    frame = make_frame()
    bundle = build_bundle(load_spec(write_case(tmp_path, frame, _zch_spec())))
    item = next(f for f in bundle.schema.sparse if f.name == "item")
    assert item.num_embeddings == 16 and item.managed == ManagedCollision(16, "lru", 1)
    assert bundle.preprocessing.vocabs["item"].to_json()["mode"] == "zch"
    train = frame[frame.split == "train"]
    np.testing.assert_array_equal(bundle.splits["train"]["item"], managed_keys(train["item"].to_numpy(dtype=object)))
    # Keys are far beyond the table size: the schema accepts any key >= 0 for managed features.
    assert int(bundle.splits["train"]["item"].max()) > 16


@pytest.mark.parametrize("entry, index, message", [
    ({"column": "item", "vocab": "zch", "zch": {"size": 0}}, 1, r"sparse\[1\]\.zch\.size: must be >= 2"),
    ({"column": "item", "vocab": "zch", "zch": {"size": 1}}, 1, r"sparse\[1\]\.zch\.size"),
    ({"column": "item", "vocab": "zch", "zch": {"size": 10, "eviction": "fifo"}}, 1, r"sparse\[1\]\.zch\.eviction"),
    ({"column": "item", "vocab": "zch", "zch": {"size": 10, "eviction_interval": 0}}, 1,
     r"sparse\[1\]\.zch\.eviction_interval"),
    ({"column": "item", "vocab": "zch"}, 1, r"sparse\[1\]\.zch: required with vocab: zch"),
    ({"column": "item", "vocab": "build", "zch": {"size": 10}}, 1, r"sparse\[1\]\.zch: only with vocab: zch"),
    ({"column": "item", "vocab": "zch", "zch": {"size": 10}, "table": "t"}, 1, None),
    ({"column": "tags", "separator": "|", "vocab": "shared", "shared_with": "item"}, 2,
     r"sparse\[2\]\.shared_with: 'item' has vocab: zch"),
    ({"column": "tags", "separator": "|", "vocab": "hash", "hash_buckets": 8, "table": "item"}, 2,
     r"sparse\[1\]\.table: 'item' is also the table of 'tags'"),
])
def test_bad_zch_settings_are_refused_naming_the_key(tmp_path: Path, entry: Dict[str, Any], index: int,
                                                     message: Any) -> None:
    path = _errors_spec(tmp_path, entry, index)
    if message is None:
        load_spec(path)  # a table name of its own is fine
        return
    with pytest.raises(ConfigError, match=message):
        load_spec(path)


def _features(size: int = 6, eviction: str = "lfu") -> ManagedCollisionFeatures:
    torch.manual_seed(0)
    return ManagedCollisionFeatures([SparseFeature("item", size, managed=ManagedCollision(size, eviction))], 4)


def _kjt(keys: List[int]) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(keys=["item"], values=torch.tensor(keys, dtype=torch.int64),
                             lengths=torch.ones(len(keys), dtype=torch.int32))


def _state(m: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _assert_same_state(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_inserts_and_evicts_while_evaluation_only_looks_up() -> None:
    m = _features(size=6, eviction="lfu")
    fresh = _state(m)
    m.eval()
    out = m(_kjt([10**15, 7, 7]))
    assert out.shape == (3, 4)
    # Never-seen keys read the shared (last) row, and looking them up changed nothing.
    np.testing.assert_allclose(out[0].detach(), out[1].detach())
    _assert_same_state(fresh, _state(m))
    m.train()
    m(_kjt([1, 2, 3, 1, 2, 1]))
    assert managed_collision_stats(m)["t_item"]["keys_held"] == 3
    # Five slots: keys 4..9 seen once each do not all fit; the least frequent lose.
    m(_kjt([4, 5, 6, 7, 8, 9, 1, 2]))
    stats = managed_collision_stats(m)["t_item"]
    assert stats["rows"] == 6 and stats["keys_held"] == 5
    assert stats["lookups"] == 14 and stats["inserted"] == 5 and stats["evicted"] == 0
    # Keys 1 and 2 are held; of 4..9 only two were admitted, so four lookups read the shared row.
    assert stats["shared_row_lookups"] == 4 and stats["shared_row_share"] == pytest.approx(4 / 14)
    trained = _state(m)
    with torch.no_grad(), lookup_only(m):
        m(_kjt([11, 12, 13, 11, 12, 13, 11, 12, 13]))
    assert m.training
    _assert_same_state(trained, _state(m))
    # In training, frequent new keys push out the least frequent held ones (LFU).
    m(_kjt([11, 12, 13] * 4))
    stats = managed_collision_stats(m)["t_item"]
    # 11, 12 and 13 take the slots of 3 and the two keys seen once; 1 (count 4) stays. (TorchRec's MCH
    # module counts at most 1.25 x the first training batch's ids per step, 7 here: 11 x3, 12 x2, 13 x2.)
    assert stats["evicted"] == 3 and stats["inserted"] == 8 and stats["keys_held"] == 5


def test_managed_state_is_in_the_state_dict_and_loads_into_a_fresh_module() -> None:
    m = _features()
    m(_kjt([3, 4, 5, 3]))
    state = _state(m)
    assert any(k.endswith("_mch_sorted_raw_ids") for k in state)
    other = _features()
    other.load_state_dict(state)
    other.eval()
    m.eval()
    keys = _kjt([3, 4, 5, 99])
    torch.testing.assert_close(other(keys), m(keys), rtol=0, atol=0)


def _train(spec: Path, run: Path, *extra: str) -> Path:
    return train_spec_run(spec, run, ["train.checkpoint_every=3", "train.keep_checkpoints=3", *extra])


def _run_state(run: Path) -> Dict[str, torch.Tensor]:
    from mtl_torchrec.serve.runs import load_run

    return _state(load_run(run, "latest", calibrate=False).module)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zch1")
    spec = write_case(root, make_frame(), _resume_spec())
    _train(spec, root / "full")
    _train(spec, root / "part", "train.max_steps=3")
    _train(spec, root / "part")
    return root


@pytest.mark.slow
def test_one_rank_run_resumes_bitwise_with_its_remapping(one_rank: Path) -> None:
    full, part = one_rank / "full", one_rank / "part"
    assert json.loads((full / "metrics.json").read_text()) == json.loads((part / "metrics.json").read_text())
    a, b = _run_state(full), _run_state(part)
    _assert_same_state(a, b)
    ids = next(v for k, v in a.items() if k.endswith("t_item._mch_sorted_raw_ids"))
    # The table filled up with training keys (16 rows, 15 keys, 60 distinct items).
    assert int((ids < torch.iinfo(torch.int64).max).sum()) == 15
    report = json.loads((full / "diagnostics.json").read_text())["final"]["managed_collisions"]
    assert report["t_item"]["keys_held"] == 15 and report["t_item"]["evicted"] > 0
    assert report["t_item"]["inserted"] == 15 + report["t_item"]["evicted"]
    assert 0 < report["t_user"]["shared_row_share"] < 1


@pytest.mark.slow
def test_zch_run_predicts_and_exports_never_seen_ids_without_changing_state(tmp_path: Path) -> None:
    from mtl_torchrec.serve import predict_frame
    from mtl_torchrec.serve.export import export_run, load_artifact
    from mtl_torchrec.serve.runs import load_run

    frame = make_frame()
    # A multi-valued zch feature (tags) besides the item's.
    run_dir = _train(write_case(tmp_path, frame, _zch_spec()), tmp_path / "run")
    test = frame[frame.split == "test"].drop(columns=["click", "rating", "split"])
    unseen = test.assign(item="new_" + test["item"], tags="brand|new")
    run = load_run(run_dir, "latest", calibrate=False)
    before = _state(run.module)
    seen_scores = predict_frame(run, test)
    new_scores = predict_frame(run, unseen)
    _assert_same_state(before, _state(run.module))
    for scores in (seen_scores, new_scores):
        assert len(scores) == len(test) and np.isfinite(scores[["click", "rating"]].to_numpy()).all()
    # Never-seen items all read the shared row: rows differing only in their item score alike.
    assert not np.allclose(seen_scores["click"], new_scores["click"])
    report = json.loads((run_dir / "diagnostics.json").read_text())["final"]["managed_collisions"]
    assert 0 < report["t_tags"]["shared_row_share"] < 1
    with pytest.raises(ConfigError, match="--format: 'export' cannot export vocab: zch"):
        export_run(run_dir, tmp_path / "program", fmt="export", checkpoint="latest")
    artifact = load_artifact(export_run(run_dir, tmp_path / "artifact", checkpoint="latest"))
    for rows, expected in ((test, seen_scores), (unseen, new_scores)):
        got = artifact.predict(rows)
        for task in ("click", "rating"):
            np.testing.assert_allclose(got[task], expected[task], rtol=0, atol=1e-5)
    # INT8 tables: TorchRec's quantised EBC behind the same managed-collision lookup.
    int8 = load_artifact(export_run(run_dir, tmp_path / "int8", int8=True, checkpoint="latest")).predict(unseen)
    np.testing.assert_allclose(int8["click"], new_scores["click"], rtol=0, atol=1e-3)


def _two_rank_worker(rank: int, world_size: int, spec: str, root: str) -> None:
    from mtl_torchrec.config import load_config
    from mtl_torchrec.distributed.context import close_distributed, init_distributed
    from mtl_torchrec.workflows import train
    from tests.eval_fixtures import TRAIN_CONFIG

    ctx = init_distributed("gloo")
    try:
        for name, extra in (("full", []), ("part", ["train.max_steps=2"]), ("part", [])):
            cfg = load_config(None, [*TRAIN_CONFIG, "data.source=spec", f"data.spec={spec}",
                                     f"run_dir={Path(root) / name}", "train.checkpoint_every=2",
                                     "train.sharding=planner", "data.batch_size=32", *extra])
            train(cfg, ctx)
    finally:
        close_distributed(ctx)


@pytest.mark.slow
def test_two_rank_zch_run_shards_row_wise_and_resumes_bitwise(tmp_path: Path) -> None:
    from mtl_torchrec.serve import predict_frame

    spec = write_case(tmp_path, make_frame(), _resume_spec())
    run_ranks(_two_rank_worker, 2, str(spec), str(tmp_path))
    full, part = tmp_path / "full", tmp_path / "part"
    assert json.loads((full / "metrics.json").read_text()) == json.loads((part / "metrics.json").read_text())
    a = _run_state(full)
    _assert_same_state(a, _run_state(part))
    # Both ranks' shards of the table hold keys (each its block of the key range).
    ids = next(v for k, v in a.items() if k.endswith("t_item._mch_sorted_raw_ids"))
    held = ids[ids < torch.iinfo(torch.int64).max]
    assert len(held) > 0 and bool((held < 2**62).any()) and bool((held >= 2**62).any())
    report = json.loads((full / "diagnostics.json").read_text())["final"]["managed_collisions"]
    assert report["t_item"]["keys_held"] == len(held) and report["t_item"]["lookups"] > 0
    test = make_frame().query("split == 'test'").drop(columns=["click", "rating", "split"])
    scores = predict_frame(full, test.assign(item="never_" + test["item"]), checkpoint="latest")
    assert np.isfinite(scores["click"]).all()


def test_zch_cannot_feed_id_dropout(tmp_path: Path) -> None:
    from mtl_torchrec.config import load_config
    from mtl_torchrec.model.builder import build_train_module

    bundle = build_bundle(load_spec(write_case(tmp_path, make_frame(n=100), _zch_spec())))
    cfg = load_config(None, ["model.tasks=[{name: click, type: binary}]", "model.text.id_dropout=0.1",
                             "model.text.item_feature=item"])
    with pytest.raises(ConfigError, match=r"model.text.item_feature: 'item' has vocab: zch"):
        build_train_module(cfg.model, bundle)


def test_integer_id_columns_give_the_keys_of_their_text() -> None:
    # A Parquet-style integer id column gives the same keys as a CSV's text.
    ints = pd.Series([12, 7], dtype="int64")
    np.testing.assert_array_equal(Vocabulary.managed(8).lookup(ints),
                                  Vocabulary.managed(8).lookup(np.array(["12", "7"], dtype=object)))
