"""Registries: backbones, loss balancers and task losses by config name.

The toy backbone below is what a new backbone file holds (options, module, registration); the
test registers it for its duration and checks that ``model.backbone=toy`` with its own
``model.toy`` section loads, builds, trains a step and sizes single-task models.
"""

from __future__ import annotations

from dataclasses import field
from typing import List, Tuple

import numpy as np
import pytest
import torch
from torch import nn

from mtl_torchrec.config import Config, ConfigError, ModelConfig, config_class, load_config
from mtl_torchrec.core.config.fields import PositiveInt, Widths, config_dataclass
from mtl_torchrec.core.registry import Registry
from mtl_torchrec.data.batch import Batch
from mtl_torchrec.data.label_kinds import LABEL_KINDS
from mtl_torchrec.data.sources import load_data
from mtl_torchrec.launch.compare_cmd import matched_layers
from mtl_torchrec.model.backbones import BACKBONES, Backbone
from mtl_torchrec.model.balancing import BALANCERS, FixedWeights
from mtl_torchrec.model.builder import build_balancer, build_train_module
from mtl_torchrec.model.config import model_config_class
from mtl_torchrec.model.losses import LOSSES
from mtl_torchrec.model.tasks import TaskSpec
from tests.mtl_helpers import SMALL

# ----------------------------------------------------------------------------- one backbone file


@config_dataclass
class ToyConfig:
    """``model.toy``: one hidden layer shared by all tasks."""

    width: PositiveInt = 4
    extra_layers: Widths = field(default_factory=list)


class ToyBottom(nn.Module):
    def __init__(self, in_features: int, num_tasks: int, widths: List[int]) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.out_features = widths[-1]
        self.mlp = nn.Sequential(*[nn.Linear(a, b) for a, b in zip([in_features] + widths[:-1], widths)])

    def forward_with_gates(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        h = torch.relu(self.mlp(x))
        return [h] * self.num_tasks, []

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward_with_gates(x)[0]


class ToyBackbone(Backbone):
    section = "toy"
    options = ToyConfig

    @staticmethod
    def build(options: ToyConfig, in_features: int, num_tasks: int) -> nn.Module:
        return ToyBottom(in_features, num_tasks, [options.width, *options.extra_layers])

    @staticmethod
    def template_layers(options: ToyConfig) -> List[int]:
        return [options.width, *options.extra_layers]


# ----------------------------------------------------------------------------- tests


@pytest.fixture
def toy():
    BACKBONES.register("toy")(ToyBackbone)  # in a backbone file: the @BACKBONES.register("toy") decorator
    try:
        yield
    finally:
        BACKBONES.unregister("toy")


def test_a_registered_backbone_loads_builds_and_trains(toy):
    cfg = load_config(None, SMALL + ["model.backbone=toy", "model.toy.width=6", "model.toy.extra_layers=[5]"])
    assert cfg.model.toy == ToyConfig(width=6, extra_layers=[5])
    # The other sections are still there, the toy's defaults apply when it is not mentioned.
    assert cfg.model.mmoe.num_experts == 3
    assert load_config(None, ["model.backbone=toy"]).model.toy.width == 4
    with pytest.raises(ConfigError, match=r"^model\.toy\.width: must be >= 1, got 0$"):
        load_config(None, ["model.backbone=toy", "model.toy.width=0"])

    data = load_data(cfg.data)
    torch.manual_seed(0)
    module = build_train_module(cfg.model, data, cfg.train.loss_balance, cfg.train.balance)
    assert isinstance(module.model.backbone, ToyBottom) and module.model.backbone.out_features == 5
    batch = Batch.from_table(data.splits["train"].take(np.arange(128)), data.schema)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    before = {k: v.detach().clone() for k, v in module.model.backbone.named_parameters()}
    loss, out = module(batch)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and set(out.task_losses) == {"click", "conversion", "rating"}
    assert all(not torch.equal(before[k], v) for k, v in module.model.backbone.named_parameters())

    # compare-single-task scales the toy's template layers.
    layers, _ = matched_layers(cfg.model, cfg.model.tasks[0], data.schema, target=10_000)
    assert len(layers) == 2


def test_the_config_class_follows_the_registry(toy):
    extended = config_class()
    assert extended is not Config and "toy" in extended.__dataclass_fields__["model"].type.__dataclass_fields__
    assert config_class() is extended
    BACKBONES.unregister("toy")
    try:
        assert config_class() is Config and model_config_class() is ModelConfig
        with pytest.raises(ConfigError, match=r"unknown config key 'model\.toy'"):
            load_config(None, ["model.toy.width=3"])
    finally:
        BACKBONES.register("toy")(ToyBackbone)


def test_a_section_must_not_shadow_a_model_key():
    class Clash(ToyBackbone):
        section = "tasks"

    BACKBONES.register("clash")(Clash)
    try:
        with pytest.raises(ValueError, match=r"\['tasks'\] collide"):
            model_config_class()
    finally:
        BACKBONES.unregister("clash")


def test_registry_basics():
    things: Registry[int] = Registry("x.kind")
    assert things.register("b")(2) == 2
    things.register("a")(1)
    assert things.names() == ["a", "b"] and things.items() == [("b", 2), ("a", 1)]
    assert things.get("a") == 1 and "a" in things and "c" not in things
    with pytest.raises(ConfigError, match=r"^x\.kind: 'c' is not one of \['a', 'b'\]$"):
        things.get("c")
    with pytest.raises(ValueError, match="already registered"):
        things.register("a")(3)
    with pytest.raises(ValueError, match="non-empty"):
        things.register("")
    things.unregister("a")
    assert things.names() == ["b"]


def test_builtin_registries():
    assert BACKBONES.names() == ["mmoe", "omoe", "ple", "shared_bottom", "single_task"]
    assert BALANCERS.names() == ["fixed", "gradnorm", "mgda_ub", "uncertainty"]
    assert LABEL_KINDS.names() == ["binary", "regression"]
    assert LOSSES.names() == ["bce", "focal", "huber", "mse"]
    assert BALANCERS.get("fixed") is FixedWeights
    tasks = [TaskSpec("a", "binary"), TaskSpec("b", "regression", weight=0.0)]
    with pytest.raises(ConfigError, match=r"train\.loss_balance: 'uncertainty' needs positive"):
        build_balancer("uncertainty", tasks)
    assert build_balancer("mgda_ub", tasks).weights() == {"a": 1.0, "b": 1.0}


def test_enum_names_match_their_implementations():
    from mtl_torchrec.config import DENSE_OPTIMIZERS, SPARSE_OPTIMIZERS
    from mtl_torchrec.distributed.optim import TORCH_OPTIMIZERS
    from mtl_torchrec.distributed.sharding import EMB_OPTIM_TYPES

    assert set(TORCH_OPTIMIZERS) == set(DENSE_OPTIMIZERS)
    assert set(EMB_OPTIM_TYPES) == set(SPARSE_OPTIMIZERS)
