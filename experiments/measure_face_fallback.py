"""Measure the face front end's fallback box and its detection rates on FACECOM.

Feeds ``facecom_utils.face.detect``'s docstring and ``DEFAULT_FALLBACK`` constants, and ``docs/results.md``
§ "Face front end — fallback box and detection rates", with ``<out>/face_fallback.md``, rewritten from
``<out>/measurements.json`` (which a run with the same arguments reuses)::

    python experiments/measure_face_fallback.py      # FACECOM in the repository -> reports/measure_face_fallback/
    python experiments/measure_face_fallback.py --data-root /data/facecom --clean 150 --identities 40

1. A seeded sample of ``--clean`` clean images of ``Task_B/train``: detection rate, and the
   median detected box and landmarks (:func:`~facecom_utils.face.detect.measure_fallback_box`), written
   as the constants of ``facecom_utils.face.detect.DEFAULT_FALLBACK``; plus how far the fallback
   landmarks sit from the detected ones (mean distance over the 5 points, in inter-ocular
   distances: outer eye corners).
2. ``--identities`` seeded identities with all their images (clean and distorted): the detection
   rate per distortion type (:func:`~facecom_utils.face.detect.detection_rates`), and for the distorted
   images without a detection whose clean image has one, the same fallback landmark error
   against the clean image's landmarks (the copies share the clean image's geometry).

Cost: 12 clean images and 3 identities (88 images) took 45 s on a busy 2-core machine with the HOG
detector; the defaults read about 7 times as many images. Face records are cached by content, so a
repeat is fast; the file gives each part's seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from _common import add_data_root, cached, data_root, frame_table, markdown_table, write_text
from facecom_utils.common.paths import REPORTS_DIR
from facecom_utils.data.layout import scan_task_b
from facecom_utils.face.detect import FaceRecord, FallbackBox, detection_rates, face_records, measure_fallback_box


def landmark_error(fallback: np.ndarray, truth: np.ndarray) -> float:
    """Mean distance of 5 landmarks to the true ones, in inter-ocular distances (relative coordinates)."""
    return float(np.linalg.norm(fallback - truth, axis=1).mean() / np.linalg.norm(truth[0] - truth[2]))


def relative_landmarks(record: FaceRecord) -> np.ndarray:
    return record.landmarks / np.asarray(record.image_size, dtype=np.float64)


def measure_clean(table, n: int, seed: int, kwargs: dict) -> tuple[FallbackBox, dict[str, Any]]:
    """The fallback box measured on a seeded sample of ``n`` clean images, and what the report says of it."""
    clean = table[table["distortion"].isna()]["path"].tolist()
    sample = sorted(np.random.default_rng(seed).choice(clean, size=min(n, len(clean)), replace=False).tolist())
    start = time.perf_counter()
    records = face_records(sample, **kwargs)
    seconds = time.perf_counter() - start
    fallback = measure_fallback_box(records)
    detected = [r for r in records if r.detected]
    errors = [landmark_error(fallback.image_landmarks(), relative_landmarks(r)) for r in detected]
    return fallback, {
        "sample": len(sample), "clean": len(clean), "seed": seed, "sizes": sorted({r.image_size for r in records}),
        "seconds": seconds, "detected": len(detected), "median_score": float(np.median([r.score for r in detected])),
        "box": [round(v, 4) for v in fallback.box], "landmarks": np.round(fallback.landmarks, 4).tolist(),
        "image_landmarks": np.round(fallback.image_landmarks(), 4).tolist(),
        "box_width": float(np.median([r.relative_box[2] - r.relative_box[0] for r in detected])),
        "x0_iqr": float(np.subtract(*np.percentile([r.relative_box[0] for r in detected], [75, 25]))),
        "error_median": float(np.median(errors)), "error_p90": float(np.percentile(errors, 90))}


def measure_types(table, identities: int, seed: int, fallback: FallbackBox, kwargs: dict) -> dict[str, Any]:
    """Detection rates per type on every image of ``identities`` seeded identities; the fallback's landmark error."""
    names = sorted(table["identity"].unique())
    chosen = set(np.random.default_rng(seed).choice(names, size=min(identities, len(names)), replace=False))
    part = table[table["identity"].isin(chosen)].reset_index(drop=True)
    start = time.perf_counter()
    records = face_records(part["path"].tolist(), fallback=fallback, **kwargs)
    seconds = time.perf_counter() - start
    by_path = dict(zip(part["path"], records))
    errors: dict[str, list[float]] = {}
    for (kind, source), rec in zip(zip(part["distortion"], part["source"]), records):
        clean = by_path.get(source) if isinstance(source, str) else None
        if isinstance(kind, str) and not rec.detected and clean is not None and clean.detected:
            errors.setdefault(kind, []).append(landmark_error(relative_landmarks(rec), relative_landmarks(clean)))
    return {"identities": len(chosen), "images": len(part), "seconds": seconds,
            "rates": detection_rates(part, records).reset_index().to_dict(orient="records"),
            "errors": {k: [len(v), float(np.median(v)), float(np.percentile(v, 90))]
                       for k, v in sorted(errors.items())}}


def fallback_report(result: dict[str, Any]) -> str:
    """The Markdown of a measurement: the fallback box's lines, the rates per type, the landmark errors.

    Args:
        result: ``{"settings": ..., "clean": measure_clean's dict, "types": measure_types' dict}``.

    Returns:
        Three parts under ``##`` headings.
    """
    c, t, st = result["clean"], result["types"], result["settings"]
    lines = [
        f"detector {st['detector']}, upsample {st['upsample']}, {st['workers']} workers",
        "",
        f"## Clean sample: {c['sample']} of {c['clean']} clean images (seed {c['seed']}), sizes "
        f"{[tuple(s) for s in c['sizes']]}, {c['seconds']:.1f} s",
        "",
        "```",
        f"detected {c['detected']}/{c['sample']} = {c['detected'] / c['sample']:.3f}; "
        f"median score {c['median_score']:.3f}",
        f"fallback box (x0, y0, x1, y1) / image: {tuple(c['box'])}",
        f"fallback landmarks / box: {c['landmarks']}",
        f"fallback landmarks / image: {c['image_landmarks']}",
        f"box side / image: median w {c['box_width']:.3f}, IQR of x0 {c['x0_iqr']:.3f}",
        f"fallback landmarks vs detected (clean): error in inter-ocular distances, median {c['error_median']:.3f}, "
        f"p90 {c['error_p90']:.3f}",
        "```",
        "",
        f"## Detection rate per type: {t['identities']} identities (seed {c['seed']}), {t['images']} images, "
        f"{t['seconds']:.1f} s",
        "",
        frame_table(pd.DataFrame(t["rates"]).set_index("type")),
        "",
        "## Fallback landmark error on undetected distorted images (against their clean image's detection), "
        "in inter-ocular distances",
        "",
        markdown_table(["type", "n", "median", "p90"],
                       [[k, n, f"{med:.3f}", f"{p90:.3f}"] for k, (n, med, p90) in t["errors"].items()]),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_root(parser)
    parser.add_argument("--clean", type=int, default=150, help="clean images for the fallback box")
    parser.add_argument("--identities", type=int, default=40, help="identities for the rates per type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--upsample", type=int, default=1)
    parser.add_argument("--detector", default="hog", choices=("hog", "cnn"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPORTS_DIR / "measure_face_fallback")
    args = parser.parse_args()
    root = data_root(args.data_root)
    settings = {"upsample": args.upsample, "detector": args.detector, "workers": args.workers}

    def measure() -> dict[str, Any]:
        table = scan_task_b(root, splits=("train",), on_error="keep")
        kwargs = {"upsample": args.upsample, "detector": args.detector, "workers": args.workers}
        fallback, clean = measure_clean(table, args.clean, args.seed, kwargs)
        return {"settings": settings, "clean": clean,
                "types": measure_types(table, args.identities, args.seed, fallback, kwargs)}

    result = cached(args.out / "measurements.json",
                    {"data_root": str(root), "clean": args.clean, "identities": args.identities, "seed": args.seed,
                     **settings}, measure)
    print(write_text(args.out / "face_fallback.md", fallback_report(result)).read_text())


if __name__ == "__main__":
    main()
