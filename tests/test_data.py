"""Tests of facecom_utils.data.layout: scanning FACECOM layouts, bad inputs, image loading, splits."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import FACECOM_ROOT, requires_facecom
from facecom_utils.data.splits import split_by_identity
from facecom_utils.data.layout import (
    central_crop,
    DISTORTION_TYPES,
    TASK_A_LAYOUT,
    TASK_B_LAYOUT,
    BadImageError,
    FacecomDataWarning,
    FacecomLayoutError,
    check_image,
    drop_unreadable,
    find_task_dir,
    image_problem,
    load_image,
    person_from_filename,
    scan_task_a,
    scan_task_b,
    screen_images,
    summarize,
)

# ----------------------------------------------------------------------------------------------
# tiny FACECOM-layout folders


def _save(path: Path, seed: int = 0, fmt: str | None = None, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def _jpeg_bytes(seed: int = 0) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        buf, "JPEG", quality=90
    )
    return buf.getvalue()


# Task B identities: (folder, clean stems). Both naming styles, one with 3 clean images.
IDENTITIES = {
    "Ann_Lee": ["Ann_Lee_0001", "Ann_Lee_0002"],
    "Bob_Day": ["Bob_Day_0001"],
    "Cy_Ott": ["Cy_Ott_0001", "Cy_Ott_0002", "Cy_Ott_0003"],
    "001_frontal": ["001_frontal"],
    "002_frontal": ["002_frontal"],
    "Di_Fox": ["Di_Fox_0001", "Di_Fox_0002"],
}
FEMALE = {"Ann_Lee", "Di_Fox"}


def make_root(root: Path, *, n_types: int = 7) -> Path:
    """A valid FACECOM root: Task_A/train + Task_B/train built from IDENTITIES (7 types each)."""
    seed = 0
    for identity, stems in IDENTITIES.items():
        label = "female" if identity in FEMALE else "male"
        for stem in stems:
            seed += 1
            clean = _save(root / "Task_B" / "train" / identity / f"{stem}.jpg", seed)
            (root / "Task_A" / "train" / label).mkdir(parents=True, exist_ok=True)
            (root / "Task_A" / "train" / label / clean.name).write_bytes(clean.read_bytes())
            for kind in DISTORTION_TYPES[:n_types]:
                _save(root / "Task_B" / "train" / identity / "distortion" / f"{stem}_{kind}.jpg", seed + 1000)
    return root


N_CLEAN = sum(len(v) for v in IDENTITIES.values())  # 10
N_FEMALE = sum(len(IDENTITIES[i]) for i in FEMALE)  # 4


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path / "facecom")


def _only_warning(record: list[warnings.WarningMessage]) -> str:
    ours = [w for w in record if issubclass(w.category, FacecomDataWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    return str(ours[0].message)


# ----------------------------------------------------------------------------------------------
# names and valid layouts


@pytest.mark.parametrize(
    "name, person",
    [
        ("First_Last_0001.jpg", "First_Last"),
        ("041_frontal.jpg", "041_frontal"),
        ("/a/b/Fazal-ur-Rehman_0001.JPG", "Fazal-ur-Rehman"),
        ("George_W_Bush_0236.jpg", "George_W_Bush"),
        ("First_Last_0001_blurred.jpg", "First_Last"),
        ("041_frontal_sunny.jpg", "041_frontal"),
        ("Cabas_0001.png", "Cabas"),
    ],
)
def test_person_from_filename(name: str, person: str) -> None:
    assert person_from_filename(name) == person


def test_scan_task_a_counts_columns_and_order(root: Path) -> None:
    df = scan_task_a(root)
    assert list(df.columns) == ["path", "split", "label", "person"]
    assert len(df) == N_CLEAN
    assert (df["label"] == "female").sum() == N_FEMALE
    assert set(df["split"]) == {"train"}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert set(df.loc[df["label"] == "female", "person"]) == FEMALE
    assert df.equals(df.sort_values(["split", "label", "path"]).reset_index(drop=True))
    # the Task_A folder itself works too, and a relative path comes back absolute
    assert scan_task_a(root / "Task_A").equals(df)
    cwd = os.getcwd()
    try:
        os.chdir(root)
        assert scan_task_a("Task_A")["path"].tolist() == df["path"].tolist()
    finally:
        os.chdir(cwd)


def test_scan_task_b_counts_sources_and_none(root: Path) -> None:
    df = scan_task_b(root)
    assert list(df.columns) == ["path", "split", "identity", "distortion", "source"]
    clean = df[df["distortion"].isna()]
    distorted = df[df["distortion"].notna()]
    assert len(clean) == N_CLEAN and len(distorted) == 7 * N_CLEAN
    assert df["identity"].nunique() == len(IDENTITIES)
    # None (object dtype), not NaN
    assert df["distortion"].dtype == object and df["source"].dtype == object
    assert all(v is None for v in clean["distortion"]) and all(v is None for v in clean["source"])
    # each distorted image points at the clean image of the same stem, in the same identity folder
    for path, identity, kind, source in distorted[["path", "identity", "distortion", "source"]].itertuples(index=False):
        assert Path(source).parent.name == identity
        assert Path(path).name == f"{Path(source).stem}_{kind}.jpg"
    assert distorted.groupby("distortion").size().to_dict() == {k: N_CLEAN for k in DISTORTION_TYPES}
    frontal = df[df["identity"] == "001_frontal"]
    assert sorted(Path(p).name for p in frontal["path"])[0] == "001_frontal.jpg"
    assert df.equals(df.sort_values(["split", "identity", "path"]).reset_index(drop=True))


def test_any_case_folders_and_extensions(tmp_path: Path) -> None:
    a = tmp_path / "Task_A" / "Train"
    _save(a / "FEMALE" / "X_0001.JPG", 1, fmt="JPEG")
    _save(a / "Female".lower().upper() / "X_0002.jpeg", 2, fmt="JPEG")
    _save(a / "Male" / "Y_0001.PNG", 3, fmt="PNG")
    _save(a / "Male" / "Y_0002.png", 4, fmt="PNG")
    df = scan_task_a(tmp_path)
    assert df["split"].tolist() == ["train"] * 4
    assert df["label"].value_counts().to_dict() == {"female": 2, "male": 2}

    b = tmp_path / "Task_B" / "TRAIN" / "Y"
    _save(b / "Y_0001.PNG", 5, fmt="PNG")
    _save(b / "Distortion" / "Y_0001_Foggy.JPEG", 6, fmt="JPEG")
    dfb = scan_task_b(tmp_path)
    row = dfb[dfb["distortion"].notna()].iloc[0]
    assert row["distortion"] == "foggy" and Path(row["source"]).name == "Y_0001.PNG"


def test_hidden_and_system_files_ignored(root: Path) -> None:
    junk = b"not an image at all"
    for folder in (root / "Task_A" / "train" / "female", root / "Task_B" / "train" / "Ann_Lee",
                   root / "Task_B" / "train" / "Ann_Lee" / "distortion"):
        (folder / ".DS_Store").write_bytes(junk)
        (folder / "Thumbs.db").write_bytes(junk)
        (folder / "._Ann_Lee_0001.jpg").write_bytes(junk)  # macOS resource fork, looks like an image
        (folder / ".ipynb_checkpoints").mkdir()
        (folder / ".ipynb_checkpoints" / "Ann_Lee_0001-checkpoint.jpg").write_bytes(junk)
    (root / "Task_B" / "train" / ".DS_Store").write_bytes(junk)
    (root / "Task_B" / "train" / ".ipynb_checkpoints").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silently ignored: no warning, no error
        assert len(scan_task_a(root)) == N_CLEAN
        dfb = scan_task_b(root)
    assert len(dfb) == 8 * N_CLEAN and dfb["identity"].nunique() == len(IDENTITIES)


def test_stray_file_is_ignored_with_a_warning(root: Path) -> None:
    stray = root / "Task_A" / "train" / "male" / "notes.txt"
    stray.write_text("hello")
    with pytest.warns(FacecomDataWarning, match="notes.txt"):
        assert len(scan_task_a(root)) == N_CLEAN


# ----------------------------------------------------------------------------------------------
# layout errors


def test_missing_class_folder(root: Path) -> None:
    import shutil

    shutil.rmtree(root / "Task_A" / "train" / "female")
    with pytest.raises(FacecomLayoutError) as err:
        scan_task_a(root)
    msg = str(err.value)
    assert str(root / "Task_A" / "train" / "female") in msg and TASK_A_LAYOUT in msg


def test_empty_class_folder(root: Path) -> None:
    male = root / "Task_A" / "train" / "male"
    for p in male.iterdir():
        p.unlink()
    (male / ".DS_Store").write_bytes(b"x")  # hidden files do not count as images
    with pytest.raises(FacecomLayoutError, match="no image") as err:
        scan_task_a(root)
    assert str(male) in str(err.value) and TASK_A_LAYOUT in str(err.value)


@pytest.mark.parametrize("scan, task", [(scan_task_a, "Task_A"), (scan_task_b, "Task_B")])
def test_wrong_root(tmp_path: Path, scan, task: str) -> None:
    (tmp_path / "photos").mkdir()
    _save(tmp_path / "photos" / "a.jpg")
    with pytest.raises(FacecomLayoutError) as err:
        scan(tmp_path)
    assert str(tmp_path) in str(err.value) and task in str(err.value)
    with pytest.raises(FacecomLayoutError, match="not a folder"):
        scan(tmp_path / "does_not_exist")


@pytest.mark.parametrize("scan, layout", [(scan_task_a, TASK_A_LAYOUT), (scan_task_b, TASK_B_LAYOUT)])
def test_task_folder_without_splits(tmp_path: Path, scan, layout: str) -> None:
    # the repository's own Task_A/ and Task_B/ hold only a README until the user adds FACECOM
    for task in ("Task_A", "Task_B"):
        (tmp_path / task).mkdir()
        (tmp_path / task / "README.md").write_text("put FACECOM here")
    with pytest.raises(FacecomLayoutError, match="no split folder") as err:
        scan(tmp_path)
    assert layout in str(err.value)


def test_missing_requested_split(root: Path) -> None:
    assert set(scan_task_b(root, splits=("train",))["split"]) == {"train"}
    with pytest.raises(FacecomLayoutError, match="split folder missing") as err:
        scan_task_b(root, splits=("train", "val"))
    assert str(root / "Task_B" / "val") in str(err.value)
    with pytest.raises(FacecomLayoutError, match="split folder missing"):
        scan_task_a(root, splits="val")


def test_split_without_identities(tmp_path: Path) -> None:
    (tmp_path / "Task_B" / "train").mkdir(parents=True)
    with pytest.raises(FacecomLayoutError, match="no identity folder") as err:
        scan_task_b(tmp_path)
    assert str(tmp_path / "Task_B" / "train") in str(err.value)


def test_find_task_dir_accepts_both_forms(root: Path) -> None:
    assert find_task_dir(root, "Task_B") == root / "Task_B"
    assert find_task_dir(root / "Task_B", "Task_B") == root / "Task_B"
    with pytest.raises(FacecomLayoutError):
        find_task_dir(root / "Task_B", "Task_A")


# ----------------------------------------------------------------------------------------------
# bad images


def _plant_bad_images(root: Path) -> dict[str, Path]:
    folder = root / "Task_B" / "train" / "Bob_Day"
    good = _jpeg_bytes(7)
    bad = {
        "corrupt": folder / "Bob_Day_0002.jpg",
        "zero": folder / "Bob_Day_0003.jpg",
        "truncated": folder / "distortion" / "Bob_Day_0001_noisy.jpg",
    }
    bad["corrupt"].write_bytes(b"\x00garbage, not a JPEG" * 20)
    bad["zero"].write_bytes(b"")
    bad["truncated"].write_bytes(good[: len(good) // 2])  # header intact, data and EOI cut off
    return bad


def test_bad_images_raise_naming_every_file(root: Path) -> None:
    bad = _plant_bad_images(root)
    with pytest.raises(BadImageError) as err:
        scan_task_b(root)
    msg = str(err.value)
    for path in bad.values():
        assert str(path) in msg
    assert "zero-byte" in msg and "truncated" in msg and "3 unreadable" in msg
    assert sorted(err.value.paths) == sorted(str(p) for p in bad.values())


def test_bad_images_skip_with_one_warning(root: Path) -> None:
    bad = _plant_bad_images(root)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        df = scan_task_b(root, on_error="skip")
    msg = _only_warning(record)
    assert "skipped 3" in msg
    for path in bad.values():
        assert str(path) in msg
    assert len(df) == 8 * N_CLEAN + 2 - 3  # two files added, exactly the three bad ones dropped
    assert not set(map(str, bad.values())) & set(df["path"])


def test_bad_task_a_image(root: Path) -> None:
    bad = root / "Task_A" / "train" / "female" / "Ann_Lee_0001.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(BadImageError, match="Ann_Lee_0001.jpg"):
        scan_task_a(root)
    with pytest.warns(FacecomDataWarning, match="Ann_Lee_0001.jpg"):
        assert len(scan_task_a(root, on_error="skip")) == N_CLEAN - 1


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda good: b"", "zero-byte"),
        (lambda good: b"hello world, I am text", "not a readable image"),
        (lambda good: good[: len(good) // 2], "truncated JPEG"),
        (lambda good: good[:40], "truncated JPEG"),
        (lambda good: good, None),
        (lambda good: good + b"\x00" * 16, None),  # zero padding after EOI is fine
    ],
)
def test_check_image_reasons(tmp_path: Path, make, reason: str | None) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(make(_jpeg_bytes()))
    result = check_image(path)
    assert result is None if reason is None else reason in result


def test_check_image_png_truncated(tmp_path: Path) -> None:
    path = _save(tmp_path / "x.png", fmt="PNG")
    assert check_image(path) is None
    path.write_bytes(path.read_bytes()[:-20])
    assert "truncated PNG" in check_image(path)


def test_decode_time_failure_raises_in_load_image(tmp_path: Path) -> None:
    data = bytearray(_jpeg_bytes())
    dht = data.find(b"\xff\xc4")
    data[dht + 4 : dht + 20] = b"\xff" * 16  # broken Huffman table: header + EOI fine, decoding fails
    path = tmp_path / "Task_A" / "train" / "female" / "Z_0001.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(data))
    _save(tmp_path / "Task_A" / "train" / "male" / "W_0001.jpg")
    assert len(scan_task_a(tmp_path)) == 2  # the cheap scan cannot see it...
    with pytest.raises(BadImageError) as err:  # ...loading names it
        load_image(path)
    assert str(path) in str(err.value) and err.value.paths == [str(path)]


def _decode_only_failure(path: Path) -> Path:
    """A JPEG whose header and end marker are fine but whose Huffman table is broken."""
    data = bytearray(_jpeg_bytes())
    dht = data.find(b"\xff\xc4")
    data[dht + 4 : dht + 20] = b"\xff" * 16
    path.write_bytes(bytes(data))
    return path


def test_image_problem_decodes_what_check_image_cannot_see(tmp_path: Path) -> None:
    path = _decode_only_failure(tmp_path / "z.jpg")
    assert check_image(path) is None
    assert image_problem(path).startswith("fails to decode")
    assert image_problem(_save(tmp_path / "ok.jpg")) is None
    (tmp_path / "zero.jpg").write_bytes(b"")
    assert image_problem(tmp_path / "zero.jpg") == "zero-byte file"


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "CMYK", "I;16", "P", "P-transparent", "1"])
def test_image_problem_accepts_every_mode_load_image_converts(tmp_path: Path, mode: str) -> None:
    img, fmt, _ = _mode_image(mode)
    path = tmp_path / f"img.{fmt.lower()}"
    img.save(path, format=fmt, **({"transparency": img.info["transparency"]} if "transparency" in img.info else {}))
    assert image_problem(path) is None


def _mixed_batch(folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Good images around a zero-byte file, a truncated JPEG, a text file and a decode-only failure."""
    folder.mkdir(parents=True, exist_ok=True)
    good = [_save(folder / f"good{k}.jpg", k) for k in range(3)]
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(_jpeg_bytes()[:300])
    (folder / "text.jpg").write_text("I am a text file")
    _decode_only_failure(folder / "broken.jpg")
    bad = {"zero.jpg": "zero-byte", "truncated.jpg": "truncated JPEG", "text.jpg": "not a readable image",
           "broken.jpg": "fails to decode"}
    paths = [good[0], folder / "zero.jpg", good[1], folder / "truncated.jpg", folder / "text.jpg",
             folder / "broken.jpg", good[2]]
    return paths, bad


def test_screen_images_skips_each_bad_file_with_a_warning(tmp_path: Path) -> None:
    paths, expected = _mixed_batch(tmp_path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        bad = screen_images(paths)
    assert list(bad) == [str(p) for p in paths if p.name in expected]  # input order
    for path, reason in bad.items():
        assert expected[Path(path).name] in reason
    messages = [str(w.message) for w in record if issubclass(w.category, FacecomDataWarning)]
    assert len(messages) == 4
    for message, (path, reason) in zip(messages, bad.items()):
        assert path in message and reason in message
    assert screen_images([p for p in paths if p.name.startswith("good")]) == {}


def test_screen_images_raise_stops_at_the_first(tmp_path: Path) -> None:
    paths, _ = _mixed_batch(tmp_path)
    with pytest.raises(BadImageError) as err:
        screen_images(paths, on_error="raise", what="gallery image")
    assert err.value.paths == [str(paths[1])]
    assert str(err.value).splitlines() == [f"{paths[1]}: unreadable gallery image: zero-byte file"]
    with pytest.raises(ValueError, match="on_error"):
        screen_images(paths, on_error="keep")


def test_drop_unreadable_keeps_distorted_rows_of_a_dropped_clean_image(root: Path) -> None:
    clean = root / "Task_B" / "train" / "Bob_Day" / "Bob_Day_0001.jpg"
    _decode_only_failure(clean)
    distorted = root / "Task_B" / "train" / "Bob_Day" / "distortion" / "Bob_Day_0001_noisy.jpg"
    distorted.write_bytes(b"")
    scanned = scan_task_b(root, on_error="keep")  # "keep": no check at all
    assert len(scanned) == 8 * N_CLEAN
    with pytest.warns(FacecomDataWarning):
        kept, bad = drop_unreadable(scanned)
    assert set(bad) == {str(clean), str(distorted)} and len(kept) == 8 * N_CLEAN - 2
    bob = kept[kept["identity"] == "Bob_Day"]
    assert len(bob) == 6 and bob["source"].isna().all() and list(kept.index) == list(range(len(kept)))
    assert drop_unreadable(kept)[1] == {}


@pytest.mark.parametrize("content", [b"", b"garbage" * 10])
def test_load_image_bad_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImageError, match="bad.jpg"):
        load_image(path)
    with pytest.raises(BadImageError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")


# ----------------------------------------------------------------------------------------------
# distortion naming problems


def test_unknown_distortion_suffix_warns(root: Path) -> None:
    odd = _save(root / "Task_B" / "train" / "Bob_Day" / "distortion" / "Bob_Day_0001_sepia.jpg", 5)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        df = scan_task_b(root)
    msg = _only_warning(record)
    assert str(odd) in msg and "unknown distortion suffix" in msg
    row = df[df["path"] == str(odd)].iloc[0]
    assert row["distortion"] == "sepia"
    assert row["source"] == str(root / "Task_B" / "train" / "Bob_Day" / "Bob_Day_0001.jpg")
    assert len(df) == 8 * N_CLEAN + 1


def test_missing_source_warns(root: Path) -> None:
    orphan = _save(root / "Task_B" / "train" / "Bob_Day" / "distortion" / "Bob_Day_0009_blurred.jpg", 5)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        df = scan_task_b(root)
    msg = _only_warning(record)
    assert str(orphan) in msg and "clean image" in msg
    row = df[df["path"] == str(orphan)].iloc[0]
    assert row["distortion"] == "blurred" and row["source"] is None
    assert df["source"].isna().sum() == N_CLEAN + 1  # the clean rows plus the orphan


def test_identity_without_clean_image_warns(root: Path) -> None:
    folder = root / "Task_B" / "train" / "Bob_Day"
    (folder / "Bob_Day_0001.jpg").unlink()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        df = scan_task_b(root)
    msg = _only_warning(record)  # one warning about the folder, not seven about its files
    assert str(folder) in msg and "no clean image" in msg
    bob = df[df["identity"] == "Bob_Day"]
    assert len(bob) == 7 and bob["source"].isna().all() and bob["distortion"].notna().all()
    assert summarize(df).loc[0, "identities_no_clean"] == 1


# ----------------------------------------------------------------------------------------------
# load_image


def _mode_image(mode: str) -> tuple[Image.Image, str, tuple[int, int, int]]:
    """(image, file format, expected RGB of pixel (0, 0))."""
    if mode == "L":
        return Image.new("L", (8, 8), 77), "PNG", (77, 77, 77)
    if mode == "RGBA":  # fully transparent red -> white background
        img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
        return img, "PNG", (255, 255, 255)
    if mode == "RGBA-half":  # half-transparent black over white -> mid grey
        return Image.new("RGBA", (8, 8), (0, 0, 0, 128)), "PNG", (127, 127, 127)
    if mode == "LA":
        return Image.new("LA", (8, 8), (0, 255)), "PNG", (0, 0, 0)
    if mode == "CMYK":
        return Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", (255, 0, 0)
    if mode == "I;16":
        arr = np.full((8, 8), 65535, dtype=np.uint16)
        return Image.fromarray(arr), "PNG", (255, 255, 255)
    if mode == "I;16-mid":
        arr = np.full((8, 8), 32896, dtype=np.uint16)  # 128 * 257
        return Image.fromarray(arr), "PNG", (128, 128, 128)
    if mode == "I":
        arr = np.full((8, 8), 65535, dtype=np.int32)
        return Image.fromarray(arr), "TIFF", (255, 255, 255)
    if mode == "P":
        img = Image.new("P", (8, 8), 1)
        img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        return img, "PNG", (10, 200, 30)
    if mode == "P-transparent":
        img = Image.new("P", (8, 8), 1)
        img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        img.info["transparency"] = 1
        return img, "PNG", (255, 255, 255)
    if mode == "1":
        return Image.new("1", (8, 8), 1), "PNG", (255, 255, 255)
    raise AssertionError(mode)


@pytest.mark.parametrize(
    "mode", ["L", "RGBA", "RGBA-half", "LA", "CMYK", "I;16", "I;16-mid", "I", "P", "P-transparent", "1"]
)
def test_load_image_modes_to_rgb8(tmp_path: Path, mode: str) -> None:
    img, fmt, expected = _mode_image(mode)
    path = tmp_path / f"img.{fmt.lower()}"
    save_kw = {"transparency": img.info["transparency"]} if "transparency" in img.info else {}
    img.save(path, format=fmt, **save_kw)
    out = load_image(path)
    arr = np.asarray(out)
    assert out.mode == "RGB" and arr.dtype == np.uint8 and arr.shape == (8, 8, 3)
    tolerance = 3 if fmt == "JPEG" else 1
    assert np.abs(arr[0, 0].astype(int) - np.array(expected)).max() <= tolerance, (mode, arr[0, 0], expected)


def test_load_image_16bit_gradient_scaled(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "g.png"
    Image.fromarray(values).save(path)
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 1, 128, 255]


def test_load_image_resize(tmp_path: Path) -> None:
    path = _save(tmp_path / "a.jpg", size=40)
    out = load_image(path, size=16)
    assert out.size == (16, 16) and out.mode == "RGB"
    assert load_image(path).size == (40, 40)
    with pytest.raises(ValueError):
        load_image(path, size=0)


# ----------------------------------------------------------------------------------------------
# summarize


def test_summarize_task_a(root: Path) -> None:
    s = summarize(scan_task_a(root))
    assert list(s.columns) == ["split", "label", "images", "persons", "fraction"]
    assert s.set_index("label")["images"].to_dict() == {"female": N_FEMALE, "male": N_CLEAN - N_FEMALE}
    assert s.set_index("label")["persons"].to_dict() == {"female": 2, "male": 4}
    assert s["fraction"].sum() == pytest.approx(1.0)


def test_summarize_task_b(root: Path) -> None:
    s = summarize(scan_task_b(root))
    assert len(s) == 1
    row = s.iloc[0]
    assert (row["split"], row["identities"], row["clean"], row["distorted"]) == ("train", 6, N_CLEAN, 7 * N_CLEAN)
    assert row["identities_2plus_clean"] == 3 and row["missing_source"] == 0
    assert [row[k] for k in DISTORTION_TYPES] == [N_CLEAN] * 7


def test_summarize_rejects_other_tables() -> None:
    with pytest.raises(ValueError, match="columns"):
        summarize(pd.DataFrame({"a": [1]}))


# ----------------------------------------------------------------------------------------------
# split_by_identity


def _check_split(dst: Path, n_identities: int, n_clean: int, n_distorted: int, n_female: int, n_male: int) -> None:
    b = scan_task_b(dst)
    a = scan_task_a(dst)
    train_ids = set(b.loc[b["split"] == "train", "identity"])
    val_ids = set(b.loc[b["split"] == "val", "identity"])
    assert train_ids and val_ids and not train_ids & val_ids
    assert len(train_ids | val_ids) == n_identities
    assert b["distortion"].isna().sum() == n_clean and b["distortion"].notna().sum() == n_distorted
    assert (b["distortion"].notna() & b["source"].isna()).sum() == 0
    # sources stay inside their split
    distorted = b[b["distortion"].notna()]
    assert all(Path(s).parent.parent.name == split for s, split in zip(distorted["source"], distorted["split"]))
    assert a["label"].value_counts().to_dict() == {"female": n_female, "male": n_male}
    # Task A follows the same people: every Task A image sits in the split of its Task B identity
    split_of_name = {Path(p).name: s for p, s in zip(b.loc[b["distortion"].isna(), "path"],
                                                        b.loc[b["distortion"].isna(), "split"])}
    assert all(split_of_name[Path(p).name] == s for p, s in zip(a["path"], a["split"]))
    # links, not copies
    assert all(os.path.islink(p) for p in b["path"].iloc[:50])
    assert all(os.path.islink(p) for p in a["path"].iloc[:50])
    record = json.loads((dst / "SPLIT.json").read_text())
    assert set(record["val_identities"]) == val_ids and set(record["train_identities"]) == train_ids


def test_split_by_identity_small(root: Path, tmp_path: Path) -> None:
    dst = split_by_identity(root, tmp_path / "split", val_fraction=0.34, seed=3)
    assert dst == tmp_path / "split"
    _check_split(dst, len(IDENTITIES), N_CLEAN, 7 * N_CLEAN, N_FEMALE, N_CLEAN - N_FEMALE)
    record = json.loads((dst / "SPLIT.json").read_text())
    assert record["seed"] == 3 and record["val_fraction"] == 0.34 and record["source"] == str(root)
    assert len(record["val_identities"]) == 2  # round(0.34 * 6)
    # links point at the real files
    link = next((dst / "Task_B").rglob("*.jpg"))
    assert Path(os.readlink(link)).is_relative_to(root)


def test_split_by_identity_deterministic_and_safe(root: Path, tmp_path: Path) -> None:
    first = json.loads((split_by_identity(root, tmp_path / "a", 0.5, seed=1) / "SPLIT.json").read_text())
    second = json.loads((split_by_identity(root, tmp_path / "b", 0.5, seed=1) / "SPLIT.json").read_text())
    assert first["val_identities"] == second["val_identities"]
    picks = {tuple(json.loads((split_by_identity(root, tmp_path / f"s{s}", 0.5, seed=s) / "SPLIT.json")
                              .read_text())["val_identities"]) for s in range(6)}
    assert len(picks) > 1  # the seed matters
    # refuses a non-empty destination unless overwrite=True (and only one it wrote itself)
    with pytest.raises(FileExistsError, match="overwrite"):
        split_by_identity(root, tmp_path / "a", 0.5, seed=2)
    again = split_by_identity(root, tmp_path / "a", 0.5, seed=2, overwrite=True)
    assert json.loads((again / "SPLIT.json").read_text())["seed"] == 2
    _check_split(again, len(IDENTITIES), N_CLEAN, 7 * N_CLEAN, N_FEMALE, N_CLEAN - N_FEMALE)
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.txt").write_text("do not delete")
    with pytest.raises(FileExistsError, match="SPLIT.json"):
        split_by_identity(root, other, overwrite=True)
    assert (other / "thesis.txt").exists()
    with pytest.raises(ValueError):
        split_by_identity(root, root, overwrite=True)
    with pytest.raises(ValueError):
        split_by_identity(root, root / "Task_B" / "x")
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_identity(root, tmp_path / "c", val_fraction=1.0)


def test_split_by_identity_stratifies_gender_and_multi_image(tmp_path: Path) -> None:
    # 40 identities: 10 female; 16 with 2 clean images. A 25% hold-out keeps both shares exactly.
    src = tmp_path / "src"
    for i in range(40):
        identity = f"P{i:02d}_X"
        label = "female" if i < 10 else "male"
        n_clean = 2 if i % 5 in (0, 1) else 1
        for k in range(1, n_clean + 1):
            clean = _save(src / "Task_B" / "train" / identity / f"{identity}_{k:04d}.jpg", i * 10 + k, size=8)
            (src / "Task_A" / "train" / label).mkdir(parents=True, exist_ok=True)
            os.symlink(clean, src / "Task_A" / "train" / label / clean.name)
    dst = split_by_identity(src, tmp_path / "dst", val_fraction=0.25, seed=0)
    record = json.loads((dst / "SPLIT.json").read_text())
    val = record["val_identities"]
    assert len(val) == 10
    assert sum(int(v[1:3]) < 10 for v in val) == 2 or sum(int(v[1:3]) < 10 for v in val) == 3
    assert sum(int(v[1:3]) % 5 in (0, 1) for v in val) == 4
    a = scan_task_a(dst)
    assert set(a["split"]) == {"train", "val"}


# ----------------------------------------------------------------------------------------------
# real FACECOM training split (skipped where ../shared/facecom is absent)


@pytest.fixture(scope="module")
def real_b() -> pd.DataFrame:
    return scan_task_b(FACECOM_ROOT)


@requires_facecom
def test_real_task_b_counts(real_b: pd.DataFrame) -> None:
    df = real_b
    assert set(df["split"]) == {"train"}
    assert df["identity"].nunique() == 877
    assert df["distortion"].isna().sum() == 1926
    assert df["distortion"].notna().sum() == 13482
    distorted = df[df["distortion"].notna()]
    assert distorted["source"].notna().all()  # every distorted image's clean image found
    assert all(Path(s).is_file() for s in distorted["source"].unique())
    assert (distorted["source"].map(lambda s: Path(s).parent.name) == distorted["identity"]).all()
    assert set(distorted["distortion"]) == set(DISTORTION_TYPES)
    assert distorted["distortion"].value_counts().to_dict() == {k: 1926 for k in DISTORTION_TYPES}
    clean = df[df["distortion"].isna()]
    assert (clean["path"].map(person_from_filename) == clean["identity"]).all()
    s = summarize(df).iloc[0]
    assert (s["identities"], s["clean"], s["distorted"], s["missing_source"]) == (877, 1926, 13482, 0)


@requires_facecom
def test_real_task_a_counts(real_b: pd.DataFrame) -> None:
    df = scan_task_a(FACECOM_ROOT)
    assert df["label"].value_counts().to_dict() == {"female": 303, "male": 1623}
    # Task A images are the Task B clean images
    clean_names = {Path(p).name for p in real_b.loc[real_b["distortion"].isna(), "path"]}
    assert {Path(p).name for p in df["path"]} == clean_names


@requires_facecom
def test_real_split_by_identity(tmp_path: Path) -> None:
    dst = split_by_identity(FACECOM_ROOT, tmp_path / "split", val_fraction=0.2, seed=0)
    _check_split(dst, 877, 1926, 13482, 303, 1623)
    record = json.loads((dst / "SPLIT.json").read_text())
    assert len(record["val_identities"]) == round(0.2 * 877)
    counts = record["counts"]
    female_share = {s: counts["Task_A"][s]["female"] / sum(counts["Task_A"][s].values()) for s in ("train", "val")}
    assert abs(female_share["val"] - 303 / 1926) < 0.04 and abs(female_share["train"] - 303 / 1926) < 0.04
    b = scan_task_b(dst, splits=("val",))
    per_id = b[b["distortion"].isna()].groupby("identity").size()
    assert (per_id >= 2).sum() >= 0.15 * 235  # identities with >= 2 clean images held out in proportion


def test_central_crop_keeps_the_centre() -> None:
    image = Image.fromarray(np.arange(10 * 8 * 3, dtype=np.uint8).reshape(8, 10, 3))  # 10 wide, 8 high
    out = central_crop(image, 0.5)
    assert out.size == (5, 4)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image)[2:6, 2:7])
    assert central_crop(image, 1.0) is image
    assert central_crop(image, 0.01).size == (1, 1)
