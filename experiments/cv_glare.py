"""Task A's glare CNN on unseen persons' real sunny copies, per fold and variant (resumable).

Feeds ``docs/results.md`` § "Task A — the glare expert alone" with ``<out>/summary.md``: one row per
variant (ensemble size, epochs, image size, synthetic glare, starting weights, learning rate) with
balanced accuracy and female recall as mean ± SD (mean − SD) over the folds, ROC AUC, person-balanced
accuracy, each fold's balanced accuracy and the fit's seconds; then every variant paired by fold with
the shipped one. The summary is rebuilt from *every* saved ``.npz`` in ``--out`` each time the driver
runs, so variants run on different command lines into one folder end up in one table::

    python experiments/cv_glare.py                   # the folds of cv_notebooks.py --notebook 02 -> reports/cv_glare/
    python experiments/cv_glare.py --members 1,3 --fold-roots /x/fold0/data /x/fold1/data /x/fold2/data
    python experiments/cv_glare.py --init cnn --lr 3e-4   # start from the fold's notebook-02 gender CNN

Each fold root is a FACECOM layout whose ``Task_A/train`` and ``Task_A/val`` hold disjoint persons;
``experiments/cv_notebooks.py --notebook 02`` builds them (symbolic links into its data root), and by
default this driver reads those (``reports/cv_notebook02/fold*/data``). The glare CNN is fitted as
notebook 02's fused track fits it with the CPU preset (every real sunny copy of the training persons,
in the same order; seed 0, 128 px, channels-last, ``--members`` networks of ``--epochs`` epochs; its
threshold chosen inside them) and scored on the ``val`` persons' sunny copies: that is the fused
track's ``per_distortion.sunny`` (every sunny copy the selector routes to the glare expert; on the
three folds 99.9-100 % were). ``--device cuda --image-size 224`` gives the GPU preset's glare expert.
``--init cnn`` starts every member from the gender CNN that notebook 02 trained on the fold (its
``best.pt`` in the CV's run folder), which never saw the fold's ``val`` persons.
One ``.npz`` of predictions per fold and variant is written as soon as it is done, so an
interrupted run resumes; use one ``--out`` per set of fold roots (a fold's ``.npz`` is scored on that
fold root's ``val`` persons).
Cost per fold on 2 quiet CPU cores (measured): three networks of 4 epochs (the default) 216-249 s;
of 6 epochs 337-378 s; one network of 6 epochs 109-151 s.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cv_notebooks import fold_run_dir
from _common import MISSING, markdown_table, paired_cell, spread, write_text
from facecom_utils.common.checkpoints import load_checkpoint
from facecom_utils.common.paths import REPORTS_DIR
from facecom_utils.data.layout import scan_task_a
from facecom_utils.metrics.classification import binary_metrics
from facecom_utils.gender.tracks import female_labels, with_distorted_copies
from facecom_utils.gender.glare import fit_glare_cnn, person_balanced_accuracy
from facecom_utils.train.rundir import RunDir


def sunny_rows(root: str, split: str) -> pd.DataFrame:
    rows = with_distorted_copies(scan_task_a(root, splits=(split,)), root, split)
    return rows[rows["kind"] == "sunny"].reset_index(drop=True)


VARIANT = ("members", "epochs", "image_size", "synthetic", "init", "lr")
"""What tells two glare experts apart (with the seed): a column of ``summary.csv`` each."""
SHIPPED = {"members": 3, "epochs": 4, "image_size": 128, "synthetic": 0, "init": "imagenet", "lr": 1e-3}
"""The presets' glare expert: the variant every other one is paired with."""
_NAME = re.compile(r"fold(?P<fold>\d+)_members(?P<members>\d+)_epochs(?P<epochs>\d+)_size(?P<image_size>\d+)"
                   r"_seed(?P<seed>\d+)(?:_synthetic(?P<synthetic>\d+))?(?:_init(?P<init>[a-z]+))?"
                   r"(?:_lr(?P<lr>[0-9.e-]+))?\.npz")


def file_name(fold: int, seed: int, **variant: Any) -> str:
    """The ``.npz`` of one fold and variant (``VARIANT``'s keys). Members, epochs and image size are always in
    the name; synthetic glare, starting weights and learning rate only where they differ from the shipped ones,
    so the files of earlier runs keep their names.

    Raises:
        ValueError: A learning rate that six significant digits do not write exactly (two such rates would
            share a file, and the second run would be taken for the first one resumed).
    """
    v = {**SHIPPED, **variant}
    if float(f"{v['lr']:g}") != v["lr"]:
        raise ValueError(f"learning rate {v['lr']!r}: give it in at most six significant digits")
    name = f"fold{fold}_members{v['members']}_epochs{v['epochs']}_size{v['image_size']}_seed{seed}"
    name += f"_synthetic{v['synthetic']}" if v["synthetic"] else ""
    name += f"_init{v['init']}" if v["init"] != SHIPPED["init"] else ""
    name += f"_lr{v['lr']:g}" if v["lr"] != SHIPPED["lr"] else ""
    return name + ".npz"


def parse_name(name: str) -> dict[str, Any] | None:
    """:func:`file_name`'s fold, seed and variant back from a file name; ``None`` for any other name, including
    one that :func:`file_name` would not write (``_lr0.001``, ``_synthetic0``: the shipped setting spelt out,
    which would give a fold a second shipped row)."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    g = match.groupdict()
    try:
        key = {"fold": int(g["fold"]), "seed": int(g["seed"]), "members": int(g["members"]), "epochs": int(g["epochs"]),
            "image_size": int(g["image_size"]), "synthetic": int(g["synthetic"] or 0),
            "init": g["init"] or SHIPPED["init"], "lr": float(g["lr"]) if g["lr"] else SHIPPED["lr"]}
        same = file_name(**key) == name
    except ValueError:
        return None
    return key if same else None


def _with_variant(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with every ``VARIANT`` column and ``seed``, the shipped setting where one is absent."""
    return summary.assign(**{k: summary[k] if k in summary else v for k, v in {**SHIPPED, "seed": 0}.items()})


def variant_label(members: int, epochs: int, image_size: int, synthetic: int = 0, init: str = "imagenet",
                  lr: float = 1e-3) -> str:
    """A table's name of a variant, e.g. ``3 networks, 4 epochs, 128 px, from the fold's gender CNN``."""
    label = f"{members} network{'s' if members > 1 else ''}, {epochs} epochs, {image_size} px"
    label += f", + {synthetic} synthetic glare per copy" if synthetic else ""
    label += ", from the fold's gender CNN" if init == "cnn" else ""
    return label + (f", lr {lr:g}" if lr != SHIPPED["lr"] else "")


def glare_table(summary: pd.DataFrame) -> str:
    """The docs' table: one row per variant (``VARIANT``) and seed over its folds, the shipped variant first.

    Args:
        summary: ``summary.csv``'s rows: ``fold``, the ``VARIANT`` columns (absent: as shipped), ``seed``,
            ``balanced_accuracy``, ``recall_female``, ``roc_auc``, ``person_balanced_accuracy``, ``seconds``.

    Returns:
        Columns: the variant, balanced accuracy and female recall as mean ± SD (mean − SD), ROC AUC and
        person-balanced accuracy as mean ± SD, each fold's balanced accuracy, the fit's seconds (min-max).
    """
    rows = []
    summary = _with_variant(summary)
    shipped = tuple(SHIPPED[k] for k in VARIANT)
    for key, part in sorted(summary.groupby([*VARIANT, "seed"], sort=True), key=lambda kv: kv[0][:-1] != shipped):
        part = part.sort_values("fold")
        cell = {k: spread(part[k].mean(), part[k].std(ddof=1), floor=k in ("balanced_accuracy", "recall_female"))
                for k in ("balanced_accuracy", "recall_female", "roc_auc", "person_balanced_accuracy")}
        seed = f", seed {key[-1]}" if summary["seed"].nunique() > 1 else ""
        rows.append([variant_label(*key[:-1]) + seed, *cell.values(),
                     ", ".join(f"{v:.3f}" for v in part["balanced_accuracy"]),
                     f"{part['seconds'].min():.0f}-{part['seconds'].max():.0f}"])
    return markdown_table(["glare expert", "balanced acc.", "female recall", "ROC AUC", "person bal. acc.",
                           "per fold", "fit seconds"], rows)


def glare_paired(summary: pd.DataFrame) -> str:
    """Each variant against the shipped one (``SHIPPED``, same seed), paired by fold: balanced accuracy, female
    recall and ROC AUC as ``+mean ± SD (+mean − SD)``, each fold's balanced accuracy difference; "" when no
    variant has a shipped row to pair with."""
    rows = []
    summary = _with_variant(summary)
    shipped = (summary[list(SHIPPED)] == pd.Series(SHIPPED)).all(axis=1)
    seeds = summary["seed"].nunique() > 1
    for key, part in summary[~shipped].groupby([*VARIANT, "seed"], sort=True):
        base = summary[shipped & (summary["seed"] == key[-1])]
        both = part.merge(base, on="fold", suffixes=("", "_base")).sort_values("fold")
        label = variant_label(*key[:-1]) + (f", seed {key[-1]}" if seeds else "")
        if both.empty:
            rows.append([f"{label}: no shipped run of its seed and folds to pair with", *[MISSING] * 4])
            continue
        diffs = {k: (both[k] - both[f"{k}_base"]).to_numpy() for k in ("balanced_accuracy", "recall_female", "roc_auc")}
        rows.append([f"{label} − shipped", *(paired_cell(d) for d in diffs.values()),
                     " ".join(f"{v:+.3f}" for v in diffs["balanced_accuracy"])])
    if not rows:
        return ""
    return markdown_table(["paired by fold, against 3 networks, 4 epochs, 128 px", "balanced acc.", "female recall",
                           "ROC AUC", "balanced acc. per fold"], rows)


def cnn_checkpoint(root: str) -> Path:
    """The gender CNN that notebook 02 trained on fold root ``root`` (``cv_notebooks.py --notebook 02``'s layout:
    ``<cv>/fold<k>/data`` and :func:`cv_notebooks.fold_run_dir`)."""
    fold = Path(root).parent
    best = RunDir(fold_run_dir(fold.parent, int(fold.name.removeprefix("fold")), "02")).best_checkpoint
    if not best.is_file():
        raise SystemExit(f"{best}: no notebook-02 CNN for fold root {root} (--init cnn starts from it)")
    return best


def summarise(out: Path, roots: list[str]) -> pd.DataFrame:
    """One row per saved ``.npz`` in ``out`` (every fold and variant run into it), scored on its fold's ``val``
    persons' sunny copies: ``summary.csv``'s rows."""
    rows, tests = [], {}
    for file in sorted(out.glob("fold*.npz")):
        key = parse_name(file.name)
        if key is None:
            continue
        if key["fold"] >= len(roots):
            print(f"left out of the summary: {file.name} (fold {key['fold']}, but {len(roots)} fold roots given)")
            continue
        if key["fold"] not in tests:
            tests[key["fold"]] = sunny_rows(roots[key["fold"]], "val")
        test = tests[key["fold"]]
        y_test, d = female_labels(test), np.load(file)
        if len(d["prob"]) != len(test):
            raise SystemExit(f"{file}: {len(d['prob'])} predictions for {len(test)} sunny copies of "
                             f"{roots[key['fold']]}: another fold root's run (use another --out)")
        m = binary_metrics(y_test, d["prob"], float(d["threshold"]))
        rows.append({**key, "balanced_accuracy": m["balanced_accuracy"], "recall_female": m["recall_female"],
                     "recall_male": m["recall_male"], "roc_auc": m["roc_auc"], "threshold": float(d["threshold"]),
                     "person_balanced_accuracy": person_balanced_accuracy(y_test, d["prob"], test["person"].to_numpy(),
                                                                          float(d["threshold"])),
                     "seconds": float(d["seconds"]), "n": len(test)})
    return pd.DataFrame(rows)


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
    ap.add_argument("--init", default="imagenet",
                    help="comma-separated starting weights to compare: imagenet (as shipped) or cnn (the gender CNN "
                         "notebook 02 trained on the fold, read from the notebook-02 CV's run folder)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate per network (shipped: 1e-3)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    roots = fold_roots(args.fold_roots)
    variants = [{"members": int(m), "epochs": args.epochs, "image_size": args.image_size, "synthetic": int(n),
                 "init": init, "lr": args.lr}
                for m in args.members.split(",") for n in args.synthetic.split(",") for init in args.init.split(",")]
    for f, root in enumerate(roots):
        train = sunny_rows(root, "train")
        for v in variants:
            file = out / file_name(f, args.seed, **v)
            if file.is_file():
                continue
            t0 = time.perf_counter()
            init = None
            if v["init"] == "cnn":
                init = load_checkpoint(cnn_checkpoint(root), map_location="cpu")["model"]
            elif v["init"] != "imagenet":
                raise SystemExit(f"--init {v['init']}: expected imagenet or cnn")
            cnn = fit_glare_cnn(train["path"], female_labels(train), train["person"], image_size=v["image_size"],
                                epochs=v["epochs"], lr=v["lr"], seed=args.seed, channels_last=True,
                                members=v["members"], device=args.device, sources=train["image"].tolist(),
                                synthetic=v["synthetic"], init=init)
            prob = cnn.probabilities(sunny_rows(root, "val")["path"].tolist(), device=args.device)
            np.savez(file, prob=prob, threshold=cnn.threshold, info=json.dumps(cnn.info),
                     seconds=time.perf_counter() - t0)
            print(file.name, json.dumps(cnn.info.get("holdout_balanced_accuracy")), flush=True)
    table = summarise(out, roots)
    table.to_csv(out / "summary.csv", index=False)
    paired = glare_paired(table)
    print(write_text(out / "summary.md", glare_table(table) + ("\n\n" + paired if paired else "") + "\n").read_text())


if __name__ == "__main__":
    main()
