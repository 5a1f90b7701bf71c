"""Bad inputs of every command that takes a run folder or a file: one line naming the file and what was
expected, exit code 2, nothing written.

The cases: a missing run folder, a folder that is no run, another task's run folder or best.pt, a
truncated or foreign best.pt / face_tracks.pt, an unreadable image, an empty gallery, and for
``identify --gallery FILE`` a truncated or foreign gallery file and one enrolled with another run.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cli_runs import gender_run, recognition_run
from facecom_utils.cli import commands as cli

TASK = {"evaluate-gender": "gender", "predict-gender": "gender", "evaluate-recognition": "recognition",
        "identify": "recognition", "enroll": "recognition", "verify": "recognition"}
OTHER = {"gender": "recognition", "recognition": "gender"}


@pytest.fixture(scope="module")
def runs(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {"gender": gender_run(tmp_path_factory, demo_root), "recognition": recognition_run(tmp_path_factory, demo_root)}


@pytest.fixture(scope="module")
def images(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small good inputs: a gallery of two identities, probes, two images for verify, a bad JPEG."""
    root = tmp_path_factory.mktemp("inputs")
    val = demo_root / "Task_B" / "val"
    identities = sorted(d for d in val.iterdir() if d.is_dir())[:2]
    for identity in identities:
        shutil.copytree(identity, root / "gallery" / identity.name, ignore=shutil.ignore_patterns("distortion"))
        (root / "probes").mkdir(exist_ok=True)
        for image in sorted((identity / "distortion").glob("*.jpg"))[:2]:
            shutil.copy(image, root / "probes" / image.name)
    good = sorted((root / "gallery").rglob("*.jpg"))[0]
    (root / "bad").mkdir()
    (root / "bad" / "cut.jpg").write_bytes(good.read_bytes()[:300])
    (root / "empty_gallery" / "Nobody").mkdir(parents=True)
    return {"root": root, "gallery": root / "gallery", "probes": root / "probes", "good": good,
            "bad": root / "bad" / "cut.jpg", "empty_gallery": root / "empty_gallery", "demo": demo_root}


def argv(command: str, run: Path | str, images: dict[str, Path], out: Path, data: Path | None = None) -> list[str]:
    """A command line that would work with a good run folder."""
    run = str(run)
    demo = str(data or images["demo"])
    return {
        "evaluate-gender": ["evaluate-gender", run, demo, "--no-distortions", "--json", "-o", str(out)],
        "evaluate-recognition": ["evaluate-recognition", run, demo, "--json", "-o", str(out)],
        "predict-gender": ["predict-gender", run, str(images["probes"]), "-o", str(out)],
        "identify": ["identify", run, str(images["probes"]), "--gallery", str(images["gallery"]), "-o", str(out)],
        "enroll": ["enroll", run, str(images["gallery"]), "-o", str(out)],
        "verify": ["verify", run, str(images["good"]), str(images["probes"] / sorted(
            p.name for p in images["probes"].iterdir())[0]), "-o", str(out)],
    }[command]


def _run_copy(good: Path, tmp: Path) -> Path:
    """A run folder whose checkpoints/best.pt is a link to ``good``'s (files written into it replace it)."""
    copy = tmp / "run"
    (copy / "checkpoints").mkdir(parents=True)
    (copy / "checkpoints" / "best.pt").symlink_to(good / "checkpoints" / "best.pt")
    return copy


def _with_best(data: Callable[[Path], None]) -> Callable[[dict[str, Path], str, Path], tuple[Path, Path]]:
    def make(runs: dict[str, Path], task: str, tmp: Path) -> tuple[Path, Path]:
        run = _run_copy(runs[task], tmp)
        best = run / "checkpoints" / "best.pt"
        best.unlink()
        data(best)
        return run, best
    return make


def _with_tracks(data: Callable[[Path, str], None]) -> Callable[[dict[str, Path], str, Path], tuple[Path, Path]]:
    def make(runs: dict[str, Path], task: str, tmp: Path) -> tuple[Path, Path]:
        run = _run_copy(runs[task], tmp)
        data(run / "face_tracks.pt", task)
        return run, run / "face_tracks.pt"
    return make


def _truncated_torch(path: Path, task: str) -> None:
    torch.save({"task": task, "headline": "fused", "weights": torch.randn(4096)}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


#: case -> (build: (runs, task, tmp) -> (run argument, the file the message must name), message pattern)
RUN_CASES: dict[str, tuple[Callable[[dict[str, Path], str, Path], tuple[Path, Path]], str]] = {
    "missing run folder": (lambda runs, task, tmp: (tmp / "no_run",) * 2, "no such run folder or checkpoint"),
    "folder that is no run": (lambda runs, task, tmp: (tmp,) * 2, "not a run folder"),
    "other task's run folder": (lambda runs, task, tmp: (runs[OTHER[task]], runs[OTHER[task]] / "checkpoints" / "best.pt"),
                                r"a Task [AB] \(\w+\) checkpoint; `facecom [\w-]+` needs a Task [AB]"),
    "other task's best.pt": (lambda runs, task, tmp: (runs[OTHER[task]] / "checkpoints" / "best.pt",) * 2,
                             r"a Task [AB] \(\w+\) checkpoint; `facecom [\w-]+` needs a Task [AB]"),
    "truncated best.pt": (_with_best(lambda best: _truncated_torch(best, "gender")),
                          r"unreadable checkpoint \(.*truncated or not a torch file\); expected"),
    "foreign best.pt": (_with_best(lambda best: torch.save({"weights": torch.zeros(3)}, best)),
                        "not a facecom checkpoint .*; expected"),
    "truncated face_tracks.pt": (_with_tracks(_truncated_torch),
                                 r"not a readable tracks file, truncated .*; `facecom [\w-]+` needs a Task [AB]"),
    "another task's face_tracks.pt": (_with_tracks(lambda p, task: torch.save({"task": OTHER[task], "headline": "fused"}, p)),
                                      r"holds '\w+' tracks, not '\w+' ones; `facecom [\w-]+` needs a Task [AB]"),
    "foreign face_tracks.pt": (_with_tracks(lambda p, task: torch.save({"task": task}, p)),
                               r"not a tracks file \(no 'task' and 'headline' entries\); `facecom [\w-]+` needs"),
    "incomplete face_tracks.pt": (_with_tracks(lambda p, task: torch.save({"task": task, "headline": "fused"}, p)),
                                  r"not a Task [AB] \(\w+\) face_tracks.pt \(no (model|thresholds)\); expected"),
}


def _check_refused(code: int, capsys: pytest.CaptureFixture[str], names: Path | str, pattern: str, out: Path) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert str(names) in err and re.search(pattern, err), err
    assert not out.exists() and not any(out.parent.iterdir()), "a partial output was written"


@pytest.mark.parametrize("case", list(RUN_CASES))
@pytest.mark.parametrize("command", list(TASK))
def test_a_bad_run_folder_or_run_file_is_one_line(command: str, case: str, runs: dict[str, Path],
                                                  images: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    build, pattern = RUN_CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    run, named = build(runs, TASK[command], work)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "result"
    _check_refused(cli.main(argv(command, run, images, out)), capsys, named, pattern, out)


def test_a_truncated_best_pt_is_refused_by_name(runs: dict[str, Path], images: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The first megabyte of a real best.pt (a zip without its central directory)."""
    run = _run_copy(runs["recognition"], tmp_path)
    best = run / "checkpoints" / "best.pt"
    data = best.read_bytes()[: 1 << 20]
    best.unlink()
    best.write_bytes(data)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "result.csv"
    _check_refused(cli.main(argv("identify", run, images, out)), capsys, best, "unreadable checkpoint", out)


def _bad_image_root(images: dict[str, Path], task: str, tmp: Path) -> Path:
    """A copy of the demo's ``<task>/val`` with one truncated image."""
    root = tmp / "data"
    shutil.copytree(images["demo"] / task / "val", root / task / "val")
    target = sorted((root / task / "val").rglob("*.jpg"))[0].parent / "Cut_0001.jpg"
    shutil.copy(images["bad"], target)
    return root


@pytest.mark.parametrize("command", list(TASK))
def test_an_unreadable_image_is_one_line(command: str, runs: dict[str, Path], images: dict[str, Path],
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Under --strict (and always for one verify pair, and for a run folder's evaluation)."""
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "result"
    run = runs[TASK[command]]
    if command.startswith("evaluate-"):
        args = argv(command, run, images, out, _bad_image_root(images, "Task_A" if "gender" in command else "Task_B", tmp_path))
        named = "Cut_0001.jpg"
    else:
        folder = tmp_path / "mixed"
        source = images["gallery"] if command == "enroll" else images["probes"]
        shutil.copytree(source, folder)
        bad = (next(p for p in folder.iterdir() if p.is_dir()) if command == "enroll" else folder) / "Cut_0001.jpg"
        shutil.copy(images["bad"], bad)
        args = argv(command, run, images, out)
        if command == "verify":
            args[3] = str(bad)
        else:
            args[2] = str(folder)
            args.append("--strict")
        named = bad
    _check_refused(cli.main(args), capsys, named, r"unreadable|truncated JPEG", out)


@pytest.mark.parametrize("command", ["identify", "enroll"])
def test_an_empty_gallery_is_one_line(command: str, runs: dict[str, Path], images: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "result"
    args = argv(command, runs["recognition"], images, out)
    args[args.index(str(images["gallery"]))] = str(images["empty_gallery"])
    _check_refused(cli.main(args), capsys, images["empty_gallery"], "empty gallery", out)


@pytest.fixture(scope="module")
def galleries(runs: dict[str, Path], images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A gallery file of the run, one of another run (its best.pt saved again with another threshold), a text file."""
    root = tmp_path_factory.mktemp("galleries")
    other = root / "other_run"
    (other / "checkpoints").mkdir(parents=True)
    payload = torch.load(runs["recognition"] / "checkpoints" / "best.pt", weights_only=True)
    payload["threshold"] = 0.5
    torch.save(payload, other / "checkpoints" / "best.pt")
    for name, run in (("own.pt", runs["recognition"]), ("other.pt", other)):
        assert cli.main(["enroll", str(run), str(images["gallery"]), "-o", str(root / name), "--device", "cpu"]) == 0
    (root / "notes.pt").write_text("not a gallery")
    torch.save({"paths": ["a.jpg"]}, root / "foreign.pt")
    data = (root / "own.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    return {"own": root / "own.pt", "other run": root / "other.pt", "text file": root / "notes.pt",
            "foreign": root / "foreign.pt", "truncated": root / "truncated.pt"}


GALLERY_CASES = {"other run": "enrolled with another run", "text file": "unreadable .*expected a gallery file",
                 "foreign": "not a gallery file; expected", "truncated": "unreadable .*expected a gallery file"}


@pytest.mark.parametrize("case", list(GALLERY_CASES))
def test_a_bad_gallery_file_is_one_line(case: str, runs: dict[str, Path], images: dict[str, Path],
                                        galleries: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "result.csv"
    args = ["identify", str(runs["recognition"]), str(images["probes"]), "--gallery", str(galleries[case]), "-o", str(out)]
    _check_refused(cli.main(args), capsys, galleries[case], GALLERY_CASES[case], out)
    assert cli.main([*args[:4], str(galleries["own"]), "-o", str(out)]) == 0  # the run's own file is fine
    capsys.readouterr()
