"""Tests for facecom_utils.data.distortions: direction of change, determinism, and FACECOM statistics."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecom_utils.data.layout import DISTORTION_TYPES
from facecom_utils.data.distortions import (
    DISTORTIONS,
    FACECOM_REFERENCE,
    STATISTICS,
    RandomFacecomDistortion,
    apply_distortion,
    distortion_statistics,
)

from conftest import FACECOM_ROOT, requires_facecom


def _textured_image(size: int = 64, seed: int = 0) -> Image.Image:
    """A mid-grey image with smooth colour gradients and some fine texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([90 + 80 * x, 100 + 60 * y, 120 - 50 * x * y], axis=-1)
    texture = rng.normal(0, 4, (size, size, 1)).astype(np.float32)
    checker = 25.0 * (((np.arange(size)[:, None] // 4 + np.arange(size)[None, :] // 4) % 2) - 0.5)
    arr = np.clip(base + texture + checker[..., None], 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return _textured_image()


def _stats(kind: str, image: Image.Image, severity: float = 1.0) -> dict[str, float]:
    return distortion_statistics(image, apply_distortion(image, kind, severity, rng=0))


def test_registry_matches_types() -> None:
    assert tuple(DISTORTIONS) == DISTORTION_TYPES
    assert set(FACECOM_REFERENCE) == set(DISTORTION_TYPES)


@pytest.mark.parametrize("kind", DISTORTION_TYPES)
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_size_and_mode_kept(kind: str, mode: str) -> None:
    img = _textured_image(48).resize((48, 40)).convert(mode)
    out = apply_distortion(img, kind, 1.0, rng=1)
    assert out.size == img.size and out.mode == img.mode
    assert out is not img


@pytest.mark.parametrize("kind", DISTORTION_TYPES)
def test_deterministic_for_a_seed(kind: str, image: Image.Image) -> None:
    a = np.asarray(apply_distortion(image, kind, 1.0, rng=7))
    b = np.asarray(apply_distortion(image, kind, 1.0, rng=np.random.default_rng(7)))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["foggy", "noisy", "rainy", "sunny"])
def test_seed_changes_random_types(kind: str, image: Image.Image) -> None:
    a = np.asarray(apply_distortion(image, kind, 1.0, rng=1))
    b = np.asarray(apply_distortion(image, kind, 1.0, rng=2))
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("kind", DISTORTION_TYPES)
def test_every_type_changes_the_image(kind: str, image: Image.Image) -> None:
    assert _stats(kind, image)["mean_abs_diff"] > 1.0


def test_direction_of_change(image: Image.Image) -> None:
    assert _stats("lowlight", image)["mean_brightness_delta"] < -40
    assert _stats("sunny", image)["mean_brightness_delta"] > 40
    assert _stats("foggy", image)["mean_brightness_delta"] > 10
    assert _stats("foggy", image)["contrast_ratio"] < 0.8
    assert _stats("blurred", image)["edge_energy_ratio"] < 0.7
    assert _stats("resized", image)["edge_energy_ratio"] < 0.9
    assert _stats("noisy", image)["edge_energy_ratio"] > 2.0
    assert _stats("rainy", image)["edge_energy_ratio"] > 1.5


@pytest.mark.parametrize("kind", DISTORTION_TYPES)
def test_severity_orders_strength(kind: str, image: Image.Image) -> None:
    weak = _stats(kind, image, 0.5)["mean_abs_diff"]
    strong = _stats(kind, image, 1.5)["mean_abs_diff"]
    assert strong > weak
    assert _stats(kind, image, 0.0)["mean_abs_diff"] < 2.0


def test_unknown_kind_and_bad_severity(image: Image.Image) -> None:
    with pytest.raises(KeyError, match="blurred"):
        apply_distortion(image, "snowy")
    with pytest.raises(ValueError):
        apply_distortion(image, "blurred", severity=-1.0)


def test_random_distortion_p0_is_identity(image: Image.Image) -> None:
    t = RandomFacecomDistortion(p=0.0, seed=0)
    for _ in range(5):
        assert t(image) is image


def test_random_distortion_p1_always_changes(image: Image.Image) -> None:
    t = RandomFacecomDistortion(p=1.0, severity_range=(0.8, 1.2), seed=0)
    ref = np.asarray(image, dtype=np.int16)
    for _ in range(20):
        out = t(image)
        assert out.size == image.size and out.mode == image.mode
        assert np.abs(np.asarray(out, dtype=np.int16) - ref).mean() > 0.5


def test_random_distortion_seeded_and_restricted(image: Image.Image) -> None:
    a = [np.asarray(RandomFacecomDistortion(p=0.5, seed=3)(image)) for _ in range(1)]
    b = [np.asarray(RandomFacecomDistortion(p=0.5, seed=3)(image)) for _ in range(1)]
    np.testing.assert_array_equal(a[0], b[0])
    only_dark = RandomFacecomDistortion(p=1.0, kinds=("lowlight",), seed=0)
    assert distortion_statistics(image, only_dark(image))["mean_brightness_delta"] < 0
    with pytest.raises(ValueError):
        RandomFacecomDistortion(kinds=("snowy",))
    with pytest.raises(ValueError):
        RandomFacecomDistortion(p=1.5)


def _jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=75)  # FACECOM's distorted files are quality-75 JPEGs
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


@requires_facecom
@pytest.mark.realdata
def test_statistics_match_facecom_bands() -> None:
    """At severity 1, each type's median statistics on FACECOM clean images fall in FACECOM's band."""
    folders = sorted(p for p in (FACECOM_ROOT / "Task_B" / "train").iterdir() if p.is_dir())
    cleans: list[Path] = []
    for folder in folders[:: max(1, len(folders) // 40)][:40]:
        cleans.extend(sorted(folder.glob("*.jpg"))[:1])
    images = [Image.open(p).convert("RGB") for p in cleans]
    rng = np.random.default_rng(0)
    failures = []
    for kind in DISTORTION_TYPES:
        values = {name: [] for name in STATISTICS}
        for img in images:
            for name, value in distortion_statistics(img, _jpeg(apply_distortion(img, kind, 1.0, rng))).items():
                values[name].append(value)
        for name in STATISTICS:
            median = float(np.median(values[name]))
            _, p10, p90 = FACECOM_REFERENCE[kind][name]
            if not p10 <= median <= p90:
                failures.append(f"{kind}.{name}: median {median:.3f} not in [{p10}, {p90}]")
    assert not failures, "\n".join(failures)
