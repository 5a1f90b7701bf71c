"""Where Task A's CV estimate comes from: the notebook-02 CV folds broken down by person (resumable, cheap).

Feeds ``docs/results.md`` § "Task A — where the CV estimate comes from" with ``<out>/breakdown.md``
(and ``breakdown.json``): every track of the finished folds of ``experiments/cv_notebooks.py --notebook 02``,
each image decided at its own fold's threshold (the one the notebook chose on the fold's training part),
the folds' reported persons pooled (each person is reported by exactly one fold), broken down by

* **person style**: FACECOM names its people two ways, LFW-like ``First_Last`` (photos of public figures,
  often several per person) and ``NNN_frontal`` (one frontal photo each);
* **images per person** (clean images in the training split): 1, 2-4, 5 or more;
* **first name** (with ``--names``; needs the ``gender-guesser`` package's first-name lexicon): whether the
  sex a person's first name says agrees with the folder's label, disagrees, or is not decisive (``NNN_frontal``,
  unisex or unknown names). FACECOM's labels are noisy; this measures how much of each track's error sits
  where the name and the label disagree;
* a **person bootstrap**: persons drawn with replacement (all their images and copies come along),
  2.5-97.5 % of the balanced accuracy, female recall and sunny balanced accuracy;
* and the paired per-fold difference of each track against ``fused`` (mean, SD, mean - SD).

Nothing is trained: it reads the folds' ``track_predictions.csv`` and ``metrics.json``::

    python experiments/cv_notebooks.py --notebook 02          # first: the folds (about 20 min each on 2 cores)
    python experiments/cv_gender_breakdown.py                 # then: reports/cv_notebook02/breakdown.md
    pip install -e .[names] && python experiments/cv_gender_breakdown.py --names     # with the first-name groups
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from _common import markdown_table, number, spread, write_text
from facecom_utils.common.paths import REPORTS_DIR
from facecom_utils.gender.tracks import TRACK_PREDICTIONS, TRACKS
from facecom_utils.metrics.classification import binary_metrics

FRONTAL = re.compile(r"^\d+_frontal$")
BUCKETS = (("1 image", 1, 1), ("2-4 images", 2, 4), ("5+ images", 5, 10**9))
NAME_GROUPS = ("name agrees with the label", "name says the other sex", "name not decisive")


def person_style(person: str) -> str:
    """``"NNN_frontal"`` for FACECOM's numbered frontal people, else ``"First_Last"``."""
    return "NNN_frontal" if FRONTAL.match(str(person)) else "First_Last"


def name_lexicon() -> Callable[[str], str | None]:
    """First name -> ``"female"``, ``"male"`` or None, from ``gender-guesser`` (only its confident answers:
    ``mostly_*``, unisex and unknown names give None). Raises SystemExit when the package is missing."""
    try:
        import gender_guesser.detector as gd
    except ImportError as exc:
        raise SystemExit("--names needs the first-name lexicon: pip install -e .[names] (gender-guesser)") from exc
    detector = gd.Detector(case_sensitive=False)

    def sex(first: str) -> str | None:
        answer = detector.get_gender(first)
        return answer if answer in ("female", "male") else None

    return sex


def name_agreement(person: str, label: str, lexicon: Callable[[str], str | None]) -> str:
    """One of :data:`NAME_GROUPS`: does the sex the person's first name says (``First_Last`` only) agree
    with the label?"""
    if person_style(person) != "First_Last":
        return NAME_GROUPS[2]
    said = lexicon(str(person).split("_")[0])
    if said is None:
        return NAME_GROUPS[2]
    return NAME_GROUPS[0] if said == label else NAME_GROUPS[1]


def with_names(rows: pd.DataFrame, lexicon: Callable[[str], str | None]) -> pd.DataFrame:
    """``rows`` with a ``name`` column: each row's :func:`name_agreement` (the first-name groups of the breakdown)."""
    return rows.assign(name=[name_agreement(p, lab, lexicon) for p, lab in zip(rows["person"], rows["label"])])


def load_folds(cv_dir: Path, fixed_threshold: float | None = None) -> pd.DataFrame:
    """Every fold's reported rows: ``fold``, ``path``, ``label``, ``person``, ``kind``, ``prob_<track>`` and
    ``female_<track>`` (the decision at that fold's threshold for the track).

    With ``fixed_threshold``, also ``female_stacked_fixed``: the stacker's images decided at that threshold
    instead of its out-of-fold one (the glare-routed images keep their decision). A post-hoc view, labelled
    as such: a class-balanced stacker's balanced-accuracy threshold is 0.5 in theory.
    """
    parts = []
    for run in sorted((cv_dir / "runs").glob("fold*")):
        folder = run / "02_gender_classification"
        if not (folder / TRACK_PREDICTIONS).is_file():
            continue
        table = pd.read_csv(folder / TRACK_PREDICTIONS)
        tracks = json.loads((folder / "metrics.json").read_text())["tracks"]
        for track, m in tracks.items():
            if f"prob_{track}" in table:
                table[f"female_{track}"] = table[f"prob_{track}"] >= m["threshold"]
        if fixed_threshold is not None and "prob_stacked" in table:
            routed = table["routed_to_glare"].astype(bool)
            table["female_stacked_fixed"] = table["female_stacked"].where(routed, table["prob_stacked"] >= fixed_threshold)
        parts.append(table.assign(fold=run.name))
    if not parts:
        raise SystemExit(f"no finished fold with {TRACK_PREDICTIONS} under {cv_dir / 'runs'}; run "
                         "experiments/cv_notebooks.py --notebook 02 first")
    return pd.concat(parts, ignore_index=True)


def _scores(rows: pd.DataFrame, track: str) -> dict[str, float]:
    y = (rows["label"] == "female").to_numpy().astype(int)
    pred = rows[f"female_{track}"].to_numpy().astype(float)
    if len(np.unique(y)) < 2:
        return {"balanced_accuracy": np.nan, "recall_female": np.nan}
    m = binary_metrics(y, pred, 0.5, ("male", "female"))
    return {"balanced_accuracy": m["balanced_accuracy"], "recall_female": m["recall_female"]}


def breakdown(rows: pd.DataFrame, images_per_person: pd.Series, tracks: list[str]) -> pd.DataFrame:
    """Balanced accuracy and female recall on clean images, and balanced accuracy on sunny copies, per group.

    Args:
        rows: :func:`load_folds`' table.
        images_per_person: Clean training images per person (all of the training split).
        tracks: The tracks to score.

    Returns:
        One row per (group kind, group, track): ``persons``, ``female_persons``, ``images``, the metrics.
    """
    rows = rows.assign(style=rows["person"].map(person_style), images=rows["person"].map(images_per_person))
    rows["bucket"] = rows["images"].map(lambda n: next((name for name, lo, hi in BUCKETS if lo <= n <= hi), "unknown"))
    out = []
    groups = [("all", rows.assign(_all="all"), "_all"), ("style", rows, "style"), ("images per person", rows, "bucket")]
    if "name" in rows:
        groups.append(("first name", rows, "name"))
        groups.append(("name agrees, images per person", rows[rows["name"] == NAME_GROUPS[0]], "bucket"))
    orders = {"name": NAME_GROUPS, "bucket": (*(b[0] for b in BUCKETS), "unknown")}  # else sorted
    for kind, table, column in groups:
        order = orders.get(column) or sorted(table[column].unique())
        parts = dict(tuple(table.groupby(column, sort=False)))
        for name in (g for g in order if g in parts):
            part = parts[name]
            clean, sunny = part[part["kind"] == "clean"], part[part["kind"] == "sunny"]
            for track in tracks:
                c, s = _scores(clean, track), _scores(sunny, track)
                out.append({"group kind": kind, "group": name, "track": track, "persons": clean["person"].nunique(),
                            "female persons": clean.loc[clean["label"] == "female", "person"].nunique(),
                            "images": len(clean), **c, "sunny balanced_accuracy": s["balanced_accuracy"]})
    return pd.DataFrame(out)


def person_bootstrap(rows: pd.DataFrame, track: str, n_boot: int = 1000, seed: int = 0) -> dict[str, list[float]]:
    """2.5-97.5 % person-bootstrap intervals of the pooled clean balanced accuracy, female recall and sunny
    balanced accuracy (each draw takes persons with replacement, with all their rows)."""
    rng = np.random.default_rng(seed)
    people = rows["person"].unique()
    by_person = {p: idx for p, idx in rows.groupby("person").indices.items()}
    draws: dict[str, list[float]] = {"balanced_accuracy": [], "recall_female": [], "sunny balanced_accuracy": []}
    for _ in range(n_boot):
        idx = np.concatenate([by_person[p] for p in rng.choice(people, len(people), replace=True)])
        sample = rows.iloc[idx]
        c = _scores(sample[sample["kind"] == "clean"], track)
        draws["balanced_accuracy"].append(c["balanced_accuracy"])
        draws["recall_female"].append(c["recall_female"])
        draws["sunny balanced_accuracy"].append(_scores(sample[sample["kind"] == "sunny"], track)["balanced_accuracy"])
    return {k: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))] for k, v in draws.items()}


def paired_differences(rows: pd.DataFrame, tracks: list[str], against: str = "fused") -> pd.DataFrame:
    """Per track, the per-fold difference to ``against`` (clean balanced accuracy, female recall, sunny
    balanced accuracy): mean, SD and mean - SD over the folds ("beats" means mean - SD > 0)."""
    out = []
    for track in tracks:
        if track == against:
            continue
        diffs = []
        for _, part in rows.groupby("fold"):
            clean, sunny = part[part["kind"] == "clean"], part[part["kind"] == "sunny"]
            a, b = _scores(clean, track), _scores(clean, against)
            diffs.append({"balanced_accuracy": a["balanced_accuracy"] - b["balanced_accuracy"],
                          "recall_female": a["recall_female"] - b["recall_female"],
                          "sunny balanced_accuracy": _scores(sunny, track)["balanced_accuracy"]
                          - _scores(sunny, against)["balanced_accuracy"]})
        frame = pd.DataFrame(diffs)
        for metric in frame.columns:
            mean, sd = frame[metric].mean(), frame[metric].std(ddof=1)
            out.append({"track": track, "metric": metric, "folds": len(frame), "mean": mean, "sd": sd,
                        "mean - sd": mean - sd})
    return pd.DataFrame(out)


def name_errors(rows: pd.DataFrame, tracks: list[str]) -> dict[str, dict[str, dict[str, int]]]:
    """Per track, its wrong clean images counted per first-name group (``rows["name"]``) and label.

    Returns:
        ``{track: {group or "all": {"male": n, "female": n}}}``, where ``"male"`` counts men by the label
        called female, and ``"female"`` the reverse.
    """
    clean = rows[rows["kind"] == "clean"]
    out = {}
    for track in tracks:
        wrong = clean[clean[f"female_{track}"].astype(bool) != (clean["label"] == "female")]
        counts = {g: {lab: int(((wrong["name"] == g) & (wrong["label"] == lab)).sum()) for lab in ("male", "female")}
                  for g in NAME_GROUPS}
        counts["all"] = {lab: int((wrong["label"] == lab).sum()) for lab in ("male", "female")}
        out[track] = counts
    return out


def report(rows: pd.DataFrame, images_per_person: pd.Series, n_boot: int = 1000) -> tuple[str, dict]:
    """The Markdown the docs quote and everything behind it (JSON-ready)."""
    tracks = [t for t in (*TRACKS, "stacked_fixed") if f"female_{t}" in rows]
    table = breakdown(rows, images_per_person, tracks)
    boot = {t: person_bootstrap(rows, t, n_boot) for t in tracks}
    paired = paired_differences(rows, tracks)

    def cell(value: float) -> str:
        return number(value, 3)

    parts = ["Clean images: balanced accuracy / female recall; sunny copies: balanced accuracy. Pooled over the "
             f"{rows['fold'].nunique()} folds' reported persons, each image at its own fold's threshold.", ""]
    parts.append(markdown_table(
        ["group", "persons (female)", "images", *(f"`{t}`" for t in tracks)],
        [[f"{g['group kind']}: {g['group']}", f"{g['persons']} ({g['female persons']})", g["images"],
          *(f"{cell(r['balanced_accuracy'])} / {cell(r['recall_female'])} / {cell(r['sunny balanced_accuracy'])}"
            for _, r in table[(table["group kind"] == g["group kind"]) & (table["group"] == g["group"])].iterrows())]
         for _, g in table.drop_duplicates(["group kind", "group"]).iterrows()]))
    parts += ["", "Person bootstrap (95 %, persons drawn with replacement):", ""]
    parts.append(markdown_table(["track", "balanced accuracy", "female recall", "sunny balanced accuracy"],
                                [[f"`{t}`", *(f"{cell(b[k][0])}-{cell(b[k][1])}" for k in
                                              ("balanced_accuracy", "recall_female", "sunny balanced_accuracy"))]
                                 for t, b in boot.items()]))
    if len(paired):
        parts += ["", "Paired per-fold difference to `fused` (mean ± SD (mean − SD)):", ""]
        parts.append(markdown_table(
            ["track", "balanced accuracy", "female recall", "sunny balanced accuracy"],
            [[f"`{t}`", *(spread(*paired[(paired["track"] == t) & (paired["metric"] == m)][["mean", "sd"]].iloc[0])
                          for m in ("balanced_accuracy", "recall_female", "sunny balanced_accuracy"))]
             for t in dict.fromkeys(paired["track"])]))
    data = {"groups": table.to_dict(orient="records"), "bootstrap": boot, "paired": paired.to_dict(orient="records")}
    if "name" in rows:
        errors = name_errors(rows, tracks)
        parts += ["", "Where each track's wrong clean images sit, by first name (label male / label female):", ""]
        parts.append(markdown_table(["track", *NAME_GROUPS, "all"],
                                    [[f"`{t}`", *(f"{e[g]['male']} / {e[g]['female']}" for g in (*NAME_GROUPS, "all"))]
                                     for t, e in errors.items()]))
        data["name_errors"] = errors
    return "\n".join(parts) + "\n", data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cv-dir", default=str(REPORTS_DIR / "cv_notebook02"),
                    help="the --out folder of experiments/cv_notebooks.py --notebook 02 (default: %(default)s)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--names", action="store_true",
                    help="also break down by whether the first name's sex agrees with the label (pip install gender-guesser)")
    ap.add_argument("--fixed-threshold", type=float, default=None,
                    help="also score the stacker's images at this threshold (column stacked_fixed; post hoc)")
    args = ap.parse_args()
    cv_dir = Path(args.cv_dir)
    rows = load_folds(cv_dir, args.fixed_threshold)
    if args.names:
        rows = with_names(rows, name_lexicon())
    counts = rows[rows["kind"] == "clean"].groupby("person")["path"].count()  # reported images = all of a person's
    text, data = report(rows, counts, args.n_boot)
    write_text(cv_dir / "breakdown.md", text)
    (cv_dir / "breakdown.json").write_text(json.dumps(data, indent=1, default=float))
    print(text)


if __name__ == "__main__":
    main()
