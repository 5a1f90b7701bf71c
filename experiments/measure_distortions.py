"""Measure our distortions against FACECOM's own: the table of ``docs/facecom-distortions.md`` and the comparison.

Feeds ``docs/facecom-distortions.md``'s table with ``<out>/facecom_distortions.md`` (FACECOM's own
distorted copies against their clean sources: per type and statistic, median [p10, p90]) and
``docs/results.md`` § "Distortions — ours against FACECOM's" with ``<out>/ours_vs_facecom.md`` (ours
as median [p10, p90], FACECOM's median, the reference band of the package, whether ours lands in it;
then the milliseconds per 224 px image). Both are rewritten from ``<out>/measurements.json``, which a
run with the same arguments reuses::

    python experiments/measure_distortions.py        # FACECOM in the repository -> reports/measure_distortions/
    python experiments/measure_distortions.py --data-root /data/facecom --identities 200

For each of ``--identities`` FACECOM training identities (every k-th, deterministic) this takes
the first clean image and, per distortion type:

- FACECOM: the statistics of FACECOM's distorted copy against the clean image;
- ours: the statistics of ``apply_distortion(clean, type, 1.0, seed)`` saved as JPEG (quality
  75, as FACECOM's files are) against the same clean image.

Cost: 200 identities took 29 s of CPU (108 s of wall time on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import add_data_root, cached, data_root, markdown_table, write_text
from facecom_utils.common.paths import REPORTS_DIR
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


def facecom_table(values: dict[str, dict[str, dict[str, list[float]]]]) -> str:
    """``docs/facecom-distortions.md``'s table: FACECOM's copies, one row per type, median [p10, p90] per statistic.

    Args:
        values: :func:`measure`'s result (only ``values["facecom"]`` is read).

    Returns:
        The table; numbers rounded to 3 decimals as Python prints them (``19.87``, ``0.0``), as in the doc.
    """
    def cell(v: list[float]) -> str:
        if not v:
            return "n/a"
        med, p10, p90 = (round(float(x), 3) for x in (np.median(v), np.percentile(v, 10), np.percentile(v, 90)))
        return f"{med} [{p10}, {p90}]"

    rows = [[kind, *(cell(values["facecom"][kind][name]) for name in STATISTICS)] for kind in DISTORTION_TYPES]
    return markdown_table(["type", *(name.replace("_", " ") for name in STATISTICS)], rows)


def comparison_table(values: dict[str, dict[str, dict[str, list[float]]]], ms: dict[str, float]) -> str:
    """Ours against FACECOM, per type and statistic, against :data:`FACECOM_REFERENCE`'s band; then the timing.

    Args:
        values: :func:`measure`'s result.
        ms: :func:`timing`'s result.

    Returns:
        The table, a blank line, and the milliseconds per 224 px image per type.
    """
    rows = []
    for kind in DISTORTION_TYPES:
        for name in STATISTICS:
            ours = np.asarray(values["ours"][kind][name])
            real = np.asarray(values["facecom"][kind][name])
            med, p10, p90 = FACECOM_REFERENCE[kind][name]
            ours_med = float(np.median(ours))
            rows.append([kind, name, f"{ours_med:.3f} [{np.percentile(ours, 10):.3f}, {np.percentile(ours, 90):.3f}]",
                         f"{np.median(real):.3f}" if real.size else "n/a", f"{med} [{p10}, {p90}]",
                         "yes" if p10 <= ours_med <= p90 else "**NO**"])
    table = markdown_table(["type", "statistic", "ours: median [p10, p90]", "FACECOM median (here)",
                            "reference: median [p10, p90]", "ours in band"], rows)
    return table + "\n\nms per 224 px image: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items())


def main() -> None:
    """Parse arguments, measure (or read the saved measurement), and write both tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_root(parser)
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPORTS_DIR / "measure_distortions")
    args = parser.parse_args()
    root = data_root(args.data_root)
    saved = cached(args.out / "measurements.json",
                   {"data_root": str(root), "identities": args.identities, "seed": args.seed},
                   lambda: {"values": measure(root, args.identities, args.seed), "ms": timing()})
    write_text(args.out / "facecom_distortions.md", facecom_table(saved["values"]))
    print(write_text(args.out / "ours_vs_facecom.md", comparison_table(saved["values"], saved["ms"])).read_text())


if __name__ == "__main__":
    main()
