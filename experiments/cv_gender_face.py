"""Repeated person-grouped CV of Task A's face-model head (resumable): the estimate the docs quote.

Feeds ``docs/results.md`` § "Task A — face-model head, 3 × 5-fold CV" with
``<out>/results_table_copies<N>.md`` (one row per variant and track: balanced accuracy and female
recall as mean ± SD (mean − SD) over the folds, ROC AUC, the worst distortion type, every type),
rewritten from the saved folds every time the driver runs::

    python experiments/cv_gender_face.py                      # FACECOM in the repository -> reports/cv_gender_face/
    python experiments/cv_gender_face.py --data-root /data/facecom --variants face_model_restored
    python experiments/cv_gender_face.py --mirror             # dlib's mirrored descriptor: files named *_mirror

Every choice is made inside each outer fold's training part: the restoration selector (fitted on
the training persons' pixels and image types), the head, and its threshold (an inner person-grouped
out-of-fold pass over the training persons). Test persons are scored clean and on each of their
real distorted copies (Task B's distortion folders). One CSV row per fold and variant
(``folds_<variant>_copies<N>.csv``) is appended as soon as it is done, so an interrupted run resumes;
``summary_copies<N>.json`` keeps every metric's mean, SD and mean − SD. Descriptors come from the
content-keyed cache (``experiments/face_features.py`` warms it, about 21 min on 2 CPU cores for Task B's
training images; missing ones are computed here). With a warm cache each fold fits logistic-regression
heads only (3 × 5 folds per variant; not timed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from _common import add_data_root, data_root, gender_table, markdown_table, paired_cell, write_text
from facecom_utils.common.paths import REPORTS_DIR
from facecom_utils.data.cache import default_cache_dir
from facecom_utils.data.layout import scan_task_a
from facecom_utils.face.descriptors import DescriptorStore
from facecom_utils.gender.tracks import FaceHeadRecipe, sample_copies, cross_validate, summarise_folds, with_distorted_copies

VARIANTS = {
    # name: (restore, distorted_weight, glare_expert); a variant's "face" track is its face head alone
    "face_model": (False, 1.0, False),
    "face_model_restored": (True, 1.0, True),  # tracks: face (face_model_restored) and fused
}


def results_table(stats: dict[str, pd.DataFrame]) -> str:
    """The docs' table from each variant's :func:`~facecom_utils.gender.tracks.summarise_folds` frame.

    Args:
        stats: Variant name -> its summary (index ``(track, metric)``, columns ``mean`` and ``std``;
            metrics ``bal_acc_<type>`` per type). A variant's ``face`` track is named after the variant,
            its other tracks ``<track> (<variant>)``.

    Returns:
        :func:`_common.gender_table` of all of them, in the order given.
    """
    parts = []
    for variant, frame in stats.items():
        frame = frame.rename(columns={"std": "sd"})
        frame.index = pd.MultiIndex.from_tuples(
            [(variant if track == "face" else f"{track} ({variant})", metric.replace("bal_acc_", "bal_acc ", 1))
             for track, metric in frame.index])
        parts.append(frame)
    return gender_table(pd.concat(parts))


#: The metrics :func:`paired_table` compares.
PAIRED_METRICS = ("balanced_accuracy", "recall_female", "roc_auc", "bal_acc_noisy", "bal_acc_rainy", "bal_acc_sunny",
                  "worst_type_bal_acc")


def paired_table(ours: dict[str, pd.DataFrame], base: dict[str, pd.DataFrame],
                 metrics: tuple[str, ...] = PAIRED_METRICS) -> str:
    """Markdown: per variant and track, the paired difference ``ours − base`` over the same (repeat, fold)
    pairs as mean ± SD (mean − SD) and the number of folds; "n/a" when no fold is in both.

    Args:
        ours, base: Variant name -> its folds (the driver's ``folds_*.csv``: ``track``, ``repeat``, ``fold``
            and the metrics).
    """
    rows = []
    for variant in ours:
        if variant not in base:
            continue
        keys = ["track", "repeat", "fold"]
        both = ours[variant].merge(base[variant], on=keys, suffixes=("", "_base"))
        for track, part in both.groupby("track", sort=False):
            name = variant if track == "face" else f"{track} ({variant})"
            for metric in metrics:
                if metric not in part or f"{metric}_base" not in part:  # e.g. a type without copies (--copies 0)
                    continue
                d = (part[metric] - part[f"{metric}_base"]).to_numpy(float)
                rows.append([f"`{name}`", metric, paired_cell(d), str(len(d))])
    return markdown_table(["track", "metric", "paired difference, mirrored − plain", "folds"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_root(ap)
    ap.add_argument("--out", default=str(REPORTS_DIR / "cv_gender_face"))
    ap.add_argument("--cache", default=None)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--copies", type=int, default=2, help="real distorted copies per image (as the presets' face_copies); -1: all")
    ap.add_argument("--mirror", action="store_true",
                    help="the mirrored descriptor (a chip's and its mirror's, averaged); every file's name ends in _mirror")
    args = ap.parse_args()
    tag = f"copies{args.copies}" + ("_mirror" if args.mirror else "")
    cache = Path(args.cache or default_cache_dir()) / "face_model"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = data_root(args.data_root, ("Task_A/train", "Task_B/train"))
    rows = with_distorted_copies(scan_task_a(root, splits=("train",)), root, "train")
    rows = sample_copies(rows, None if args.copies < 0 else args.copies, 0).reset_index(drop=True)
    store = DescriptorStore(cache, workers=args.workers, progress=True, mirror=args.mirror)
    summaries, stats_by_variant = {}, {}
    for name in args.variants.split(","):
        restore, weight, glare = VARIANTS[name]
        recipe = FaceHeadRecipe(store, restore=restore, distorted_weight=weight, glare_expert=glare,
                                feature_cache=cache, workers=args.workers)
        file = out / f"folds_{name}_{tag}.csv"
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
        stats = stats_by_variant[name] = summarise_folds(folds)
        summaries[name] = {f"{t}/{m}": v for (t, m), v in stats.round(4).to_dict(orient="index").items()}
        print(f"\n{name} ({time.perf_counter() - t0:.0f} s)\n{stats.round(3)}", flush=True)
    (out / f"summary_{tag}.json").write_text(json.dumps(summaries, indent=1))
    write_text(out / f"results_table_{tag}.md", results_table(stats_by_variant))
    plain_tag, mirror_tag = f"copies{args.copies}", f"copies{args.copies}_mirror"
    folds = {t: {name: pd.read_csv(out / f"folds_{name}_{t}.csv") for name in VARIANTS
                 if (out / f"folds_{name}_{t}.csv").is_file()} for t in (plain_tag, mirror_tag)}
    if folds[plain_tag] and folds[mirror_tag]:  # both runs done: the mirrored descriptor against the plain one
        write_text(out / f"paired_{mirror_tag}_vs_plain.md", paired_table(folds[mirror_tag], folds[plain_tag]))


if __name__ == "__main__":
    main()
