"""Task A's ``stacked`` track with cross-fitted CNNs: every training person's CNN logit out of sample (resumable).

Feeds ``docs/results.md`` § "Task A — the stacker on cross-fitted CNNs" with ``<out>/xfit_table.md`` (each track
on the folds' reported persons, mean ± SD (mean − SD)) and ``<out>/xfit_paired.md`` (paired per-fold differences
to ``fused`` and to the notebook's own tracks)::

    python experiments/cv_notebooks.py --notebook 02 --data-root DIR   # the folds (reports/cv_notebook02)
    python experiments/cv_gender_xfit.py                                # then this: reports/cv_gender_xfit/

The notebook's ``stacked`` track is fitted on the persons of the CNN's validation fold only (about 87 persons,
15 women, on a fold of the training split): the only persons the CNN never trained on. This driver measures
what the issue's next step would buy, before the notebook is changed: the fold's training persons (the
notebook's training part and validation fold) are split into ``--members`` person-grouped, label-stratified
parts, and member *k* is the notebook's CNN (the run's own parameters, read from its ``metrics.json``)
trained on the other parts, its best epoch chosen and its threshold measured on part *k*'s clean images. So
every training person gets a CNN probability from a network that never trained on them (its epoch was chosen
on them, as the notebook's stacker rows' are). Tracks, on the reported persons of each fold:

* ``facecom_only``, ``fused``, ``stacked``: the notebook's (read from the run's ``track_predictions.csv``);
* ``facecom_xfit``: the members' mean P(female), its threshold over every training person's out-of-fold
  probability (clean images; the run's ``threshold_criterion``) — the cross-fitted CNNs replacing the one;
* ``stacked_xfit``: the stacker (:mod:`facecom_utils.gender.stacking`) fitted on every training person's rows
  (clean images and the face tracks' real copies): member *k*'s probability, the face head and the distortion
  estimator refitted without part *k* (``out_of_sample_inputs``), the rows the refitted selector calls sunny
  left to the glare expert; its threshold out of fold. At prediction: the members' mean, the run's full face
  model, the glare expert's decision on glare-routed images (as ``stacked``).

Resumable: each member's predictions go to ``<out>/fold<i>/member<k>.npz`` as soon as it is trained (its
checkpoints beside them, so an interrupted member resumes); each fold's scores to ``fold<i>/tracks.json``.
Cost per fold on 2 cores: ``--members`` trainings of the notebook's CNN on (members − 1)/members of the
training persons, plus predicting every training and reported row once per member.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cv_notebooks import fold_run_dir
from _common import markdown_table, paired_cell, run_config, spread, write_text
from facecom_utils.common.paths import REPORTS_DIR

#: The tracks this driver scores, in table order.
TRACKS = ("facecom_only", "facecom_xfit", "fused", "stacked", "stacked_xfit")
#: The metrics each track reports (clean images), then the worst and sunny balanced accuracy of the copies.
METRICS = ("balanced_accuracy", "recall_female", "roc_auc")


def fold_context(run_dir: Path, root: Path):
    """``(config, splits, recipe, train_rows, report_rows)`` of a finished notebook-02 fold, rebuilt from its
    ``metrics.json`` parameters (the same seeded splits and rows the notebook used)."""
    from facecom_utils.gender.pipeline import GenderConfig, gender_splits
    from facecom_utils.gender.tracks import face_head_recipe, track_rows

    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = run_config(GenderConfig, metrics["parameters"], data_root=str(root), output_dir=str(run_dir),
                        progress=False)
    splits = gender_splits(config)
    train_rows, report_rows = track_rows(config, splits)
    return config, splits, face_head_recipe(config), train_rows, report_rows, metrics


def member_parts(persons: pd.DataFrame, members: int, seed: int) -> list[set[str]]:
    """The training persons' ``members`` person-grouped, label-stratified parts (sets of person names)."""
    from facecom_utils.data.splits import person_folds
    from facecom_utils.gender.heads import female_labels

    folds = person_folds(persons["person"].to_numpy(), female_labels(persons), k=members, seed=seed)
    parts = [set(persons["person"].to_numpy()[test]) for _, test in folds]
    assert set().union(*parts) == set(persons["person"]) and sum(map(len, parts)) == persons["person"].nunique()
    return parts


def train_member(config, splits, part: set[str], out_dir: Path, predict: dict[str, list[str]]) -> dict:
    """Member ``part``: the run's CNN trained on the training persons outside ``part``, its epoch chosen on
    ``part``'s clean images; returns its threshold, seconds and P(female) of each list of ``predict``."""
    from facecom_utils.gender.pipeline import GenderSplits, fit_gender, gender_pipeline, predict_proba

    persons = pd.concat([splits.train, splits.fold], ignore_index=True)
    inside = persons["person"].isin(part)
    member_splits = GenderSplits(train=persons[~inside].reset_index(drop=True), fold=persons[inside].reset_index(drop=True),
                                 report=persons[inside].reset_index(drop=True), report_split="member_part",
                                 data_root=splits.data_root)
    cfg = dataclasses.replace(config, output_dir=str(out_dir), evaluate_distortions=False)
    t0 = time.perf_counter()
    fitted = fit_gender(cfg, gender_pipeline(cfg, member_splits))
    device = next(fitted.model.parameters()).device
    out = {name: predict_proba(fitted.model, paths, cfg.image_size, cfg.eval_batch_size, device, cfg.tta)
           for name, paths in predict.items()}
    return {**{f"prob_{k}": np.asarray(v, np.float64) for k, v in out.items()},
            "threshold": float(fitted.result.best_metrics.get("threshold", 0.5)),
            "train_seconds": float(fitted.result.train_seconds), "seconds": time.perf_counter() - t0,
            "best_epoch": int(fitted.result.best_epoch)}


def score(rows: pd.DataFrame, prob: np.ndarray, threshold: float) -> dict:
    from facecom_utils.gender.tracks import score_rows

    m = score_rows(rows, np.asarray(prob, np.float64), float(threshold))
    return {**{k: float(m[k]) for k in METRICS}, "threshold": float(threshold),
            "per_distortion": {k: float(v) for k, v in m["per_distortion"].items()}}


def run_fold(i: int, folds_dir: Path, out: Path, members: int) -> dict:
    """Every track's scores on fold ``i``'s reported persons (``fold<i>/tracks.json``, resumable)."""
    from facecom_utils.gender.heads import female_labels
    from facecom_utils.gender.stacking import fit_stacker, stacked_probabilities, stacker_rows
    from facecom_utils.gender.tracks import TRACK_PREDICTIONS, load_run_stacker, load_run_tracks
    from facecom_utils.metrics.classification import choose_threshold

    fold_out = out / f"fold{i}"
    done = fold_out / "tracks.json"
    if done.is_file():
        return json.loads(done.read_text())
    run_dir = fold_run_dir(folds_dir, i, "02")
    config, splits, recipe, train_rows, report_rows, metrics = fold_context(run_dir, folds_dir / f"fold{i}" / "data")
    persons = pd.concat([splits.train, splits.fold], ignore_index=True)
    parts = member_parts(persons, members, config.seed)
    report_paths = report_rows["path"].tolist()
    clean_oof = pd.Series(np.nan, index=persons.index)
    report_probs, info = [], []
    stack_rows = []
    for k, part in enumerate(parts):
        file = fold_out / f"member{k}.npz"
        in_part = train_rows["person"].isin(part).to_numpy()
        clean_in_part = persons["person"].isin(part).to_numpy()
        if not file.is_file():
            print(f"fold{i} member {k}: training on {int((~clean_in_part).sum())} images, "
                  f"choosing on {len(part)} persons", flush=True)
            res = train_member(config, splits, part, fold_out / f"member{k}",
                               {"part": train_rows.loc[in_part, "path"].tolist(),
                                "part_clean": persons.loc[clean_in_part, "path"].tolist(),
                                "report": report_paths})
            fold_out.mkdir(parents=True, exist_ok=True)
            partial = file.with_name(file.stem + ".partial.npz")
            np.savez(partial, **{k2: np.asarray(v) for k2, v in res.items()})
            partial.replace(file)
        saved = np.load(file)
        clean_oof[clean_in_part] = saved["prob_part_clean"]
        report_probs.append(saved["prob_report"])
        info.append({"threshold": float(saved["threshold"]), "train_seconds": float(saved["train_seconds"]),
                     "seconds": float(saved["seconds"]), "best_epoch": int(saved["best_epoch"])})
        # the stacker's rows of this part: the face head and estimator refitted on the other parts
        part_prob = dict(zip(train_rows.loc[in_part, "path"], saved["prob_part"]))
        rows, features, _ = stacker_rows(train_rows[in_part], train_rows[~in_part], recipe, route_glare=True,
                                         cnn_predict=lambda paths: [part_prob[p] for p in paths])
        stack_rows.append((rows, features))
    assert not clean_oof.isna().any()
    rows = pd.concat([r for r, _ in stack_rows])
    features = np.vstack([f for _, f in stack_rows])
    stacker = fit_stacker(features, female_labels(rows), rows["person"].to_numpy(), (rows["kind"] == "clean").to_numpy(),
                          k=recipe.k, C=recipe.C, seed=recipe.seed)
    xfit_threshold = choose_threshold(female_labels(persons), clean_oof.to_numpy(), config.threshold_criterion)

    table = pd.read_csv(run_dir / TRACK_PREDICTIONS)
    if table["path"].tolist() != report_paths:
        raise ValueError(f"{run_dir / TRACK_PREDICTIONS}: its rows are not the reported rows rebuilt from the run")
    _, model, _ = load_run_tracks(run_dir)
    cnn_xfit = np.mean(report_probs, axis=0)
    scores = {"face": table["prob_face_model_restored"].to_numpy(), "fused": table["prob_fused"].to_numpy(),
              "routed_to_glare": table["routed_to_glare"].astype(bool).to_numpy()}
    stacked_xfit = stacked_probabilities(stacker, model, cnn_xfit, scores, recipe.quality(report_rows))
    tracks = metrics["tracks"]
    result = {
        "facecom_only": score(report_rows, table["prob_facecom_only"], tracks["facecom_only"]["threshold"]),
        "facecom_xfit": score(report_rows, cnn_xfit, xfit_threshold),
        "fused": score(report_rows, table["prob_fused"], model.face.threshold),
        "stacked": score(report_rows, table["prob_stacked"], load_run_stacker(run_dir).threshold),
        "stacked_xfit": score(report_rows, stacked_xfit, stacker.threshold),
    }
    for name in ("fused", "stacked"):  # the notebook's own figures, re-scored from its predictions
        if abs(result[name]["balanced_accuracy"] - tracks[name]["balanced_accuracy"]) > 1e-9:
            raise ValueError(f"fold{i}: {name} re-scored {result[name]['balanced_accuracy']:.4f}, the run says "
                             f"{tracks[name]['balanced_accuracy']:.4f}")
    result["_info"] = {"members": info, "stacker": stacker.info, "stacker_rows": int(len(rows)),
                       "notebook_stacker_rows": int(tracks["stacked"].get("stacker", {}).get("rows", 0)),
                       "xfit_threshold": float(xfit_threshold)}
    fold_out.mkdir(parents=True, exist_ok=True)
    write_text(done, json.dumps(result, indent=1))
    return result


def tables(results: list[dict]) -> tuple[str, str]:
    """``(the tracks' table, the paired differences)`` over the folds."""
    def values(track: str, metric: str) -> list[float]:
        return [r[track][metric] if metric in r[track] else r[track]["per_distortion"].get(metric, np.nan)
                for r in results]

    kinds = sorted(results[0]["fused"]["per_distortion"])
    rows = []
    for track in TRACKS:
        cells = []
        for metric in (*METRICS, *kinds):
            v = np.asarray(values(track, metric), float)
            cells.append(spread(v.mean(), v.std(ddof=1) if len(v) > 1 else np.nan,
                                floor=metric in ("balanced_accuracy", "recall_female", "sunny")))
        rows.append([f"`{track}`", *cells])
    table = markdown_table(["track", "balanced acc.", "female recall", "ROC AUC", *kinds], rows)
    paired = []
    for track, base in (("stacked_xfit", "fused"), ("stacked_xfit", "stacked"), ("facecom_xfit", "facecom_only"),
                        ("stacked", "fused")):
        diffs = {m: np.asarray(values(track, m)) - np.asarray(values(base, m))
                 for m in ("balanced_accuracy", "recall_female", "roc_auc", "sunny")}
        paired.append([f"`{track}` − `{base}`", *(paired_cell(d) for d in diffs.values()),
                       " ".join(f"{x:+.3f}" for x in diffs["balanced_accuracy"])])
    paired_md = markdown_table(["difference", "balanced acc.", "female recall", "ROC AUC", "sunny",
                                "balanced acc. per fold"], paired)
    return table, paired_md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds-dir", default=str(REPORTS_DIR / "cv_notebook02"),
                    help="cv_notebooks.py --notebook 02's --out (its fold roots and finished runs)")
    ap.add_argument("--out", default=str(REPORTS_DIR / "cv_gender_xfit"))
    ap.add_argument("--members", type=int, default=3, help="cross-fitted CNNs per fold")
    args = ap.parse_args()
    folds_dir, out = Path(args.folds_dir), Path(args.out)
    runs = sorted(p for p in (folds_dir / "runs").glob("fold*/02_gender_classification/metrics.json")
                  if "tracks" in json.loads(p.read_text()))  # finished folds only
    if not runs:
        raise SystemExit(f"no finished notebook-02 folds in {folds_dir}: run experiments/cv_notebooks.py --notebook 02")
    results = [run_fold(int(p.parent.parent.name[4:]), folds_dir, out, args.members) for p in runs]
    if len(results) < 2:
        print("one fold: no spread yet")
        return
    table, paired = tables(results)
    write_text(out / "xfit_table.md", table + "\n")
    write_text(out / "xfit_paired.md", paired + "\n")
    print(table, paired, sep="\n\n")


if __name__ == "__main__":
    main()
