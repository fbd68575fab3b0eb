"""The package assembles from the top-level folders and never shadows HuggingFace's packages."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ["datasets", "tokenizers", "policy", "sim_envs", "evaluate"]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackage_imports_as_robotok(name: str) -> None:
    mod = importlib.import_module(f"robotok.{name}")
    assert Path(list(mod.__path__)[0]).resolve() == (ROOT / name).resolve()


@pytest.mark.parametrize("name", ["tokenizers", "datasets", "evaluate"])
def test_namespace_folders_have_no_init(name: str) -> None:
    assert not (ROOT / name / "__init__.py").exists(), f"{name}/__init__.py would shadow HuggingFace's {name}"


def test_repo_root_does_not_shadow_huggingface_tokenizers() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import tokenizers; print(tokenizers.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert "site-packages" in out and not out.startswith(str(ROOT / "tokenizers")), out


def test_imports_from_any_directory(tmp_path: Path) -> None:
    code = "import robotok.datasets, robotok.tokenizers, robotok.policy, robotok.sim_envs, robotok.evaluate"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


def test_console_scripts_resolve() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts, "pyproject declares no console scripts"
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), f"{name} -> {target} is not callable"
        assert (Path(sys.executable).parent / name).exists(), f"console script {name} not installed; run make setup"


def test_wheel_holds_robotok_only(tmp_path: Path) -> None:
    """The built wheel installs one top-level package, robotok/, with the MJCF assets inside it."""
    import zipfile

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("robotok-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"robotok", wheel.name.split("-py")[0] + ".dist-info"}, names
    for sub in SUBPACKAGES:
        assert any(n.startswith(f"robotok/{sub}/") for n in names), sub
    assert "robotok/assets/pick_cup.xml" in names and "robotok/assets/drive.xml" in names
