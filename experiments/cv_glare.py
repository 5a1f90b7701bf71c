"""Task A's glare CNN on unseen persons' real sunny copies, per fold and variant (resumable).

Feeds ``docs/results.md`` § "Task A — the glare expert alone" with ``<out>/summary.md`` (one row per
ensemble size, epochs and image size: balanced accuracy and female recall as mean ± SD (mean − SD)
over the folds, ROC AUC, person-balanced accuracy, each fold's balanced accuracy, the fit's seconds),
rewritten from the saved predictions every time the driver runs::

    python experiments/cv_glare.py                   # the folds of cv_notebooks.py --notebook 02 -> reports/cv_glare/
    python experiments/cv_glare.py --members 1,3 --fold-roots /x/fold0/data /x/fold1/data /x/fold2/data

Each fold root is a FACECOM layout whose ``Task_A/train`` and ``Task_A/val`` hold disjoint persons;
``experiments/cv_notebooks.py --notebook 02`` builds them (symbolic links into its data root), and by
default this driver reads those (``reports/cv_notebook02/fold*/data``). The glare CNN is fitted as
notebook 02's fused track fits it with the CPU preset (every real sunny copy of the training persons,
in the same order; seed 0, 128 px, channels-last, ``--members`` networks of ``--epochs`` epochs; its
threshold chosen inside them) and scored on the ``val`` persons' sunny copies: that is the fused
track's ``per_distortion.sunny`` (every sunny copy the selector routes to the glare expert; on the
three folds 99.9-100 % were). ``--device cuda --image-size 224`` gives the GPU preset's glare expert.
One ``.npz`` of predictions per fold and variant is written as soon as it is done, so an
interrupted run resumes; ``summary.csv`` (one row per fold and variant) and ``summary.md`` are
rewritten at the end. Cost per fold on 2 quiet CPU cores (measured): three networks of 4 epochs (the
default) 216-249 s; of 6 epochs 337-378 s; one network of 6 epochs 109-151 s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _common import markdown_table, paired_cell, spread, write_text
from facecom_utils.common.paths import REPORTS_DIR
from facecom_utils.data.layout import scan_task_a
from facecom_utils.metrics.classification import binary_metrics
from facecom_utils.gender.tracks import female_labels, with_distorted_copies
from facecom_utils.gender.glare import fit_glare_cnn, person_balanced_accuracy


def sunny_rows(root: str, split: str) -> pd.DataFrame:
    rows = with_distorted_copies(scan_task_a(root, splits=(split,)), root, split)
    return rows[rows["kind"] == "sunny"].reset_index(drop=True)


def glare_table(summary: pd.DataFrame) -> str:
    """The docs' table: one row per variant (ensemble size, epochs, image size) over its folds.

    Args:
        summary: ``summary.csv``'s rows: ``fold``, ``members``, ``epochs``, ``image_size``,
            ``balanced_accuracy``, ``recall_female``, ``roc_auc``, ``person_balanced_accuracy``, ``seconds``.

    Returns:
        Columns: the variant, balanced accuracy and female recall as mean ± SD (mean − SD), ROC AUC and
        person-balanced accuracy as mean ± SD, each fold's balanced accuracy, the fit's seconds (min-max).
    """
    rows = []
    summary = summary.assign(synthetic=summary["synthetic"] if "synthetic" in summary else 0)
    for (members, epochs, size, synthetic), part in summary.groupby(["members", "epochs", "image_size", "synthetic"],
                                                                    sort=True):
        part = part.sort_values("fold")
        cell = {k: spread(part[k].mean(), part[k].std(ddof=1), floor=k in ("balanced_accuracy", "recall_female"))
                for k in ("balanced_accuracy", "recall_female", "roc_auc", "person_balanced_accuracy")}
        extra = f", + {synthetic} synthetic glare per copy" if synthetic else ""
        rows.append([f"{members} network{'s' if members > 1 else ''}, {epochs} epochs, {size} px{extra}",
                     *cell.values(), ", ".join(f"{v:.3f}" for v in part["balanced_accuracy"]),
                     f"{part['seconds'].min():.0f}-{part['seconds'].max():.0f}"])
    return markdown_table(["glare expert", "balanced acc.", "female recall", "ROC AUC", "person bal. acc.",
                           "per fold", "fit seconds"], rows)


def glare_paired(summary: pd.DataFrame) -> str:
    """Each variant with synthetic glare against the same variant without (members, epochs, image size), paired
    by fold: balanced accuracy, female recall and ROC AUC as ``+mean ± SD (+mean − SD)``; "" when none."""
    rows = []
    if "synthetic" not in summary:
        return ""
    keys = ["members", "epochs", "image_size"]
    for (members, epochs, size, synthetic), part in summary.groupby([*keys, "synthetic"], sort=True):
        base = summary[(summary[keys] == (members, epochs, size)).all(axis=1) & (summary["synthetic"] == 0)]
        if not synthetic or base.empty:
            continue
        both = part.merge(base, on="fold", suffixes=("", "_base")).sort_values("fold")
        diffs = {k: (both[k] - both[f"{k}_base"]).to_numpy() for k in ("balanced_accuracy", "recall_female", "roc_auc")}
        rows.append([f"{members} networks, {epochs} epochs, {size} px: + {synthetic} synthetic − none",
                     *(paired_cell(d) for d in diffs.values()),
                     " ".join(f"{v:+.3f}" for v in diffs["balanced_accuracy"])])
    if not rows:
        return ""
    return markdown_table(["paired by fold", "balanced acc.", "female recall", "ROC AUC", "balanced acc. per fold"],
                          rows)


def fold_roots(given: list[str] | None) -> list[str]:
    """``--fold-roots``, else the fold roots ``cv_notebooks.py --notebook 02`` built in the repository's reports."""
    roots = given or sorted(str(p) for p in (REPORTS_DIR / "cv_notebook02").glob("fold*/data"))
    if not roots:
        raise SystemExit(f"no fold roots in {REPORTS_DIR / 'cv_notebook02'}: run experiments/cv_notebooks.py "
                         "--notebook 02 first (it builds them), or pass --fold-roots")
    return roots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fold-roots", nargs="+", default=None,
                    help="FACECOM layouts with disjoint persons in Task_A/train and Task_A/val "
                         "(default: reports/cv_notebook02/fold*/data)")
    ap.add_argument("--out", default=str(REPORTS_DIR / "cv_glare"))
    ap.add_argument("--members", default="3", help="comma-separated ensemble sizes to compare (1: held-out fifth)")
    ap.add_argument("--epochs", type=int, default=4, help="per network (the presets: 4)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic", default="0",
                    help="comma-separated counts to compare: renderings of our own sunny distortion of each training "
                         "copy's clean source, added to the members' training images (0: the real copies only, as "
                         "shipped)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for f, root in enumerate(fold_roots(args.fold_roots)):
        train, test = sunny_rows(root, "train"), sunny_rows(root, "val")
        y_test, p_test = female_labels(test), test["person"].to_numpy()
        variants = [(int(m), int(n)) for m in args.members.split(",") for n in args.synthetic.split(",")]
        for members, synthetic in variants:
            tag = f"_synthetic{synthetic}" if synthetic else ""
            file = out / f"fold{f}_members{members}_epochs{args.epochs}_size{args.image_size}_seed{args.seed}{tag}.npz"
            if not file.is_file():
                t0 = time.perf_counter()
                cnn = fit_glare_cnn(train["path"], female_labels(train), train["person"], image_size=args.image_size,
                                    epochs=args.epochs, seed=args.seed, channels_last=True, members=members,
                                    device=args.device, sources=train["image"].tolist(), synthetic=synthetic)
                prob = cnn.probabilities(test["path"].tolist(), device=args.device)
                np.savez(file, prob=prob, threshold=cnn.threshold, info=json.dumps(cnn.info),
                         seconds=time.perf_counter() - t0)
            d = np.load(file)
            m = binary_metrics(y_test, d["prob"], float(d["threshold"]))
            summary.append({"fold": f, "members": members, "epochs": args.epochs, "image_size": args.image_size,
                            "synthetic": synthetic,
                            "balanced_accuracy": m["balanced_accuracy"],
                            "recall_female": m["recall_female"], "recall_male": m["recall_male"],
                            "roc_auc": m["roc_auc"], "threshold": float(d["threshold"]),
                            "person_balanced_accuracy": person_balanced_accuracy(y_test, d["prob"], p_test,
                                                                                 float(d["threshold"])),
                            "seconds": float(d["seconds"]), "n": len(test)})
            print(summary[-1], flush=True)
    table = pd.DataFrame(summary)
    table.to_csv(out / "summary.csv", index=False)
    paired = glare_paired(table)
    print(write_text(out / "summary.md", glare_table(table) + ("\n\n" + paired if paired else "") + "\n").read_text())


if __name__ == "__main__":
    main()
