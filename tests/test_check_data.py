"""``facecom check-data``: layout, counts, unreadable files and train/val leakage, on tiny synthetic folders
and (when present) on the real FACECOM training split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import FACECOM_ROOT, noise_images, requires_facecom
from facecom_utils.cli import commands as cli


def tiny_facecom(root: Path, splits: tuple[str, ...] = ("train", "val")) -> Path:
    """Two people per label (Task A) and two identities with a clean image and a blurred copy (Task B) per split;
    every image random noise, so no two are near-duplicates."""
    for s, split in enumerate(splits):
        for l, label in enumerate(("female", "male")):
            for k in range(2):
                noise_images(root / "Task_A" / split / label, 1, seed=100 * s + 10 * l + k,
                             prefix=f"{split.title()}{label.title()}{k}_000")
        for k in range(2):
            identity = f"{split.title()}_Person{k}"
            (clean,) = noise_images(root / "Task_B" / split / identity, 1, seed=1000 + 100 * s + k, prefix=f"{identity}_000")
            (root / "Task_B" / split / identity / "distortion").mkdir()
            shutil.copy(clean, root / "Task_B" / split / identity / "distortion" / f"{identity}_0000_blurred.png")
    return root


def _check(root: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:
    code = cli.main(["check-data", str(root), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def _found(report: dict, level: str) -> list[dict]:
    return [f for f in report["findings"] if f["level"] == level]


def test_a_sound_folder_passes_with_its_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = _check(tiny_facecom(tmp_path / "root"), capsys)
    assert code == 0 and report["errors"] == 0
    assert report["counts"]["Task_A/val"] == {"female": 2, "male": 2}
    assert report["counts"]["Task_B/train"] == {"identities": 2, "clean": 2, "distorted": 2}
    # not FACECOM's size: one warning per split, naming the published counts
    differ = [f for f in _found(report, "warning") if "counts differ" in f["message"]]
    assert {f["where"] for f in differ} == {"Task_A/train", "Task_A/val", "Task_B/train", "Task_B/val"}
    assert "female 2 (published 303)" in next(f for f in differ if f["where"] == "Task_A/train")["message"]
    assert any("no near-duplicate" in f["message"] for f in _found(report, "ok"))
    assert cli.main(["check-data", str(tmp_path / "root")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "0 error(s), 4 warning(s)"


def test_a_missing_class_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tiny_facecom(tmp_path / "root")
    shutil.rmtree(root / "Task_A" / "train" / "male")
    code, report = _check(root, capsys)
    assert code == 1
    (error,) = _found(report, "error")
    assert error["where"] == "Task_A" and "class folder missing" in error["message"] and "male" in error["message"]


@pytest.mark.parametrize("content, reason", [(b"", "zero-byte"), (b"\x89PNG\r\n\x1a\n broken", "corrupt PNG"),
                                             (b"not an image", "not a readable image")])
def test_an_unreadable_image_is_an_error(content: bytes, reason: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    root = tiny_facecom(tmp_path / "root")
    bad = root / "Task_B" / "train" / "Train_Person0" / "Train_Person0_0009.png"
    bad.write_bytes(content)
    code, report = _check(root, capsys)
    assert code == 1
    (error,) = _found(report, "error")
    assert error["message"] == "1 unreadable image(s)" and error["items"][0].startswith(f"{bad}: {reason}")


def test_a_person_in_train_and_val_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tiny_facecom(tmp_path / "root")
    noise_images(root / "Task_B" / "val" / "Train_Person1", 1, seed=77, prefix="Train_Person1_000")
    noise_images(root / "Task_A" / "val" / "male", 1, seed=78, prefix="TrainMale0_000")
    code, report = _check(root, capsys)
    assert code == 1
    errors = {f["where"]: f for f in _found(report, "error")}
    assert errors["Task_B train/val"]["items"] == ["Train_Person1"]
    assert errors["Task_A train/val"]["items"] == ["TrainMale0"]


def test_a_near_duplicate_across_splits_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tiny_facecom(tmp_path / "root")
    source = root / "Task_B" / "train" / "Train_Person0" / "Train_Person0_0000.png"
    copy = root / "Task_B" / "val" / "Val_Person0" / "Val_Person0_0005.png"
    shutil.copy(source, copy)
    code, report = _check(root, capsys)
    assert code == 0
    (warning,) = [f for f in _found(report, "warning") if "near-duplicate" in f["message"]]
    assert warning["items"] == [f"{source} ~ {copy} (distance 0)"]
    code, report = _check(root, capsys, "--no-duplicates")
    assert not any("near-duplicate" in f["message"] for f in report["findings"])


def test_the_training_split_alone_passes_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = _check(tiny_facecom(tmp_path / "root", splits=("train",)), capsys)
    assert code == 0 and report["errors"] == 0
    (note,) = _found(report, "note")
    assert note["message"].startswith("no val split")


@pytest.mark.parametrize("make", ["missing", "no tasks"])
def test_a_root_that_is_no_dataset_is_one_line(make: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    if make == "no tasks":
        noise_images(root, 1)
    assert cli.main(["check-data", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(root) in err and "expected a FACECOM root" in err


def test_the_demo_dataset_passes_without_a_count_comparison(demo_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = _check(demo_root, capsys)
    assert code == 0 and report["warnings"] == 0
    assert any("synthetic demo" in f["message"] for f in _found(report, "note"))


@requires_facecom
@pytest.mark.realdata
def test_the_real_facecom_training_split_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """FACECOM_ROOT ($FACECOM_TEST_ROOT): the training split alone passes, with the no-val note."""
    assert cli.main(["check-data", str(FACECOM_ROOT)]) == 0
    out = capsys.readouterr().out
    assert "ok       Task_A/train: 303 female, 1623 male (the published FACECOM counts)" in out
    assert "ok       Task_B/train: 877 identities, 1926 clean, 13482 distorted (the published FACECOM counts)" in out
    if not (FACECOM_ROOT / "Task_B" / "val").is_dir():
        assert "note     splits: no val split" in out
    assert out.strip().splitlines()[-1] == "0 error(s), 0 warning(s)"
