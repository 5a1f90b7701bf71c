"""Person-disjoint K-fold CV of notebook 02 or 03 as shipped (resumable): the estimates the README quotes.

    python scripts/cv_notebooks.py --notebook 03 --out reports/cv_recognition   # Task B, 3 folds
    python scripts/cv_notebooks.py --notebook 03 --out reports/cv_recognition --retrack   # re-score the tracks
    python scripts/cv_notebooks.py --notebook 02 --out reports/cv_gender       # Task A, 3 folds

The training split's people are divided (``--seed``) into ``--folds`` disjoint parts: for notebook 03
the identities are shuffled; for notebook 02 the split is person-grouped and stratified by gender.
Fold ``i`` gets a data root of symbolic links (nothing is copied): ``train`` holds the other parts'
people and ``val`` holds part ``i``, in both ``Task_A`` (image files) and ``Task_B`` (identity
folders, whose ``distortion/`` copies measure Task A's robustness). The notebook then runs on it with
the preset exactly as shipped (``facecom run --preset facecom_cpu --notebooks NN``): it trains on
``train`` minus its own person-disjoint validation fold, makes every choice there (epoch,
thresholds, restoration selector, heads, fusion weights) and reports ``val``, which it never saw.
A finished fold (its ``metrics.json`` has ``tracks``) is skipped, so an interrupted run resumes.

The summary (``summary.json``, ``summary.md``) gives every track's headline metrics, overall and per
distortion type, as mean, SD and mean - SD over the folds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

NOTEBOOKS = {"02": "02_gender_classification", "03": "03_arcface_recognition"}


def _link(link: Path, target: Path) -> None:
    if not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target.resolve(), target_is_directory=target.is_dir())


def held_out_people(data_root: Path, notebook: str, folds: int, seed: int) -> list[set[str]]:
    """The people of each fold's ``val`` part (Task B identity names)."""
    train = data_root / "Task_B" / "train"
    identities = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if notebook == "03":
        order = np.random.default_rng(seed).permutation(len(identities))
        return [{identities[j] for j in part} for part in np.array_split(order, folds)]
    from facecom_utils.data import scan_task_a
    from facecom_utils.gender_face import person_folds

    a = scan_task_a(data_root, splits=("train",))
    persons = a["person"].to_numpy()
    parts = [set(persons[te]) for _, te in person_folds(persons, (a["label"] == "female").to_numpy(), folds, 1, seed)]
    rest = sorted(set(identities) - set(persons))  # Task B identities without a Task A image
    for j, name in enumerate(rest):
        parts[j % folds].add(name)
    return parts


def make_fold_roots(data_root: Path, out: Path, notebook: str, folds: int, seed: int) -> list[Path]:
    """One symlinked data root per fold: ``Task_B/{train,val}/<identity>`` -> the identity's folder and,
    for notebook 02, ``Task_A/{train,val}/<label>/<file>`` -> the image."""
    train = data_root / "Task_B" / "train"
    identities = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    roots = []
    for i, held in enumerate(held_out_people(data_root, notebook, folds, seed)):
        root = out / f"fold{i}" / "data"
        for name in identities:
            _link(root / "Task_B" / ("val" if name in held else "train") / name, train / name)
        if notebook == "02":
            from facecom_utils.data import scan_task_a

            for row in scan_task_a(data_root, splits=("train",)).itertuples():
                path = Path(row.path)
                _link(root / "Task_A" / ("val" if row.person in held else "train") / row.label / path.name, path)
        roots.append(root)
    return roots


def fold_done(run_dir: Path, notebook: str) -> bool:
    file = run_dir / NOTEBOOKS[notebook] / "metrics.json"
    return file.is_file() and "tracks" in json.loads(file.read_text())


def run_fold(root: Path, out: Path, i: int, preset: str, notebook: str) -> None:
    cmd = [sys.executable, "-m", "facecom_utils", "run", "--preset", preset, "--data-root", str(root),
           "--notebooks", notebook, "--name", f"fold{i}", "--reports-dir", str(out / "runs"), "--no-html"]
    print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    (out / "runs" / f"fold{i}" / "cv_seconds.txt").write_text(f"{time.perf_counter() - t0:.0f}\n")


def retrack(run_dir: Path) -> dict:
    """Re-scores every track of a finished fold from its saved embeddings with the installed package."""
    from types import SimpleNamespace

    from facecom_utils import recognition as rec
    from facecom_utils.recognition import RecognitionConfig
    from facecom_utils.recognition.face_tracks import recognition_tracks
    from facecom_utils.rundir import RunDir

    rundir = RunDir(run_dir / NOTEBOOKS["03"])
    metrics = rundir.read_metrics()
    params = dict(metrics["parameters"])
    params.update(output_dir=str(rundir.path), progress=False)
    known = set(RecognitionConfig.__dataclass_fields__)
    config = RecognitionConfig(**{k: v for k, v in params.items() if k in known})
    splits = rec.recognition_splits(config)
    run = SimpleNamespace(output_dir=str(rundir.path), metrics=metrics, threshold=metrics["tracks"]["facecom_only"]["threshold"],
                          strict_threshold=metrics["tracks"]["facecom_only"]["strict_threshold"])
    recognition_tracks(config, splits, run)
    return rundir.read_metrics()


def _fold_values(notebook: str, t: dict) -> dict[str, float]:
    if notebook == "03":
        values = {"main top-1": t["top1"], "strict top-1": t["strict_top1"], "roc_auc": t.get("roc_auc"),
                  "strict roc_auc": t.get("strict_roc_auc"), "tar@far1e-3": t.get("tar_at_far_1e-3"),
                  "strict tar@far1e-3": t.get("strict_tar_at_far_1e-3"), "match_f1": t.get("match_f1"),
                  "strict match_f1": t.get("strict_match_f1")}
        values.update({f"main {k}": v for k, v in t["per_distortion"].items()})
        values.update({f"strict {k}": v for k, v in t["strict_per_distortion"].items()})
        return values
    values = {k: t.get(k) for k in ("balanced_accuracy", "recall_female", "recall_male", "roc_auc", "threshold")}
    per = t.get("per_distortion") or {}
    values.update({f"bal_acc {k}": v for k, v in per.items()})
    if per:
        values["worst type bal_acc"] = min(per.values())
    return values


def summarise(metrics: list[dict], notebook: str = "03") -> pd.DataFrame:
    """Rows (track, metric); columns fold values, mean, SD, mean - SD."""
    rows = {}
    for i, m in enumerate(metrics):
        for track, t in m["tracks"].items():
            values = _fold_values(notebook, t)
            for key, v in values.items():
                rows.setdefault((track, key), {})[f"fold{i}"] = v
        for kind, r in (m.get("selector") or {}).items():  # the restoration selector, per true type
            for key, v in r.items():
                rows.setdefault(("selector", f"{key} {kind}"), {})[f"fold{i}"] = v
    table = pd.DataFrame(rows).T.astype(float)
    folds = [c for c in table.columns if c.startswith("fold")]
    table["mean"] = table[folds].mean(axis=1)
    table["sd"] = table[folds].std(axis=1, ddof=1)
    table["mean - sd"] = table["mean"] - table["sd"]
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebook", choices=sorted(NOTEBOOKS), default="03")
    ap.add_argument("--data-root", default="../shared/facecom")
    ap.add_argument("--out", default=None, help="default: reports/cv_notebook<NN>")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="facecom_cpu")
    ap.add_argument("--retrack", action="store_true",
                    help="notebook 03: re-score the finished folds' tracks with today's code")
    args = ap.parse_args()
    out = Path(args.out or f"reports/cv_notebook{args.notebook}").absolute()
    roots = make_fold_roots(Path(args.data_root).absolute(), out, args.notebook, args.folds, args.seed)
    metrics = []
    for i, root in enumerate(roots):
        run_dir = out / "runs" / f"fold{i}"
        if not fold_done(run_dir, args.notebook):
            run_fold(root, out, i, args.preset, args.notebook)
        elif args.retrack and args.notebook == "03":
            print(f"fold{i}: re-scoring the tracks", flush=True)
            retrack(run_dir)
        metrics.append(json.loads((run_dir / NOTEBOOKS[args.notebook] / "metrics.json").read_text()))
    table = summarise(metrics, args.notebook)
    (out / "summary.json").write_text(json.dumps(
        {f"{t}/{k}": v for (t, k), v in table.round(4).to_dict(orient="index").items()}, indent=1))
    try:
        text = table.round(3).to_markdown()
    except ImportError:  # tabulate is optional
        text = table.round(3).to_string()
    (out / "summary.md").write_text(text)
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(table.round(3))


if __name__ == "__main__":
    main()
