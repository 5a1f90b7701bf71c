"""facecom_utils.reporting.eda: count tables, pixel statistics, perceptual hashes and the leakage check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image, ImageEnhance

from conftest import FACECOM_ROOT, requires_facecom
from facecom_utils.reporting import eda


@pytest.fixture(scope="module")
def tables(demo_root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return eda.load_tables(demo_root)


def _smooth(seed: int = 0, size: int = 64) -> Image.Image:
    """A smooth random image with structure at several scales (deterministic)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


# ------------------------------------------------------------------ hashes


@pytest.mark.parametrize("fn", [eda.phash, eda.dhash])
@pytest.mark.parametrize("hash_size", [8, 16])
def test_hash_shape_and_determinism(fn, hash_size: int) -> None:
    bits = fn(_smooth(), hash_size)
    assert bits.dtype == bool and bits.shape == (hash_size * hash_size,)
    assert np.array_equal(bits, fn(_smooth(), hash_size))


def _clean_images(task_b: pd.DataFrame, n: int) -> list[Image.Image]:
    clean = task_b[task_b["distortion"] == "clean"].drop_duplicates("identity").head(n)
    return [Image.open(p).convert("RGB") for p in clean["path"]]


def _near_copy(image: Image.Image, path: Path) -> Path:
    w, h = image.size
    edited = ImageEnhance.Brightness(image.resize((w * 7 // 8, h * 7 // 8)).resize((w, h))).enhance(1.05)
    edited.save(path, quality=70)
    return path


def test_phash_is_robust_to_mild_edits_and_separates_different_faces(tables, tmp_path: Path) -> None:
    image, other = _clean_images(tables[1], 2)
    edited = Image.open(_near_copy(image, tmp_path / "copy.jpg"))
    h = np.packbits(np.stack([eda.phash(image, 16), eda.phash(edited, 16), eda.phash(other, 16)]), axis=1)
    d = eda.hamming_distances(h, h)
    assert d[0, 1] <= 16, "a resized, brightened, recompressed copy must stay a near-duplicate"
    assert d[0, 2] > 16, "another person's face must not"


def test_hamming_distances_match_a_bit_count() -> None:
    rng = np.random.default_rng(0)
    bits_a = rng.random((5, 64)) > 0.5
    bits_b = rng.random((7, 64)) > 0.5
    expected = (bits_a[:, None, :] != bits_b[None, :, :]).sum(-1)
    got = eda.hamming_distances(np.packbits(bits_a, axis=1), np.packbits(bits_b, axis=1))
    assert np.array_equal(got, expected)


def test_near_duplicate_pairs_chunked_equals_unchunked_and_within_set_counts_each_pair_once() -> None:
    rng = np.random.default_rng(1)
    bits = rng.random((30, 64)) > 0.5
    bits[7] = bits[3]
    bits[20] = bits[3]
    bits[20, :2] = ~bits[20, :2]  # 2 bits away
    packed = np.packbits(bits, axis=1)
    whole = eda.near_duplicate_pairs(packed, None, max_distance=4, chunk_size=1000)
    chunked = eda.near_duplicate_pairs(packed, None, max_distance=4, chunk_size=4)
    pd.testing.assert_frame_equal(whole, chunked)
    assert set(zip(whole["i"], whole["j"])) == {(3, 7), (3, 20), (7, 20)}
    assert whole.iloc[0]["distance"] == 0


def test_hash_images_finds_a_planted_duplicate_file(tables, tmp_path: Path) -> None:
    images = _clean_images(tables[1], 4)
    paths = []
    for k, image in enumerate(images):
        paths.append(tmp_path / f"img{k}.png")
        image.save(paths[-1])
    paths.append(_near_copy(images[2], tmp_path / "dup.jpg"))
    pairs = eda.near_duplicate_pairs(eda.hash_images(paths), None, max_distance=16)
    assert [(int(i), int(j)) for i, j in zip(pairs["i"], pairs["j"])] == [(2, 4)]


def test_unknown_hash_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="phash"):
        eda.hash_images([], kind="md5")


# ------------------------------------------------------------------ tables


def test_count_tables_add_up(tables) -> None:
    task_a, task_b = tables
    a = eda.task_a_counts(task_a)
    assert a["total"].sum() == len(task_a)
    assert (a["female"] + a["male"] == a["total"]).all()
    assert a.loc["train", "male_per_female"] == pytest.approx(a.loc["train", "male"] / a.loc["train", "female"], abs=0.01)
    b = eda.task_b_counts(task_b)
    assert b["total"].sum() == len(task_b)
    assert b.loc["train", "identities"] == task_b.loc[task_b["split"] == "train", "identity"].nunique()
    per_identity = eda.images_per_identity(task_b)
    assert per_identity["total"].sum() == len(task_b)


def test_image_properties_report_size_mode_and_statistics(tables) -> None:
    task_a, task_b = tables
    props = eda.image_properties(task_a, task_b, sample=3, seed=0)
    groups = task_a.groupby(["split", "label"]).ngroups + task_b.groupby(["split", "distortion"]).ngroups
    assert len(props) <= 3 * groups
    assert set(props["mode"]) == {"RGB"} and set(props["size"]) == {"64x64"}
    summary = eda.property_summary(props[props["task"] == "B"]).loc
    assert summary["lowlight", "brightness"] < summary["clean", "brightness"] < summary["sunny", "brightness"]
    assert summary["noisy", "sharpness"] > summary["blurred", "sharpness"]


def test_pixel_statistics_on_known_images() -> None:
    grey = Image.new("RGB", (16, 16), (100, 100, 100))
    stats = eda.pixel_statistics(grey)
    assert stats["brightness"] == pytest.approx(100, abs=0.01)
    assert stats["contrast"] == pytest.approx(0, abs=1e-4) and stats["sharpness"] == pytest.approx(0, abs=1e-4)
    assert eda.pixel_statistics(Image.new("RGB", (8, 8), (255, 255, 255)))["saturated_fraction"] == 1.0


# ------------------------------------------------------------------ leakage


def test_leakage_report_is_clean_on_the_demo(tables) -> None:
    task_a, task_b = tables
    report = eda.leakage_report(task_a, task_b)
    table = eda.leakage_table(report)
    assert table.loc["Task B identities in train and val", "found"] == 0
    assert table.loc["near-duplicate images across train/val", "found"] == 0


def test_leakage_report_finds_planted_overlap_and_duplicates(demo_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "leaky"
    shutil.copytree(demo_root, root)
    train_b = sorted(p for p in (root / "Task_B" / "train").iterdir() if p.is_dir())
    planted = train_b[0].name
    shutil.copytree(train_b[0], root / "Task_B" / "val" / planted)  # same identity on both sides
    renamed = root / "Task_B" / "val" / "Someone_Else"  # the same images under another name
    renamed.mkdir()
    clean = sorted(p for p in train_b[1].iterdir() if p.is_file())[0]
    shutil.copy(clean, renamed / "Someone_Else_0001.jpg")
    female_train = sorted((root / "Task_A" / "train" / "female").iterdir())[0]
    shutil.copy(female_train, root / "Task_A" / "val" / "female" / female_train.name)

    task_a, task_b = eda.load_tables(root)
    report = eda.leakage_report(task_a, task_b)
    assert planted in report["task_b_identity_overlap"]
    assert len(report["task_a_person_overlap"]) >= 1
    dups = report["cross_split_duplicates"]
    assert {"Someone_Else", planted} <= set(dups["name_a"]) | set(dups["name_b"])
    assert set(dups["task"]) == {"A", "B"}
    metrics = eda.eda_metrics(task_a, task_b, report)
    assert metrics["leakage"]["task_b_identity_overlap"] == 1
    assert metrics["leakage"]["cross_split_duplicates"] == len(dups)
    assert metrics["leakage"]["examples"]["cross_split_duplicates"]
    json.dumps(metrics)
    assert len(eda.leakage_examples(report)) >= 1
    fig = eda.plot_image_pairs(dups, "planted duplicates")
    assert isinstance(fig, Figure) and fig._suptitle.get_text() == "planted duplicates"


def test_label_conflicts() -> None:
    table = pd.DataFrame({"person": ["A_B", "A_B", "C_D"], "label": ["female", "male", "male"], "split": "train"})
    conflicts = eda.label_conflicts(table)
    assert conflicts["person"].tolist() == ["A_B"]


# ------------------------------------------------------------------ figures


def test_figures_are_titled_and_labelled(tables) -> None:
    task_a, task_b = tables
    props = eda.image_properties(None, task_b, sample=2)
    for fig in (
        eda.plot_class_balance(task_a),
        eda.plot_images_per_identity(task_b),
        eda.plot_property_distributions(props),
    ):
        assert isinstance(fig, Figure)
        for ax in fig.axes:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    grid = eda.plot_distortion_grid(task_b, n_identities=2)
    assert grid._suptitle is not None and len(grid.axes) == 2 * 8


@requires_facecom
@pytest.mark.realdata
def test_real_facecom_counts() -> None:
    task_a, task_b = eda.load_tables(FACECOM_ROOT)
    counts = eda.task_a_counts(task_a)
    assert (counts.loc["train", "female"], counts.loc["train", "male"]) == (303, 1623)
    assert counts.loc["train", "male_per_female"] == pytest.approx(5.36, abs=0.01)
    assert eda.task_b_counts(task_b).loc["train", "identities"] == 877
