"""The decoded-image cache, its dataset and the batch augmentation (tiny images, no training)."""

from __future__ import annotations

import math

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from facecom_utils.data.cache import (
    BatchAugment,
    CachedImageDataset,
    ImageCache,
    cache_key,
    cached_dataset,
    resolve_cache_mode,
)
from facecom_utils.data.layout import load_image, scan_task_a, scan_task_b
from facecom_utils.data.datasets import build_transforms, make_loader
from facecom_utils.recognition import build_recognition_transforms



@pytest.fixture
def paths(demo_root: Path) -> list[str]:
    return scan_task_a(demo_root, splits=("train",))["path"].tolist()[:12]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_memory_and_disk_caches_agree_and_disk_is_reused(paths, tmp_path):
    mem = ImageCache.build(paths, 32, mode="memory")
    disk = ImageCache.build(paths, 32, mode="disk", cache_dir=tmp_path)
    assert mem.array.shape == (len(paths), 3, 32, 32) and mem.array.dtype == np.uint8
    assert disk.file is not None and disk.file.parent == tmp_path and disk.built
    np.testing.assert_array_equal(mem.array, disk.array)
    again = ImageCache.build(paths, 32, mode="disk", cache_dir=tmp_path)
    assert not again.built and again.file == disk.file
    # a disk cache pickles as its file name (DataLoader workers re-map it)
    assert len(pickle.dumps(disk)) < 4096
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(disk)).array, mem.array)


def test_a_changed_file_never_reuses_a_stale_cache(paths, tmp_path):
    files = [Path(shutil.copy(p, tmp_path / f"{i}{Path(p).suffix}")) for i, p in enumerate(paths[:3])]
    key = cache_key(files, 32)
    assert cache_key(files, 48) != key and cache_key(files, 32, face_crop=0.9) != key
    first = ImageCache.build(files, 32, mode="disk", cache_dir=tmp_path / "c")
    shutil.copy(paths[5], files[1])  # new content, new size / mtime
    st = os.stat(files[1])
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_key(files, 32) != key
    second = ImageCache.build(files, 32, mode="disk", cache_dir=tmp_path / "c")
    assert second.built and second.file != first.file
    np.testing.assert_array_equal(second.array[1], ImageCache.build([files[1]], 32, mode="memory").array[0])


def test_cached_evaluation_images_equal_the_reference_transforms(demo_root):
    a_paths = scan_task_a(demo_root, splits=("train",))["path"].tolist()[:4]
    ds = CachedImageDataset(ImageCache.build(a_paths, 48, mode="memory"), normalize=True)
    ref = build_transforms(48, train=False)
    for i, p in enumerate(a_paths):
        assert torch.equal(ds[i][0], ref(load_image(p)))
    b_paths = scan_task_b(demo_root, splits=("train",))["path"].tolist()[:4]
    ds = CachedImageDataset(ImageCache.build(b_paths, 40, 0.85, "square", mode="memory"), normalize=True)
    ref = build_recognition_transforms(40, False, face_crop=0.85)
    for i, p in enumerate(b_paths):
        assert torch.equal(ds[i][0], ref(load_image(p)))


def test_training_batches_are_uint8_and_prerendered_distortions_are_seeded(paths):
    ds = cached_dataset(paths, list(range(len(paths))), 32, distortion_p=1.0, variants=2, mode="memory")
    assert ds.variants is not None and len(ds.variants) == 2 * len(paths)
    again = cached_dataset(paths, None, 32, distortion_p=1.0, variants=2, mode="memory")
    np.testing.assert_array_equal(ds.variants.array, again.variants.array)
    assert not np.array_equal(ds.variants.array[::2], ds.cache.array)
    x, y = next(iter(make_loader(ds, 4, train=True)))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
    # p=1: every served image is one of its pre-rendered variants
    torch.manual_seed(0)
    img, _ = ds[3]
    assert any(torch.equal(img, torch.from_numpy(np.array(ds.variants.array[3 * 2 + k]))) for k in range(2))
    onthefly = cached_dataset(paths, None, 32, distortion_p=1.0, variants=0, mode="memory")
    assert onthefly.variants is None and onthefly[0][0].dtype == torch.uint8


def test_batch_augment_shapes_determinism_and_identity():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    aug = BatchAugment(24, crop_scale=(0.5, 1.0))
    torch.manual_seed(1)
    a = aug(x)
    torch.manual_seed(1)
    b = aug(x)
    assert a.shape == (6, 3, 24, 24) and a.dtype == torch.float32 and torch.equal(a, b)
    plain = BatchAugment(crop_scale=(1, 1), ratio=(1, 1), flip_p=0, brightness=0, contrast=0, saturation=0, hue=0,
                         grayscale_p=0)
    torch.testing.assert_close(plain(x), BatchAugment(train=False)(x), atol=1e-4, rtol=0)
    flipped = BatchAugment(crop_scale=(1, 1), ratio=(1, 1), flip_p=1, brightness=0, contrast=0, saturation=0, hue=0,
                           grayscale_p=0)
    torch.testing.assert_close(flipped(x), torch.flip(plain(x), dims=[3]), atol=1e-4, rtol=0)
    gray = BatchAugment(crop_scale=(1, 1), ratio=(1, 1), flip_p=0, brightness=0, contrast=0, saturation=0, hue=0,
                        grayscale_p=1, mean=(0, 0, 0), std=(1, 1, 1))(x)
    torch.testing.assert_close(gray[:, 0], gray[:, 1])
    torch.testing.assert_close(gray[:, 1], gray[:, 2])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_batch_augment_fused_affine_equals_the_step_by_step_pipeline(dtype):
    """scale, colour map, clamp to [0, 1], normalise, done as one fused map: the same numbers."""
    aug = BatchAugment(20, crop_scale=(0.5, 1.0), brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05,
                       grayscale_p=0.3)
    x = torch.randint(0, 256, (16, 3, 28, 28), dtype=torch.uint8)
    x = x if dtype == torch.uint8 else x.float() / 255
    torch.manual_seed(3)
    fused = aug(x)
    torch.manual_seed(3)
    x01 = x.float() / 255 if dtype == torch.uint8 else x
    a, t = aug._colour_matrix(x01)
    y = aug._crop_flip(x01, 20)
    steps = torch.baddbmm(t, a, y.reshape(16, 3, -1)).clamp(0, 1).view(16, 3, 20, 20)
    steps = (steps - aug.mean) / aug.std
    assert (steps.amin() < (0 - 0.485) / 0.229 + 1e-3) and (steps.amax() > (1 - 0.406) / 0.225 - 1e-3)  # clamps hit
    torch.testing.assert_close(fused, steps, atol=2e-5, rtol=0)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training calls it inside the model's autocast
        under_amp = aug(x)
    assert under_amp.dtype == torch.float32
    torch.testing.assert_close(under_amp, fused, atol=0, rtol=0)


def test_resolve_cache_mode(tmp_path):
    assert resolve_cache_mode("off") == "off" and resolve_cache_mode(False) == "off"
    assert resolve_cache_mode("memory") == "memory"
    assert resolve_cache_mode("auto", tmp_path) == "disk"
    with pytest.raises(ValueError, match="cache must be"):
        resolve_cache_mode("sometimes")


@pytest.mark.parametrize("cache", ["off", "memory"])
def test_train_gender_with_and_without_the_cache_keeps_the_contract(demo_root, tmp_path, cache):
    from facecom_utils.gender.pipeline import GenderConfig, train_gender

    cfg = GenderConfig(data_root=str(demo_root), output_dir=str(tmp_path / cache), image_size=32, epochs=1,
                       batch_size=8, eval_batch_size=16, val_fraction=0.3, device="cpu", progress=False,
                       pretrained=None, evaluate_distortions=False, cache=cache)
    run = train_gender(cfg)
    assert {"balanced_accuracy", "roc_auc", "threshold", "train_seconds"} <= set(run.metrics)
    assert (tmp_path / cache / "checkpoints" / "best.pt").is_file()


def test_train_recognition_without_the_cache_keeps_the_contract(demo_root, tmp_path):
    """The reference data path (``cache="off"``); the cached default is what test_recognition runs."""
    from facecom_utils.recognition import RecognitionConfig, train_recognition

    cache = "off"

    cfg = RecognitionConfig(data_root=str(demo_root), output_dir=str(tmp_path / cache), image_size=32, epochs=1,
                            batch_size=8, embedding_dim=32, pretrained=None, max_identities=6, samples_per_epoch=32,
                            holdout_fraction=0.0, val_fraction=0.34, flip_tta=False, device="cpu", progress=False,
                            face_crop=0.85, cache=cache)
    run = train_recognition(cfg)
    assert {"top1", "strict_top1", "threshold", "train_seconds"} <= set(run.metrics)
    assert (tmp_path / cache / "checkpoints" / "best.pt").is_file()


def test_one_augmentation_spec_for_both_data_paths() -> None:
    """The per-image transforms and the on-device batch augmentation are built from the same recipe."""
    import torchvision.transforms as T

    from facecom_utils.data.datasets import AugmentSpec, build_transforms
    from facecom_utils.recognition import build_recognition_transforms

    spec = AugmentSpec.recognition((0.6, 1.0), 0.3)
    assert spec == AugmentSpec((0.6, 1.0), (0.85, 1.18), 0.5, 0.3, 0.3, 0.3, 0.03, 0.1)
    steps = {type(t): t for t in build_recognition_transforms(32, True, crop_scale=(0.6, 1.0), color_jitter=0.3).transforms}
    assert steps[T.RandomResizedCrop].scale == (0.6, 1.0) and steps[T.RandomResizedCrop].ratio == (0.85, 1.18)
    assert steps[T.ColorJitter].hue == (-0.03, 0.03) and steps[T.RandomGrayscale].p == 0.1
    no_jitter = build_recognition_transforms(32, True, color_jitter=0.0).transforms
    assert T.ColorJitter not in {type(t) for t in no_jitter}
    gender = {type(t): t for t in build_transforms(32, True).transforms}
    assert gender[T.RandomResizedCrop].scale == AugmentSpec().crop_scale and gender[T.RandomGrayscale].p == 0.05
    batch = BatchAugment.from_spec(32, spec)
    log_ratio = tuple(math.log(r) for r in spec.ratio)
    assert (batch.crop_scale, batch.log_ratio, batch.grayscale_p, batch.hue) == (spec.crop_scale, log_ratio, 0.1, 0.03)
    default = BatchAugment(32)
    assert (default.crop_scale, default.grayscale_p, default.hue) == (AugmentSpec().crop_scale, 0.05, 0.02)
