"""Exploratory data analysis of a FACECOM-layout folder (notebook 01).

What notebook 01 shows is computed here, so it is tested and reusable:

* count tables per split, class, identity and distortion (:func:`task_a_counts`, :func:`task_b_counts`);
* per-image properties -- size, mode, brightness, contrast, sharpness (:func:`image_properties`),
  measured the way ``docs/facecom-distortions.md`` measures them;
* a leakage check: people/identities on both sides of a split, people under both labels, and
  near-duplicate images found with a perceptual hash (:func:`dhash`, :func:`phash`,
  :func:`near_duplicate_pairs`, :func:`leakage_report`, :func:`leakage_examples`);
* the numbers notebook 01 writes to ``metrics.json`` (:func:`eda_metrics`);
* the figures of the notebook (``plot_*``; each returns a titled, labelled ``Figure``).

The plumbing every notebook shares (paths, config, ``metrics.json``) is in :mod:`facecom_utils.reporting.notebook`;
the threshold analysis of notebook 04 is in :mod:`facecom_utils.recognition.analysis`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from facecom_utils.data.layout import (
    DISTORTION_TYPES,
    load_image,
    person_from_filename,
    scan_task_a,
    scan_task_b,
)
from facecom_utils.reporting.plots import draws_dataset_images
from facecom_utils.train.rundir import to_jsonable

__all__ = [
    "EDAConfig",
    "load_tables",
    "task_a_counts",
    "male_per_female",
    "task_b_counts",
    "images_per_identity",
    "image_properties",
    "size_mode_table",
    "property_summary",
    "leakage_table",
    "leakage_examples",
    "distortion_examples",
    "dhash",
    "phash",
    "hash_images",
    "hamming_distances",
    "near_duplicate_pairs",
    "identity_overlap",
    "label_conflicts",
    "leakage_report",
    "eda_metrics",
    "plot_class_balance",
    "plot_images_per_identity",
    "plot_property_distributions",
    "plot_distortion_grid",
    "plot_image_pairs",
]

CLEAN = "clean"  # the value used for undistorted images in the "distortion" column of the tables below


@dataclasses.dataclass
class EDAConfig:
    """Parameters of one EDA run (notebook 01).

    Args:
        data_root: folder holding ``Task_A/`` and ``Task_B/`` (FACECOM layout).
        output_dir: where ``metrics.json`` is written.
        property_sample: images measured per (task, split, distortion) group; ``None`` measures all.
        hash_kind: perceptual hash for the near-duplicate search, ``"phash"`` or ``"dhash"``.
        hash_size: side of the hash grid (``hash_size**2`` bits).
        max_hash_distance: pairs at this Hamming distance or less count as near-duplicates. Measured on
            FACECOM with a 256-bit pHash: a clean image and its resized/blurred copy differ by <= 8 bits,
            its noisy copy by <= 34; two random different identities by >= 52.
        review_hash_distance: pairs of *different* people up to this distance (but above
            ``max_hash_distance``) are listed as look-alikes to check by eye (on FACECOM: the same
            person photographed twice under two identity names).
        include_distorted: also hash Task B's distorted copies (slower; clean images suffice to find
            leaked sources, since every distorted image derives from a clean one).
        seed: seed of every sample drawn.
    """

    data_root: str
    output_dir: str
    property_sample: int | None = 200
    hash_kind: str = "phash"
    hash_size: int = 16
    max_hash_distance: int = 16
    review_hash_distance: int = 40
    include_distorted: bool = False
    seed: int = 0


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def load_tables(data_root: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scan both tasks of a FACECOM-layout folder.

    Task A gets a ``person`` column if the scanner did not add one; Task B's ``distortion`` column
    uses ``"clean"`` for undistorted images so it can be grouped on.

    Args:
        data_root: folder holding ``Task_A/`` and ``Task_B/`` (or their parent, see ``data.find_task_dir``).

    Returns:
        ``(task_a, task_b)`` tables of samples.
    """
    task_a = scan_task_a(data_root).copy()
    if "person" not in task_a.columns:
        task_a["person"] = [person_from_filename(Path(p).name) for p in task_a["path"]]
    task_b = scan_task_b(data_root).copy()
    task_b["distortion"] = task_b["distortion"].fillna(CLEAN).astype(str)
    return task_a, task_b


def task_a_counts(task_a: pd.DataFrame) -> pd.DataFrame:
    """Images per split and label, with people and the male-per-female ratio.

    Returns:
        One row per split: ``female``, ``male``, ``total``, ``people``, ``female_fraction``,
        ``male_per_female``.
    """
    counts = pd.crosstab(task_a["split"], task_a["label"]).reindex(columns=["female", "male"], fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts["people"] = task_a.groupby("split")["person"].nunique()
    counts["female_fraction"] = (counts["female"] / counts["total"]).round(4)
    counts["male_per_female"] = [
        round(m / f, 2) if f else math.nan for f, m in zip(counts["female"], counts["male"])
    ]
    counts.columns.name = None
    return counts


def male_per_female(task_a: pd.DataFrame) -> dict[str, float]:
    """``{split: male images / female images}`` (``nan`` where a split has no female image)."""
    return {split: float(v) for split, v in task_a_counts(task_a)["male_per_female"].items()}


def task_b_counts(task_b: pd.DataFrame) -> pd.DataFrame:
    """Identities and images per split and distortion type.

    Returns:
        One row per split: ``identities``, ``clean``, one column per distortion type, ``distorted``,
        ``total``, ``identities_with_2plus_clean`` (those that keep probes in the strict protocol).
    """
    per_type = pd.crosstab(task_b["split"], task_b["distortion"])
    columns = [CLEAN, *[d for d in DISTORTION_TYPES]]
    per_type = per_type.reindex(columns=columns, fill_value=0)
    table = pd.DataFrame({"identities": task_b.groupby("split")["identity"].nunique()})
    table = table.join(per_type)
    table["distorted"] = per_type[list(DISTORTION_TYPES)].sum(axis=1)
    table["total"] = table[CLEAN] + table["distorted"]
    clean = task_b[task_b["distortion"] == CLEAN]
    per_identity = clean.groupby(["split", "identity"]).size()
    table["identities_with_2plus_clean"] = (per_identity >= 2).groupby(level="split").sum()
    table.columns.name = None
    return table.fillna(0).astype(int)


def images_per_identity(task_b: pd.DataFrame) -> pd.DataFrame:
    """Clean and distorted images of every identity.

    Returns:
        One row per ``(split, identity)``: ``clean``, ``distorted``, ``total``.
    """
    is_clean = task_b["distortion"] == CLEAN
    table = (
        task_b.assign(clean=is_clean, distorted=~is_clean)
        .groupby(["split", "identity"])[["clean", "distorted"]]
        .sum()
        .astype(int)
    )
    table["total"] = table["clean"] + table["distorted"]
    return table


# --------------------------------------------------------------------------------------------------
# Per-image properties
# --------------------------------------------------------------------------------------------------


def _grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an ``[H, W, 3]`` uint8 array, as float32."""
    return rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587) + rgb[..., 2] * np.float32(0.114)


def _laplacian(grey: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian of the interior pixels."""
    return (
        grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    )


def pixel_statistics(image: Image.Image) -> dict[str, float]:
    """Brightness, contrast, sharpness and colour statistics of one image.

    Measured as in ``docs/facecom-distortions.md``: brightness = mean grey level (0-255), contrast =
    standard deviation of the grey levels, sharpness = mean absolute Laplacian ("edge energy"),
    colourfulness = mean per-pixel standard deviation across R, G, B, saturated / black = fraction of
    pixels with all channels > 250 / < 5.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    grey = _grey(rgb)
    lap = _laplacian(grey) if min(grey.shape) >= 3 else np.zeros(1, np.float32)
    return {
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "sharpness": float(np.abs(lap).mean()),
        "colourfulness": float(rgb.std(axis=2).mean()),
        "saturated_fraction": float((rgb > 250).all(axis=2).mean()),
        "black_fraction": float((rgb < 5).all(axis=2).mean()),
    }


def _sample_groups(table: pd.DataFrame, by: list[str], n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` rows of each group, drawn with a fixed seed, in the table's order."""
    if n is None:
        return table
    picked = [
        g.sample(n=min(n, len(g)), random_state=seed) for _, g in table.groupby(by, sort=True, dropna=False)
    ]
    return pd.concat(picked).sort_index() if picked else table.iloc[:0]


def image_properties(
    task_a: pd.DataFrame | None = None,
    task_b: pd.DataFrame | None = None,
    sample: int | None = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Measure the stored size, mode and pixel statistics of (a seeded sample of) the images.

    Args:
        task_a: table from :func:`load_tables` (grouped by split and label when sampling).
        task_b: table from :func:`load_tables` (grouped by split and distortion when sampling).
        sample: images per group; ``None`` measures every image.
        seed: sampling seed.

    Returns:
        One row per image: ``task``, ``split``, ``group`` (label or distortion), ``path``, ``width``,
        ``height``, ``size`` (``"WxH"``), ``mode`` (as stored on disk) and the statistics of
        :func:`pixel_statistics`.
    """
    parts = []
    if task_a is not None and len(task_a):
        a = _sample_groups(task_a, ["split", "label"], sample, seed)
        parts.append(pd.DataFrame({"task": "A", "split": a["split"], "group": a["label"], "path": a["path"]}))
    if task_b is not None and len(task_b):
        b = _sample_groups(task_b, ["split", "distortion"], sample, seed)
        parts.append(pd.DataFrame({"task": "B", "split": b["split"], "group": b["distortion"], "path": b["path"]}))
    if not parts:
        raise ValueError("image_properties needs a non-empty task_a or task_b table")
    table = pd.concat(parts, ignore_index=True)
    rows = []
    for path in table["path"]:
        with Image.open(path) as im:  # header only: the mode and size as stored
            mode, (width, height) = im.mode, im.size
        stats = pixel_statistics(load_image(path))
        rows.append({"width": width, "height": height, "size": f"{width}x{height}", "mode": mode, **stats})
    return pd.concat([table, pd.DataFrame(rows)], axis=1)


def size_mode_table(properties: pd.DataFrame) -> pd.DataFrame:
    """Images per stored size and mode, per task and split (of the measured sample)."""
    table = properties.groupby(["task", "split", "size", "mode"]).size().rename("images").reset_index()
    return table.set_index(["task", "split", "size", "mode"])


def property_summary(properties: pd.DataFrame, column: str = "group") -> pd.DataFrame:
    """Median brightness, contrast, sharpness and colourfulness per group (e.g. distortion type)."""
    stats = ["brightness", "contrast", "sharpness", "colourfulness", "saturated_fraction"]
    table = properties.groupby(column)[stats].median().round(3)
    table.insert(0, "images", properties.groupby(column).size())
    return table


# --------------------------------------------------------------------------------------------------
# Perceptual hashes and the leakage check
# --------------------------------------------------------------------------------------------------


def _grey_thumbnail(image: Image.Image, width: int, height: int) -> np.ndarray:
    """Grey ``[height, width]`` float array of ``image`` resized with a box-averaging filter."""
    return np.asarray(image.convert("L").resize((width, height), Image.Resampling.BOX), dtype=np.float64)


def dhash(image: Image.Image, hash_size: int = 8) -> np.ndarray:
    """Difference hash: is each pixel brighter than its right neighbour, on a tiny grey thumbnail.

    Returns:
        Boolean array of ``hash_size**2`` bits.
    """
    pixels = _grey_thumbnail(image, hash_size + 1, hash_size)
    return (pixels[:, 1:] > pixels[:, :-1]).ravel()


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` so that ``D @ x`` is the DCT of a length-``n`` vector."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def phash(image: Image.Image, hash_size: int = 8, highfreq_factor: int = 4) -> np.ndarray:
    """Perceptual hash: signs of the low-frequency 2-D DCT coefficients against their median.

    The image is reduced to a ``hash_size * highfreq_factor`` square grey thumbnail, transformed with a
    2-D DCT, and the top-left ``hash_size x hash_size`` block is compared with its median.

    Returns:
        Boolean array of ``hash_size**2`` bits.
    """
    n = hash_size * highfreq_factor
    d = _dct_matrix(n)
    coefficients = (d @ _grey_thumbnail(image, n, n) @ d.T)[:hash_size, :hash_size]
    return (coefficients > np.median(coefficients)).ravel()


_HASHES = {"phash": phash, "dhash": dhash}


def hash_images(paths: Iterable[str | Path], kind: str = "phash", hash_size: int = 16) -> np.ndarray:
    """Perceptual hashes of many images, packed into bytes for fast Hamming distances.

    Args:
        paths: image files.
        kind: ``"phash"`` or ``"dhash"``.
        hash_size: side of the hash grid.

    Returns:
        ``uint8`` array ``[N, ceil(hash_size**2 / 8)]``.
    """
    if kind not in _HASHES:
        raise ValueError(f"unknown hash kind {kind!r}; expected one of {sorted(_HASHES)}")
    fn = _HASHES[kind]
    nbytes = (hash_size * hash_size + 7) // 8
    bits = [fn(load_image(p), hash_size) for p in paths]
    if not bits:
        return np.zeros((0, nbytes), np.uint8)
    return np.packbits(np.stack(bits), axis=1)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return np.unpackbits(x[..., None], axis=-1).sum(-1).astype(np.uint8)


def hamming_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances between two sets of packed hashes (``[N, M]``, ``int32``)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.int32)
    xor = np.bitwise_xor(a[:, None, :], b[None, :, :])
    return _popcount(xor).sum(axis=-1, dtype=np.int32)


def near_duplicate_pairs(
    hashes_a: np.ndarray,
    hashes_b: np.ndarray | None = None,
    max_distance: int = 16,
    chunk_size: int = 1024,
) -> pd.DataFrame:
    """Index pairs whose hashes differ in at most ``max_distance`` bits.

    Args:
        hashes_a: packed hashes ``[N, B]`` (see :func:`hash_images`).
        hashes_b: packed hashes ``[M, B]``; ``None`` searches within ``hashes_a`` (each unordered pair once).
        max_distance: largest Hamming distance reported.
        chunk_size: rows of ``hashes_a`` compared at once (bounds memory at ``chunk_size * M * B`` bytes).

    Returns:
        Columns ``i``, ``j``, ``distance``, sorted by distance then indices.
    """
    within = hashes_b is None
    other = hashes_a if within else hashes_b
    found = []
    for start in range(0, len(hashes_a), chunk_size):
        dist = hamming_distances(hashes_a[start : start + chunk_size], other)
        i, j = np.nonzero(dist <= max_distance)
        i_abs = i + start
        keep = j > i_abs if within else np.ones_like(i, dtype=bool)
        found.append(pd.DataFrame({"i": i_abs[keep], "j": j[keep], "distance": dist[i[keep], j[keep]]}))
    if not found:
        return pd.DataFrame({"i": pd.Series(dtype=int), "j": pd.Series(dtype=int), "distance": pd.Series(dtype=int)})
    pairs = pd.concat(found, ignore_index=True)
    return pairs.sort_values(["distance", "i", "j"], ignore_index=True)


def identity_overlap(table: pd.DataFrame, column: str, splits: tuple[str, str] = ("train", "val")) -> list[str]:
    """Values of ``column`` (person or identity) present in both splits, sorted."""
    first = set(table.loc[table["split"] == splits[0], column])
    second = set(table.loc[table["split"] == splits[1], column])
    return sorted(first & second)


def label_conflicts(task_a: pd.DataFrame) -> pd.DataFrame:
    """People (by file name) filed under both ``female`` and ``male``: one label is noise.

    Returns:
        One row per conflicting person: ``person``, ``female``, ``male`` (image counts).
    """
    counts = pd.crosstab(task_a["person"], task_a["label"]).reindex(columns=["female", "male"], fill_value=0)
    conflicts = counts[(counts["female"] > 0) & (counts["male"] > 0)]
    conflicts.columns.name = None
    return conflicts.reset_index()


def _pairs_with_context(
    pairs: pd.DataFrame, left: pd.DataFrame, right: pd.DataFrame, key: str
) -> pd.DataFrame:
    """Attach path/split/key of both sides to index pairs."""
    a = left.reset_index(drop=True).iloc[pairs["i"].to_numpy()]
    b = right.reset_index(drop=True).iloc[pairs["j"].to_numpy()]
    return pd.DataFrame(
        {
            "path_a": a["path"].to_numpy(),
            "split_a": a["split"].to_numpy(),
            f"{key}_a": a[key].to_numpy(),
            "path_b": b["path"].to_numpy(),
            "split_b": b["split"].to_numpy(),
            f"{key}_b": b[key].to_numpy(),
            "distance": pairs["distance"].to_numpy(),
        }
    )


def leakage_report(
    task_a: pd.DataFrame,
    task_b: pd.DataFrame,
    hash_kind: str = "phash",
    hash_size: int = 16,
    max_distance: int = 16,
    review_distance: int | None = 40,
    include_distorted: bool = False,
) -> dict[str, Any]:
    """Everything that could leak between the training and the reported split, with examples.

    Checks:
        * ``task_a_person_overlap`` / ``task_b_identity_overlap``: names on both sides of train/val;
        * ``task_a_label_conflicts``: people filed under both labels (label noise);
        * ``cross_split_duplicates``: near-duplicate images across train and val (per task);
        * ``cross_identity_duplicates``: near-duplicate images of *different* people/identities in
          the same split -- one person under two names defeats an identity-disjoint fold;
        * ``look_alikes``: pairs of different people/identities with a distance in
          ``(max_distance, review_distance]`` -- not counted, listed for a human to check.

    Args:
        task_a: Task A table from :func:`load_tables`.
        task_b: Task B table from :func:`load_tables`.
        hash_kind: ``"phash"`` or ``"dhash"``.
        hash_size: side of the hash grid.
        max_distance: Hamming distance at or under which two images count as near-duplicates.
        review_distance: upper distance of the look-alike list (``None``: no list).
        include_distorted: also hash Task B's distorted images.

    Returns:
        dict of DataFrames/lists, keyed as above.
    """
    b = task_b if include_distorted else task_b[task_b["distortion"] == CLEAN]
    sets = {"A": (task_a.reset_index(drop=True), "person"), "B": (b.reset_index(drop=True), "identity")}
    search = max(max_distance, review_distance or 0)
    cross_split, cross_identity, look_alikes = [], [], []
    for task, (table, key) in sets.items():
        if table.empty:
            continue
        hashes = hash_images(table["path"], hash_kind, hash_size)
        pairs = _pairs_with_context(near_duplicate_pairs(hashes, None, search), table, table, key)
        pairs = pairs.rename(columns={f"{key}_a": "name_a", f"{key}_b": "name_b"})
        pairs.insert(0, "task", task)
        differs = pairs["name_a"] != pairs["name_b"]
        across = pairs["split_a"] != pairs["split_b"]
        close = pairs["distance"] <= max_distance
        cross_split.append(pairs[across & close])
        cross_identity.append(pairs[~across & differs & close])
        look_alikes.append(pairs[differs & ~close])
    columns = ["task", "path_a", "split_a", "name_a", "path_b", "split_b", "name_b", "distance"]

    def stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    return {
        "task_a_person_overlap": identity_overlap(task_a, "person"),
        "task_b_identity_overlap": identity_overlap(task_b, "identity"),
        "task_a_label_conflicts": label_conflicts(task_a),
        "cross_split_duplicates": stack(cross_split),
        "cross_identity_duplicates": stack(cross_identity),
        "look_alikes": stack(look_alikes),
        "hash": {
            "kind": hash_kind,
            "bits": hash_size * hash_size,
            "max_distance": max_distance,
            "review_distance": review_distance,
        },
    }


def leakage_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """One row per leakage check: what was checked and how many cases were found."""
    rows = [
        ("Task A people in train and val", len(report["task_a_person_overlap"])),
        ("Task B identities in train and val", len(report["task_b_identity_overlap"])),
        ("Task A people under both labels", len(report["task_a_label_conflicts"])),
        ("near-duplicate images across train/val", len(report["cross_split_duplicates"])),
        ("near-duplicates of different people in one split", len(report["cross_identity_duplicates"])),
        ("look-alikes of different people (not counted; check by eye)", len(report.get("look_alikes", ()))),
    ]
    return pd.DataFrame(rows, columns=["check", "found"]).set_index("check")


def leakage_examples(report: Mapping[str, Any], n: int = 5) -> pd.DataFrame:
    """Up to ``n`` examples of every kind of finding, with paths shortened to ``<parent>/<file>``."""
    frames = []
    for kind in ("cross_split_duplicates", "cross_identity_duplicates", "look_alikes"):
        frame = report.get(kind)
        if frame is None or len(frame) == 0:
            continue
        part = frame.head(n).copy()
        for side in ("a", "b"):
            part[f"path_{side}"] = [f"{Path(p).parent.name}/{Path(p).name}" for p in part[f"path_{side}"]]
        part.insert(0, "finding", kind)
        frames.append(part)
    if not frames:
        return pd.DataFrame(columns=["finding", "task", "path_a", "split_a", "name_a", "path_b", "split_b", "name_b", "distance"])
    return pd.concat(frames, ignore_index=True)


def eda_metrics(
    task_a: pd.DataFrame,
    task_b: pd.DataFrame,
    leakage: Mapping[str, Any],
    properties: pd.DataFrame | None = None,
    max_examples: int = 10,
) -> dict[str, Any]:
    """The numbers notebook 01 writes to ``metrics.json``: counts and what the leakage check found."""
    a = task_a_counts(task_a)
    b = task_b_counts(task_b)
    per_identity = images_per_identity(task_b)

    def examples(frame: pd.DataFrame) -> list[dict[str, Any]]:
        return to_jsonable(frame.head(max_examples).to_dict(orient="records"))

    metrics: dict[str, Any] = {
        "task_a_images": int(len(task_a)),
        "task_b_images": int(len(task_b)),
        "task_a_counts": to_jsonable(a[["female", "male", "total", "people"]].to_dict(orient="index")),
        "task_a_male_per_female": to_jsonable(a["male_per_female"].to_dict()),
        "task_b_counts": to_jsonable(b.to_dict(orient="index")),
        "task_b_images_per_identity": to_jsonable(
            per_identity.groupby(level="split")["total"].describe()[["mean", "min", "max"]].round(2).to_dict(orient="index")
        ),
        "leakage": {
            "hash": dict(leakage["hash"]),
            "task_a_person_overlap": len(leakage["task_a_person_overlap"]),
            "task_b_identity_overlap": len(leakage["task_b_identity_overlap"]),
            "task_a_label_conflicts": len(leakage["task_a_label_conflicts"]),
            "cross_split_duplicates": len(leakage["cross_split_duplicates"]),
            "cross_identity_duplicates": len(leakage["cross_identity_duplicates"]),
            "look_alikes": len(leakage.get("look_alikes", ())),
            "examples": {
                "task_a_person_overlap": list(leakage["task_a_person_overlap"][:max_examples]),
                "task_b_identity_overlap": list(leakage["task_b_identity_overlap"][:max_examples]),
                "task_a_label_conflicts": examples(leakage["task_a_label_conflicts"]),
                "cross_split_duplicates": examples(leakage["cross_split_duplicates"]),
                "cross_identity_duplicates": examples(leakage["cross_identity_duplicates"]),
                "look_alikes": examples(leakage.get("look_alikes", pd.DataFrame())),
            },
        },
    }
    if properties is not None and len(properties):
        metrics["image_sizes"] = to_jsonable(properties["size"].value_counts().to_dict())
        metrics["image_modes"] = to_jsonable(properties["mode"].value_counts().to_dict())
        b_props = properties[properties["task"] == "B"]
        if len(b_props):
            metrics["median_properties_per_distortion"] = to_jsonable(
                property_summary(b_props).drop(columns="images").to_dict(orient="index")
            )
    return metrics


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def plot_class_balance(task_a: pd.DataFrame) -> Figure:
    """Bar chart of Task A images per split and label, annotated with the counts."""
    counts = task_a_counts(task_a)
    splits = list(counts.index)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(splits))
    width = 0.38
    for k, (label, colour) in enumerate((("female", "tab:red"), ("male", "tab:blue"))):
        bars = ax.bar(x + (k - 0.5) * width, counts[label], width, label=label, color=colour)
        ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_xticks(x, [f"{s}\n({counts.loc[s, 'male_per_female']:.2f} male per female)" for s in splits])
    ax.set_xlabel("split")
    ax.set_ylabel("images")
    ax.set_title("Task A: images per split and label")
    ax.legend(title="label")
    ax.margins(y=0.15)
    fig.tight_layout()
    return fig


def plot_images_per_identity(task_b: pd.DataFrame) -> Figure:
    """Histograms of clean and total images per Task B identity, one panel per split."""
    table = images_per_identity(task_b).reset_index()
    splits = sorted(table["split"].unique())
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 3.5), squeeze=False)
    for ax, split in zip(axes[0], splits):
        part = table[table["split"] == split]
        top = int(part["clean"].max())
        ax.hist(part["clean"], bins=np.arange(0.5, top + 1.5), color="tab:green", rwidth=0.85)
        ax.set_title(f"Task B {split}: clean images per identity (n={len(part)})")
        ax.set_xlabel("clean images of the identity")
        ax.set_ylabel("identities")
    fig.tight_layout()
    return fig


def plot_property_distributions(
    properties: pd.DataFrame,
    columns: Sequence[str] = ("brightness", "contrast", "sharpness"),
) -> Figure:
    """Box plots of per-image statistics for each Task B distortion type (clean first)."""
    b = properties[properties["task"] == "B"]
    groups = [g for g in (CLEAN, *DISTORTION_TYPES) if g in set(b["group"])]
    units = {
        "brightness": "mean grey level (0-255)",
        "contrast": "std of grey levels",
        "sharpness": "mean |Laplacian| (edge energy)",
        "colourfulness": "mean std across R,G,B",
    }
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 3.8), squeeze=False)
    for ax, column in zip(axes[0], columns):
        data = [b.loc[b["group"] == g, column].to_numpy() for g in groups]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(groups) + 1), groups, rotation=45, ha="right")
        ax.set_title(f"{column} per distortion type")
        ax.set_xlabel("distortion type")
        ax.set_ylabel(units.get(column, column))
        if column == "sharpness":
            ax.set_yscale("log")
    fig.suptitle(f"Task B image statistics ({len(b)} images sampled)")
    fig.tight_layout()
    return fig


def distortion_examples(task_b: pd.DataFrame, n_identities: int = 3, seed: int = 0) -> pd.DataFrame:
    """Clean images with all their distorted copies: one row per clean source, one column per type.

    Sources are drawn (seeded) among clean images that have a distorted copy of every type.
    """
    distorted = task_b[task_b["distortion"] != CLEAN]
    if distorted.empty or "source" not in task_b.columns:
        return pd.DataFrame(columns=[CLEAN, *DISTORTION_TYPES])
    wide = distorted.pivot_table(index="source", columns="distortion", values="path", aggfunc="first")
    wide = wide.reindex(columns=list(DISTORTION_TYPES)).dropna()
    if wide.empty:
        return pd.DataFrame(columns=[CLEAN, *DISTORTION_TYPES])
    wide = wide.sample(n=min(n_identities, len(wide)), random_state=seed).sort_index()
    wide.insert(0, CLEAN, wide.index)
    return wide.reset_index(drop=True)


@draws_dataset_images
def plot_distortion_grid(task_b: pd.DataFrame, n_identities: int = 3, seed: int = 0, size: int = 112) -> Figure:
    """Each distortion beside its clean source: rows = sampled faces, columns = clean + seven types."""
    examples = distortion_examples(task_b, n_identities, seed)
    rows = max(len(examples), 1)
    columns = list(examples.columns) if len(examples) else [CLEAN, *DISTORTION_TYPES]
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.75 * rows + 0.4), squeeze=False)
    for r in range(rows):
        for c, name in enumerate(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r < len(examples):
                ax.imshow(load_image(examples.iloc[r][name], size=size))
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0 and r < len(examples):
                ax.set_ylabel(Path(examples.iloc[r][CLEAN]).parent.name, fontsize=7)
    fig.suptitle("Task B: each distortion type beside its clean source image")
    fig.tight_layout()
    return fig


@draws_dataset_images
def plot_image_pairs(pairs: pd.DataFrame, title: str, max_pairs: int = 6, size: int = 112) -> Figure:
    """Show image pairs side by side (e.g. near-duplicates), captioned with split/name and distance."""
    pairs = pairs.head(max_pairs)
    n = max(len(pairs), 1)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 5), squeeze=False)
    for k in range(n):
        for r, side in enumerate(("a", "b")):
            ax = axes[r][k]
            ax.set_xticks([])
            ax.set_yticks([])
            if k < len(pairs):
                row = pairs.iloc[k]
                ax.imshow(load_image(row[f"path_{side}"], size=size))
                name = row.get(f"name_{side}", Path(row[f"path_{side}"]).parent.name)
                ax.set_xlabel(f"{row[f'split_{side}']}: {name}"[:28], fontsize=7)
                if r == 0:
                    ax.set_title(f"distance {int(row['distance'])}", fontsize=8)
    if pairs.empty:
        axes[0][0].text(0.5, 0.5, "none found", ha="center", va="center", transform=axes[0][0].transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def face_detection_rates(task_b: pd.DataFrame, sample: int | None = 200, seed: int = 0,
                         workers: int | None = None) -> pd.DataFrame:
    """Share of images where the face front end's detector finds a face, per type (clean first).

    dlib's HOG detector at upsample 1 (:func:`facecom_utils.face.detect.face_records`, cached) on up to
    ``sample`` seeded images per type; the others get the fallback box. Without dlib, an empty table.
    """
    import os

    from facecom_utils.face.detect import detection_rates, face_records
    from facecom_utils.face.descriptors import face_model_available

    if not face_model_available():
        return pd.DataFrame(columns=["n", "detected", "median_score"])
    table = task_b.assign(_type=task_b["distortion"].fillna("clean"))
    picked = _sample_groups(table, ["_type"], sample, seed).drop(columns="_type")
    records = face_records(picked["path"].tolist(), workers=workers or max(1, min(4, os.cpu_count() or 1)))
    return detection_rates(picked.reset_index(drop=True), records)
