"""facecom_utils.common.paths: the repository's path rules, written once (FACECOM in the repo, relative paths)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from facecom_utils.common import paths


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


def test_holds_facecom_needs_images_in_both_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Task_A").mkdir()
    (tmp_path / "Task_A" / "README.md").write_text("put FACECOM here")  # the clone's placeholders
    (tmp_path / "Task_B").mkdir()
    assert not paths.holds_facecom(tmp_path)
    _image(tmp_path / "Task_A" / "train" / "male" / "a_0001.jpg")
    (tmp_path / "Task_B" / "train" / "x").mkdir(parents=True)
    (tmp_path / "Task_B" / "train" / "x" / "notes.txt").write_text("not an image")
    assert not paths.holds_facecom(tmp_path)
    _image(tmp_path / "Task_B" / "train" / "x" / "x_0001.png")
    assert paths.holds_facecom(tmp_path)
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path)  # the one repository-root rule follows
    assert paths.facecom_in_repo()
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "elsewhere")
    assert not paths.facecom_in_repo()


def test_repo_path_reads_relative_paths_against_the_cwd_then_the_repo(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    repo, cwd = tmp_path / "repo", tmp_path / "cwd"
    (repo / "reports" / "x").mkdir(parents=True)
    (cwd / "here").mkdir(parents=True)
    monkeypatch.setattr(paths, "REPO_ROOT", repo)
    monkeypatch.chdir(cwd)
    assert paths.repo_path("here") == (cwd / "here").resolve()
    assert paths.repo_path("reports/x") == (repo / "reports" / "x").resolve()
    assert paths.repo_path("nowhere") == (cwd / "nowhere").resolve()
    assert paths.repo_path(str(repo)) == repo.resolve()
    monkeypatch.setenv(paths.DATA_ROOT_ENV, "")
    assert paths.data_root_from_env() is None
    monkeypatch.setenv(paths.DATA_ROOT_ENV, paths.DEMO_DATA_ROOT)
    assert paths.data_root_from_env() == "demo" == os.environ["FACECOM_DATA_ROOT"]


def test_one_image_suffix_list() -> None:
    from facecom_utils.data import layout

    assert layout.IMAGE_EXTENSIONS is paths.IMAGE_EXTENSIONS


def test_cpu_model_reads_cpuinfo_and_falls_back(tmp_path) -> None:
    import platform

    from facecom_utils.common.machine import cpu_model, machine_description

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n")
    assert cpu_model(info) == "AMD EPYC 7B13 64-Core Processor"
    assert cpu_model(tmp_path / "absent") == (platform.processor() or platform.machine())
    assert " cores · " in machine_description()
