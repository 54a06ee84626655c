"""A behaviour sequence through the whole run: a spec with a history column trained by the real
trainer (sparse-dist pipeline), resumed from a DCP checkpoint exactly, evaluated, scored by predict
(label-free rows carry the list column), exported to TorchScript (fp32 and INT8) with parity in a
fresh process; and the synthetic history, which carries signal, is learned through the attention."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mtl_torchrec.config import load_config
from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.distributed.checkpoint.dcp_io import load_checkpoint
from mtl_torchrec.distributed.context import close_distributed, init_distributed
from mtl_torchrec.model.builder import build_train_module
from mtl_torchrec.serve import load_run, predict_frame
from mtl_torchrec.serve.export import export_run, load_artifact
from mtl_torchrec.workflows import train
from tests.eval_fixtures import TRAIN_CONFIG, evaluate_1rank, make_frame, spec_dict, train_spec_run
from tests.mtl_helpers import SMALL_SYNTHETIC
from tests.ranks import run_ranks
from tests.serve.test_serve import _fresh_process_outputs

SEQUENCE = ["model.sequence.enabled=true", "model.sequence.history=history", "model.sequence.candidate=item",
            "model.sequence.max_length=5", "model.sequence.attention_layers=[8]"]
LABELS = ["click", "rating", "split"]


def history_frame() -> pd.DataFrame:
    """:func:`make_frame` with each row's history: the items of the user's earlier rows (file order is
    time order), oldest first, '|'-joined, at most 7 (the spec keeps the 5 most recent)."""
    frame = make_frame()
    seen: Dict[str, List[str]] = {}
    history = []
    for user, item in zip(frame["user"], frame["item"]):
        past = seen.setdefault(user, [])
        history.append("|".join(past[-7:]))
        past.append(item)
    frame["history"] = history
    return frame


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sequence_run")
    spec = spec_dict("data.csv", text=[], slices=[])
    spec["sparse"].append({"column": "history", "separator": "|", "vocab": "shared", "shared_with": "item",
                           "max_length": 5})
    history_frame().to_csv(tmp / "data.csv", index=False)
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    return train_spec_run(tmp / "spec.yaml", tmp / "run", [*SEQUENCE, "train.max_steps=8"])


def test_train_prints_and_keeps_the_history_warning(tmp_path: Path, capsys) -> None:
    """A history holding the row's own candidate (here appended to every history: leakage) is trained
    with a warning on stderr naming the share of rows, kept in preprocessing.json's stats."""
    frame = history_frame()
    frame["history"] = [f"{h}|{i}" if h else i for h, i in zip(frame["history"], frame["item"])]
    spec = spec_dict("data.csv", text=[], slices=[])
    spec["sparse"].append({"column": "history", "separator": "|", "vocab": "shared", "shared_with": "item"})
    frame.to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    run_dir = train_spec_run(tmp_path / "spec.yaml", tmp_path / "run", [*SEQUENCE, "train.max_steps=1"])
    warning = ("warning: data spec: column 'history' (sparse[3]): 100.0% of the training rows (480 of 480) have "
               "their own 'item' id in the history.")
    assert warning in capsys.readouterr().err
    stats = json.loads((run_dir / "preprocessing" / "preprocessing.json").read_text())["stats"]
    assert stats["sequences"]["history"]["rows_with_candidate"] == 480
    assert stats["warnings"][0].startswith(warning[len("warning: "):])


def _test_rows(labels: bool = False) -> pd.DataFrame:
    frame = history_frame()
    test = frame[frame.split == "test"]
    return test if labels else test.drop(columns=LABELS)


def _state(run_dir: Path, spec: Path, overrides) -> Dict[str, torch.Tensor]:
    cfg = load_config(None, ["data.source=spec", f"data.spec={spec}", "model.embedding_dim=8",
                             "model.dense_layers=[16,8]", "model.mmoe.num_experts=2", "model.mmoe.expert_layers=[16]",
                             "model.tower_layers=[8]",
                             "model.tasks=[{name: click, type: binary}, {name: rating, type: regression}]", *overrides])
    module = build_train_module(cfg.model, load_data(cfg.data), cfg.train.loss_balance, cfg.train.balance)
    load_checkpoint(run_dir, module)
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
def test_checkpoint_resume_is_exact(run: Path, tmp_path: Path) -> None:
    """Stopped after 4 steps and resumed to 8 (a DCP checkpoint of the sharded sequence table and its
    optimizer state) ends exactly like the run of 8 steps."""
    spec = run.parent / "spec.yaml"
    part = tmp_path / "part"
    train_spec_run(spec, part, [*SEQUENCE, "train.max_steps=4"])
    train_spec_run(spec, part, [*SEQUENCE, "train.max_steps=8"])
    full, resumed = _state(run, spec, SEQUENCE), _state(part, spec, SEQUENCE)
    key = "model.feature_modules.history.embedding.embeddings.t_item.weight"
    assert key in full and full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


@pytest.mark.slow
def test_evaluate_predict_and_export_carry_the_history(run: Path, tmp_path: Path) -> None:
    result = evaluate_1rank(run, progress=False)
    assert result.rows is not None and len(result.rows.predictions["click"]) == 60
    with pytest.raises(ConfigError, match=r"--slice: 'history' is multi-valued .*choose from \['user', 'item'\]"):
        evaluate_1rank(run, progress=False, slice_columns=["history"])
    # predict on label-free rows (the list column is a feature column) equals evaluate's rows.
    scores = predict_frame(run, _test_rows(), keep=["user"])
    np.testing.assert_allclose(scores["click"], result.rows.predictions["click"], rtol=0, atol=1e-6)
    with pytest.raises(Exception, match="history"):
        predict_frame(run, _test_rows().drop(columns=["history"]))
    # fp32 TorchScript: the documented loader on raw rows, and the model file alone in a fresh process.
    out = export_run(run, tmp_path / "fp32", calibrate=False)
    got = load_artifact(out).predict(_test_rows(labels=True))
    np.testing.assert_allclose(got["click"], scores["click"], rtol=0, atol=1e-5)
    loaded = load_run(run, calibrate=False)
    from mtl_torchrec.data.batch import Batch
    from mtl_torchrec.data.spec.features import FeatureRows, feature_spec
    from mtl_torchrec.model.tasks import predictions
    from mtl_torchrec.serve import scoring_inputs

    rows = FeatureRows(feature_spec(loaded.spec, list(_test_rows().columns), text=False), loaded.preprocessing)
    batch = Batch.from_table(rows.convert_frame(_test_rows()).table, rows.schema)
    with torch.no_grad():
        eager = predictions(loaded.module.model(batch).logits, loaded.tasks)
    values, lengths, dense = scoring_inputs(batch)
    fresh = _fresh_process_outputs(out, {"values": values, "lengths": lengths, "dense": dense}, tmp_path)
    torch.testing.assert_close(fresh["click"], eager["click"], rtol=0, atol=1e-5)
    # INT8 tables (the sequence table too) stay close to fp32.
    int8 = export_run(run, tmp_path / "int8", calibrate=False, int8=True)
    got8 = _fresh_process_outputs(int8, {"values": values, "lengths": lengths, "dense": dense}, tmp_path)
    assert (got8["click"] - eager["click"]).abs().max() <= 5e-3
    # torch.export (a program with a dynamic batch).
    program = export_run(run, tmp_path / "program", fmt="export", calibrate=False)
    got_p = _fresh_process_outputs(program, {"values": values, "lengths": lengths, "dense": dense}, tmp_path,
                                   "model.pt2")
    torch.testing.assert_close(got_p["click"], eager["click"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_evaluate_and_predict_warn_alike_when_history_ids_are_unknown(run: Path, tmp_path: Path, capsys) -> None:
    """History ids in another form than in training ('i7' -> 'x7') all read the out-of-vocabulary row:
    ``evaluate --data`` and ``predict`` print the same warning (one function), and predict's scores are
    those of :func:`predict_frame` (the output file is unchanged by the warning)."""
    from mtl_torchrec.launch.cli import main

    rows = _test_rows(labels=True)
    rows = rows.assign(history=rows["history"].str.replace("i", "x"))
    rows.to_csv(tmp_path / "rows.csv", index=False)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(tmp_path / "rows.csv"), "--out", str(tmp_path / "ev"),
                 "--no-plots", "--no-progress"]) == 0
    expected = [line for line in capsys.readouterr().err.splitlines() if "unknown to the run's" in line]
    assert len(expected) == 1 and expected[0].startswith("warning: sparse feature 'history': 100.0% of its ids")
    out = tmp_path / "scores.parquet"
    assert main(["predict", "--run", str(run), "--data", str(tmp_path / "rows.csv"), "--out", str(out)]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if "unknown to the run's" in line] == expected
    got, direct = pd.read_parquet(out), predict_frame(run, rows.drop(columns=LABELS))
    np.testing.assert_allclose(got["click"], direct["click"], rtol=0, atol=1e-6)


# ---- the synthetic history carries signal, and the attention learns it -----------------------

# The built-in synthetic data with 30 past clicks per user; 6000 users with ~8 training rows each,
# too few for the user id to learn a taste, which the past clicks reveal (the segment and age
# features carry its shared part, so the gain is the individual part: about +0.005 AUC here).
LEARN = [*SMALL_SYNTHETIC, "data.synthetic.num_impressions=60000", "data.synthetic.num_users=6000",
         "data.synthetic.num_items=300", "data.synthetic.history_length=30", "train.epochs=2",
         "train.dense_lr=0.003", "train.progress=false", "train.seed=0", "model.embedding_dim=16"]
SEQUENCE_ON = ["model.sequence.enabled=true", "model.sequence.max_length=30", "model.sequence.attention_layers=[16]"]


def _click_auc(tmp: Path, overrides) -> float:
    cfg = load_config(None, [*LEARN, *overrides])
    cfg.run_dir = str(tmp)
    ctx = init_distributed()
    try:
        return float(train(cfg, ctx).metrics["click"]["auc"])
    finally:
        close_distributed(ctx)


@pytest.mark.slow
def test_synthetic_history_is_learned_through_the_attention(tmp_path: Path, monkeypatch) -> None:
    """Same rows, seed and model (fixed seed, deterministic on CPU): the history read by target
    attention lifts test click AUC over the model without it (0.7528 vs 0.7476 when written), and a
    broken attention (its interest vector zeroed: the history ignored) loses that gain."""
    with_history = _click_auc(tmp_path / "on", SEQUENCE_ON)
    # Without: the same impressions (the history has its own generator) and no history feature.
    without = _click_auc(tmp_path / "off", ["data.synthetic.history_length=0"])
    assert with_history > without + 0.003, (with_history, without)
    from mtl_torchrec.modules import target_attention

    real = target_attention.TargetAttention.forward

    def broken(self, history, mask, target):
        interest, weights = real(self, history, mask, target)
        return interest * 0.0, weights

    monkeypatch.setattr(target_attention.TargetAttention, "forward", broken)
    ignored = _click_auc(tmp_path / "broken", SEQUENCE_ON)
    assert with_history > ignored + 0.003, (with_history, ignored)


def _paused_rank(rank: int, world: int, spec: str, run_dir: str, pauses: List[str]) -> Dict[str, float]:
    cfg = load_config(None, [*TRAIN_CONFIG, "data.source=spec", f"data.spec={spec}", f"run_dir={run_dir}",
                             *SEQUENCE, "train.epochs=4", "train.max_steps=8", "train.progress=false", *pauses])
    ctx = init_distributed(backend="gloo")
    try:
        return train(cfg, ctx).metrics
    finally:
        close_distributed(ctx)


@pytest.mark.slow
def test_two_ranks_pause_mid_epoch_with_a_sequence_table(tmp_path: Path) -> None:
    """A checkpoint or a validation in the middle of an epoch detaches TorchRec's pipeline and attaches
    it again; on 2 ranks the sharded sequence table (an EmbeddingCollection) then crashed the next step
    (gloo all-to-all sizes disagreed). Now training goes on, and checkpoints change nothing."""
    spec = spec_dict("data.csv", text=[], slices=[])
    spec["sparse"].append({"column": "history", "separator": "|", "vocab": "shared", "shared_with": "item",
                           "max_length": 5})
    history_frame().to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    spec_path = str(tmp_path / "spec.yaml")
    # 3 steps an epoch on 2 ranks: a pause every 2 steps falls inside epochs.
    plain = run_ranks(_paused_rank, 2, spec_path, str(tmp_path / "plain"), ["train.checkpoint_every=0"])
    ckpt = run_ranks(_paused_rank, 2, spec_path, str(tmp_path / "ckpt"), ["train.checkpoint_every=2"])
    assert ckpt[0] == plain[0] and plain[0]["click"]["auc"] == plain[0]["click"]["auc"]
    assert (tmp_path / "ckpt" / "checkpoints" / "step_000004").is_dir()  # mid-epoch (the oldest are pruned)
    validated = run_ranks(_paused_rank, 2, spec_path, str(tmp_path / "val"), ["train.eval_every=2"])
    assert validated[0]["click"]["count"] == plain[0]["click"]["count"]
