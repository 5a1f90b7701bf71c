"""The face front end: detection, 5 landmarks, similarity alignment, the fallback, the record cache.

The photo is scikit-image's astronaut (ships offline); FACECOM itself is only used when present.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("dlib")
pytest.importorskip("skimage")

from conftest import FACECOM_ROOT, requires_facecom  # noqa: E402

import facecom_utils.face.detect as face  # noqa: E402
from facecom_utils.face.detect import (  # noqa: E402
    DEFAULT_FALLBACK,
    FaceRecord,
    align_face,
    detect_faces,
    detection_rates,
    estimate_similarity,
    face_records,
    face_template,
    measure_fallback_box,
    warp_to_template,
)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="module")
def astronaut_record(astronaut: np.ndarray) -> FaceRecord:
    return detect_faces(astronaut)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def test_astronaut_face_and_landmarks(astronaut_record: FaceRecord) -> None:
    rec = astronaut_record
    assert rec.detected and rec.source == "detected" and rec.score > 0.5
    assert rec.image_size == (512, 512) and rec.landmarks.shape == (5, 2)
    x0, y0, x1, y1 = rec.box
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200  # her face, not the false positive lower left
    lm = rec.landmarks
    assert ((lm[:, 0] >= x0) & (lm[:, 0] <= x1) & (lm[:, 1] >= y0) & (lm[:, 1] <= y1)).all()
    assert lm[0, 0] > lm[1, 0] > lm[3, 0] > lm[2, 0]  # eye corners, image right to left
    assert lm[4, 1] > lm[:4, 1].max() + 10  # the nose base below the eyes
    assert lm[3, 0] < lm[4, 0] < lm[1, 0]  # ... and between them


def test_astronaut_alignment_puts_landmarks_on_the_template(astronaut, astronaut_record) -> None:
    crop, matrix = warp_to_template(astronaut, astronaut_record.landmarks, face_template(224), (224, 224))
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert np.abs(apply(matrix, astronaut_record.landmarks) - face_template(224)).max() < 4
    assert np.array_equal(align_face(Image.fromarray(astronaut), astronaut_record.landmarks), crop)
    again = detect_faces(crop)  # the aligned face is found again, its eyes where the template has them
    assert again.detected
    assert np.abs(again.landmarks[:4] - face_template(224)[:4]).max() < 6


def test_alignment_matches_dlibs_face_chip(astronaut, astronaut_record) -> None:
    import dlib

    rect = dlib.rectangle(*[int(v) for v in astronaut_record.box[:2]], *[int(v) - 1 for v in astronaut_record.box[2:]])
    shape = face._dlib_models("hog")[1](astronaut, rect)
    chip = dlib.get_face_chip(astronaut, shape, size=150, padding=0.25)
    ours = align_face(astronaut, astronaut_record.landmarks, size=150, padding=0.25)
    assert np.abs(chip.astype(float) - ours).mean() < 2  # same template and pixel convention


def test_warp_recovers_a_known_similarity() -> None:
    template = face_template(112, padding=0.25)
    angle, scale, shift = np.deg2rad(20.0), 1.3, np.array([31.0, -7.5])
    true = np.eye(3)
    true[:2, :2] = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    true[:2, 2] = shift  # image -> template
    source = apply(np.linalg.inv(true), template)
    yy, xx = np.mgrid[0:200, 0:220].astype(float)
    blobs = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5 ** 2)) for x, y in source)
    image = np.clip(blobs * 255, 0, 255).astype(np.uint8)
    warped, matrix = warp_to_template(image, source, template, (112, 112))
    np.testing.assert_allclose(matrix, true, atol=1e-9)
    for x, y in template:  # each dot's centroid lands on its template point
        x0, y0 = int(round(x)) - 5, int(round(y)) - 5
        window = warped[y0:y0 + 11, x0:x0 + 11].astype(float)
        wy, wx = np.mgrid[y0:y0 + 11, x0:x0 + 11]
        centre = np.array([(window * wx).sum(), (window * wy).sum()]) / window.sum()
        assert np.hypot(*(centre - (x, y))) < 1.0


def test_similarity_estimate_is_exact_and_refuses_degenerate_points() -> None:
    src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(estimate_similarity(src, 2 * src + 3), [[2, 0, 3], [0, 2, 3], [0, 0, 1]], atol=1e-12)
    with pytest.raises(ValueError, match="all equal"):
        estimate_similarity(np.ones((5, 2)), np.zeros((5, 2)))


def test_no_face_gets_the_fallback_and_still_aligns() -> None:
    grey = np.full((224, 224, 3), 128, dtype=np.uint8)
    rec = detect_faces(grey)
    assert not rec.detected and rec.source == "fallback" and np.isnan(rec.score)
    box, landmarks = DEFAULT_FALLBACK.in_image(224, 224)
    np.testing.assert_allclose(rec.box, box)
    np.testing.assert_allclose(rec.landmarks, landmarks)
    np.testing.assert_allclose(rec.relative_box, DEFAULT_FALLBACK.box)
    assert ((landmarks >= box[:2]) & (landmarks <= box[2:])).all()
    crop = align_face(grey, rec.landmarks, size=112)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    wide = detect_faces(np.full((100, 300, 3), 128, dtype=np.uint8))  # the fallback scales with the image
    np.testing.assert_allclose(wide.relative_box, DEFAULT_FALLBACK.box)


def test_measure_fallback_box_takes_medians_of_detections() -> None:
    def record(box, detected=True):
        box = np.asarray(box, float)
        lm = box[:2] + np.array([[0.8, 0.3], [0.6, 0.3], [0.2, 0.3], [0.4, 0.3], [0.5, 0.6]]) * (box[2:] - box[:2])
        return FaceRecord(detected, 1.0, tuple(box), lm, "detected" if detected else "fallback", (200, 100))

    fb = measure_fallback_box([record([40, 20, 120, 80]), record([60, 30, 140, 90]), record([50, 25, 130, 85]),
                               record([0, 0, 200, 100], detected=False)])
    np.testing.assert_allclose(fb.box, [0.25, 0.25, 0.65, 0.85])
    np.testing.assert_allclose(fb.landmarks[4], [0.5, 0.6])
    assert fb.n == 3
    with pytest.raises(ValueError, match="no detected face"):
        measure_fallback_box([record([0, 0, 1, 1], detected=False)])


@pytest.fixture
def images(tmp_path: Path, astronaut: np.ndarray) -> list[str]:
    paths = []
    face_img = Image.fromarray(astronaut).crop((120, 20, 320, 220)).resize((160, 160))
    for i, img in enumerate([face_img, Image.new("RGB", (64, 64), (128, 128, 128))]):
        paths.append(str(tmp_path / f"img{i}.png"))
        img.save(paths[-1])
    return paths


def test_records_are_cached_and_a_changed_file_misses(images, tmp_path, monkeypatch) -> None:
    calls = []
    real = face.detect_faces

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(face, "detect_faces", counting)
    first = face_records(images, cache_dir=tmp_path / "cache")
    assert len(calls) == 2 and [r.source for r in first] == ["detected", "fallback"]
    assert len(list((tmp_path / "cache").glob("faces_*.npz"))) == 1
    assert not list((tmp_path / "cache").glob(".*tmp"))

    def failing(*args, **kwargs):
        raise AssertionError("the second call must hit the cache")

    monkeypatch.setattr(face, "detect_faces", failing)
    second = face_records(images, cache_dir=tmp_path / "cache")
    for a, b in zip(first, second):
        assert (a.detected, a.source, a.box, a.image_size) == (b.detected, b.source, b.box, b.image_size)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
        assert a.score == b.score or (np.isnan(a.score) and np.isnan(b.score))

    monkeypatch.setattr(face, "detect_faces", counting)
    face_records(images, upsample=0, cache_dir=tmp_path / "cache")  # other settings: a miss
    assert len(calls) == 4
    Image.new("RGB", (64, 64), (90, 90, 90)).save(images[1])  # a changed file: a miss
    st = os.stat(images[1])
    os.utime(images[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    face_records(images, cache_dir=tmp_path / "cache")
    assert len(calls) == 6


def test_records_without_a_cache(images, tmp_path) -> None:
    recs = face_records(images, cache="off", cache_dir=tmp_path)
    assert [r.detected for r in recs] == [True, False] and not list(tmp_path.glob("faces_*"))


@pytest.mark.slow
def test_worker_processes_give_the_same_records(images, tmp_path) -> None:
    one = face_records(images, cache="off")
    two = face_records(images, workers=2, cache="off")
    assert [(r.box, r.source) for r in one] == [(r.box, r.source) for r in two]


@pytest.mark.slow
def test_cnn_detector_finds_the_face(astronaut, astronaut_record) -> None:
    crop = np.ascontiguousarray(astronaut[20:220, 120:320])  # MMOD finds faces of 80 px and more
    rec = detect_faces(crop, upsample=0, detector="cnn")
    assert rec.detected and rec.score > 0
    np.testing.assert_allclose(rec.landmarks + (120, 20), astronaut_record.landmarks, atol=4)


def test_detection_rates_per_type() -> None:
    table = pd.DataFrame({"distortion": [None, None, "sunny", "sunny", "noisy", "odd"]})
    scores = [2.0, 1.0, 0.5, np.nan, np.nan, 1.5]
    recs = [FaceRecord(not np.isnan(s), s, (0, 0, 1, 1), np.zeros((5, 2)), "x", (1, 1)) for s in scores]
    rates = detection_rates(table, recs)
    assert rates.index.tolist() == ["clean", "noisy", "sunny", "odd"]
    assert rates.loc["clean", "n"] == 2 and rates.loc["clean", "detected"] == 1.0
    assert rates.loc["clean", "median_score"] == 1.5
    assert rates.loc["sunny", "detected"] == 0.5 and np.isnan(rates.loc["noisy", "median_score"])
    with pytest.raises(ValueError, match="records"):
        detection_rates(table, recs[:2])


@pytest.mark.realdata
@requires_facecom
def test_facecom_clean_faces_sit_near_the_fallback() -> None:
    clean = sorted((FACECOM_ROOT / "Task_B" / "train").glob("*/*.jpg"))[::400][:4]
    recs = [detect_faces(Image.open(p).convert("RGB")) for p in clean]
    found = [r for r in recs if r.detected]
    assert len(found) >= 3
    for r in found:
        assert np.abs(r.relative_box - np.asarray(DEFAULT_FALLBACK.box)).max() < 0.15
