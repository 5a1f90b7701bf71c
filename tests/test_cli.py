"""The ``facecom`` command on the tiny demo, with checkpoints trained for one epoch."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from facecom_utils import cli

TINY = dict(backbone="resnet10t", pretrained=None, image_size=32, epochs=1, batch_size=16,
            device="cpu", progress=False, resume=False)


@pytest.fixture(scope="module")
def gender_checkpoint(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from facecom_utils.gender import GenderConfig, train_gender

    out = tmp_path_factory.mktemp("gender")
    run = train_gender(GenderConfig(data_root=str(demo_root), output_dir=str(out), evaluate_distortions=False, **TINY))
    return Path(run.checkpoint_path)


@pytest.fixture(scope="module")
def recognition_checkpoint(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from facecom_utils.recognition import RecognitionConfig, train_recognition

    out = tmp_path_factory.mktemp("recognition")
    run = train_recognition(RecognitionConfig(data_root=str(demo_root), output_dir=str(out), embedding_dim=32,
                                              samples_per_epoch=64, flip_tta=False, embedding_source="neck", **TINY))
    return Path(run.checkpoint_path)


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_evaluate_gender_prints_the_notebook_metrics(gender_checkpoint: Path, demo_root: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.json"
    assert cli.main(["evaluate-gender", str(gender_checkpoint), str(demo_root), "--json", "--no-distortions",
                     "--out", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "precision_female", "recall_female", "f1_female",
                "roc_auc", "confusion_matrix"):
        assert key in metrics, key
    assert json.loads(out.read_text()) == metrics
    assert metrics["split"] == "val" and sum(map(sum, metrics["confusion_matrix"])) == metrics["n_images"]
    assert cli.main(["evaluate-gender", str(gender_checkpoint), str(demo_root), "--no-distortions"]) == 0
    table = capsys.readouterr().out
    assert "balanced_accuracy" in table and "{" not in table.splitlines()[0]


def test_evaluate_recognition_prints_main_and_strict(recognition_checkpoint: Path, demo_root: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evaluate-recognition", str(recognition_checkpoint), str(demo_root), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("top1", "top5", "roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "match_accuracy",
                "match_f1_macro", "threshold", "per_distortion", "strict_top1"):
        assert key in metrics, key
    assert set(metrics["per_distortion"]) == {"blurred", "foggy", "lowlight", "noisy", "rainy", "resized", "sunny"}


def test_predict_gender_writes_csv(gender_checkpoint: Path, demo_root: Path, tmp_path: Path) -> None:
    folder = demo_root / "Task_A" / "val" / "female"
    out = tmp_path / "pred.csv"
    assert cli.main(["predict-gender", str(gender_checkpoint), str(folder), "--out", str(out)]) == 0
    rows = _csv(out.read_text())
    assert len(rows) == len(list(folder.glob("*.jpg")))
    assert list(rows[0]) == ["path", "prediction", "score", "decision"]
    for row in rows:
        assert row["prediction"] in ("female", "male") and 0.0 <= float(row["score"]) <= 1.0
        assert row["decision"].startswith("score>=") == (row["prediction"] == "female")


def test_identify_writes_csv(recognition_checkpoint: Path, demo_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gallery = demo_root / "Task_B" / "val"
    probes = sorted(gallery.glob("*/distortion/*_blurred.jpg"))[:5]
    assert cli.main(["identify", str(recognition_checkpoint), *map(str, probes), "--gallery", str(gallery)]) == 0
    rows = _csv(capsys.readouterr().out)
    identities = {d.name for d in gallery.iterdir() if d.is_dir()}
    assert [r["path"] for r in rows] == [str(p.resolve()) for p in probes]
    for row in rows:
        assert row["prediction"] in identities and row["decision"] in ("match", "no_match")
        assert -1.0 <= float(row["score"]) <= 1.0


def test_bad_inputs_get_one_line_errors(gender_checkpoint: Path, recognition_checkpoint: Path, demo_root: Path,
                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evaluate-gender", str(tmp_path / "missing.pt"), str(demo_root)]) == 2
    assert "missing.pt" in _one_line_error(capsys)
    assert cli.main(["evaluate-recognition", str(gender_checkpoint), str(demo_root)]) == 2
    assert "gender-task checkpoint" in _one_line_error(capsys)
    assert cli.main(["predict-gender", str(recognition_checkpoint), str(demo_root)]) == 2
    assert "recognition-task checkpoint" in _one_line_error(capsys)
    assert cli.main(["evaluate-gender", str(gender_checkpoint), str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in _one_line_error(capsys)
    assert cli.main(["evaluate-gender", str(gender_checkpoint), str(tmp_path)]) == 2  # no Task_A inside
    _one_line_error(capsys)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert cli.main(["evaluate-gender", str(junk), str(demo_root)]) == 2
    assert "junk.pt" in _one_line_error(capsys)
    text = tmp_path / "notes.txt"
    text.write_text("x")
    assert cli.main(["predict-gender", str(gender_checkpoint), str(text)]) == 2
    assert "not an image" in _one_line_error(capsys)
    assert cli.main(["identify", str(recognition_checkpoint), str(text), "--gallery", str(tmp_path / "g")]) == 2
    _one_line_error(capsys)


def test_make_demo_and_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "demo"
    assert cli.main(["make-demo", str(root), "--train-identities", "6", "--val-identities", "2",
                     "--image-size", "32"]) == 0
    assert (root / "Task_A" / "train").is_dir() and (root / "Task_B" / "val").is_dir()
    dst = tmp_path / "split"
    assert cli.main(["split", str(root), str(dst), "--val-fraction", "0.34"]) == 0
    assert (dst / "Task_B" / "val").is_dir() and (dst / "SPLIT.json").is_file()
    assert cli.main(["split", str(tmp_path / "absent"), str(tmp_path / "x")]) == 2
    assert "absent" in capsys.readouterr().err


def test_run_subcommand_reports_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--notebooks", "09"]) == 2
    assert "unknown notebook" in capsys.readouterr().err


def test_module_entry_point_help() -> None:
    done = subprocess.run([sys.executable, "-m", "facecom_utils", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for command in ("run", "evaluate-gender", "evaluate-recognition", "predict-gender", "identify", "make-demo", "split"):
        assert command in done.stdout
