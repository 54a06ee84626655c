import pytest

from mtl_torchrec.config import Config, ConfigError, load_config, save_config


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
