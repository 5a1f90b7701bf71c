"""Precompute (resumably) what the face-model tracks read: quality features and dlib descriptors.

    python experiments/face_features.py --data-root ../shared/facecom --workers 2

Everything is cached by file content under ``--cache`` (default: $FACECOM_CACHE_DIR or the
project cache), so an interrupted run resumes and the notebooks / CV scripts reuse it.
Order: quality features of every Task B image; descriptors of the clean images; of the distorted
images after the restoration for their type (warming the cache the per-image selector reads; the
selector itself chooses from pixels); of every distorted image unrestored.
"""

from __future__ import annotations

import argparse
import time

from facecom_utils.data.cache import default_cache_dir
from facecom_utils.data.layout import scan_task_b
from facecom_utils.face.descriptors import DescriptorStore
from facecom_utils.face.quality import RESTORATION_FOR, quality_feature_matrix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/facecom")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--splits", default=None, help="comma-separated (default: every split present)")
    args = ap.parse_args()
    cache = args.cache or default_cache_dir()
    table = scan_task_b(args.data_root, splits=args.splits.split(",") if args.splits else None)
    t0 = time.perf_counter()
    quality_feature_matrix(table["path"], workers=args.workers, cache_dir=f"{cache}/face_model", progress=True)
    print(f"quality features of {len(table)} images: {time.perf_counter() - t0:.0f} s", flush=True)
    store = DescriptorStore(f"{cache}/face_model", workers=args.workers, progress=True)
    clean = table[table["distortion"].isna()]
    dist = table[table["distortion"].notna()]
    restorable = dist[dist["distortion"].isin(list(RESTORATION_FOR))]
    stages = [("clean", clean["path"], "identity"),
              ("restored", restorable["path"], [RESTORATION_FOR[d] for d in restorable["distortion"]]),
              ("distorted, unrestored", dist["path"], "identity")]
    for name, paths, restorations in stages:
        t0 = time.perf_counter()
        store.describe(list(paths), restorations)
        print(f"descriptors, {name}: {len(paths)} images in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
