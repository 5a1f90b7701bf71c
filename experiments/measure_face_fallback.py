"""Measure the face front end's fallback box and its detection rates on FACECOM.

1. A seeded sample of ``--clean`` clean images of ``Task_B/train``: detection rate, and the
   median detected box and landmarks (:func:`~facecom_utils.face.detect.measure_fallback_box`), printed
   as the constants of ``facecom_utils.face.detect.DEFAULT_FALLBACK``; plus how far the fallback
   landmarks sit from the detected ones (mean distance over the 5 points, in inter-ocular
   distances: outer eye corners).
2. ``--identities`` seeded identities with all their images (clean and distorted): the detection
   rate per distortion type (:func:`~facecom_utils.face.detect.detection_rates`), and for the distorted
   images without a detection whose clean image has one, the same fallback landmark error
   against the clean image's landmarks (the copies share the clean image's geometry).

Usage:
    python experiments/measure_face_fallback.py --data-root ../shared/facecom --clean 150 --identities 40
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from facecom_utils.data.layout import scan_task_b
from facecom_utils.face.detect import FaceRecord, FallbackBox, detection_rates, face_records, measure_fallback_box


def landmark_error(fallback: np.ndarray, truth: np.ndarray) -> float:
    """Mean distance of 5 landmarks to the true ones, in inter-ocular distances (relative coordinates)."""
    return float(np.linalg.norm(fallback - truth, axis=1).mean() / np.linalg.norm(truth[0] - truth[2]))


def relative_landmarks(record: FaceRecord) -> np.ndarray:
    return record.landmarks / np.asarray(record.image_size, dtype=np.float64)


def measure_clean(table, n: int, seed: int, kwargs: dict) -> FallbackBox:
    clean = table[table["distortion"].isna()]["path"].tolist()
    sample = sorted(np.random.default_rng(seed).choice(clean, size=min(n, len(clean)), replace=False).tolist())
    start = time.perf_counter()
    records = face_records(sample, **kwargs)
    seconds = time.perf_counter() - start
    fallback = measure_fallback_box(records)
    detected = [r for r in records if r.detected]
    errors = [landmark_error(fallback.image_landmarks(), relative_landmarks(r)) for r in detected]
    sizes = sorted({r.image_size for r in records})
    print(f"## clean sample: {len(sample)} of {len(clean)} clean images (seed {seed}), sizes {sizes}, "
          f"{seconds:.1f} s (a cache hit when repeated)")
    print(f"detected {len(detected)}/{len(records)} = {len(detected) / len(records):.3f}; "
          f"median score {np.median([r.score for r in detected]):.3f}")
    print(f"fallback box (x0, y0, x1, y1) / image: {tuple(round(v, 4) for v in fallback.box)}")
    print("fallback landmarks / box:", np.round(fallback.landmarks, 4).tolist())
    print("fallback landmarks / image:", np.round(fallback.image_landmarks(), 4).tolist())
    print(f"box side / image: median w {np.median([r.relative_box[2] - r.relative_box[0] for r in detected]):.3f}, "
          f"IQR of x0 {np.subtract(*np.percentile([r.relative_box[0] for r in detected], [75, 25])):.3f}")
    print(f"fallback landmarks vs detected (clean): error in inter-ocular distances, median "
          f"{np.median(errors):.3f}, p90 {np.percentile(errors, 90):.3f}")
    return fallback


def measure_types(table, identities: int, seed: int, fallback: FallbackBox, kwargs: dict) -> None:
    names = sorted(table["identity"].unique())
    chosen = set(np.random.default_rng(seed).choice(names, size=min(identities, len(names)), replace=False))
    part = table[table["identity"].isin(chosen)].reset_index(drop=True)
    start = time.perf_counter()
    records = face_records(part["path"].tolist(), fallback=fallback, **kwargs)
    seconds = time.perf_counter() - start
    print(f"\n## {len(chosen)} identities (seed {seed}), {len(part)} images, {seconds:.1f} s")
    print(detection_rates(part, records).round(3).to_string())
    by_path = dict(zip(part["path"], records))
    errors: dict[str, list[float]] = {}
    for (kind, source), rec in zip(zip(part["distortion"], part["source"]), records):
        clean = by_path.get(source) if isinstance(source, str) else None
        if isinstance(kind, str) and not rec.detected and clean is not None and clean.detected:
            errors.setdefault(kind, []).append(landmark_error(relative_landmarks(rec), relative_landmarks(clean)))
    print("\nfallback landmark error on undetected distorted images (vs their clean image's detection), "
          "in inter-ocular distances:")
    for kind, values in sorted(errors.items()):
        print(f"  {kind:9s} n={len(values):4d} median {np.median(values):.3f} p90 {np.percentile(values, 90):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "facecom")
    parser.add_argument("--clean", type=int, default=150, help="clean images for the fallback box")
    parser.add_argument("--identities", type=int, default=40, help="identities for the rates per type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--upsample", type=int, default=1)
    parser.add_argument("--detector", default="hog", choices=("hog", "cnn"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    table = scan_task_b(args.data_root, splits=("train",), on_error="keep")
    kwargs = {"upsample": args.upsample, "detector": args.detector, "workers": args.workers}
    print(f"detector {args.detector}, upsample {args.upsample}, {args.workers} workers")
    fallback = measure_clean(table, args.clean, args.seed, kwargs)
    measure_types(table, args.identities, args.seed, fallback, kwargs)


if __name__ == "__main__":
    main()
