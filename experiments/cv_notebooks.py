"""Person-disjoint K-fold CV of notebook 02 or 03 as shipped (resumable): the estimates the docs quote.

Feeds ``docs/results.md`` § "Task B — 3-fold CV of notebook 03" (its two tables: top-1 per track and
type, verification per track), § "Task A — 3-fold CV of notebook 02" and, with ``--cheap-repeats``,
§ "Task B — the cheap stages, repeated". Each is a Markdown file in ``--out``, rewritten from the
finished folds every time the driver runs (so ``--retrack`` or a resumed fold refreshes it)::

    python experiments/cv_notebooks.py --notebook 03                    # Task B, 3 folds: reports/cv_notebook03/
    python experiments/cv_notebooks.py --notebook 03 --retrack          # re-score the finished folds' tracks
    python experiments/cv_notebooks.py --notebook 03 --cheap-repeats 20 # then the cheap stages x20 per fold
    python experiments/cv_notebooks.py --notebook 02                    # Task A, 3 folds: reports/cv_notebook02/

Writes ``results_table.md`` (the table(s) the docs quote: mean ± SD over the folds, with mean − SD in
brackets), ``summary.md`` / ``summary.json`` (every metric of every track, per fold, mean, SD,
mean − SD) and, for the cheap repeats, ``cheap_repeats.md`` / ``cheap_repeats.json``. Cost on 2 CPU
cores: notebook 03 about 25 min per fold (23.9-27.8 min measured), notebook 02 about 20 min per fold;
each fold's time is kept in ``runs/fold<i>/cv_seconds.txt``, each cheap repeat prints its own.

FACECOM is read from ``--data-root``, else ``$FACECOM_DATA_ROOT``, else the repository's ``Task_A/``
and ``Task_B/`` (where their READMEs put the images). The training split's people are divided
(``--seed``) into ``--folds`` disjoint parts: for notebook 03
the identities are shuffled; for notebook 02 the split is person-grouped and stratified by gender.
Fold ``i`` gets a data root of symbolic links (nothing is copied): ``train`` holds the other parts'
people and ``val`` holds part ``i``, in both ``Task_A`` (image files) and ``Task_B`` (identity
folders, whose ``distortion/`` copies measure Task A's robustness). The notebook then runs on it with
the preset exactly as shipped (``facecom run --preset facecom_cpu --notebooks NN``): it trains on
``train`` minus its own person-disjoint validation fold, makes every choice there (epoch,
thresholds, restoration selector, heads, fusion weights) and reports ``val``, which it never saw.
A finished fold (its ``metrics.json`` has ``tracks``) is skipped, so an interrupted run resumes.

``--cheap-repeats R`` (notebook 03) then re-chooses the cheap stages R times per fold on its fixed
embeddings: the restoration selector (its own training sample), the copy cohort, and on a seeded 80 %
of the validation fold's identities the fusion weights, the score calibration and the thresholds. The
fused track is scored on the fold's ``val`` each time; ``cheap_repeats.md`` gives each fold's mean and
SD over its repeats, the spread within folds (the cheap stages') and between folds (the embedder's and
the people's). Finished repeats are kept in ``cheap_repeats.json``, so it resumes too.
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
import yaml

from _common import (MISSING, add_data_root, data_root, frame_table, gender_table, markdown_table, number, paired_cell,
                     run_config, stat_cell, write_text)
from facecom_utils.common.paths import REPORTS_DIR
from facecom_utils.data.layout import DISTORTION_TYPES

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
    from facecom_utils.data.layout import scan_task_a
    from facecom_utils.data.splits import person_folds

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
            from facecom_utils.data.layout import scan_task_a

            for row in scan_task_a(data_root, splits=("train",)).itertuples():
                path = Path(row.path)
                _link(root / "Task_A" / ("val" if row.person in held else "train") / row.label / path.name, path)
        roots.append(root)
    return roots


def fold_run_dir(cv_dir: Path, i: int, notebook: str) -> Path:
    """Fold ``i``'s notebook run folder in a CV folder this driver wrote (``<cv>/runs/fold<i>/<notebook name>``)."""
    return Path(cv_dir) / "runs" / f"fold{i}" / NOTEBOOKS[notebook]


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


def _run_context(run_dir: Path, overrides: dict | None = None):
    """``(config, splits, run, rundir)`` of a finished notebook-03 fold, rebuilt from its ``metrics.json``
    (``overrides``: parameters that replace the run's own, e.g. ``{"face_mirror": False}``)."""
    from types import SimpleNamespace

    from facecom_utils import recognition as rec
    from facecom_utils.recognition import RecognitionConfig
    from facecom_utils.train.rundir import RunDir

    rundir = RunDir(run_dir / NOTEBOOKS["03"])
    metrics = rundir.read_metrics()
    params = dict(metrics["parameters"])
    if "face_mirror" not in params:  # a run from before the setting: the descriptor its face_tracks.pt was fitted on
        params["face_mirror"] = bool((rundir.load_tracks("recognition") or {}).get("face_mirror", False))
    config = run_config(RecognitionConfig, params, **{**(overrides or {}), "output_dir": str(rundir.path), "progress": False})
    splits = rec.recognition_splits(config)
    run = SimpleNamespace(output_dir=str(rundir.path), metrics=metrics, threshold=metrics["tracks"]["facecom_only"]["threshold"],
                          strict_threshold=metrics["tracks"]["facecom_only"]["strict_threshold"])
    return config, splits, run, rundir


def retrack(run_dir: Path, overrides: dict | None = None) -> dict:
    """Re-scores every track of a finished fold from its saved embeddings with the installed package
    (``overrides``: tracks-stage parameters that replace the run's own; they are recorded in its metrics)."""
    from facecom_utils.recognition.face_tracks import recognition_tracks

    config, splits, run, rundir = _run_context(run_dir, overrides)
    recognition_tracks(config, splits, run)
    return rundir.read_metrics()


#: What each repeat of the cheap stages records about the fused track on the reported split.
CHEAP_KEYS = ("top1", "strict_top1", "roc_auc", "strict_roc_auc", "tar_at_far_1e-3", "strict_tar_at_far_1e-3",
              "match_f1", "strict_match_f1")


def subset_identities(data: dict, fraction: float, seed: int) -> dict:
    """The rows of a seeded ``fraction`` of a split's identities: every per-row array and the table cut alike."""
    table = data["table"]
    names = np.array(sorted(table["identity"].astype(str).unique()))
    keep = np.random.default_rng(seed).choice(names, size=max(2, int(round(fraction * len(names)))), replace=False)
    rows = table["identity"].astype(str).isin(set(keep)).to_numpy()
    out = {k: (v[rows] if isinstance(v, np.ndarray) and len(v) == len(table) else v) for k, v in data.items()}
    out["table"] = table[rows].reset_index(drop=True)
    return out


def cheap_repeats(run_dir: Path, repeats: list[int], fraction: float) -> list[dict]:
    """Task B's cheap stages re-chosen ``len(repeats)`` times on one fold's fixed embeddings.

    Repeat ``r`` refits the restoration selector on its own seeded sample of the training images,
    draws its own copy cohort, keeps a seeded ``fraction`` of the validation fold's identities, and on
    them chooses the fusion weights, the score calibration and the thresholds (seed ``r``); the
    fused track is then scored on the reported people, which no choice saw. The embedder is the fold's.
    """
    from facecom_utils.data.cache import default_cache_dir
    from facecom_utils.face.descriptors import DescriptorStore
    from facecom_utils.recognition.face_tracks import (copy_cohort, fit_estimator, fit_fusion, fused_embeddings,
                                                       track_inputs)
    from facecom_utils.recognition.protocol import choose_thresholds, protocol_metrics
    from facecom_utils.train.rundir import FOLD_ROLE, REPORT_ROLE

    config, splits, run, rundir = _run_context(run_dir)
    cache = (Path(config.cache_dir) if config.cache_dir else default_cache_dir()) / "face_model"
    workers = config.face_workers or 2
    store = DescriptorStore(cache, workers=workers, mirror=config.face_mirror)
    reported = run.metrics.get("reported_role", REPORT_ROLE)
    if reported == FOLD_ROLE:
        raise ValueError(f"{run_dir}: the run reported its validation fold, so no people are left unseen by the "
                         "cheap stages; re-run it with a reported split")
    roles = {role: rundir.load_embeddings(role) for role in (FOLD_ROLE, reported)}
    records = []
    for r in repeats:
        t0 = time.perf_counter()
        estimator = fit_estimator(splits.train, r, workers, cache)
        fold, rep = (track_inputs(t, e, estimator, store, workers, cache) for t, e in roles.values())
        fold = subset_identities(fold, fraction, r)
        fusion = fit_fusion(fold, copy_cohort(splits.train, r, workers, cache))
        th = choose_thresholds(fold["table"], fused_embeddings(fusion, fold), method=config.threshold_method, seed=r)
        m = protocol_metrics(rep["table"], fused_embeddings(fusion, rep), th["threshold"], th["strict_threshold"],
                             seed=r)
        values = {k: float(m[k]) for k in CHEAP_KEYS}
        values.update({f"main {k}": float(v) for k, v in m["per_distortion"].items()})
        values.update({f"strict {k}": float(v) for k, v in m["strict_per_distortion"].items()})
        values.update({f"w {k}": float(v) for k, v in fusion.weights.items()})
        records.append({"repeat": r, "fraction": fraction, "face_mirror": bool(config.face_mirror),
                        "seconds": time.perf_counter() - t0, "values": values})
        print(f"  repeat {r}: strict top-1 {values['strict_top1']:.3f}, strict sunny {values.get('strict sunny', float('nan')):.3f}, "
              f"strict AUC {values['strict_roc_auc']:.3f} ({records[-1]['seconds']:.0f} s)", flush=True)
    return records


def summarise_repeats(records: dict[str, list[dict]]) -> pd.DataFrame:
    """Rows: metrics; columns: each fold's mean and SD over its repeats, then the mean of the fold means,
    the SD within folds (root mean of the folds' variances: the cheap stages' own spread), the SD between
    the fold means (the embedder's and the people's) and mean - SD between."""
    cols = {}
    for fold, recs in sorted(records.items()):
        frame = pd.DataFrame([r["values"] for r in recs])
        cols[f"{fold} mean"] = frame.mean()
        cols[f"{fold} sd"] = frame.std(ddof=1)
    table = pd.DataFrame(cols)
    means = table[[c for c in table.columns if c.endswith(" mean")]]
    sds = table[[c for c in table.columns if c.endswith(" sd")]]
    table["mean"] = means.mean(axis=1)
    table["sd within"] = np.sqrt((sds ** 2).mean(axis=1))
    table["sd between"] = means.std(axis=1, ddof=1)
    table["mean - sd between"] = table["mean"] - table["sd between"]
    return table


def run_cheap_repeats(out: Path, folds: int, repeats: int, fraction: float) -> pd.DataFrame:
    """Resumable: ``cheap_repeats.json`` keeps every finished repeat; the summary goes to ``cheap_repeats.md``."""
    file = out / "cheap_repeats.json"
    done: dict[str, list[dict]] = json.loads(file.read_text()) if file.is_file() else {}
    other = sorted({r.get("fraction") for recs in done.values() for r in recs} - {fraction})
    if other:
        raise ValueError(f"{file} holds repeats with --cheap-fraction {other}, not {fraction}: move it aside first")
    mirrors = {bool(r.get("face_mirror", False)) for recs in done.values() for r in recs}
    runs = {i: out / "runs" / f"fold{i}" for i in range(folds)}
    wanted = {bool(_run_context(d)[0].face_mirror) for d in runs.values() if fold_done(d, "03")}
    if len(mirrors | wanted) > 1:
        raise ValueError(f"{file} holds repeats on the {'mirrored' if True in mirrors else 'plain'} descriptor and the "
                         "runs' face tracks read the other (or the runs disagree): move it aside first")
    for i in range(folds):
        key = f"fold{i}"
        have = {r["repeat"] for r in done.get(key, [])}
        todo = [r for r in range(repeats) if r not in have]
        if not todo:
            continue
        print(f"{key}: cheap stages, repeats {todo[0]}-{todo[-1]}", flush=True)
        for r in todo:  # one at a time, so an interrupted run keeps what it finished
            done.setdefault(key, []).extend(cheap_repeats(out / "runs" / key, [r], fraction))
            tmp = file.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(done, indent=1))
            tmp.replace(file)
    table = summarise_repeats({k: [r for r in v if r["repeat"] < repeats] for k, v in done.items()})
    write_text(out / "cheap_repeats.md", frame_table(table.rename_axis("metric")))
    return table


#: The mean of the strict per-type top-1 over the types other than sunny (Task B's gate), a row of :func:`summarise`
#: (over the types the fold's reported people have: on FACECOM every fold has all six).
SIX_TYPES = "strict top-1, types but sunny"


def _fold_values(notebook: str, t: dict) -> dict[str, float]:
    if notebook == "03":
        values = {"main top-1": t["top1"], "strict top-1": t["strict_top1"], "roc_auc": t.get("roc_auc"),
                  "strict roc_auc": t.get("strict_roc_auc"), "tar@far1e-3": t.get("tar_at_far_1e-3"),
                  "strict tar@far1e-3": t.get("strict_tar_at_far_1e-3"), "match_f1": t.get("match_f1"),
                  "strict match_f1": t.get("strict_match_f1")}
        values.update({f"main {k}": v for k, v in t["per_distortion"].items()})
        values.update({f"strict {k}": v for k, v in t["strict_per_distortion"].items()})
        others = [v for k, v in t["strict_per_distortion"].items() if k != "sunny" and v is not None]
        if others:  # Task B's gate: the types other than sunny, each type weighted alike
            values[SIX_TYPES] = float(np.mean(others))
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


#: Task B's verification table: (column, metric row of :func:`summarise`).
VERIFICATION = (("main ROC AUC", "roc_auc"), ("main TAR@FAR 1e-3", "tar@far1e-3"), ("main match F1", "match_f1"),
                ("strict ROC AUC", "strict roc_auc"), ("strict TAR@FAR 1e-3", "strict tar@far1e-3"),
                ("strict match F1", "strict match_f1"))


def results_table(table: pd.DataFrame, notebook: str) -> str:
    """The table(s) ``docs/results.md`` quotes, from :func:`summarise`'s frame (the selector's rows left out).

    Args:
        table: :func:`summarise`'s output (columns ``mean`` and ``sd`` are read).
        notebook: ``"02"``: Task A's table (:func:`_common.gender_table`). ``"03"``: two tables, top-1 per
            track (main and strict as mean ± SD (mean − SD), then each type's mean, in
            :data:`~facecom_utils.data.layout.DISTORTION_TYPES` order) and verification per track (mean ± SD).

    Returns:
        Markdown; two tables are separated by a blank line.
    """
    stats = table.loc[[key for key in table.index if key[0] != "selector"], ["mean", "sd"]]
    if notebook == "02":
        return gender_table(stats)
    tracks = list(dict.fromkeys(stats.index.get_level_values(0)))
    types = [t for t in DISTORTION_TYPES if any((track, f"main {t}") in stats.index for track in tracks)]

    def per_type(track: str, protocol: str) -> str:
        keys = [(track, f"{protocol} {t}") for t in types]
        return " ".join(number(stats.loc[k, "mean"], 2) if k in stats.index else MISSING for k in keys)

    names = ", ".join(types)
    top1 = markdown_table(
        ["track", "main top-1", "strict top-1", "strict, types but sunny", f"main per type ({names})",
         f"strict per type ({names})"],
        [[f"`{t}`", stat_cell(stats, t, "main top-1"), stat_cell(stats, t, "strict top-1"), stat_cell(stats, t, SIX_TYPES),
          per_type(t, "main"), per_type(t, "strict")] for t in tracks])
    verification = markdown_table(["track", *(column for column, _ in VERIFICATION)],
                                  [[f"`{t}`", *(stat_cell(stats, t, m, floor=False) for _, m in VERIFICATION)]
                                   for t in tracks])
    return f"{top1}\n\n{verification}"


#: The rows :func:`paired_table` compares, per track.
PAIRED_METRICS = ("main top-1", "strict top-1", SIX_TYPES, "strict sunny", "strict tar@far1e-3")


def paired_table(ours: Path, base: Path, tracks: tuple[str, ...] = ("fused", "face_model_restored", "face_model"),
                 metrics: tuple[str, ...] = PAIRED_METRICS) -> str:
    """Markdown: each track's per-fold difference (``ours`` − ``base``, two CV folders on the same folds) as
    mean ± SD (mean − SD) and the folds' differences; "n/a" where either side lacks the row.

    Args:
        ours, base: Folders with this driver's ``summary.json`` (runs on the same data, folds and seed).
        tracks, metrics: The rows compared.
    """
    a, b = (json.loads((p / "summary.json").read_text()) for p in (ours, base))
    rows = []
    for track in tracks:
        for metric in metrics:
            key = f"{track}/{metric}"
            folds = sorted(k for k in a.get(key, {}) if k.startswith("fold") and k in b.get(key, {}))
            d = [a[key][f] - b[key][f] for f in folds if a[key][f] is not None and b[key][f] is not None]
            cell = paired_cell(d)
            rows.append([f"`{track}`", metric, cell, MISSING if cell == MISSING else " ".join(f"{x:+.3f}" for x in d)])
    return markdown_table(["track", "metric", f"paired difference, {ours.name} − {base.name}", "per fold"], rows)


def write_summary(out: Path, table: pd.DataFrame, notebook: str) -> None:
    """``summary.json``, ``summary.md`` (every row of :func:`summarise`) and ``results_table.md`` in ``out``."""
    (out / "summary.json").write_text(json.dumps(
        {f"{t}/{k}": v for (t, k), v in table.round(4).to_dict(orient="index").items()}, indent=1))
    write_text(out / "summary.md", frame_table(table.rename_axis(["track", "metric"])))
    write_text(out / "results_table.md", results_table(table, notebook))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebook", choices=sorted(NOTEBOOKS), default="03")
    add_data_root(ap)
    ap.add_argument("--out", default=None, help="default: reports/cv_notebook<NN> in the repository")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="facecom_cpu")
    ap.add_argument("--retrack", action="store_true",
                    help="notebook 03: re-score the finished folds' tracks with today's code")
    ap.add_argument("--retrack-param", action="append", default=[], metavar="KEY=VALUE",
                    help="with --retrack: a tracks-stage parameter replacing the run's own (YAML value), e.g. "
                         "face_mirror=false; recorded in the fold's metrics.json")
    ap.add_argument("--paired-with", default=None, metavar="DIR",
                    help="another CV folder on the same folds: write paired_with_<name>.md (per-fold differences)")
    ap.add_argument("--cheap-repeats", type=int, default=0,
                    help="notebook 03: afterwards, re-choose the cheap stages (selector, fusion, calibration, "
                         "thresholds) this many times per fold on its fixed embeddings (cheap_repeats.md)")
    ap.add_argument("--cheap-fraction", type=float, default=0.8,
                    help="share of the validation fold's identities each cheap repeat chooses on")
    args = ap.parse_args()
    overrides = {}
    if args.retrack_param and not (args.retrack and args.notebook == "03"):
        ap.error("--retrack-param needs --retrack (notebook 03)")
    from facecom_utils.recognition import RecognitionConfig

    for item in args.retrack_param:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--retrack-param takes KEY=VALUE, got {item!r}")
        if key.strip() not in RecognitionConfig.__dataclass_fields__:
            ap.error(f"--retrack-param: {key.strip()!r} is not a notebook-03 parameter (RecognitionConfig)")
        overrides[key.strip()] = yaml.safe_load(value)
    out = Path(args.out).absolute() if args.out else REPORTS_DIR / f"cv_notebook{args.notebook}"
    need = ("Task_B/train",) if args.notebook == "03" else ("Task_A/train", "Task_B/train")
    roots = make_fold_roots(data_root(args.data_root, need), out, args.notebook, args.folds, args.seed)
    metrics = []
    for i, root in enumerate(roots):
        run_dir = out / "runs" / f"fold{i}"
        if not fold_done(run_dir, args.notebook):
            run_fold(root, out, i, args.preset, args.notebook)
        elif args.retrack and args.notebook == "03":
            print(f"fold{i}: re-scoring the tracks", flush=True)
            retrack(run_dir, overrides)
        metrics.append(json.loads((run_dir / NOTEBOOKS[args.notebook] / "metrics.json").read_text()))
    table = summarise(metrics, args.notebook)
    write_summary(out, table, args.notebook)
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(table.round(3))
    if args.paired_with:
        base = Path(args.paired_with).absolute()
        paired = paired_table(out, base)
        write_text(out / f"paired_with_{base.name}.md", paired)
        print(paired)
    if args.cheap_repeats and args.notebook == "03":
        repeated = run_cheap_repeats(out, args.folds, args.cheap_repeats, args.cheap_fraction)
        with pd.option_context("display.width", 200, "display.max_rows", 200):
            print(repeated.round(3))


if __name__ == "__main__":
    main()
