"""The project's own files describe one environment: pyproject.toml and environment.yml agree."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import REPO_ROOT


def _name(requirement: str) -> str:
    """Normalised distribution name of a requirement string (PEP 503)."""
    name = re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _environment_pip() -> list[str]:
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert pip_sections, "environment.yml has no pip section"
    return pip_sections[0]


def test_every_runtime_dependency_is_in_environment_yml() -> None:
    runtime = {_name(r) for r in _pyproject()["project"]["dependencies"]}
    listed = {_name(r) for r in _environment_pip() if not r.startswith("-e")}
    missing = sorted(runtime - listed)
    assert not missing, f"environment.yml lacks runtime dependencies of pyproject.toml: {missing}"


def test_environment_yml_installs_the_project_with_dev_extra() -> None:
    assert any(r.replace(" ", "") == "-e.[dev]" for r in _environment_pip())
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    assert any(str(d).startswith("python") for d in env["dependencies"] if isinstance(d, str))


def test_dev_extra_has_the_test_tools() -> None:
    dev = {_name(r) for r in _pyproject()["project"]["optional-dependencies"]["dev"]}
    runtime = {_name(r) for r in _pyproject()["project"]["dependencies"]}
    for tool in ("pytest", "nbval", "jupyterlab"):
        assert tool in dev
    for needed in ("torch", "timm", "efficientnet-pytorch", "papermill", "nbconvert", "ipykernel"):
        assert needed in runtime


def test_torch_is_not_pinned_above_the_local_cap() -> None:
    # The CPU machines here cap torch at 2.14.1; a lower bound only keeps the project installable.
    for r in _pyproject()["project"]["dependencies"]:
        if _name(r) == "torch":
            assert "==" not in r and ">=2.15" not in r
