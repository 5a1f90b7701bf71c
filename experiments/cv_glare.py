"""Task A's glare CNN on unseen persons' real sunny copies, per fold and variant (resumable).

    python experiments/cv_glare.py --fold-roots /work/cvA2/fold0/data /work/cvA2/fold1/data ... --out reports/cv_glare

Each fold root is a FACECOM layout whose ``Task_A/train`` and ``Task_A/val`` hold disjoint persons
(``experiments/cv_notebooks.py`` builds them). The glare CNN is fitted as notebook 02's fused track fits
it with the CPU preset (every real sunny copy of the training persons, in the same order; seed 0,
128 px, channels-last, ``--members`` networks of ``--epochs`` epochs; its threshold chosen inside
them) and scored on the ``val`` persons' sunny copies: that is the fused track's
``per_distortion.sunny`` (every sunny copy the selector routes to the glare expert; on the three
folds 99.9-100 % were). ``--device cuda --image-size 224`` gives the GPU preset's glare expert.
One ``.npz`` of predictions per fold and variant is written as soon as it is done, so an
interrupted run resumes; ``summary.csv`` is rewritten at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from facecom_utils.data.layout import scan_task_a
from facecom_utils.metrics.classification import binary_metrics
from facecom_utils.gender.tracks import female_labels, with_distorted_copies
from facecom_utils.gender.glare import fit_glare_cnn, person_balanced_accuracy


def sunny_rows(root: str, split: str) -> pd.DataFrame:
    rows = with_distorted_copies(scan_task_a(root, splits=(split,)), root, split)
    return rows[rows["kind"] == "sunny"].reset_index(drop=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fold-roots", nargs="+", required=True)
    ap.add_argument("--out", default="reports/cv_glare")
    ap.add_argument("--members", default="3", help="comma-separated ensemble sizes to compare (1: held-out fifth)")
    ap.add_argument("--epochs", type=int, default=4, help="per network (the presets: 4)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for f, root in enumerate(args.fold_roots):
        train, test = sunny_rows(root, "train"), sunny_rows(root, "val")
        y_test, p_test = female_labels(test), test["person"].to_numpy()
        for members in (int(m) for m in args.members.split(",")):
            file = out / f"fold{f}_members{members}_epochs{args.epochs}_size{args.image_size}_seed{args.seed}.npz"
            if not file.is_file():
                t0 = time.perf_counter()
                cnn = fit_glare_cnn(train["path"], female_labels(train), train["person"], image_size=args.image_size,
                                    epochs=args.epochs, seed=args.seed, channels_last=True, members=members,
                                    device=args.device)
                prob = cnn.probabilities(test["path"].tolist(), device=args.device)
                np.savez(file, prob=prob, threshold=cnn.threshold, info=json.dumps(cnn.info),
                         seconds=time.perf_counter() - t0)
            d = np.load(file)
            m = binary_metrics(y_test, d["prob"], float(d["threshold"]))
            summary.append({"fold": f, "members": members, "balanced_accuracy": m["balanced_accuracy"],
                            "recall_female": m["recall_female"], "recall_male": m["recall_male"],
                            "roc_auc": m["roc_auc"], "threshold": float(d["threshold"]),
                            "person_balanced_accuracy": person_balanced_accuracy(y_test, d["prob"], p_test,
                                                                                 float(d["threshold"])),
                            "seconds": float(d["seconds"]), "n": len(test)})
            print(summary[-1], flush=True)
    table = pd.DataFrame(summary)
    table.to_csv(out / "summary.csv", index=False)
    agg = table.groupby("members")[["balanced_accuracy", "recall_female", "roc_auc", "seconds"]].agg(["mean", "std"])
    print(agg.round(3).to_string())


if __name__ == "__main__":
    main()
