"""The ``facecom`` command on the tiny demo, with checkpoints trained for one epoch."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from facecom_utils.cli import commands as cli

TINY = dict(backbone="resnet10t", pretrained=None, image_size=32, epochs=1, batch_size=16,
            device="cpu", progress=False, resume=False)


@pytest.fixture(scope="module")
def gender_checkpoint(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from facecom_utils.gender.pipeline import GenderConfig, train_gender

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
    assert list(rows[0]) == ["path", "prediction", "score", "decision", "error"]
    for row in rows:
        assert row["prediction"] in ("female", "male") and 0.0 <= float(row["score"]) <= 1.0
        assert row["decision"].startswith("score>=") == (row["prediction"] == "female")
        assert row["error"] == ""


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


# --------------------------------------------------------------------------------------------------
# One bad file does not sink a batch


BAD_FILES = {"cut.jpg": "truncated JPEG", "empty.jpg": "zero-byte", "notes.jpg": "not a readable image"}


def _plant_bad_files(folder: Path, good_jpeg: Path) -> dict[Path, str]:
    """A truncated JPEG, a zero-byte file and a text file named .jpg in ``folder``; {path: expected reason}."""
    data = good_jpeg.read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image at all\n")
    return {(folder / name).resolve(): reason for name, reason in BAD_FILES.items()}


def _good_folder(folder: Path, sources: list[Path]) -> list[Path]:
    """Copies of ``sources`` plus a grayscale PNG of the first (readable: converted to RGB)."""
    folder.mkdir(parents=True)
    copies = [Path(shutil.copy(src, folder / src.name)) for src in sources]
    Image.open(sources[0]).convert("L").save(folder / "gray.png")
    return [*copies, folder / "gray.png"]


def _check_skip_report(err: str, command: str, bad: dict[Path, str], n_total: int) -> None:
    """One warning per bad file naming it and the problem, then the summary line last."""
    lines = err.strip().splitlines()
    for path, reason in bad.items():
        assert any(str(path) in line and reason in line and "warning" in line for line in lines), (path, err)
    assert lines[-1].startswith(f"facecom {command}: {len(bad)} of {n_total} images skipped"), err


def test_predict_gender_skips_bad_images(gender_checkpoint: Path, demo_root: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    sources = sorted((demo_root / "Task_A" / "val" / "female").glob("*.jpg"))[:3]
    good = _good_folder(tmp_path / "good", sources)
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "good", mixed)
    bad = _plant_bad_files(mixed, sources[0])
    (mixed / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: ignored, not reported
    ckpt = str(gender_checkpoint)
    assert cli.main(["predict-gender", ckpt, str(tmp_path / "good"), "--out", str(tmp_path / "good.csv")]) == 0
    reference = {Path(r["path"]).name: r for r in _csv((tmp_path / "good.csv").read_text())}
    assert len(reference) == len(good) and all(r["error"] == "" for r in reference.values())
    capsys.readouterr()

    out = tmp_path / "mixed.csv"
    assert cli.main(["predict-gender", ckpt, str(mixed), "--out", str(out)]) == cli.EXIT_SKIPPED == 1
    _check_skip_report(capsys.readouterr().err, "predict-gender", bad, len(good) + len(bad))
    rows = _csv(out.read_text())
    assert [r["path"] for r in rows] == sorted(str(p) for p in [*(mixed / g.name for g in good), *bad])
    for row in rows:
        path = Path(row["path"])
        if path in bad:
            assert bad[path] in row["error"] and row["prediction"] == row["score"] == row["decision"] == ""
        else:
            ref = reference[path.name]
            assert row["error"] == "" and row["prediction"] == ref["prediction"] and row["decision"] == ref["decision"]
            assert float(row["score"]) == pytest.approx(float(ref["score"]), abs=2e-6)

    strict_out = tmp_path / "strict.csv"
    assert cli.main(["predict-gender", ckpt, str(mixed), "--strict", "--out", str(strict_out)]) == 2
    err = _one_line_error(capsys)
    assert str(mixed.resolve() / "cut.jpg") in err and "truncated JPEG" in err  # the first bad file, sorted
    assert not strict_out.exists()


def test_identify_skips_bad_probes_and_gallery_images(recognition_checkpoint: Path, demo_root: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    val = demo_root / "Task_B" / "val"
    kept_ids = sorted(d.name for d in val.iterdir() if len(list(d.glob("*.jpg"))) >= 2)[:2]
    clean, mixed = tmp_path / "clean", tmp_path / "mixed"
    for identity in kept_ids:
        for root in (clean, mixed):
            (root / identity).mkdir(parents=True)
            for image in sorted((val / identity).glob("*.jpg")):
                shutil.copy(image, root / identity / image.name)
    first_image = sorted((val / kept_ids[0]).glob("*.jpg"))[0]
    (mixed / kept_ids[0] / "Broken_0009.jpg").write_bytes(first_image.read_bytes()[:200])
    (mixed / "Nobody_Readable").mkdir()
    (mixed / "Nobody_Readable" / "Nobody_Readable_0001.jpg").write_bytes(b"")
    bad_gallery = {(mixed / kept_ids[0] / "Broken_0009.jpg").resolve(): "truncated JPEG",
                   (mixed / "Nobody_Readable" / "Nobody_Readable_0001.jpg").resolve(): "zero-byte"}
    probe_dir = tmp_path / "probes"
    probe_dir.mkdir()
    for identity in kept_ids:
        for image in sorted((val / identity / "distortion").glob("*.jpg"))[:2]:
            shutil.copy(image, probe_dir / image.name)
    (probe_dir / "notes.jpg").write_text("a text file")
    bad_probe = {(probe_dir / "notes.jpg").resolve(): "not a readable image"}
    ckpt = str(recognition_checkpoint)

    good_probes = [str(p) for p in sorted(probe_dir.glob("*.jpg")) if p.name != "notes.jpg"]
    assert cli.main(["identify", ckpt, *good_probes, "--gallery", str(clean)]) == 0
    reference = {r["path"]: r for r in _csv(capsys.readouterr().out)}
    assert cli.main(["identify", ckpt, str(probe_dir), "--gallery", str(mixed)]) == cli.EXIT_SKIPPED
    captured = capsys.readouterr()
    n_total = 5 + len(list(clean.rglob("*.jpg"))) + len(bad_gallery)
    _check_skip_report(captured.err, "identify", {**bad_gallery, **bad_probe}, n_total)
    assert "gallery identity Nobody_Readable: no readable image" in captured.err
    assert "Nobody_Readable" in captured.err.strip().splitlines()[-1]
    rows = _csv(captured.out)
    assert len(rows) == 5
    for row in rows:
        if Path(row["path"]) in bad_probe:
            assert "not a readable image" in row["error"] and row["prediction"] == row["score"] == ""
        else:  # the unreadable gallery images change nothing for the readable probes
            ref = reference[row["path"]]
            assert row["error"] == "" and row["prediction"] == ref["prediction"] in kept_ids
            assert float(row["score"]) == pytest.approx(float(ref["score"]), abs=2e-6)

    out = tmp_path / "strict.csv"
    assert cli.main(["identify", ckpt, str(probe_dir), "--gallery", str(mixed), "--strict", "--out", str(out)]) == 2
    assert "Broken_0009.jpg" in _one_line_error(capsys) and not out.exists()


def test_evaluate_gender_skips_bad_images(gender_checkpoint: Path, demo_root: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    args = ["evaluate-gender", str(gender_checkpoint)]
    assert cli.main([*args, str(demo_root), "--json", "--no-distortions"]) == 0
    reference = json.loads(capsys.readouterr().out)
    assert reference["n_skipped"] == 0 and reference["skipped"] == {}
    root = tmp_path / "root"
    shutil.copytree(demo_root / "Task_A" / "val", root / "Task_A" / "val")
    female = root / "Task_A" / "val" / "female"
    bad = _plant_bad_files(female, sorted(female.glob("*.jpg"))[0])
    out = tmp_path / "m.json"
    assert cli.main([*args, str(root), "--json", "--no-distortions", "--out", str(out)]) == cli.EXIT_SKIPPED
    captured = capsys.readouterr()
    _check_skip_report(captured.err, "evaluate-gender", bad, reference["n_images"] + len(bad))
    metrics = json.loads(captured.out)
    assert json.loads(out.read_text()) == metrics
    assert metrics["n_skipped"] == len(bad) and metrics["n_images"] == reference["n_images"]
    assert {Path(p): reason for p, reason in metrics["skipped"].items()}.keys() == bad.keys()
    assert metrics["confusion_matrix"] == reference["confusion_matrix"]
    for key in ("balanced_accuracy", "roc_auc"):
        assert metrics[key] == pytest.approx(reference[key]), key
    assert cli.main([*args, str(root), "--no-distortions", "--strict"]) == 2
    assert "cut.jpg" in _one_line_error(capsys)


def test_evaluate_recognition_skips_bad_images(recognition_checkpoint: Path, demo_root: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    args = ["evaluate-recognition", str(recognition_checkpoint)]
    assert cli.main([*args, str(demo_root), "--json"]) == 0
    reference = json.loads(capsys.readouterr().out)
    root = tmp_path / "root"
    shutil.copytree(demo_root / "Task_B" / "val", root / "Task_B" / "val")
    identity = sorted((root / "Task_B" / "val").iterdir())[0]
    probe = sorted((identity / "distortion").glob("*.jpg"))[0]
    (identity / "distortion" / "Extra_0002_blurred.jpg").write_bytes(probe.read_bytes()[:100])  # source: the next
    (identity / "Extra_0002.jpg").write_bytes(b"")
    bad = {(identity / "distortion" / "Extra_0002_blurred.jpg"): "truncated JPEG",
           (identity / "Extra_0002.jpg"): "zero-byte"}
    assert cli.main([*args, str(root), "--json"]) == cli.EXIT_SKIPPED
    captured = capsys.readouterr()
    _check_skip_report(captured.err, "evaluate-recognition", bad, reference["n_images"] + len(bad))
    metrics = json.loads(captured.out)
    assert metrics["n_skipped"] == 2 and set(map(Path, metrics["skipped"])) == set(bad)
    for key in ("top1", "roc_auc", "strict_top1", "n_probes", "n_gallery"):
        assert metrics[key] == pytest.approx(reference[key], nan_ok=True), key
    assert cli.main([*args, str(root), "--strict"]) == 2
    err = _one_line_error(capsys)  # the first in scan order: the clean image sorts before distortion/
    assert "Extra_0002.jpg" in err and "zero-byte" in err
