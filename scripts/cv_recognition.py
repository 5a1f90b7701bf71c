"""Identity-disjoint K-fold CV of notebook 03 as shipped (resumable): the Task B estimate the README quotes.

    python scripts/cv_recognition.py --data-root ../shared/facecom --out reports/cv_recognition
    python scripts/cv_recognition.py --retrack     # re-score every track of the finished folds with today's code

The training split's identities are shuffled (``--seed``) into ``--folds`` identity-disjoint parts.
Fold ``i`` gets a data root of symbolic links (nothing is copied): ``Task_B/train`` holds the other
parts' identities and ``Task_B/val`` holds part ``i``. Notebook 03 then runs on it with the preset
exactly as shipped (``facecom run --preset facecom_cpu --notebooks 03``): it trains on ``train``
minus its own identity-disjoint validation fold, makes every choice (epoch, embedding, thresholds,
restoration selector, fusion weights) there, and reports ``val``, which it never saw. A finished
fold (its ``metrics.json`` has ``tracks``) is skipped, so an interrupted run resumes.

The summary (``summary.json``, ``summary.md``) gives every track's main and strict top-1, overall
and per type, as mean, SD and mean - SD over the folds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

NOTEBOOK = "03_arcface_recognition"


def make_fold_roots(data_root: Path, out: Path, folds: int, seed: int) -> list[Path]:
    """One symlinked data root per fold: ``Task_B/{train,val}/<identity>`` -> the identity's folder."""
    train = data_root / "Task_B" / "train"
    identities = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    order = np.random.default_rng(seed).permutation(len(identities))
    parts = np.array_split(order, folds)
    roots = []
    for i, part in enumerate(parts):
        root = out / f"fold{i}" / "data"
        held = {identities[j] for j in part}
        for name in identities:
            link = root / "Task_B" / ("val" if name in held else "train") / name
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to((train / name).resolve(), target_is_directory=True)
        roots.append(root)
    return roots


def fold_done(run_dir: Path) -> bool:
    file = run_dir / NOTEBOOK / "metrics.json"
    return file.is_file() and "tracks" in json.loads(file.read_text())


def run_fold(root: Path, out: Path, i: int, preset: str) -> None:
    cmd = [sys.executable, "-m", "facecom_utils", "run", "--preset", preset, "--data-root", str(root),
           "--notebooks", NOTEBOOK.split("_")[0], "--name", f"fold{i}", "--reports-dir", str(out / "runs"), "--no-html"]
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

    rundir = RunDir(run_dir / NOTEBOOK)
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


def summarise(metrics: list[dict]) -> pd.DataFrame:
    """Rows (track, metric); columns fold values, mean, SD, mean - SD."""
    rows = {}
    for i, m in enumerate(metrics):
        for track, t in m["tracks"].items():
            values = {"main top-1": t["top1"], "strict top-1": t["strict_top1"], "roc_auc": t.get("roc_auc"),
                      "strict roc_auc": t.get("strict_roc_auc")}
            values.update({f"main {k}": v for k, v in t["per_distortion"].items()})
            values.update({f"strict {k}": v for k, v in t["strict_per_distortion"].items()})
            for key, v in values.items():
                rows.setdefault((track, key), {})[f"fold{i}"] = v
    table = pd.DataFrame(rows).T.astype(float)
    folds = [c for c in table.columns if c.startswith("fold")]
    table["mean"] = table[folds].mean(axis=1)
    table["sd"] = table[folds].std(axis=1, ddof=1)
    table["mean - sd"] = table["mean"] - table["sd"]
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/facecom")
    ap.add_argument("--out", default="reports/cv_recognition")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="facecom_cpu")
    ap.add_argument("--retrack", action="store_true", help="re-score the finished folds' tracks with today's code")
    args = ap.parse_args()
    out = Path(args.out).absolute()
    roots = make_fold_roots(Path(args.data_root).absolute(), out, args.folds, args.seed)
    metrics = []
    for i, root in enumerate(roots):
        run_dir = out / "runs" / f"fold{i}"
        if not fold_done(run_dir):
            run_fold(root, out, i, args.preset)
        elif args.retrack:
            print(f"fold{i}: re-scoring the tracks", flush=True)
            retrack(run_dir)
        metrics.append(json.loads((run_dir / NOTEBOOK / "metrics.json").read_text()))
    table = summarise(metrics)
    (out / "summary.json").write_text(json.dumps(
        {f"{t}/{k}": v for (t, k), v in table.round(4).to_dict(orient="index").items()}, indent=1))
    (out / "summary.md").write_text(table.round(3).to_markdown())
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(table.round(3))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")


if __name__ == "__main__":
    main()
