"""Repeated person-grouped CV of Task A's face-model head (resumable): the numbers the README quotes.

    python experiments/cv_gender_face.py --data-root ../shared/facecom --out reports/cv_gender_face

Every choice is made inside each outer fold's training part: the restoration selector (fitted on
the training persons' pixels and image types), the head, and its threshold (an inner person-grouped
out-of-fold pass over the training persons). Test persons are scored clean and on each of their
real distorted copies (Task B's distortion folders). One CSV row per fold and variant is appended
as soon as it is done, so an interrupted run resumes. Descriptors come from the content-keyed cache
(``experiments/face_features.py`` warms it; missing ones are computed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from facecom_utils.data.cache import default_cache_dir
from facecom_utils.data.layout import scan_task_a
from facecom_utils.face.descriptors import DescriptorStore
from facecom_utils.gender.tracks import FaceHeadRecipe, sample_copies, cross_validate, summarise_folds, with_distorted_copies

VARIANTS = {
    # name: (restore, distorted_weight, glare_expert); a variant's "face" track is its face head alone
    "face_model": (False, 1.0, False),
    "face_model_restored": (True, 1.0, True),  # tracks: face (face_model_restored) and fused
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/facecom")
    ap.add_argument("--out", default="reports/cv_gender_face")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--copies", type=int, default=2, help="real distorted copies per image (as the presets' face_copies); -1: all")
    args = ap.parse_args()
    cache = Path(args.cache or default_cache_dir()) / "face_model"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = with_distorted_copies(scan_task_a(args.data_root, splits=("train",)), args.data_root, "train")
    rows = sample_copies(rows, None if args.copies < 0 else args.copies, 0).reset_index(drop=True)
    store = DescriptorStore(cache, workers=args.workers, progress=True)
    summaries = {}
    for name in args.variants.split(","):
        restore, weight, glare = VARIANTS[name]
        recipe = FaceHeadRecipe(store, restore=restore, distorted_weight=weight, glare_expert=glare,
                                feature_cache=cache, workers=args.workers)
        file = out / f"folds_{name}_copies{args.copies}.csv"
        done = pd.read_csv(file) if file.is_file() else pd.DataFrame()

        def save(i: int, row: dict) -> None:
            pd.DataFrame([row]).to_csv(file, mode="a", header=not file.is_file(), index=False)
            print(name, i, {k: round(v, 3) for k, v in row.items() if isinstance(v, float)}, flush=True)

        t0 = time.perf_counter()
        if len(done) < args.k * args.repeats * (2 if glare else 1):
            file.unlink(missing_ok=True)  # folds are cheap next to descriptors: redo a partial variant whole
            folds = cross_validate(rows, recipe, k=args.k, repeats=args.repeats, on_fold=save)
        else:
            folds = done
        stats = summarise_folds(folds)
        summaries[name] = {f"{t}/{m}": v for (t, m), v in stats.round(4).to_dict(orient="index").items()}
        print(f"\n{name} ({time.perf_counter() - t0:.0f} s)\n{stats.round(3)}", flush=True)
    (out / f"summary_copies{args.copies}.json").write_text(json.dumps(summaries, indent=1))


if __name__ == "__main__":
    main()
