"""Run folders written before the package moved into concept folders keep working.

The previous layout's code is the commit before the move (:data:`PREVIOUS_LAYOUT`), read from git
history (``git archive``; skipped where the history is absent, e.g. a shallow clone). Once per session its
own notebooks 02 and 03 write a tiny run of each task (backbone ``test_efficientnet``, ``pretrained=None``,
32 px, one epoch, ``face_cv_folds=2`` for Task A, ``embedding_dim=32`` for Task B) on a default
``facecom make-demo`` dataset, and its own command line evaluates them::

    facecom evaluate-gender .../gender/checkpoints/best.pt DEMO --json --out eval_gender.json
    facecom evaluate-recognition .../recognition DEMO --json --out eval_rec.json

Today's code must load those files (checkpoints, ``face_tracks.pt``, embeddings, ``metrics.json``) and give
the same numbers, and notebook 04 must analyse the old recognition run. Nothing is written into the
repository: no model or array file is kept in git.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import papermill as pm
import pytest

from conftest import REPO_ROOT
from facecom_utils.cli.commands import main
from facecom_utils.data.demo import make_demo_dataset
from facecom_utils.reporting.execution import is_kernel_start_failure, start_with_retries

pytestmark = pytest.mark.slow  # the old code's two notebooks and evaluations, then today's: about 3 min on 2 cores

PREVIOUS_LAYOUT = "37bc16e8e5753fd43ebb53ff15053c3f1941eafe"  # the last commit with the flat package
OLD_NOTEBOOKS = {  # what the old notebooks ran with, beside data_root and output_dir
    "02_gender_classification": {"backbone": "test_efficientnet", "pretrained": None, "image_size": 32, "epochs": 1,
                                 "face_cv_folds": 2},
    "03_arcface_recognition": {"backbone": "test_efficientnet", "pretrained": None, "image_size": 32, "epochs": 1,
                               "embedding_dim": 32},
}
TOLERANCE = 1e-6
# The old and today's code run on the same CPU here, but the old command line embeds in a process of its own:
# a CPU's kernels (e.g. ATEN_CPU_CAPABILITY=default) can move the embeddings' last float32 bits. Two
# kinds of number then move by a few 1e-6 (measured: oracle thresholds by 2e-6 and 4e-6, the strict
# ROC AUC by 3e-6) without anything being wrong: a threshold read off this split's own scores
# (``oracle_threshold``), and a pair-ranking statistic, where a near-tied genuine/impostor pair that
# swaps moves the value by 1 / (n_genuine * n_impostor) ~ 1e-6. They hold to SCORE_TOLERANCE (a few
# such swaps; a real change moves them by far more); every other number, counts and rates, to 1e-6.
SCORE_TOLERANCE = 2e-5
SCORE_FIELDS = ("oracle_threshold", "roc_auc", "average_precision")
# The one field of each saved output that names the evaluated input itself (the old run's copy
# lived elsewhere): a path, not a number, and legitimately different.
WHERE_FIELDS = {"eval_gender.json": "checkpoint", "eval_rec.json": "run_dir"}


@pytest.fixture(scope="module")
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A decoded-image cache of this module's own (notebook kernels inherit the variable)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACECOM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic demo (``facecom make-demo``'s), the data the old runs were made on."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo_synthetic")


def _old_code(tmp: Path) -> Path:
    """The previous layout's package and notebooks, extracted from git history into ``tmp``."""
    try:
        archive = subprocess.run(["git", "archive", PREVIOUS_LAYOUT, "facecom_utils", "notebooks"], cwd=REPO_ROOT,
                                 capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"git history with {PREVIOUS_LAYOUT[:7]} (the previous layout) is not available here")
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    return tmp


def _run_old(old: Path, args: list[str], cwd: Path) -> None:
    """A command with the previous layout's package first on the path (notebook kernels inherit it)."""
    env = {**os.environ, "PYTHONPATH": str(old), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def old_fixture(tmp_path_factory: pytest.TempPathFactory, default_demo: Path, isolated_cache: None) -> Path:
    """The old code's run folders (``gender/``, ``recognition/``) and its evaluations of them."""
    old = _old_code(tmp_path_factory.mktemp("previous_layout"))
    out = tmp_path_factory.mktemp("run_previous_layout")
    for (stem, params), name in zip(OLD_NOTEBOOKS.items(), ("gender", "recognition")):
        args = ["-m", "papermill", str(old / "notebooks" / f"{stem}.ipynb"), str(out / f"{stem}.ipynb"),
                "--no-progress-bar", "-k", "python3", "-p", "data_root", str(default_demo),
                "-p", "output_dir", str(out / name)]
        for key, value in params.items():
            args += ["-p", key, str(value)]
        start_with_retries(lambda _attempt, a=args: _run_old(old, a, old / "notebooks"),
                           retryable=lambda error: is_kernel_start_failure(str(error)))
    _run_old(old, ["-m", "facecom_utils", "evaluate-gender", str(out / "gender" / "checkpoints" / "best.pt"),
                   str(default_demo), "--json", "--out", str(out / "eval_gender.json")], out)
    _run_old(old, ["-m", "facecom_utils", "evaluate-recognition", str(out / "recognition"), str(default_demo),
                   "--json", "--out", str(out / "eval_rec.json")], out)
    return out


@pytest.fixture
def old_runs(old_fixture: Path, tmp_path: Path) -> Path:
    """A writable copy of the old code's runs."""
    return Path(shutil.copytree(old_fixture, tmp_path / "run_previous_layout"))


def _flatten(value: Any, key: str = "") -> dict[str, Any]:
    """``{"/a/b[0]": leaf}`` of a JSON document."""
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in _flatten(item, f"{key}/{name}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{key}[{i}]").items()}
    return {key: value}


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, saved, now)`` of every leaf that differs: numbers beyond their tolerance, anything else at all."""
    old, new = _flatten(saved), _flatten(now)
    out = [(key, old.get(key, "<missing>"), new.get(key, "<missing>")) for key in sorted(set(old) ^ set(new))]
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        tolerance = SCORE_TOLERANCE if key.endswith(SCORE_FIELDS) else TOLERANCE
        if not (a == b or numbers and abs(a - b) <= tolerance):
            out.append((key, a, b))
    return out


def _evaluate(command: str, run: Path, data_root: Path, out: Path) -> dict[str, Any]:
    """Today's ``facecom <command> RUN DATA_ROOT --json --out OUT``, in this process."""
    assert main([command, str(run), str(data_root), "--json", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_todays_cli_gives_the_old_numbers(old_runs: Path, default_demo: Path, isolated_cache: None,
                                          tmp_path: Path) -> None:
    """Every number of the old ``evaluate-gender`` / ``evaluate-recognition`` output, to 1e-6 (see SCORE_FIELDS)."""
    now = {
        "eval_gender.json": _evaluate("evaluate-gender", old_runs / "gender" / "checkpoints" / "best.pt",
                                      default_demo, tmp_path / "gender.json"),
        "eval_rec.json": _evaluate("evaluate-recognition", old_runs / "recognition", default_demo,
                                   tmp_path / "rec.json"),
    }
    for name, field in WHERE_FIELDS.items():
        saved = json.loads((old_runs / name).read_text())
        assert Path(saved.pop(field)).name == Path(now[name].pop(field)).name, name
        assert not _differences(saved, now[name]), (name, _differences(saved, now[name])[:10])
    assert now["eval_rec.json"]["track"] == "fused" and now["eval_rec.json"]["n_probes"] == 252


def test_the_old_gender_run_folder_scores_its_fused_head_as_the_notebook_did(
        old_runs: Path, default_demo: Path, isolated_cache: None, tmp_path: Path) -> None:
    """The old run folder (not only its best.pt): today's code loads the old face_tracks.pt and its headline
    (fused) head gives, on the reported split, the numbers the old notebook 02 recorded for that track."""
    recorded = json.loads((old_runs / "gender" / "metrics.json").read_text())
    assert recorded["headline_track"] == "fused"
    now = _evaluate("evaluate-gender", old_runs / "gender", default_demo, tmp_path / "gender_run.json")
    for key in ("accuracy", "balanced_accuracy", "recall_female", "precision_female", "roc_auc", "threshold"):
        assert now[key] == pytest.approx(recorded["tracks"]["fused"][key], abs=1e-6), key


def _move_data_root(run: Path, old: str, new: Path) -> None:
    """Points a Task B run folder's files at another copy of its data (what moving a dataset asks for).

    ``metrics.json`` names the data root; the embeddings' CSV and NPZ files name every image.
    """
    for path in (run / "metrics.json", *sorted((run / "embeddings").glob("*.csv"))):
        path.write_text(path.read_text().replace(old, str(new)))
    for path in sorted((run / "embeddings").glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            emb, paths = data["embeddings"], data["path"]
        np.savez(path, embeddings=emb, path=np.array([p.replace(old, str(new)) for p in paths.tolist()]))


def test_notebook_04_analyses_the_old_recognition_run(old_runs: Path, default_demo: Path, isolated_cache: None,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Notebook 04 on the old run, its dataset moved to another folder: its recommendation is the run's own fold
    thresholds, its TAR / FAR the run's."""
    run = old_runs / "recognition"
    moved = Path(shutil.copytree(default_demo, tmp_path / "moved_demo"))
    _move_data_root(run, str(default_demo), moved)
    saved = json.loads((run / "metrics.json").read_text())
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out_dir = tmp_path / "04_threshold_analysis"
    start_with_retries(lambda _attempt: pm.execute_notebook(
        str(REPO_ROOT / "notebooks" / "04_threshold_analysis.ipynb"), str(tmp_path / "04.ipynb"),
        kernel_name="python3", progress_bar=False, cwd=str(REPO_ROOT / "notebooks"),
        parameters={"run_dir": str(run), "output_dir": str(out_dir)}),
        retryable=lambda error: is_kernel_start_failure(str(error)))
    m = json.loads((out_dir / "metrics.json").read_text())

    numbers = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numbers and all(math.isfinite(v) for v in numbers.values()), numbers
    assert m["track"] == saved["headline_track"] == "fused" and m["data_root"] == str(moved)
    track = saved["tracks"]["fused"]  # the headline track's numbers (also the top-level ones)
    # The recommendation is the threshold notebook 03 chose on the fold for that track, unchanged.
    assert m["recommended_threshold"] == pytest.approx(track["threshold"], abs=1e-12)
    assert m["strict_recommended_threshold"] == pytest.approx(track["strict_threshold"], abs=1e-12)
    assert (track["threshold"], track["strict_threshold"]) == (saved["threshold"], saved["strict_threshold"])
    assert m["threshold_fold_mean"] == pytest.approx(track["threshold_details"]["threshold"], abs=1e-12)
    assert m["threshold_fold_std"] == pytest.approx(track["threshold_details"]["threshold_std"], abs=1e-12)
    # At it, the reported split's TAR is the run's match recall (every genuine pair is a match pair),
    # the FAR the share of all impostor scores accepted, and the balanced-pair numbers the run's.
    for prefix in ("", "strict_"):
        assert m[f"{prefix}tar_at_recommended"] == pytest.approx(track[f"{prefix}match_recall"], abs=1e-12)
        assert m[f"{prefix}n_genuine"] == track[f"{prefix}n_genuine"]
        assert m[f"{prefix}n_impostor"] == track[f"{prefix}n_impostor"]
        assert 0 < m[f"{prefix}far_at_recommended"] < 1
        assert m[f"{prefix}far_at_recommended"] == pytest.approx(
            m[f"{prefix}false_accepts"] / m[f"{prefix}n_impostor"], abs=1e-12)
        assert m[f"{prefix}min_resolvable_far"] == pytest.approx(1 / m[f"{prefix}n_impostor"], abs=1e-12)
        for key in ("match_accuracy", "match_f1_macro", "oracle_threshold"):
            assert m[f"{prefix}{key}"] == pytest.approx(track[f"{prefix}{key}"], abs=1e-12), prefix + key


def test_run_dir_loads_the_old_tracks_files(old_runs: Path) -> None:
    """``RunDir.load_tracks`` reads the ``face_tracks.pt`` the old code wrote (before RunDir owned the file)."""
    from facecom_utils.train.rundir import RunDir

    for task in ("recognition", "gender"):
        payload = RunDir(old_runs / task).load_tracks(task)
        assert payload["task"] == task and payload["headline"] == "fused"
    with pytest.raises(ValueError, match=r"face_tracks.pt: holds 'gender' tracks, not 'recognition'"):
        RunDir(old_runs / "gender").load_tracks("recognition")
