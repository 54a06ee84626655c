"""Packaging: the wheel carries the job configs, and ``--config`` takes a path or a packaged name."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mtl_torchrec.config import load_config
from mtl_torchrec.core.errors import ConfigError
from mtl_torchrec.core.packaged import CONFIG_DIR, config_path, packaged_configs
from mtl_torchrec.launch.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def test_packaged_configs_are_listed_and_load() -> None:
    assert CONFIG_DIR == REPO / "mtl_torchrec" / "configs"
    assert packaged_configs() == ["aitm", "default", "feature_attention", "ple_esmm"]
    assert load_config(config_path("default"), []).model.backbone == "mmoe"
    ple = load_config(config_path("ple_esmm"), [])
    assert ple.model.backbone == "ple" and ple.train.loss_balance == "gradnorm"


def test_config_path_prefers_an_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_path("default") == CONFIG_DIR / "default.yaml"
    (tmp_path / "default").write_text("train: {epochs: 1}\n")
    assert config_path("default") == Path("default")
    own = tmp_path / "exp.yaml"
    own.write_text("train: {epochs: 1}\n")
    assert config_path(str(own)) == own


@pytest.mark.parametrize("value", ["nope", "configs/default.yaml", "default.yaml"])
def test_unknown_config_lists_the_packaged_ones(value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    listed = r"neither a config file nor a packaged config \(packaged: aitm, default, feature_attention, ple_esmm\)"
    with pytest.raises(ConfigError, match=listed):
        config_path(value)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match="'folder' is not a file"):
        config_path("folder")


def test_cli_resolves_config_names_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for command in ("train", "compare-single-task"):
        args = build_parser().parse_args([command, "--config", "ple_esmm", "train.epochs=1"])
        assert args.config == CONFIG_DIR / "ple_esmm.yaml" and args.overrides == ["train.epochs=1"]
    args = build_parser().parse_args(["encode-text", "--store", "s", "--config", "default"])
    assert args.config == CONFIG_DIR / "default.yaml"


def test_cli_refuses_an_unknown_config_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", "defualt", f"output_dir={tmp_path / 'runs'}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --config: 'defualt' is neither a config file nor a packaged config" in err
    assert "packaged: aitm, default, feature_attention, ple_esmm" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_built_wheel_contains_the_configs_and_the_metadata(tmp_path: Path) -> None:
    """``pip wheel`` of a copy of the sources (so the checkout gets no build/ folder); the build
    backend is the environment's setuptools (no isolation), so no download is needed."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "mtl_torchrec", src / "mtl_torchrec", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # setuptools warns (without failing) about a folder of package files that is not declared as a package.
    assert "is absent from the `packages` configuration" not in proc.stderr
    (wheel,) = out.glob("mtl_torchrec-0.1.0-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read("mtl_torchrec-0.1.0.dist-info/METADATA").decode()
        entry_points = z.read("mtl_torchrec-0.1.0.dist-info/entry_points.txt").decode()
    assert {"mtl_torchrec/configs/default.yaml", "mtl_torchrec/configs/ple_esmm.yaml"} <= names
    assert {"mtl_torchrec/launch/cli.py", "mtl_torchrec/core/packaged.py"} <= names
    assert not any(n.startswith("tests/") for n in names)
    # Static metadata from pyproject.toml, dependencies and extras from setup.py.
    for line in ("Name: mtl_torchrec", "Version: 0.1.0", "Requires-Python: >=3.10", "Requires-Dist: torchrec==1.8.0",
                 'Requires-Dist: ruff==0.17.6; extra == "dev"'):
        assert line in metadata.splitlines(), line
    assert "mtl-torchrec = mtl_torchrec.launch.cli:main" in entry_points
    assert "mtl_torchrec = mtl_torchrec.components" in entry_points
