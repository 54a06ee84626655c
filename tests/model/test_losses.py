"""Label kinds and task losses: the two registries, focal and Huber against hand-computed values,
how a config names a loss and its options, and a run that trains with them through the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtl_torchrec.config import ConfigError, load_config
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.label_kinds import LABEL_KINDS
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.model.builder import build_model, task_specs
from mtl_torchrec.model.losses import LOSSES, FocalOptions, HuberOptions, build_loss, loss_name
from mtl_torchrec.model.tasks import TaskSpec, TrainModule, check_tasks, multitask_loss
from tests.mtl_helpers import SMALL

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- registries


def test_label_kinds_own_what_follows_from_the_label():
    assert LABEL_KINDS.names() == ["binary", "regression"]
    binary, regression = LABEL_KINDS.get("binary"), LABEL_KINDS.get("regression")
    assert (binary.default_loss, regression.default_loss) == ("bce", "mse")
    assert binary.probability and not regression.probability
    z = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.equal(binary.predict(z), torch.sigmoid(z)) and torch.equal(regression.predict(z), z)
    assert list(binary.valid(np.array([0.0, 1.0, 0.5]))) == [True, True, False]
    assert regression.valid(np.array([0.5, -7.0])).all()
    assert "auc" in binary.selection_metrics and "rmse" in regression.selection_metrics
    assert binary.initial_bias(np.array([0.0, 0.0, 0.0, 1.0])) == pytest.approx(math.log(0.25 / 0.75))
    assert regression.initial_bias(np.array([1.0, 4.0])) == 2.5
    y, wrong = binary.from_numbers(np.array([0.0, 1.0, 2.0, np.nan]), None)
    assert list(wrong) == [False, False, True, False]
    y, wrong = binary.from_numbers(np.array([0.2, 3.0]), threshold=1.0)
    assert list(y) == [0.0, 1.0] and not wrong.any()
    with pytest.raises(ConfigError, match=r"model\.tasks\[\*\]\.type: 'count' is not one of \['binary', 'regression'\]"):
        LABEL_KINDS.get("count")


def test_loss_registry_and_defaults():
    assert LOSSES.names() == ["bce", "focal", "huber", "mse"]
    assert LOSSES.get("focal").label_kinds == ("binary",) and LOSSES.get("huber").label_kinds == ("regression",)
    assert loss_name(TaskSpec("c", "binary")) == "bce" and loss_name(TaskSpec("r", "regression")) == "mse"
    assert loss_name(TaskSpec("r", "regression", loss="huber")) == "huber"
    assert build_loss(TaskSpec("r", "regression", loss="huber", loss_options={"delta": 0.5})).options == HuberOptions(0.5)
    assert build_loss(TaskSpec("c", "binary", loss="focal")).options == FocalOptions(gamma=2.0, alpha=None)


def test_default_losses_are_the_plain_formulas_bitwise():
    logits = {"c": torch.tensor([0.3, -2.0, 4.0]), "r": torch.tensor([1.0, 2.5, -1.0])}
    yc, yr = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.5, 2.0, 0.0])
    assert torch.equal(build_loss(TaskSpec("c", "binary"))(logits, yc, TaskSpec("c", "binary")),
                       F.binary_cross_entropy_with_logits(logits["c"], yc, reduction="none"))
    assert torch.equal(build_loss(TaskSpec("r", "regression"))(logits, yr, TaskSpec("r", "regression")),
                       (logits["r"] - yr) ** 2)


# ----------------------------------------------------------------------------- focal and Huber values


def test_focal_against_hand_computed_values():
    task = TaskSpec("c", "binary", loss="focal")
    # Row 0: p = 0.5, label 1: BCE = ln 2, p_t = 0.5. Row 1: p = 0.75, label 0: BCE = ln 4, p_t = 0.25.
    logits = {"c": torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)}
    label = torch.tensor([1.0, 0.0], dtype=torch.float64)
    plain = LOSSES.get("focal")(FocalOptions(gamma=2.0))(logits, label, task)
    expected = [0.25 * math.log(2.0), 0.75 ** 2 * math.log(4.0)]
    assert plain.tolist() == pytest.approx(expected, rel=1e-12)
    weighted = LOSSES.get("focal")(FocalOptions(gamma=2.0, alpha=0.25))(logits, label, task)
    assert weighted.tolist() == pytest.approx([0.25 * expected[0], 0.75 * expected[1]], rel=1e-12)


def test_focal_gradients_are_finite_also_on_confident_rows():
    z = torch.tensor([0.0, 40.0, -40.0, 3.0], requires_grad=True)
    label = torch.tensor([1.0, 1.0, 0.0, 0.0])
    for gamma in (0.0, 0.5, 2.0):
        loss = LOSSES.get("focal")(FocalOptions(gamma=gamma))({"c": z}, label, TaskSpec("c", "binary")).sum()
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), gamma
        # The confidently right rows get (almost) no gradient, the wrong one a push towards its label.
        assert grad[3] > 0


def test_focal_with_gamma_0_is_bce_also_for_esmm():
    logits = {"click": torch.tensor([0.5, -1.0, 2.0]), "conv": torch.tensor([-0.3, 1.2, 0.1])}
    label = torch.tensor([1.0, 0.0, 0.0])
    for task in (TaskSpec("click", "binary"), TaskSpec("conv", "binary", esmm_parent="click")):
        focal = LOSSES.get("focal")(FocalOptions(gamma=0.0))(logits, label, task)
        assert torch.equal(focal, LOSSES.get("bce")()(logits, label, task)), task.name


def test_huber_against_hand_computed_values():
    task = TaskSpec("r", "regression", loss="huber")
    pred = torch.tensor([1.5, 3.0, -2.0, 0.0], requires_grad=True)
    label = torch.tensor([1.0, 1.0, 1.0, 0.0])  # residuals 0.5, 2, -3, 0
    loss = LOSSES.get("huber")(HuberOptions(delta=1.0))({"r": pred}, label, task)
    assert loss.tolist() == pytest.approx([0.125, 1.5, 2.5, 0.0])
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    assert grad.tolist() == pytest.approx([0.5, 1.0, -1.0, 0.0])  # linear part: slope delta
    half = LOSSES.get("huber")(HuberOptions(delta=0.5))({"r": pred.detach()}, label, task)
    assert half[1].item() == pytest.approx(0.5 * (2.0 - 0.25))


def test_huber_inside_delta_is_half_the_squared_error():
    pred = torch.tensor([0.1, -0.4, 0.9, 2.0])
    label = torch.tensor([0.0, 0.3, 1.5, 2.9])  # every |residual| < 1
    task = TaskSpec("r", "regression", loss="huber")
    huber = LOSSES.get("huber")(HuberOptions(delta=1.0))({"r": pred}, label, task)
    mse = LOSSES.get("mse")()({"r": pred}, label, task)
    assert torch.allclose(huber, 0.5 * mse)
    masks = {"r": torch.ones(4)}
    mean_huber = multitask_loss({"r": pred}, {"r": label}, masks, [task])["r"]
    mean_mse = multitask_loss({"r": pred}, {"r": label}, masks, [TaskSpec("r", "regression")])["r"]
    assert torch.allclose(mean_huber, 0.5 * mean_mse)


# ----------------------------------------------------------------------------- config


def test_a_loss_that_does_not_fit_the_label_kind_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"model\.tasks\[0\]\.loss: 'huber' is a loss of \['regression'\] labels "
                                          r"and task 'click' is binary \(its losses: \['bce', 'focal'\]\)"):
        load_config(None, ["model.tasks.0.loss=huber"])
    with pytest.raises(ValueError, match=r"model\.tasks\[1\]\.loss: 'focal' is a loss of \['binary'\]"):
        check_tasks([TaskSpec("c", "binary"), TaskSpec("r", "regression", loss="focal")])


def test_an_unknown_loss_is_refused_listing_the_registered_names():
    with pytest.raises(ConfigError, match=r"model\.tasks\[2\]\.loss: 'hubr' is not one of "
                                          r"\['bce', 'focal', 'huber', 'mse'\]"):
        load_config(None, ["model.tasks.2.loss=hubr"])
    with pytest.raises(ValueError, match=r"model\.tasks\[0\]\.loss: 'hubr' is not one of"):
        check_tasks([TaskSpec("r", "regression", loss="hubr")])


def test_loss_options_are_checked_naming_the_key():
    cfg = load_config(None, ["model.tasks.0.loss=focal", "model.tasks.0.loss_options.gamma=1.5",
                             "model.tasks.2.loss=huber"])
    assert (cfg.model.tasks[0].loss, cfg.model.tasks[0].loss_options) == ("focal", {"gamma": 1.5})
    cases = [
        (["model.tasks.2.loss=huber", "model.tasks.2.loss_options.delta=0"],
         r"model\.tasks\[2\]\.loss_options\.delta: must be > 0, got 0"),
        (["model.tasks.0.loss=focal", "model.tasks.0.loss_options.gama=2"],
         r"model\.tasks\[0\]\.loss_options\.gama: not an option of loss 'focal' \(its options: \['alpha', 'gamma'\]\)"),
        (["model.tasks.0.loss_options.gamma=2"],
         r"model\.tasks\[0\]\.loss_options\.gamma: not an option of loss 'bce' \(its options: \[\]\)"),
        (["model.tasks.0.loss=focal", "model.tasks.0.loss_options.alpha=1.5"],
         r"model\.tasks\[0\]\.loss_options\.alpha: must be in \[0, 1\], got 1\.5"),
        # YAML's true is no number (it was read as gamma 1.0, alpha 0.0: positive rows weighed nothing).
        (["model.tasks.0.loss=focal", "model.tasks.0.loss_options.alpha=false"],
         r"model\.tasks\[0\]\.loss_options\.alpha: "),
        (["model.tasks.2.loss=huber", "model.tasks.2.loss_options.delta=true"],
         r"model\.tasks\[2\]\.loss_options\.delta: "),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides)


def test_the_config_loss_reaches_the_train_module(tmp_path):
    cfg = load_config(None, SMALL + ["model.tasks.2.loss=huber", "model.tasks.2.loss_options.delta=0.5"])
    data = load_data(cfg.data)
    tasks = task_specs(cfg.model, data.schema)
    assert (tasks[2].loss, tasks[2].loss_options) == ("huber", {"delta": 0.5})
    torch.manual_seed(0)
    model = build_model(cfg.model, data.schema)
    module = TrainModule(model, tasks, torch.nn.Identity())
    batch = Batch.from_table(data.splits["train"].take(np.arange(256)), data.schema)
    with torch.no_grad():
        out = model(batch)
    losses = multitask_loss(out.logits, batch.labels, batch.masks, module.tasks, allow_extra=True)
    m = batch.masks["rating"]
    y = torch.where(m > 0, batch.labels["rating"], torch.zeros_like(m))
    per_row = F.huber_loss(out.logits["rating"], y, reduction="none", delta=0.5)
    assert torch.allclose(losses["rating"], (per_row * m).sum() / m.sum())


@pytest.mark.slow
def test_cli_trains_with_huber_and_focal(tmp_path):
    """A run whose rating task trains with ``loss: huber`` (and click with focal) through the real CLI:
    it trains, and its metrics are those of the label kinds (RMSE for rating, AUC for click)."""
    args = [sys.executable, "-m", "mtl_torchrec", "train", *SMALL, "train.max_steps=4", "train.diagnostics_every=0",
            "model.tasks.2.loss=huber", "model.tasks.2.loss_options.delta=0.5", "model.tasks.0.loss=focal",
            f"output_dir={tmp_path}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["rating"]["rmse"]) and "auc" not in metrics["rating"]
    assert math.isfinite(metrics["click"]["auc"]) and "rmse" not in metrics["click"]
    saved = load_config(run_dir / "config.yaml")
    assert (saved.model.tasks[2].loss, saved.model.tasks[2].loss_options) == ("huber", {"delta": 0.5})
    assert saved.model.tasks[0].loss == "focal"


def test_a_data_spec_label_type_must_be_a_label_kind(tmp_path):
    from mtl_torchrec.data.spec.data_spec import load_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text("files: data.csv\nlabels:\n  - {task: rating, column: stars, type: huber}\n")
    with pytest.raises(ConfigError, match=r"labels\[0\]\.type: 'huber' is not one of \['binary', 'regression'\]"):
        load_spec(spec)
