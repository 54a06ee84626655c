import copy
import dataclasses
from pathlib import Path

import pytest

from mtl_torchrec.config import Config, ConfigError, ModelConfig, TaskConfig, load_config, save_config


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\nmodel:\n  mmoe:\n    num_experts: 4\n")
    cfg = load_config(path, ["train.dense_lr=0.01", "model.mmoe.expert_layers=[32, 16]", "model.backbone=omoe"])
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3
    assert cfg.train.dense_lr == 0.01
    assert cfg.model.mmoe.num_experts == 4
    assert cfg.model.mmoe.expert_layers == [32, 16]
    assert cfg.model.backbone == "omoe"
    assert [t.name for t in cfg.model.tasks] == ["click", "conversion", "rating"]


def test_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=5", "data.synthetic.seed=7"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.epoch=3", "train.epoch"),
        ("model.mmoe.num_expert=3", "model.mmoe.num_expert"),
        ("train.epochs=three", "train.epochs"),
        ("train.epochs=1.5", "train.epochs"),
        ("model.backbone=transformer", "model.backbone"),
        ("train.progress=maybe", "train.progress"),
        ("model.mmoe.expert_layers=5", "model.mmoe.expert_layers"),
        ("epochs", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("[", r"\[")):
        load_config(None, [override])


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  synthetic:\n    num_user: 3\n")
    with pytest.raises(ConfigError, match=r"data\.synthetic\.num_user"):
        load_config(path)


def test_bad_task_entry(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  tasks:\n    - name: click\n      typ: binary\n")
    with pytest.raises(ConfigError, match=r"model\.tasks\[0\]\.typ"):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/config.yaml")


def _problems(overrides, path=None):
    """The lines of the ConfigError that loading with ``overrides`` raises."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value).splitlines()


@pytest.mark.parametrize(
    "override, line",
    [
        ("train.epochs=-3", "train.epochs: must be >= 1, got -3"),
        ("train.max_steps=-1", "train.max_steps: must be >= 0, got -1"),
        ("data.batch_size=0", "data.batch_size: must be >= 1, got 0"),
        ("data.eval_batch_size=-1", "data.eval_batch_size: must be >= 1, got -1"),
        ("data.num_workers=-2", "data.num_workers: must be >= 0, got -2"),
        ("model.embedding_dim=0", "model.embedding_dim: must be >= 1, got 0"),
        ("model.mmoe.num_experts=0", "model.mmoe.num_experts: must be >= 1, got 0"),
        ("model.mmoe.expert_layers=[]", "model.mmoe.expert_layers: must not be empty, got []"),
        ("model.mmoe.expert_layers=[16, 0]", "model.mmoe.expert_layers[1]: must be >= 1, got 0"),
        ("model.mmoe.gate_layers=[-4]", "model.mmoe.gate_layers[0]: must be >= 1, got -4"),
        ("model.ple.num_levels=0", "model.ple.num_levels: must be >= 1, got 0"),
        ("model.ple.num_task_experts=-1", "model.ple.num_task_experts: must be >= 0, got -1"),
        ("model.ple.num_shared_experts=-1", "model.ple.num_shared_experts: must be >= 0, got -1"),
        ("model.ple.expert_layers=[]", "model.ple.expert_layers: must not be empty, got []"),
        ("model.shared_bottom.layers=[]", "model.shared_bottom.layers: must not be empty, got []"),
        ("model.single_task.layers=[]", "model.single_task.layers: must not be empty, got []"),
        ("model.text.adapter_layers=[]", "model.text.adapter_layers: must not be empty, got []"),
        ("model.dense_layers=[0]", "model.dense_layers[0]: must be >= 1, got 0"),
        ("model.tower_layers=[8, 0]", "model.tower_layers[1]: must be >= 1, got 0"),
        ("model.tasks.1.tower_layers=[0]", "model.tasks[1].tower_layers[0]: must be >= 1, got 0"),
        ("train.dense_lr=-1", "train.dense_lr: must be > 0, got -1"),
        ("train.sparse_lr=0", "train.sparse_lr: must be > 0, got 0"),
        ("train.balance.lr=0.0", "train.balance.lr: must be > 0, got 0.0"),
        ("train.dense_lr=.nan", "train.dense_lr: must be a finite number, got nan"),
        ("model.tasks.0.weight=-1", "model.tasks[0].weight: must be >= 0, got -1"),
        ("model.tasks.0.type=ranking", "model.tasks[0].type: 'ranking' is not one of ['binary', 'regression']"),
        ("model.tasks.1.esmm_parent=clik",
         "model.tasks[1].esmm_parent: 'clik' is not another task (tasks: ['click', 'rating'])"),
        ("model.tasks.1.esmm_parent=conversion",
         "model.tasks[1].esmm_parent: 'conversion' is not another task (tasks: ['click', 'rating'])"),
        ("model.tasks.2.esmm_parent=click",
         "model.tasks[2].esmm_parent: ESMM task 'rating' and its parent 'click' must be plain binary tasks"),
        ("model.tasks.1.name=''", "model.tasks[1].name: must not be empty"),
        ("model.tasks=[]", "model.tasks: must not be empty, got []"),
        ("data.synthetic.val_fraction=1.0", "data.synthetic.val_fraction: must be in [0, 1), got 1.0"),
        ("data.synthetic.test_fraction=-0.1", "data.synthetic.test_fraction: must be in [0, 1), got -0.1"),
        ("data.movielens.test_fraction=0", "data.movielens.test_fraction: must be in (0, 1), got 0"),
        ("model.text.id_dropout=1", "model.text.id_dropout: must be in [0, 1), got 1"),
        ("model.text.encoder.max_length=0", "model.text.encoder.max_length: must be >= 1, got 0"),
        ("model.text.encoder.batch_size=0", "model.text.encoder.batch_size: must be >= 1, got 0"),
        ("train.log_every=-1", "train.log_every: must be >= 0, got -1"),
        ("train.eval_every=-1", "train.eval_every: must be >= 0, got -1"),
        ("train.checkpoint_every=-1", "train.checkpoint_every: must be >= 0, got -1"),
        ("train.diagnostics_every=-1", "train.diagnostics_every: must be >= 0, got -1"),
        ("train.keep_checkpoints=-1", "train.keep_checkpoints: must be >= 0, got -1"),
        ("data.synthetic.num_users=0", "data.synthetic.num_users: must be >= 1, got 0"),
        ("data.synthetic.num_items=0", "data.synthetic.num_items: must be >= 1, got 0"),
        ("data.synthetic.num_impressions=0", "data.synthetic.num_impressions: must be >= 1, got 0"),
        ("data.synthetic.num_categories=0", "data.synthetic.num_categories: must be >= 1, got 0"),
        ("data.synthetic.num_brands=0", "data.synthetic.num_brands: must be >= 1, got 0"),
        ("data.synthetic.latent_dim=0", "data.synthetic.latent_dim: must be >= 1, got 0"),
        ("data.movielens.negatives_per_positive=0", "data.movielens.negatives_per_positive: must be >= 1, got 0"),
        ("train.loss_balance=gradnrm",
         "train.loss_balance: 'gradnrm' is not one of ['fixed', 'gradnorm', 'mgda_ub', 'uncertainty']"),
        ("model.backbone=transformer",
         "model.backbone: 'transformer' is not one of ['mmoe', 'omoe', 'ple', 'shared_bottom', 'single_task']"),
        ("train.sharding=rowwise",
         "train.sharding: 'rowwise' is not one of ['planner', 'table_wise', 'column_wise', 'row_wise', "
         "'table_column_wise', 'table_row_wise', 'data_parallel']"),
        ("train.dense_optimizer=adamw", "train.dense_optimizer: 'adamw' is not one of ['adam', 'adagrad', 'sgd']"),
        ("train.sparse_optimizer=adam",
         "train.sparse_optimizer: 'adam' is not one of ['rowwise_adagrad', 'adagrad', 'sgd']"),
        ("train.pipeline=fast", "train.pipeline: 'fast' is not one of ['sparse_dist', 'base']"),
        ("train.epochs='3'", "train.epochs: expected an integer, got '3'"),
        ("run_dir=5", "run_dir: expected a string, got 5"),
        ("model.mmoe=3", "model.mmoe: expected a mapping, got 3"),
    ],
)
def test_each_rule_names_the_key_and_what_is_allowed(override, line):
    assert _problems([override]) == [line]


def test_cross_section_rules():
    assert _problems(["data.synthetic.val_fraction=0.5", "data.synthetic.test_fraction=0.5"]) == [
        "data.synthetic.test_fraction: val_fraction + test_fraction must be < 1 (something is left to train on), "
        "got 0.5 + 0.5"
    ]
    assert _problems(["model.backbone=ple", "model.ple.num_task_experts=0", "model.ple.num_shared_experts=0"]) == [
        "model.ple.num_task_experts: num_task_experts + num_shared_experts must be >= 1 (every gate needs an expert), "
        "got 0 + 0"
    ]
    # The PLE module allows either count to be 0.
    assert load_config(None, ["model.ple.num_task_experts=0"]).model.ple.num_task_experts == 0
    assert load_config(None, ["model.ple.num_shared_experts=0"]).model.ple.num_shared_experts == 0
    assert _problems(["train.loss_balance=gradnorm", "model.tasks.2.weight=0"]) == [
        "train.loss_balance: 'gradnorm' needs every model.tasks[*].weight > 0, got 0.0 for model.tasks[2]"
    ]
    assert load_config(None, ["train.loss_balance=mgda_ub", "model.tasks.2.weight=0"]).model.tasks[2].weight == 0
    assert _problems(["data.source=spec"]) == [
        "data.spec: required with data.source=spec (the path of a YAML data spec)"
    ]


def test_duplicate_task_names():
    tasks = "model.tasks=[{name: click}, {name: rating, type: regression}, {name: click}]"
    assert _problems([tasks]) == ["model.tasks[2].name: 'click' is already the name of tasks[0]"]


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epoch: 3\nmodel:\n  embedding_dim: 0\n")
    lines = _problems(["data.batch_size=0", "train.loss_balance=gradnrm"], path)
    assert lines[0] == "data.batch_size: must be >= 1, got 0"
    assert lines[1] == "model.embedding_dim: must be >= 1, got 0"
    assert lines[2] == "train.loss_balance: 'gradnrm' is not one of ['fixed', 'gradnorm', 'mgda_ub', 'uncertainty']"
    assert lines[3].startswith(
        "unknown config key 'train.epoch' (known here: ['balance', 'calibration', 'checkpoint_every', "
    )
    assert "'epochs'" in lines[3] and len(lines) == 4


def test_a_file_value_an_override_fixes_is_fine(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 0\n")
    assert load_config(path, ["train.epochs=2"]).train.epochs == 2


def test_accepted_values():
    cfg = load_config(None, ["train.sharding=table_row_wise", "train.dense_lr=1", "model.text.id_dropout=0.5"])
    assert cfg.train.sharding == "table_row_wise"
    # YAML integers given for float keys become floats, as before.
    assert isinstance(cfg.train.dense_lr, float) and cfg.train.dense_lr == 1.0
    assert load_config(None, ["model.mmoe.gate_layers=[]", "model.dense_layers=[]", "model.tower_layers=[]"])


def test_list_index_overrides(tmp_path):
    cfg = load_config(None, ["model.tasks.0.weight=2", "model.tasks.1.esmm_parent=click", "model.tasks[2].weight=0.5"])
    assert [t.weight for t in cfg.model.tasks] == [2.0, 1.0, 0.5]
    assert cfg.model.tasks[1].esmm_parent == "click"
    assert cfg.model.tasks[0].name == "click" and cfg.model.tasks[2].type == "regression"
    assert load_config(None, ["model.mmoe.expert_layers.1=7"]).model.mmoe.expert_layers == [256, 7]
    # Indices address the list as the file left it.
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  tasks:\n    - {name: click}\n    - {name: conversion, esmm_parent: click}\n")
    cfg = load_config(path, ["model.tasks.1.weight=3"])
    assert [(t.name, t.weight, t.esmm_parent) for t in cfg.model.tasks] == [
        ("click", 1.0, None), ("conversion", 3.0, "click")
    ]
    assert _problems(["model.tasks.9.weight=2"]) == [
        "override 'model.tasks.9.weight': index 9 is out of range, model.tasks has 3 entries"
    ]
    assert _problems(["model.tasks.first.weight=2"]) == [
        "override 'model.tasks.first.weight': model.tasks is a list; use an index 0..2, not 'first'"
    ]
    assert _problems(["train.epochs.x=2"]) == [
        "override 'train.epochs.x': train.epochs is a value (2), not a section or list"
    ]


def test_configs_in_the_repository_load():
    for path in ["mtl_torchrec/configs/default.yaml", "mtl_torchrec/configs/ple_esmm.yaml", "mtl_torchrec/configs/aitm.yaml",
                 "mtl_torchrec/configs/feature_attention.yaml", "examples/census_income/config.yaml",
                 "examples/movielens/config.yaml"]:
        load_config(Path(__file__).resolve().parents[1] / path)


def test_config_dataclasses_stay_dataclasses():
    cfg = load_config(None, ["model.backbone=ple"])
    assert dataclasses.is_dataclass(cfg) and dataclasses.asdict(cfg)["model"]["ple"]["num_levels"] == 2
    copied = copy.deepcopy(cfg)
    assert copied == cfg and copied.model is not cfg.model
    assert ModelConfig(embedding_dim=4).embedding_dim == 4 and TaskConfig(name="x").weight == 1.0
    assert type(cfg) is Config and type(cfg.model) is ModelConfig


def test_bad_train_command_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from mtl_torchrec.launch.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["train", "train.loss_balance=gradnrm", "data.batch_size=0", f"output_dir={tmp_path / 'runs'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.loss_balance: 'gradnrm' is not one of ['fixed', 'gradnorm', 'mgda_ub', 'uncertainty']" in err
    assert "data.batch_size: must be >= 1, got 0" in err
    assert list(tmp_path.iterdir()) == []


def test_override_problems_are_reported_with_the_rest():
    assert _problems(["model.tasks.3.weight=1", "epochs", "train.epochs=0"]) == [
        "override 'model.tasks.3.weight': index 3 is out of range, model.tasks has 3 entries",
        "override 'epochs' must look like key=value",
        "train.epochs: must be >= 1, got 0",
    ]


def test_yaml_files_are_read_strictly(tmp_path):
    """A key given twice is refused (PyYAML keeps the last silently); bytes that are not UTF-8 and
    syntax errors name the file and line instead of a traceback."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("data:\n  batch_size: 64\n  batch_size: 128\n")
    with pytest.raises(ConfigError, match=r"dup.yaml line 3 column 3: invalid YAML: key 'batch_size' given twice "
                                          r"\(first at line 2\)"):
        load_config(dup)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"train:\n  epochs: 1\n\xff\xfe data: 1\n")
    with pytest.raises(ConfigError, match=r"bin.yaml line 3: not valid UTF-8 text \(byte offset 19\)"):
        load_config(binary)
    broken = tmp_path / "syntax.yaml"
    broken.write_text("data:\n  batch_size: [1,\n")
    with pytest.raises(ConfigError, match=r"syntax.yaml line 3 column 1: invalid YAML"):
        load_config(broken)
