"""Threshold analysis of a recognition run (notebook 04).

Reads the output folder of a notebook-03 run (:func:`load_recognition_run`: its ``metrics.json`` and
saved embeddings), scores every probe against the gallery under the main or the strict protocol
(:func:`score_analysis`), recommends an operating threshold decided on the validation fold only
(:func:`recommend_threshold`), and evaluates it unchanged on the reported split: FAR/TAR overall and per
distortion type (:func:`operating_point`, :func:`per_distortion_operating_points`), the hardest false
matches and misses (:func:`hardest_errors`; their figures are in :mod:`facecom_utils.reporting.plots`) and the numbers notebook 04
writes to ``metrics.json`` (:func:`threshold_metrics`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facecom_utils.recognition.identification import ScoreAnalysis, best_gallery_images, score_analysis

__all__ = [
    "ThresholdConfig",
    "RecognitionRunFiles",
    "load_recognition_run",
    "ScoreAnalysis",
    "score_analysis",
    "best_gallery_images",
    "hardest_errors",
    "operating_point",
    "recommend_threshold",
    "per_distortion_operating_points",
    "threshold_metrics",
]


@dataclasses.dataclass
class ThresholdConfig:
    """Parameters of one threshold analysis (notebook 04).

    Args:
        run_dir: a notebook-03 output folder (``metrics.json`` + ``embeddings/``).
        output_dir: where this analysis writes ``metrics.json``.
        target_far: recommend the fold threshold with at most this FAR; ``None`` recommends the match
            threshold notebook 03 chose on its validation fold (k-fold, balanced pairs).
        n_examples: image pairs shown per kind of error.
        seed: seed of the balanced impostor-pair draw.
        track: the track analysed: ``"headline"`` (the run's ``headline_track``), ``"facecom_only"``
            (its saved embeddings) or another track of notebook 03 (``fused``, ``face_model``, ...).
    """

    run_dir: str
    output_dir: str
    target_far: float | None = None
    n_examples: int = 6
    seed: int = 0
    track: str = "headline"


@dataclasses.dataclass
class RecognitionRunFiles:
    """What notebook 04 reads from a notebook-03 output folder."""

    run_dir: Path
    metrics: dict[str, Any]
    reported_split: str
    report: tuple[pd.DataFrame, np.ndarray]
    fold: tuple[pd.DataFrame, np.ndarray]
    threshold: float
    strict_threshold: float
    data_root: str | None
    track: str = "facecom_only"
    threshold_details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def score_name(self) -> str:
        """What the track's scores are, for axis labels."""
        if self.track == "fused":
            if self.metrics.get("fusion_score_calibration"):
                return "fused score (per-type calibrated; 0 = the type's 99.9th-pct impostor)"
            return "fused score (w cos face model + (1 - w) cos FACECOM + copy evidence)"
        return "cosine similarity"


def load_recognition_run(run_dir: str | Path, track: str = "headline") -> RecognitionRunFiles:
    """Read a notebook-03 output folder: its metrics and one track's embeddings of fold and reported split.

    Args:
        run_dir: The notebook-03 output folder.
        track: ``"headline"`` (the run's ``headline_track``; the FACECOM-only one, with a warning, when
            the folder lacks the ``face_tracks.pt`` it needs), ``"facecom_only"`` (the saved embeddings)
            or another track of the run (rebuilt from ``face_tracks.pt`` and the descriptor caches,
            :func:`~facecom_utils.recognition.face_tracks.saved_track_embeddings`). Thresholds are the
            ones notebook 03 chose for that track on the validation fold.

    Raises:
        FileNotFoundError: naming the folder and what it should hold (run notebook 03 first).
        ValueError: a track the run did not score.
    """
    from facecom_utils.train.rundir import FOLD_ROLE, REPORT_ROLE, RunDir

    folder = Path(run_dir).expanduser().resolve()
    outputs = RunDir(folder)
    metrics = outputs.read_metrics()
    if metrics is None:
        raise FileNotFoundError(
            f"{folder}: no metrics.json; expected the output_dir of a finished notebook 03 run "
            "(metrics.json + embeddings/fold.npz); run 03_arcface_recognition first"
        )
    role = metrics.get("reported_role") or REPORT_ROLE
    role = role if role != FOLD_ROLE and outputs.has_embeddings(role) else FOLD_ROLE
    tracks = metrics.get("tracks") or {}
    if track == "headline":
        track = str(metrics.get("headline_track", "facecom_only"))
        if track != "facecom_only" and not outputs.tracks_path.is_file():
            import warnings

            warnings.warn(f"{folder}: no face_tracks.pt, so its headline track {track!r} cannot be rebuilt; "
                          "analysing the FACECOM-only track", stacklevel=2)
            track = "facecom_only"
    if track != "facecom_only" and track not in tracks:
        raise ValueError(f"{folder}: the run has no {track!r} track (it scored: "
                         f"{', '.join(tracks) or 'facecom_only only'})")
    if track == "facecom_only":
        fold, report = outputs.load_embeddings(FOLD_ROLE), outputs.load_embeddings(role)
    else:
        from facecom_utils.recognition.face_tracks import saved_track_embeddings

        rebuilt = saved_track_embeddings(folder, sorted({FOLD_ROLE, role}), track,
                                         (metrics.get("parameters") or {}).get("cache_dir"))
        fold, report = rebuilt[FOLD_ROLE], rebuilt[role]
    # the thresholds notebook 03 chose for this track (the top of metrics.json may be another track's) and
    # their per-fold details (a run written before tracks kept them: only the FACECOM-only ones)
    own = tracks.get(track, metrics)
    details = own.get("threshold_details") or (metrics.get("threshold_details") if track == "facecom_only" else {})
    threshold = float(own["threshold"])
    strict = own.get("strict_threshold")
    return RecognitionRunFiles(
        run_dir=folder,
        metrics=metrics,
        reported_split=str(metrics.get("reported_split") or ("val" if role != FOLD_ROLE else "fold")),
        report=report,
        fold=fold,
        threshold=threshold,
        strict_threshold=float(strict) if strict is not None else threshold,
        data_root=metrics.get("data_root") or (metrics.get("parameters") or {}).get("data_root"),
        track=track,
        threshold_details=dict(details),
    )


def hardest_errors(analysis: ScoreAnalysis, threshold: float, kind: str = "false_match", n: int = 6) -> pd.DataFrame:
    """The worst mistakes at a threshold, as image pairs.

    Args:
        analysis: from :func:`score_analysis`.
        threshold: the match threshold.
        kind: ``"false_match"``: the highest-scoring *wrong* identities that clear the threshold;
            ``"miss"``: the lowest-scoring genuine identities that fall below it.
        n: how many.

    Returns:
        Columns ``probe``, ``gallery`` (closest image of the identity shown), ``score``, ``caption``.
    """
    p = analysis.probes
    if kind == "false_match":
        chosen = p[p["impostor"] >= threshold].sort_values("impostor", ascending=False).head(n)
        identity_col, score_col = "impostor_identity", "impostor"
    elif kind == "miss":
        chosen = p[p["genuine"] < threshold].sort_values("genuine").head(n)
        identity_col, score_col = "identity", "genuine"
    else:
        raise ValueError(f"kind must be 'false_match' or 'miss', got {kind!r}")
    claimed = chosen[identity_col].astype(str).tolist()
    return pd.DataFrame({
        "probe": chosen["path"].tolist(),
        "gallery": best_gallery_images(analysis, chosen.index.tolist(), claimed),
        "score": chosen[score_col].astype(float).tolist(),
        "caption": [f"{i} ({d}) vs {c}"[:48] for i, d, c in zip(chosen["identity"], chosen["distortion"], claimed)],
    }, columns=["probe", "gallery", "score", "caption"])


def operating_point(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> dict[str, Any]:
    """FAR and TAR of the decision ``score >= threshold`` over all genuine and impostor scores.

    :func:`~facecom_utils.metrics.verification.accept_rates`, plus ``min_resolvable_far`` (one false
    accept among this many impostor scores).
    """
    from facecom_utils.metrics.verification import accept_rates

    point = accept_rates(genuine, impostor, threshold)
    point["min_resolvable_far"] = 1.0 / point["n_impostor"] if point["n_impostor"] else math.nan
    return point


def recommend_threshold(fold: ScoreAnalysis, chosen: float, target_far: float | None = None) -> dict[str, Any]:
    """The operating threshold to recommend, decided on the validation fold only.

    ``target_far=None`` keeps the threshold notebook 03 chose on the fold (k-fold over balanced pairs);
    a number picks the lowest fold threshold with at most that FAR over the fold's impostor scores.
    """
    from facecom_utils.metrics.verification import threshold_at_far

    genuine, impostor = fold.genuine_impostor()
    if target_far is None:
        threshold, rule = float(chosen), "threshold chosen by notebook 03 on the validation fold (k-fold, balanced pairs)"
    else:
        threshold = float(threshold_at_far(impostor, target_far))
        rule = f"lowest threshold with FAR <= {target_far:g} on the validation fold"
    point = operating_point(genuine, impostor, threshold)
    return {"threshold": threshold, "rule": rule, "fold_far": point["far"], "fold_tar": point["tar"],
            "fold_n_impostor": point["n_impostor"]}


def per_distortion_operating_points(analysis: ScoreAnalysis, threshold: float) -> pd.DataFrame:
    """Top-1, FAR and TAR at ``threshold`` for every distortion type (and overall)."""
    rows = []
    for kind in [*analysis.distortions, "all"]:
        g, i = analysis.genuine_impostor(None if kind == "all" else kind)
        mask = np.ones(len(analysis.probes), bool) if kind == "all" else (analysis.probes["distortion"] == kind).to_numpy()
        point = operating_point(g, i, threshold)
        rows.append({"distortion": kind, "probes": int(mask.sum()),
                     "top1": float(analysis.probes.loc[mask, "top1_correct"].mean()) if mask.any() else math.nan,
                     "tar": point["tar"], "far": point["far"], "false_accepts": point["false_accepts"],
                     "n_impostor": point["n_impostor"]})
    return pd.DataFrame(rows).set_index("distortion")


def threshold_metrics(
    run: RecognitionRunFiles,
    report: ScoreAnalysis,
    strict_report: ScoreAnalysis,
    recommendation: Mapping[str, Any],
    strict_recommendation: Mapping[str, Any],
    seed: int = 0,
) -> dict[str, Any]:
    """The numbers notebook 04 writes to ``metrics.json``."""
    from facecom_utils.metrics.classification import choose_threshold
    from facecom_utils.metrics.verification import match_metrics, match_pairs

    out: dict[str, Any] = {"reported_split": run.reported_split, "run_dir": str(run.run_dir), "track": run.track}
    for prefix, analysis, rec in (("", report, recommendation), ("strict_", strict_report, strict_recommendation)):
        g, i = analysis.genuine_impostor()
        t = float(rec["threshold"])
        point = operating_point(g, i, t)
        pairs = match_pairs(analysis.scores, analysis.true_idx, seed=seed)
        match = match_metrics(pairs["score"], pairs["label"], t)
        oracle = choose_threshold(pairs["label"], pairs["score"], criterion="accuracy", prefer=None) if pairs["label"].size else math.nan
        per = per_distortion_operating_points(analysis, t)
        out.update({
            f"{prefix}recommended_threshold": t,
            f"{prefix}recommendation_rule": rec["rule"],
            f"{prefix}far_at_recommended": point["far"],
            f"{prefix}tar_at_recommended": point["tar"],
            f"{prefix}false_accepts": point["false_accepts"],
            f"{prefix}n_genuine": point["n_genuine"],
            f"{prefix}n_impostor": point["n_impostor"],
            f"{prefix}min_resolvable_far": point["min_resolvable_far"],
            f"{prefix}fold_far_at_recommended": rec["fold_far"],
            f"{prefix}fold_tar_at_recommended": rec["fold_tar"],
            f"{prefix}match_accuracy": match["match_accuracy"],
            f"{prefix}match_f1_macro": match["match_f1_macro"],
            f"{prefix}oracle_threshold": float(oracle),
            f"{prefix}per_distortion": {k: {"tar": r["tar"], "far": r["far"]} for k, r in per.drop(index="all").iterrows()},
        })
    details = run.threshold_details or {}
    if details.get("fold_thresholds"):
        out["threshold_fold_mean"] = float(np.mean(details["fold_thresholds"]))
        out["threshold_fold_std"] = float(np.std(details["fold_thresholds"]))
        out["threshold_folds"] = [float(x) for x in details["fold_thresholds"]]
    return out
