"""Measure our distortions against FACECOM's own, reproducing FACECOM_DISTORTIONS.md's table.

For each of ``--identities`` FACECOM training identities (every k-th, deterministic) this takes
the first clean image and, per distortion type:

- FACECOM: the statistics of FACECOM's distorted copy against the clean image;
- ours: the statistics of ``apply_distortion(clean, type, 1.0, seed)`` saved as JPEG (quality
  75, as FACECOM's files are) against the same clean image.

It prints one markdown table: per type and statistic, ours as median [p10, p90], FACECOM's
median measured here, and the reference band from the doc, flagging medians outside it.

Usage:
    python experiments/measure_distortions.py --data-root ../shared/facecom --identities 200
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facecom_utils.data.layout import DISTORTION_TYPES
from facecom_utils.data.distortions import (
    FACECOM_REFERENCE,
    STATISTICS,
    apply_distortion,
    distortion_statistics,
)


def jpeg_roundtrip(image: Image.Image, quality: int = 75) -> Image.Image:
    """Encode and decode ``image`` as JPEG, as the distorted files on disk are."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def clean_pairs(data_root: Path, identities: int) -> list[tuple[Path, str]]:
    """(clean image, stem) pairs: the first clean image of every k-th Task B train identity."""
    train = data_root / "Task_B" / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"{train} not found; expected FACECOM's Task_B/train folder")
    folders = sorted(p for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    step = max(1, len(folders) // identities)
    pairs = []
    for folder in folders[::step][:identities]:
        cleans = sorted(folder.glob("*.jpg"))
        if cleans:
            pairs.append((cleans[0], cleans[0].stem))
    return pairs


def measure(
    data_root: Path, identities: int, seed: int = 0
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Per source ("ours"/"facecom"), type and statistic: the list of per-image values."""
    values: dict[str, dict[str, dict[str, list[float]]]] = {
        src: {t: {s: [] for s in STATISTICS} for t in DISTORTION_TYPES}
        for src in ("ours", "facecom")
    }
    rng = np.random.default_rng(seed)
    for clean_path, stem in clean_pairs(data_root, identities):
        clean = Image.open(clean_path).convert("RGB")
        for kind in DISTORTION_TYPES:
            ours = jpeg_roundtrip(apply_distortion(clean, kind, 1.0, rng))
            for name, value in distortion_statistics(clean, ours).items():
                values["ours"][kind][name].append(value)
            real_path = clean_path.parent / "distortion" / f"{stem}_{kind}.jpg"
            if real_path.exists():
                real = Image.open(real_path).convert("RGB")
                for name, value in distortion_statistics(clean, real).items():
                    values["facecom"][kind][name].append(value)
    return values


def timing(size: int = 224, repeats: int = 20) -> dict[str, float]:
    """Milliseconds per call of each distortion on a random ``size`` px RGB image."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    out = {}
    for kind in DISTORTION_TYPES:
        apply_distortion(image, kind, 1.0, rng)
        start = time.perf_counter()
        for _ in range(repeats):
            apply_distortion(image, kind, 1.0, rng)
        out[kind] = 1000 * (time.perf_counter() - start) / repeats
    return out


def main() -> None:
    """Parse arguments, measure, and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/facecom"))
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    values = measure(args.data_root, args.identities, args.seed)
    print(
        "| type | statistic | ours: median [p10, p90] | FACECOM median (here) "
        "| doc: median [p10, p90] | ours in band |"
    )
    print("|---|---|---|---|---|---|")
    for kind in DISTORTION_TYPES:
        for name in STATISTICS:
            ours = np.asarray(values["ours"][kind][name])
            real = np.asarray(values["facecom"][kind][name])
            med, p10, p90 = FACECOM_REFERENCE[kind][name]
            ours_med = float(np.median(ours))
            real_med = f"{np.median(real):.3f}" if real.size else "n/a"
            ok = "yes" if p10 <= ours_med <= p90 else "**NO**"
            print(
                f"| {kind} | {name} | {ours_med:.3f} [{np.percentile(ours, 10):.3f}, "
                f"{np.percentile(ours, 90):.3f}] | {real_med} | {med} [{p10}, {p90}] | {ok} |"
            )
    ms = timing()
    print("\nms per 224 px image: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()))


if __name__ == "__main__":
    main()
