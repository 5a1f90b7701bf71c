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

from cli_runs import gender_run, recognition_run
from conftest import REPO_ROOT
from facecom_utils.cli import commands as cli


@pytest.fixture(scope="module")
def gender_checkpoint(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gender_run(tmp_path_factory, demo_root) / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def recognition_checkpoint(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return recognition_run(tmp_path_factory, demo_root) / "checkpoints" / "best.pt"


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


@pytest.mark.parametrize("command, key", [("evaluate-gender", "balanced_accuracy"), ("evaluate-recognition", "top1")])
def test_evaluate_takes_the_run_folder_or_its_best_pt(command: str, key: str, gender_checkpoint: Path,
                                                      recognition_checkpoint: Path, demo_root: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A run folder without face-model tracks runs its FACECOM-only model: the numbers of its best.pt."""
    best = gender_checkpoint if command == "evaluate-gender" else recognition_checkpoint
    extra = ["--no-distortions"] if command == "evaluate-gender" else ["--seed", "0"]
    found = {}
    for run in (best, best.parents[1]):
        assert cli.main([command, str(run), str(demo_root), "--json", *extra]) == 0
        found[run] = json.loads(capsys.readouterr().out)
    assert found[best][key] == pytest.approx(found[best.parents[1]][key], abs=1e-6)
    if command == "evaluate-recognition":
        assert found[best.parents[1]]["track"] == "facecom_only"
        assert found[best]["strict_top1"] == pytest.approx(found[best.parents[1]]["strict_top1"], abs=1e-6)


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
    assert list(rows[0])[:2] == ["path", "prediction"]
    identities = {d.name for d in gallery.iterdir() if d.is_dir()}
    assert [r["path"] for r in rows] == [str(p.resolve()) for p in probes]
    for row in rows:
        assert row["prediction"] in identities and row["decision"] in ("match", "no_match")
        assert -1.0 <= float(row["score"]) <= 1.0


def test_bad_inputs_get_one_line_errors(gender_checkpoint: Path, recognition_checkpoint: Path, demo_root: Path,
                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Data roots and image lists (the run folders and files: tests/test_cli_inputs.py)."""
    assert cli.main(["evaluate-gender", str(gender_checkpoint), str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in _one_line_error(capsys)
    assert cli.main(["evaluate-gender", str(gender_checkpoint), str(tmp_path)]) == 2  # no Task_A inside
    _one_line_error(capsys)
    text = tmp_path / "notes.txt"
    text.write_text("x")
    assert cli.main(["predict-gender", str(gender_checkpoint), str(text)]) == 2
    assert "not an image" in _one_line_error(capsys)
    assert cli.main(["identify", str(recognition_checkpoint), str(text), "--gallery", str(tmp_path / "g")]) == 2
    _one_line_error(capsys)
    assert cli.main(["identify", str(recognition_checkpoint)]) == 2  # a usage error is one line too
    assert "required: probes, --gallery" in _one_line_error(capsys)


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


SUBCOMMANDS = ("run", "train-gender", "train-recognition", "evaluate-gender", "evaluate-recognition", "predict-gender",
               "identify", "enroll", "verify", "make-demo", "split", "check-data")


def test_module_entry_point_help_and_version() -> None:
    done = subprocess.run([sys.executable, "-m", "facecom_utils", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for command in SUBCOMMANDS:
        assert command in done.stdout
    done = subprocess.run([sys.executable, "-m", "facecom_utils", "--version"], capture_output=True, text=True, timeout=120)
    from facecom_utils import __version__

    assert done.returncode == 0 and done.stdout.strip() == f"facecom {__version__}"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_help_has_an_example_and_the_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--help"]) == 0
    text = capsys.readouterr().out
    example = text.split("example", 1)[1].split("exit codes:")[0]
    assert f"facecom {command}" in example or f"$(which facecom) {command}" in example, text
    codes = text.split("exit codes:", 1)[1]
    for code in ("0", "2"):
        assert f"\n  {code} " in codes, (command, codes)
    if command not in ("run", "train-gender", "train-recognition", "make-demo", "split", "check-data"):
        assert "RUN_DIR" in text.split("positional arguments:")[1].split("options:")[0]  # the run folder comes first


def test_preset_and_param_mean_the_same_in_run_and_train(tmp_path: Path) -> None:
    """--preset takes a name or a file and -p/--param/--parameter one override, in every subcommand."""
    from facecom_utils.cli.launch import preset_files_of
    from facecom_utils.cli.options import preset_paths

    parser = cli.build_parser()
    own = tmp_path / "mine.yml"
    own.write_text("epochs: 2\n")
    for command in ("run", "train-gender", "train-recognition"):
        for spelling in ("-p", "--param", "--parameter"):
            args = parser.parse_args([command, "--preset", "facecom_cpu", "--preset", str(own), spelling, "epochs", "3",
                                      "-f", str(own)])
            assert args.parameter == [["epochs", "3"]] and args.preset == ["facecom_cpu", str(own)], (command, spelling)
            assert args.parameters_file == [str(own)]
        old = parser.parse_args([command, "--parameters-file", str(own)])  # the runner's old spelling
        assert old.parameters_file == [str(own)]
    args = parser.parse_args(["train-gender", "--preset", "facecom_cpu", "--preset", str(own)])
    named = str(REPO_ROOT / "params" / "02_gender_classification" / "facecom_cpu.yml")
    assert preset_files_of("train-gender", args) == [named, str(own)]
    assert preset_paths(["facecom_cpu"], [], "02,03") == [
        named, str(REPO_ROOT / "params" / "03_arcface_recognition" / "facecom_cpu.yml")]
    with pytest.raises(cli.CliError, match="no preset 'nonesuch'"):
        preset_paths(["nonesuch"], [], "02")
    with pytest.raises(cli.CliError, match="preset file not found"):
        preset_paths([str(tmp_path / "gone.yml")], [], "02")


def test_run_hands_the_runner_preset_names_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`facecom run --preset FILE` is `-f FILE`; a name stays a name (the runner resolves it, or picks one)."""
    from facecom_utils.reporting import runner

    seen = {}
    monkeypatch.setattr(runner, "run_from_args", lambda args: seen.update(vars(args)) or 0)
    own = tmp_path / "mine.yml"
    own.write_text("epochs: 2\n")
    assert cli.main(["run", "--notebooks", "03", "--preset", str(own), "--preset", "facecom_cpu", "-f", str(own),
                     "--param", "epochs", "1"]) == 0
    assert seen["preset"] == ["facecom_cpu"] and seen["parameters_file"] == [str(own), str(own)]
    assert seen["parameter"] == [["epochs", "1"]]
    assert cli.main(["run", "--preset", str(tmp_path / "gone.yml")]) == 2
    assert "gone.yml: preset file not found" in _one_line_error(capsys)


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
