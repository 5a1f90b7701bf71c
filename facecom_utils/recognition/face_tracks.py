"""Task B with face-trained knowledge: dlib's descriptor beside the FACECOM embedder, fused per probe.

Outside face data: dlib's descriptor was trained on public face datasets whose named identities
look like LFW's, which may include people in FACECOM (see :mod:`facecom_utils.face_model`), so these
tracks are reported apart from the FACECOM-only one. Four tracks, one protocol:

- ``facecom_only``: the run's own embeddings (notebook 03's model);
- ``face_model``: dlib's descriptor of the face front end's aligned crop (no restoration);
- ``face_model_restored``: the same after the restoration the distortion estimator
  (:class:`~facecom_utils.quality.DistortionEstimator`, fitted on the run's training images) picks
  from each image's pixels;
- ``fused``: per probe, score = w * cos(face model, restored) + (1 - w) * cos(FACECOM embedder),
  with one weight per **estimated** type (the estimator's output is the quality signal), chosen on
  the run's validation fold (mean of main and strict top-1) and applied unchanged to the reported
  split. Glare (sunny) keeps a low weight: dlib finds no face there, the FACECOM model still does.

Every track's thresholds are chosen on the fold, as the FACECOM-only track's are.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..quality import RESTORATION_FOR, DistortionEstimator, quality_feature_matrix
from .protocol import choose_thresholds, protocol_metrics

__all__ = ["TRACKS", "RecognitionTracks", "choose_fusion_weights", "evaluate_run", "fuse_embeddings",
           "recognition_tracks", "run_embeddings", "run_recognition_tracks"]

TRACKS: tuple[str, ...] = ("facecom_only", "face_model", "face_model_restored", "fused")
#: The face model's weight is searched on this grid, per estimated type.
WEIGHT_GRID: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def fuse_embeddings(face: np.ndarray, facecom: np.ndarray, weight: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Embeddings whose dot product is ``w * cos_face + (1 - w) * cos_facecom`` for each probe.

    Args:
        face, facecom: L2-normalised ``[N, D1]`` and ``[N, D2]`` embeddings of the same rows.
        weight: ``[N]`` the face model's weight of each row (ignored for gallery rows).
        gallery: ``[N]`` True for gallery (clean) rows, which keep both parts unscaled.
    """
    w = np.where(gallery, 1.0, np.asarray(weight, np.float64))[:, None]
    v = np.where(gallery, 1.0, 1.0 - np.asarray(weight, np.float64))[:, None]
    return np.concatenate([w * face, v * facecom], axis=1).astype(np.float32)


def _mean_top1(table: pd.DataFrame, emb: np.ndarray) -> float:
    m = protocol_metrics(table, emb, threshold=0.5, seed=0)
    values = [m["top1"], m["strict_top1"]]
    return float(np.nanmean(values))


def choose_fusion_weights(table: pd.DataFrame, face: np.ndarray, facecom: np.ndarray, kinds: np.ndarray,
                          grid: tuple[float, ...] = WEIGHT_GRID) -> dict[str, float]:
    """The face model's weight per estimated type, each maximising mean(main, strict) top-1 of that type's probes.

    Call it on the validation fold only; ties keep the lower weight (the FACECOM model's side).
    """
    gallery = table["distortion"].isna().to_numpy()
    weights = {}
    for kind in sorted(set(kinds[~gallery])):
        rows = gallery | (kinds == kind)
        sub = table[rows].reset_index(drop=True)
        best, best_w = -np.inf, 0.0
        for w in grid:
            value = _mean_top1(sub, fuse_embeddings(face[rows], facecom[rows], np.full(rows.sum(), w), gallery[rows]))
            if value > best + 1e-9:
                best, best_w = value, float(w)
        weights[str(kind)] = best_w
    return weights


@dataclass
class RecognitionTracks:
    """Stage 5 of notebook 03: the face-model tracks beside the FACECOM-only embedder.

    Attributes:
        estimator: The restoration selector / quality signal.
        weights: The face model's fusion weight per estimated type (chosen on the fold).
        tracks: ``{track: protocol metrics on the reported split}``.
        headline: The track at the top of metrics.json.
        selector: Per true type: share of probes whose type / restoration the estimator got right.
    """

    estimator: DistortionEstimator
    weights: dict[str, float]
    tracks: dict[str, dict[str, Any]]
    headline: str
    selector: pd.DataFrame

    def side_by_side(self) -> pd.DataFrame:
        """Tracks as columns; main and strict top-1 overall and per type as rows."""
        cols = {}
        for name, m in self.tracks.items():
            col = {"main top-1": m["top1"], "strict top-1": m["strict_top1"]}
            col.update({f"main {t}": v for t, v in m["per_distortion"].items()})
            col.update({f"strict {t}": v for t, v in m["strict_per_distortion"].items()})
            cols[name + (" (headline)" if name == self.headline else "")] = col
        return pd.DataFrame(cols)


def recognition_tracks(config: Any, splits: Any, run: Any) -> RecognitionTracks:
    """Stage 5: scores every track on the reported split; choices (weights, thresholds) on the fold.

    Reads the run's saved embeddings of its validation fold and reported split, computes dlib
    descriptors of the same images (cached by file content), fits the distortion estimator on up
    to 4,000 of the run's training images, and writes ``face_tracks.pt`` (estimator, weights;
    loadable with ``weights_only=True``) and ``metrics.json`` with ``tracks`` and the headline on top.
    """
    import torch

    from ..cache import default_cache_dir
    from ..face_model import DescriptorStore
    from ..rundir import FOLD_ROLE, REPORT_ROLE, RunDir

    cfg = config
    rundir = RunDir(run.output_dir)
    cache = (Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()) / "face_model"
    workers = cfg.face_workers or max(1, min(4, os.cpu_count() or 1))
    store = DescriptorStore(cache, workers=workers, progress=cfg.progress)
    train = splits.train.sample(n=min(4000, len(splits.train)), random_state=cfg.seed)
    estimator = DistortionEstimator.fit(quality_feature_matrix(train["path"], workers=workers, cache_dir=cache),
                                        train["distortion"].fillna("clean").tolist(), seed=cfg.seed)
    roles = {FOLD_ROLE: rundir.load_embeddings(FOLD_ROLE)}
    reported = run.metrics.get("reported_role", REPORT_ROLE)
    if reported == FOLD_ROLE:
        warnings.warn("the run reports its validation fold: the fusion weights are chosen on the reported "
                      "images themselves (optimistic)", stacklevel=2)
    roles.setdefault(reported, rundir.load_embeddings(reported))
    data = {}
    for role, (table, emb) in roles.items():
        q = quality_feature_matrix(table["path"], workers=workers, cache_dir=cache)
        data[role] = {"table": table, "kinds": estimator.predict(q), "quality": q, "facecom_raw": emb,
                      "facecom": emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12),
                      "face_model": store.describe(table["path"].tolist()).normalised(),
                      "face_model_restored": store.describe(table["path"].tolist(),
                                                            estimator.restorations(q)).normalised()}
    fold = data[FOLD_ROLE]
    weights = choose_fusion_weights(fold["table"], fold["face_model_restored"], fold["facecom"], fold["kinds"])

    def embeddings(d: dict[str, Any], track: str) -> np.ndarray:
        if track == "facecom_only":  # as saved: its thresholds were chosen on these very scores
            return d["facecom_raw"]
        if track == "fused":
            w = np.array([weights.get(str(k), 0.0) for k in d["kinds"]])
            return fuse_embeddings(d["face_model_restored"], d["facecom"], w, d["table"]["distortion"].isna().to_numpy())
        return d[track]

    rep = data[reported]
    tracks, chosen_thresholds = {}, {}
    for track in TRACKS:
        if track == "facecom_only":  # the run's own thresholds (chosen on the same fold by its threshold_method)
            thresholds = {"threshold": run.threshold, "strict_threshold": run.strict_threshold}
        else:
            thresholds = choose_thresholds(fold["table"], embeddings(fold, track), method=cfg.threshold_method,
                                           seed=cfg.seed)
        chosen_thresholds[track] = [float(thresholds["threshold"]), float(thresholds["strict_threshold"])]
        m = protocol_metrics(rep["table"], embeddings(rep, track), thresholds["threshold"],
                             thresholds["strict_threshold"], seed=cfg.seed)
        m["threshold_source"] = "validation fold"
        if track != "facecom_only":
            m["outside_face_data"] = True
        tracks[track] = m
    headline = "fused" if cfg.headline_track == "auto" else cfg.headline_track
    probes = rep["table"]["distortion"].notna().to_numpy()
    kinds = rep["table"]["distortion"].to_numpy()[probes]
    chosen = np.array(estimator.restorations(rep["quality"][probes]))
    selector = pd.DataFrame({"type": kinds, "estimated type correct": rep["kinds"][probes] == kinds,
                             "right restoration": chosen == np.array([RESTORATION_FOR.get(k, "identity") for k in kinds])
                             }).groupby("type").mean()
    out = RecognitionTracks(estimator, weights, tracks, headline, selector)
    tmp = rundir.path / ".face_tracks.pt.tmp"
    torch.save({"task": "recognition", "headline": headline, "estimator": estimator.state_dict(),
                "weights": {k: float(v) for k, v in weights.items()}, "thresholds": chosen_thresholds}, tmp)
    os.replace(tmp, rundir.path / "face_tracks.pt")
    metrics = {k: v for k, v in run.metrics.items() if k not in ("parameters", "data_root", "synthetic")}
    metrics["tracks"] = tracks
    metrics["headline_track"] = headline
    metrics["fusion_weights"] = weights
    metrics.update({k: v for k, v in tracks[headline].items() if k not in ("threshold_source", "outside_face_data")})
    rundir.write_metrics(metrics, cfg, splits.data_root)
    run.metrics.update(metrics)
    return out


def run_recognition_tracks(config: Any, splits: Any, run: Any) -> RecognitionTracks | None:
    """:func:`recognition_tracks` when ``config.face_model`` asks for it and dlib is installed, else None."""
    from ..face_model import face_tracks_wanted

    if not face_tracks_wanted(config.face_model, "the FACECOM-only embedder"):
        return None
    return recognition_tracks(config, splits, run)


# ----------------------------------------------------------------------------- a run directory's headline track


def run_embeddings(run_dir: str | Path, paths: list[str], gallery: np.ndarray, device: str = "auto",
                   batch_size: int = 64, cache_dir: str | Path | None = None) -> tuple[np.ndarray, list[float], str]:
    """Embeddings of images by a notebook-03 run's headline track: ``(emb, [threshold, strict], track)``.

    ``gallery`` marks the gallery (clean) images: a probe's fusion weight comes from its estimated
    type, a gallery image keeps both parts. Without ``face_tracks.pt`` the FACECOM-only model runs.
    """
    import torch

    from ..cache import default_cache_dir
    from ..checkpoints import load_checkpoint
    from ..face_model import DescriptorStore
    from ..rundir import RunDir
    from .embedding import extract_embeddings
    from .model import load_recognition_model

    rundir = RunDir(run_dir)
    model, payload = load_recognition_model(rundir.best_checkpoint, device)
    cfg = payload.get("config", {})
    facecom = extract_embeddings(
        model, paths, image_size=int(cfg.get("image_size", 112)), batch_size=batch_size, device=device,
        flip_tta=bool(cfg.get("flip_tta", True)), face_crop=float(cfg.get("face_crop", 1.0)),
        source=str(payload.get("embedding_source", "neck")), tta_crops=tuple(cfg.get("tta_crops") or ()))
    file = rundir.path / "face_tracks.pt"
    if not file.is_file():
        own = load_checkpoint(rundir.best_checkpoint)
        return facecom, [float(own["threshold"]), float(own.get("strict_threshold", own["threshold"]))], "facecom_only"
    tracks = torch.load(file, map_location="cpu", weights_only=True)
    headline = str(tracks["headline"])
    if headline == "facecom_only":
        return facecom, list(tracks["thresholds"][headline]), headline
    facecom = facecom / np.maximum(np.linalg.norm(facecom, axis=1, keepdims=True), 1e-12)
    estimator = DistortionEstimator.from_state_dict(tracks["estimator"])
    cache = (Path(cache_dir) if cache_dir else default_cache_dir()) / "face_model"
    workers = max(1, min(4, os.cpu_count() or 1))
    q = quality_feature_matrix(paths, workers=workers, cache_dir=cache)
    store = DescriptorStore(cache, workers=workers)
    restored = headline in ("face_model_restored", "fused")
    face = store.describe(paths, estimator.restorations(q) if restored else "identity").normalised()
    if headline != "fused":
        return face, list(tracks["thresholds"][headline]), headline
    w = np.array([float(tracks["weights"].get(str(k), 0.0)) for k in estimator.predict(q)])
    return fuse_embeddings(face, facecom, w, np.asarray(gallery, bool)), list(tracks["thresholds"][headline]), headline


def evaluate_run(run_dir: str | Path, data_root: str | Path, split: str = "val", device: str = "auto",
                 batch_size: int = 64, seed: int = 0) -> dict[str, Any]:
    """The Task B protocol (main and strict) of a run's headline track on ``Task_B/<split>``, thresholds from its fold."""
    from ..data import scan_task_b
    from .embedding import embedding_table

    table = embedding_table(scan_task_b(data_root, splits=(split,)))
    emb, (threshold, strict), track = run_embeddings(run_dir, table["path"].tolist(),
                                                     table["distortion"].isna().to_numpy(), device, batch_size)
    metrics = protocol_metrics(table, emb, threshold, strict, seed=seed)
    metrics.update(track=track, split=split, n_images=len(table), run_dir=str(run_dir))
    return metrics
