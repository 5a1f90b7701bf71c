"""Tiny run folders on the demo for the command-line tests, each built once per test session.

The folders live under the session's base temporary folder, so the test modules that need the same
run (tests/test_cli.py, tests/test_cli_inputs.py, tests/test_gallery.py) share one build.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TINY = dict(backbone="resnet10t", pretrained=None, image_size=32, epochs=1, batch_size=16,
            device="cpu", progress=False, resume=False)
_DONE = ".built"


def _once(factory: pytest.TempPathFactory, name: str) -> tuple[Path, bool]:
    """``(folder, already built)``; a half-built folder from an interrupted build is cleared."""
    folder = factory.getbasetemp() / "cli_runs" / name
    if (folder / _DONE).is_file():
        return folder, True
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder, False


def gender_run(factory: pytest.TempPathFactory, demo_root: Path) -> Path:
    """A Task A run folder (FACECOM-only CNN, one epoch)."""
    from facecom_utils.gender.pipeline import GenderConfig, train_gender

    folder, built = _once(factory, "gender")
    if not built:
        train_gender(GenderConfig(data_root=str(demo_root), output_dir=str(folder), evaluate_distortions=False, **TINY))
        (folder / _DONE).touch()
    return folder


def recognition_run(factory: pytest.TempPathFactory, demo_root: Path, tracks: bool = False) -> Path:
    """A Task B run folder (one epoch); with ``tracks``, also notebook 03's face-model tracks (face_tracks.pt,
    headline ``fused``; about a minute and a half on two cores)."""
    from facecom_utils.recognition import RecognitionConfig, recognition_splits, train_recognition

    folder, built = _once(factory, "recognition_tracks" if tracks else "recognition")
    if not built:
        config = RecognitionConfig(data_root=str(demo_root), output_dir=str(folder), embedding_dim=32,
                                   samples_per_epoch=64, flip_tta=False, embedding_source="neck",
                                   face_model="auto" if tracks else False, **TINY)
        run = train_recognition(config)
        if tracks:
            from facecom_utils.recognition.face_tracks import run_recognition_tracks

            assert run_recognition_tracks(config, recognition_splits(config), run) is not None, "dlib is missing"
        (folder / _DONE).touch()
    return folder
