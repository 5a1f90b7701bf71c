"""Precompute (resumably) what the face-model tracks read: quality features and dlib descriptors (mirrored and plain).

Feeds no table of ``docs/results.md``: it warms the descriptor cache that the other drivers and the
notebooks read (``docs/face-tracks.md``, the descriptor). It writes its own timing table,
``<out>/face_features.md``: one row per stage, its images and seconds in this run (cold when
``FACECOM_CACHE_DIR`` points at an empty folder; a warm cache gives the seconds of cache hits)::

    python experiments/face_features.py                 # FACECOM in the repository -> reports/face_features/
    python experiments/face_features.py --data-root /data/facecom --workers 2

Everything is cached by file content under ``--cache`` (default: $FACECOM_CACHE_DIR or the
project cache), so an interrupted run resumes and the notebooks / the other drivers reuse it.
Order: quality features of every Task B image; descriptors of the clean images; of the distorted
images after the restoration for their type (warming the cache the per-image selector reads; the
selector itself chooses from pixels); of every distorted image unrestored. Cost, cold, on 2 CPU
cores: about 21.5 min for Task B's 15,408 training images (an earlier round's figure, not re-timed since).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import add_data_root, data_root, markdown_table, write_text
from facecom_utils.common.paths import REPORTS_DIR
from facecom_utils.data.cache import default_cache_dir
from facecom_utils.data.layout import scan_task_b
from facecom_utils.face.descriptors import DescriptorStore
from facecom_utils.face.quality import RESTORATION_FOR, quality_feature_matrix


def timing_table(stages: list[tuple[str, int, float]], cache: str, workers: int) -> str:
    """The timing table: one row per stage, then the total.

    Args:
        stages: ``(stage, images, seconds)`` in the order run.
        cache: The cache folder (named in the first line).
        workers: Worker processes (named in the first line).

    Returns:
        A first line (cache and workers), a blank line, the table.
    """
    rows = [[name, f"{n:,}", f"{sec:.0f}"] for name, n, sec in stages]
    rows.append(["total", "", f"{sum(sec for *_, sec in stages):.0f}"])
    return f"cache {cache}, {workers} workers\n\n" + markdown_table(["stage", "images", "seconds"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_root(ap)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--splits", default=None, help="comma-separated (default: every split present)")
    ap.add_argument("--out", type=Path, default=REPORTS_DIR / "face_features")
    args = ap.parse_args()
    cache = args.cache or default_cache_dir()
    table = scan_task_b(data_root(args.data_root, ("Task_B",)), splits=args.splits.split(",") if args.splits else None)
    t0 = time.perf_counter()
    quality_feature_matrix(table["path"], workers=args.workers, cache_dir=f"{cache}/face_model", progress=True)
    timings = [("quality features", len(table), time.perf_counter() - t0)]
    # mirrored, as notebook 03's face tracks read them (face_mirror); the plain rows, which Task A reads, come with them
    store = DescriptorStore(f"{cache}/face_model", workers=args.workers, progress=True, mirror=True)
    clean = table[table["distortion"].isna()]
    dist = table[table["distortion"].notna()]
    restorable = dist[dist["distortion"].isin(list(RESTORATION_FOR))]
    stages = [("descriptors, clean", clean["path"], "identity"),
              ("descriptors, restored", restorable["path"], [RESTORATION_FOR[d] for d in restorable["distortion"]]),
              ("descriptors, distorted unrestored", dist["path"], "identity")]
    for name, paths, restorations in stages:
        t0 = time.perf_counter()
        store.describe(list(paths), restorations)
        timings.append((name, len(paths), time.perf_counter() - t0))
        print(f"{name}: {len(paths)} images in {timings[-1][2]:.0f} s", flush=True)
    print(write_text(args.out / "face_features.md", timing_table(timings, str(cache), args.workers)).read_text())


if __name__ == "__main__":
    main()
