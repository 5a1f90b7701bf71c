"""Task B with face-trained knowledge: dlib's descriptor beside the FACECOM embedder, fused per probe.

Outside face data: dlib's descriptor was trained on public face datasets whose named identities
look like LFW's, which may include people in FACECOM (see :mod:`facecom_utils.face.descriptors`), so these
tracks are reported apart from the FACECOM-only one. Five tracks, one protocol:

- ``facecom_only``: the run's own embeddings (notebook 03's model);
- ``face_model``: dlib's descriptor of the face front end's aligned crop (no restoration);
- ``face_model_restored``: the same after the restoration the distortion estimator
  (:class:`~facecom_utils.face.quality.DistortionEstimator`, fitted on the run's training images) picks
  from each image's pixels;
- ``pixel_copies``: the training-free pixel copy detector alone
  (:mod:`~facecom_utils.face.copies`; no face data): it shows that the main protocol
  measures finding a probe's own source photo, the strict protocol recognising the person;
- ``fused``: per probe, score = w * cos(face model, restored) + (1 - w) * cos(FACECOM embedder)
  + gamma * copy evidence, with one (w, gamma) per **estimated** type (the estimator's output is
  the quality signal), chosen on the run's validation fold (mean of main and strict top-1) and
  applied unchanged to the reported split. Copy evidence (:func:`~.copies.copy_evidence`) is the
  copy correlation's excess over the probe's best correlation with a cohort of the run's training
  people's clean photos: about 1 for a probe's own source photo, 0 for nearly every other photo. Glare (sunny) keeps a low w: dlib finds no face there,
  the FACECOM model still does. The fused score is then put on one scale per estimated type
  (:func:`calibrate_scores`): each (w, gamma) mixes two cosines of different ranges, so without it a
  glare probe's genuine score can sit below another type's impostor scores, and one threshold (or one
  ROC) over all probes mixes incomparable numbers. An affine map per probe leaves every probe's
  ranking of the gallery, hence top-1, exactly as it was.

Every track's thresholds are chosen on the fold, as the FACECOM-only track's are.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facecom_utils.face.quality import RESTORATION_FOR, DistortionEstimator, quality_feature_matrix
from facecom_utils.face.restoration import RESTORATION_VERSIONS, check_restoration_versions
from facecom_utils.face.copies import COHORT_SIZE, copy_descriptors, copy_evidence
from facecom_utils.face.descriptors import face_model_cache, face_workers
from facecom_utils.recognition.protocol import _quick_scores, choose_thresholds, protocol_metrics

__all__ = ["TRACKS", "Fusion", "track_features", "track_embeddings", "RecognitionTracks", "calibrate_scores", "choose_fusion", "copy_cohort", "evaluate_run",
           "fit_estimator", "fit_fusion", "fuse_embeddings", "fused_embeddings", "recognition_tracks", "run_embeddings",
           "run_recognition_tracks", "saved_track_embeddings", "train_recognition_with_tracks", "track_inputs"]

TRACKS: tuple[str, ...] = ("facecom_only", "face_model", "face_model_restored", "pixel_copies", "fused")
#: Tracks that read dlib's descriptor (trained on outside face data).
OUTSIDE_FACE_DATA: tuple[str, ...] = ("face_model", "face_model_restored", "fused")
#: The face model's weight is searched on this grid, per estimated type.
WEIGHT_GRID: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
#: The copy evidence's weight is searched on this grid, per estimated type.
GAMMA_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
#: The fused score of an estimated type is anchored at this quantile of its impostor scores (FAR 1e-3 per photo).
IMPOSTOR_QUANTILE = 0.999
#: An estimated type with fewer probes on the fold is scaled on all the fold's probes, scored with its (w, gamma).
MIN_PROBES = 25
#: The smallest (high - median) a scale keeps, so that a degenerate fold cannot blow the scores up.
MIN_SPREAD = 1e-3
#: Key of the scale for probes of a type the fold never estimated: they get w = gamma = 0 (the FACECOM
#: embedder's cosine), scaled on all the fold's probes scored that way.
POOLED = "*"


def fuse_embeddings(face: np.ndarray, facecom: np.ndarray, weight: np.ndarray, gallery: np.ndarray,
                    copies: np.ndarray | None = None, gamma: np.ndarray | None = None,
                    cohort: np.ndarray | None = None, evidence: np.ndarray | None = None) -> np.ndarray:
    """Embeddings whose dot product is ``w * cos_face + (1 - w) * cos_facecom (+ gamma * copy evidence)`` per probe.

    Args:
        face, facecom: L2-normalised ``[N, D1]`` and ``[N, D2]`` embeddings of the same rows.
        weight: ``[N]`` the face model's weight of each row (ignored for gallery rows).
        gallery: ``[N]`` True for gallery (clean) rows, which keep every part unscaled.
        copies, gamma, cohort: Optional ``[N, D3]`` copy descriptors (:func:`~.copies.copy_descriptors`),
            ``[N]`` the copy evidence's weight per probe row, and the ``[C, D3]`` cohort of other
            people's clean photos (:func:`~.copies.copy_evidence`). The copy part has one column
            per gallery row: a gallery row is 1 in its own column, a probe row holds
            ``gamma * copy_evidence(probe, that photo)``. So its width is the number of gallery rows,
            and probe and gallery embeddings only compare within one call.
        evidence: Optional ``[N, G]`` copy evidence of each row against the gallery rows, already
            computed (probe rows are read; it depends on neither ``weight`` nor ``gamma``).
    """
    gallery = np.asarray(gallery, bool)
    w = np.where(gallery, 1.0, np.asarray(weight, np.float64))[:, None]
    v = np.where(gallery, 1.0, 1.0 - np.asarray(weight, np.float64))[:, None]
    parts = [w * face, v * facecom]
    if copies is not None:
        if cohort is None:
            raise ValueError("the copy term needs a cohort: clean photos of people outside the gallery")
        g = np.zeros(len(gallery)) if gamma is None else np.asarray(gamma, np.float64)
        part = np.zeros((len(gallery), int(gallery.sum())), np.float32)
        part[np.flatnonzero(gallery), np.arange(int(gallery.sum()))] = 1.0
        probes = np.flatnonzero(~gallery & (g > 0))
        if len(probes):
            ev = (copy_evidence(copies[probes], copies[gallery], cohort) if evidence is None
                  else np.asarray(evidence, np.float32)[probes])
            part[probes] = g[probes, None] * ev
        parts.append(part)
    return np.concatenate(parts, axis=1).astype(np.float32)


def _impostor_scale(scores: np.ndarray, quantile: float) -> tuple[float, float]:
    """``(median, high quantile)`` of impostor scores, the high end at least :data:`MIN_SPREAD` above the median."""
    median, high = (float(v) for v in np.quantile(scores, [0.5, quantile]))
    return median, max(high, median + MIN_SPREAD)


def calibrate_scores(table: pd.DataFrame, emb: np.ndarray, kinds: np.ndarray,
                     quantile: float = IMPOSTOR_QUANTILE, min_probes: int = MIN_PROBES,
                     ) -> dict[str, tuple[float, float]]:
    """The impostor scale ``{type: (median, high)}`` of each estimated type with ``min_probes`` or more probes.

    The impostor scores of a type are its probes' dot products with every gallery photo of another
    identity. A probe's calibrated score against a photo is ``(s - high) / (high - median)``: 0 where
    only ``1 - quantile`` of that type's impostor photos reach, -1 at the median impostor. Types with
    fewer probes (or no impostor) are left out; :meth:`Fusion.fit_calibration` scales them. Call it on
    the validation fold only.

    Args:
        table: :func:`~.embedding.embedding_table` rows (gallery rows have no distortion).
        emb: Their (fused, uncalibrated) embeddings.
        kinds: ``[N]`` each row's estimated type (gallery rows are ignored).
    """
    gallery = table["distortion"].isna().to_numpy()
    identity = table["identity"].astype(str).to_numpy()
    kinds = np.asarray(kinds).astype(str)
    g_emb, g_id = np.asarray(emb)[gallery], identity[gallery]
    out: dict[str, tuple[float, float]] = {}
    for kind in sorted(set(kinds[~gallery])):
        rows = np.flatnonzero(~gallery & (kinds == kind))
        scores = (np.asarray(emb)[rows] @ g_emb.T)[identity[rows][:, None] != g_id[None, :]]
        if len(rows) >= min_probes and scores.size:
            out[str(kind)] = _impostor_scale(scores, quantile)
    return out


@dataclass
class Fusion:
    """The fused track's per-type choices: the face model's weight and the copy evidence's weight.

    Attributes:
        weights: ``{estimated type: w}``; gammas: ``{estimated type: gamma}`` (empty: no copy term).
            Types not in the table get 0 (the FACECOM model alone).
        cohort: ``[C, D]`` copy descriptors of the cohort (clean photos of the run's training
            people), needed when any gamma is above 0.
        calibration: ``{estimated type: (median, high)}`` impostor scales (:meth:`fit_calibration`),
            with the one for types the fold never estimated under :data:`POOLED`; empty: scores are
            left uncalibrated (files written before calibration existed).
    """

    weights: dict[str, float]
    gammas: dict[str, float] = field(default_factory=dict)
    cohort: np.ndarray | None = field(default=None, repr=False, compare=False)
    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)

    def per_probe(self, kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(w, gamma)`` of each row from its estimated type."""
        return (np.array([self.weights.get(str(k), 0.0) for k in kinds], np.float64),
                np.array([self.gammas.get(str(k), 0.0) for k in kinds], np.float64))

    @property
    def uses_copies(self) -> bool:
        return any(v > 0 for v in self.gammas.values())

    def embed(self, face: np.ndarray, facecom: np.ndarray, kinds: np.ndarray, gallery: np.ndarray,
              copies: np.ndarray | None = None) -> np.ndarray:
        """The fused embeddings of rows (see :func:`fuse_embeddings`)."""
        return self.calibrate(self._fused(face, facecom, kinds, gallery, copies), kinds, gallery)

    def _fused(self, face: np.ndarray, facecom: np.ndarray, kinds: np.ndarray, gallery: np.ndarray,
               copies: np.ndarray | None = None) -> np.ndarray:
        w, g = self.per_probe(kinds)
        if self.uses_copies and (copies is None or self.cohort is None):
            raise ValueError("this fusion adds copy evidence: pass the rows' copy descriptors, and load a "
                             "face_tracks.pt that holds the copy cohort (one written before the cohort "
                             "existed must be re-scored: run notebook 03's tracks stage again)")
        return fuse_embeddings(face, facecom, w, gallery, copies if self.uses_copies else None, g, self.cohort)

    def fit_calibration(self, table: pd.DataFrame, face: np.ndarray, facecom: np.ndarray, kinds: np.ndarray,
                        copies: np.ndarray | None = None) -> None:
        """Sets :attr:`calibration` on a validation fold: every type of :attr:`weights` and :data:`POOLED`.

        A type with :data:`MIN_PROBES` or more probes is scaled on its own probes
        (:func:`calibrate_scores`); a type with fewer is scaled on all the fold's probes scored with
        its (w, gamma), and :data:`POOLED` on all of them scored with w = gamma = 0, the scores a probe
        of a type the fold never estimated gets. So a scale always belongs to the mix it rescales.

        Raises:
            ValueError: No probe of the fold has an impostor (it holds one identity).
        """
        gallery = np.asarray(table["distortion"].isna().to_numpy(), bool)
        kinds = np.asarray(kinds).astype(str)
        scales = calibrate_scores(table, self._fused(face, facecom, kinds, gallery, copies), kinds)
        for kind in [k for k in self.weights if k not in scales] + [POOLED]:
            as_kind = np.where(gallery, kinds, kind)
            scale = calibrate_scores(table, self._fused(face, facecom, as_kind, gallery, copies), as_kind,
                                     min_probes=1).get(kind)
            if scale is None:
                raise ValueError("fit_calibration: no probe has an impostor photo (the fold needs two or more "
                                 "identities)")
            scales[kind] = scale
        self.calibration = scales

    def calibrate(self, emb: np.ndarray, kinds: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """Fused embeddings whose dot products are the calibrated scores (unchanged without a calibration).

        A probe row becomes ``[e / (high - median), -high / (high - median)]`` and a gallery row ``[e, 1]``
        (the scale of the probe's estimated type), so ``probe . photo = (s - high) / (high - median)``.
        """
        if not self.calibration:
            return emb
        gallery = np.asarray(gallery, bool)
        pooled = self.calibration[POOLED]
        scale = np.array([self.calibration.get(str(k), pooled) for k in kinds], np.float64)
        a = np.where(gallery, 1.0, 1.0 / (scale[:, 1] - scale[:, 0]))
        b = np.where(gallery, 1.0, -scale[:, 1] * a)
        return np.concatenate([emb * a[:, None], b[:, None]], axis=1).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """Plain floats and one float16 tensor (part of ``face_tracks.pt``, read with ``weights_only=True``)."""
        import torch

        state: dict[str, Any] = {"weights": {str(k): float(v) for k, v in self.weights.items()},
                                 "gammas": {str(k): float(v) for k, v in self.gammas.items()},
                                 "calibration": {str(k): [float(v[0]), float(v[1])] for k, v in self.calibration.items()}}
        if self.cohort is not None and self.uses_copies:
            state["copy_cohort"] = torch.from_numpy(np.asarray(self.cohort, np.float16))
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Fusion":
        """Also reads files written before the copy term (no ``gammas``: none) or the calibration (none)."""
        cohort = state.get("copy_cohort")
        return cls({k: float(v) for k, v in state["weights"].items()},
                   {k: float(v) for k, v in state.get("gammas", {}).items()},
                   None if cohort is None else cohort.float().numpy(),
                   {k: (float(v[0]), float(v[1])) for k, v in state.get("calibration", {}).items()})

    def table(self) -> pd.DataFrame:
        """One row per estimated type: ``face-model weight``, ``copy weight`` and, when calibrated,
        ``impostor median`` and ``impostor 99.9% quantile``, the scores the calibration maps to -1 and 0."""
        columns: dict[str, Any] = {"face-model weight": self.weights,
                                   "copy weight": {k: self.gammas.get(k, 0.0) for k in self.weights}}
        if self.calibration:
            pooled = self.calibration[POOLED]
            columns["impostor median"] = {k: self.calibration.get(k, pooled)[0] for k in self.weights}
            columns[f"impostor {IMPOSTOR_QUANTILE:.1%} quantile"] = {
                k: self.calibration.get(k, pooled)[1] for k in self.weights}
        return pd.DataFrame(columns).T


def _mean_top1(table: pd.DataFrame, emb: np.ndarray) -> float:
    m = _quick_scores(table, emb)
    return float(np.nanmean([m["top1"], m["strict_top1"]]))


def choose_fusion(table: pd.DataFrame, face: np.ndarray, facecom: np.ndarray, kinds: np.ndarray,
                  copies: np.ndarray | None = None, cohort: np.ndarray | None = None,
                  grid: tuple[float, ...] = WEIGHT_GRID, gamma_grid: tuple[float, ...] = GAMMA_GRID) -> Fusion:
    """The face model's weight (and the copy evidence's weight, with ``copies`` and ``cohort``) per estimated type.

    Each type's pair maximises mean(main, strict) top-1 of that type's probes. Call it on the
    validation fold only; ties keep the lower copy weight, then the lower face weight (the FACECOM
    model's side).
    """
    if copies is not None and cohort is None:
        raise ValueError("choose_fusion: copy descriptors need their cohort")
    gallery = table["distortion"].isna().to_numpy()
    weights, gammas = {}, {}
    for kind in sorted(set(kinds[~gallery])):
        rows = gallery | (kinds == kind)
        sub = table[rows].reset_index(drop=True)
        best, best_w, best_g = -np.inf, 0.0, 0.0
        evidence = None
        if copies is not None:  # computed once per type: it depends on neither weight
            g_rows = gallery[rows]
            evidence = np.zeros((int(rows.sum()), int(g_rows.sum())), np.float32)
            evidence[~g_rows] = copy_evidence(copies[rows][~g_rows], copies[rows][g_rows], cohort)
        for g in (gamma_grid if copies is not None else (0.0,)):
            for w in grid:
                emb = fuse_embeddings(face[rows], facecom[rows], np.full(rows.sum(), w), gallery[rows],
                                      None if copies is None else copies[rows], np.full(rows.sum(), g), cohort,
                                      evidence)
                value = _mean_top1(sub, emb)
                if value > best + 1e-9:
                    best, best_w, best_g = value, float(w), float(g)
        weights[str(kind)] = best_w
        if copies is not None:
            gammas[str(kind)] = best_g
    return Fusion(weights, gammas, None if copies is None else np.asarray(cohort, np.float32))


@dataclass
class RecognitionTracks:
    """Stage 5 of notebook 03: the face-model tracks beside the FACECOM-only embedder.

    Attributes:
        estimator: The restoration selector / quality signal.
        fusion: The fused track's weights per estimated type (chosen on the fold).
        tracks: ``{track: protocol metrics on the reported split}``.
        headline: The track at the top of metrics.json.
        selector: Per true type: share of probes whose type / restoration the estimator got right,
            and share where dlib's detector finds a face before and after the chosen restoration.
        table, embeddings: The reported split's rows and each track's embeddings of them.
    """

    estimator: DistortionEstimator
    fusion: Fusion
    tracks: dict[str, dict[str, Any]]
    headline: str
    selector: pd.DataFrame
    table: pd.DataFrame | None = None
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    def failures(self, per_type: int = 2, track: str | None = None) -> pd.DataFrame:
        """The error gallery: the worst main and strict failures per type of a track (the headline by default)."""
        from facecom_utils.recognition.errors import worst_failures

        return worst_failures(self.table, self.embeddings[track or self.headline], per_type=per_type)

    def side_by_side(self) -> pd.DataFrame:
        """Tracks as columns; rows: main and strict top-1, their verification figures (ROC AUC, TAR at
        FAR 1e-3, F1 at the fold's threshold), then top-1 per type."""
        cols = {}
        for name, m in self.tracks.items():
            col = {"main top-1": m["top1"], "strict top-1": m["strict_top1"]}
            for prefix, label in (("", "main"), ("strict_", "strict")):
                col.update({f"{label} ROC AUC": m.get(f"{prefix}roc_auc"),
                            f"{label} TAR@FAR 1e-3": m.get(f"{prefix}tar_at_far_1e-3"),
                            f"{label} match F1": m.get(f"{prefix}match_f1")})
            col.update({f"main {t}": v for t, v in m["per_distortion"].items()})
            col.update({f"strict {t}": v for t, v in m["strict_per_distortion"].items()})
            cols[name + (" (headline)" if name == self.headline else "")] = col
        return pd.DataFrame(cols)


def fit_estimator(train: pd.DataFrame, seed: int, workers: int, cache: Path,
                  n_images: int = 4000) -> DistortionEstimator:
    """The restoration selector, fitted on a seeded sample of ``n_images`` training images and their types."""
    sample = train.sample(n=min(n_images, len(train)), random_state=seed)
    return DistortionEstimator.fit(quality_feature_matrix(sample["path"], workers=workers, cache_dir=cache),
                                   sample["distortion"].fillna("clean").tolist(), seed=seed)


def copy_cohort(train: pd.DataFrame, seed: int, workers: int, cache: Path) -> np.ndarray:
    """Copy descriptors of a seeded cohort of the training people's clean photos, rounded as ``face_tracks.pt`` keeps them."""
    clean = train[train["distortion"].isna()]
    paths = clean.sample(n=min(COHORT_SIZE, len(clean)), random_state=seed)["path"].tolist()
    return copy_descriptors(paths, workers=workers, cache_dir=cache).astype(np.float16).astype(np.float32)


def track_inputs(table: pd.DataFrame, emb: np.ndarray, estimator: DistortionEstimator, store: Any, workers: int,
                 cache: Path) -> dict[str, Any]:
    """Everything the tracks read about one embedded split: estimated types, restorations, dlib and copy
    descriptors (cached by content), the FACECOM embeddings raw and L2-normalised."""
    q = quality_feature_matrix(table["path"], workers=workers, cache_dir=cache)
    restorations = estimator.restorations(q)
    unrestored = store.describe(table["path"].tolist())
    restored = store.describe(table["path"].tolist(), restorations)
    return {"table": table, "kinds": estimator.predict(q), "restorations": np.asarray(restorations),
            "facecom_raw": emb,
            "facecom": emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12),
            "detected": unrestored.detected, "detected_restored": restored.detected,
            "face_model": unrestored.normalised(),
            "pixel_copies": copy_descriptors(table["path"].tolist(), workers=workers, cache_dir=cache),
            "face_model_restored": restored.normalised()}


def fused_embeddings(fusion: Fusion, inputs: dict[str, Any]) -> np.ndarray:
    """The fused track's embeddings of one split's :func:`track_inputs`."""
    return fusion.embed(inputs["face_model_restored"], inputs["facecom"], inputs["kinds"],
                        inputs["table"]["distortion"].isna().to_numpy(), inputs["pixel_copies"])


def fit_fusion(fold: dict[str, Any], cohort: np.ndarray) -> Fusion:
    """The fused track's choices on a validation fold (:func:`track_inputs`): (w, gamma) per estimated
    type (:func:`choose_fusion`), then the score scale per type (:func:`calibrate_scores`)."""
    fusion = choose_fusion(fold["table"], fold["face_model_restored"], fold["facecom"], fold["kinds"],
                           fold["pixel_copies"], cohort)
    fusion.fit_calibration(fold["table"], fold["face_model_restored"], fold["facecom"], fold["kinds"],
                           fold["pixel_copies"])
    return fusion


def _stage_settings(config: Any) -> tuple[Path, int]:
    """The tracks stage's descriptor cache folder and worker count."""
    return face_model_cache(config.cache_dir), face_workers(config.face_workers)


def _split_inputs(config: Any, splits: Any, run: Any, rundir: Any, cache: Path,
                  workers: int) -> tuple[DistortionEstimator, dict[str, dict[str, Any]], str]:
    """Stage 5a: the distortion estimator (fitted on the run's training images) and the :func:`track_inputs`
    of the run's saved validation fold and reported split: ``(estimator, {role: inputs}, reported role)``."""
    from facecom_utils.face.descriptors import DescriptorStore
    from facecom_utils.train.rundir import FOLD_ROLE, REPORT_ROLE

    store = DescriptorStore(cache, workers=workers, progress=config.progress, mirror=config.face_mirror)
    estimator = fit_estimator(splits.train, config.seed, workers, cache)
    roles = {FOLD_ROLE: rundir.load_embeddings(FOLD_ROLE)}
    reported = run.metrics.get("reported_role", REPORT_ROLE)
    if reported == FOLD_ROLE:
        warnings.warn("the run reports its validation fold: the fusion weights, the score calibration and the "
                      "thresholds are chosen on the reported images themselves (optimistic)", stacklevel=3)
    roles.setdefault(reported, rundir.load_embeddings(reported))
    data = {role: track_inputs(table, emb, estimator, store, workers, cache) for role, (table, emb) in roles.items()}
    return estimator, data, reported


def _split_track(inputs: dict[str, Any], track: str, fusion: Fusion) -> np.ndarray:
    """One track's embeddings of a split's :func:`track_inputs`."""
    if track == "facecom_only":  # as saved: its thresholds were chosen on these very scores
        return inputs["facecom_raw"]
    if track == "fused":
        return fused_embeddings(fusion, inputs)
    return inputs[track]


def _score_tracks(config: Any, run: Any, fold: dict[str, Any], rep: dict[str, Any],
                  fusion: Fusion) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]], dict[str, np.ndarray]]:
    """Stage 5c: every track's thresholds, chosen on the fold (the FACECOM-only track keeps the run's own,
    chosen there by its ``threshold_method``), and its protocol metrics on the reported split.

    Returns:
        ``(metrics per track, [threshold, strict threshold] per track, the reported split's embeddings per track)``.
    """
    embeddings = {track: _split_track(rep, track, fusion) for track in TRACKS}
    tracks, chosen = {}, {}
    for track in TRACKS:
        if track == "facecom_only":
            thresholds = {"threshold": run.threshold, "strict_threshold": run.strict_threshold,
                          "details": run.metrics.get("threshold_details") or {}}
        else:
            thresholds = choose_thresholds(fold["table"], _split_track(fold, track, fusion),
                                           method=config.threshold_method, seed=config.seed)
        chosen[track] = [float(thresholds["threshold"]), float(thresholds["strict_threshold"])]
        m = protocol_metrics(rep["table"], embeddings[track], thresholds["threshold"],
                             thresholds["strict_threshold"], seed=config.seed)
        m["threshold_source"] = "validation fold"
        m["threshold_details"] = thresholds["details"]  # the per-fold thresholds notebook 04 plots
        m["outside_face_data"] = track in OUTSIDE_FACE_DATA
        tracks[track] = m
    return tracks, chosen, embeddings


def _selector_summary(rep: dict[str, Any]) -> pd.DataFrame:
    """Per true type of the reported split's probes: the share whose type and restoration the estimator got
    right, and where dlib's detector finds a face before and after the chosen restoration."""
    probes = rep["table"]["distortion"].notna().to_numpy()
    kinds = rep["table"]["distortion"].to_numpy()[probes]
    chosen = rep["restorations"][probes]
    return pd.DataFrame({"type": kinds, "estimated type correct": rep["kinds"][probes] == kinds,
                         "right restoration": chosen == np.array([RESTORATION_FOR.get(k, "identity") for k in kinds]),
                         "face found": rep["detected"][probes],
                         "face found after restoration": rep["detected_restored"][probes],
                         }).groupby("type").mean()


def _save_tracks(rundir: Any, config: Any, splits: Any, run: Any, out: RecognitionTracks,
                 thresholds: dict[str, list[float]]) -> None:
    """Stage 5d: ``face_tracks.pt`` and ``metrics.json`` (the tracks, the fusion, the selector and the
    headline's figures on top) through :meth:`~facecom_utils.train.rundir.RunDir.write_tracks`."""
    fusion = out.fusion
    state = {"estimator": out.estimator.state_dict(), **fusion.state_dict(), "thresholds": thresholds,
             "restoration_versions": dict(RESTORATION_VERSIONS), "face_mirror": bool(config.face_mirror)}
    metrics = dict(run.metrics)
    metrics["tracks"] = out.tracks
    metrics["fusion_weights"] = fusion.weights
    metrics["fusion_copy_weights"] = fusion.gammas
    metrics["fusion_score_calibration"] = {k: {"impostor_median": m, "impostor_high": h, "quantile": IMPOSTOR_QUANTILE}
                                           for k, (m, h) in fusion.calibration.items()}
    metrics["selector"] = {t: {k: float(v) for k, v in r.items()} for t, r in out.selector.to_dict(orient="index").items()}
    metrics.update({k: v for k, v in out.tracks[out.headline].items()
                    if k not in ("threshold_source", "outside_face_data", "threshold_details")})
    run.metrics.update(rundir.write_tracks("recognition", out.headline, state, metrics, config, splits.data_root))


def recognition_tracks(config: Any, splits: Any, run: Any) -> RecognitionTracks:
    """Stage 5: scores every track on the reported split; choices (weights, thresholds) on the fold.

    Reads the run's saved embeddings of its validation fold and reported split, computes dlib
    descriptors and copy descriptors of the same images (cached by file content), fits the
    distortion estimator on up to 4,000 of the run's training images (:func:`_split_inputs`), fits
    the fusion on the fold (:func:`fit_fusion`), chooses each track's thresholds on the fold and
    scores it on the reported split (:func:`_score_tracks`), and writes ``face_tracks.pt``
    (estimator, fusion weights, thresholds; loadable with ``weights_only=True``) and ``metrics.json``
    with ``tracks`` and the headline on top (:func:`_save_tracks`).
    """
    from facecom_utils.train.rundir import FOLD_ROLE, RunDir

    rundir = RunDir(run.output_dir)
    cache, workers = _stage_settings(config)
    estimator, data, reported = _split_inputs(config, splits, run, rundir, cache, workers)
    fold, rep = data[FOLD_ROLE], data[reported]
    fusion = fit_fusion(fold, copy_cohort(splits.train, config.seed, workers, cache))
    tracks, thresholds, embeddings = _score_tracks(config, run, fold, rep, fusion)
    headline = "fused" if config.headline_track == "auto" else config.headline_track
    out = RecognitionTracks(estimator, fusion, tracks, headline, _selector_summary(rep), rep["table"], embeddings)
    _save_tracks(rundir, config, splits, run, out, thresholds)
    return out


def run_recognition_tracks(config: Any, splits: Any, run: Any) -> RecognitionTracks | None:
    """:func:`recognition_tracks` when ``config.face_model`` asks for it and dlib is installed, else None."""
    from facecom_utils.face.descriptors import face_tracks_wanted

    if not face_tracks_wanted(config.face_model, "the FACECOM-only embedder"):
        return None
    return recognition_tracks(config, splits, run)


# ----------------------------------------------------------------------------- a run directory's headline track


def train_recognition_with_tracks(config: Any) -> Any:
    """What notebook 03 computes, in one call (``facecom train-recognition`` runs it): the FACECOM embedder's
    stages (:func:`~facecom_utils.recognition.pipeline.train_recognition_stages`), then the face-model tracks
    (:func:`run_recognition_tracks`), which put the headline track on top of ``metrics.json`` and write
    ``face_tracks.pt``. Under torchrun the tracks run on rank 0 only, as a one-process run (:func:`~facecom_utils.common.distributed.then_on_rank_zero`).

    Args:
        config: A :class:`~facecom_utils.recognition.config.RecognitionConfig`.

    Returns:
        The embedder's :class:`~facecom_utils.recognition.pipeline.RecognitionRun` (the run folder holds the tracks).
    """
    from facecom_utils.common.distributed import then_on_rank_zero
    from facecom_utils.recognition.pipeline import train_recognition_stages

    return then_on_rank_zero(train_recognition_stages, run_recognition_tracks, config)


def run_embeddings(run_dir: str | Path, paths: list[str], gallery: np.ndarray, device: str = "auto",
                   batch_size: int = 64, cache_dir: str | Path | None = None) -> tuple[np.ndarray, list[float], str]:
    """Embeddings of images by a notebook-03 run's headline track: ``(emb, [threshold, strict], track)``.

    ``gallery`` marks the gallery (clean) images: a probe's fusion weight comes from its estimated
    type, a gallery image keeps both parts. Without ``face_tracks.pt`` the FACECOM-only model runs.
    """
    from facecom_utils.common.checkpoints import load_checkpoint
    from facecom_utils.train.rundir import RunDir
    from facecom_utils.recognition.embedding import embed_as_run
    from facecom_utils.recognition.model import load_recognition_model

    rundir = RunDir(run_dir)
    facecom = embed_as_run(*load_recognition_model(rundir.best_checkpoint, device), paths, batch_size, device)
    tracks = rundir.load_tracks("recognition")
    if tracks is None:
        own = load_checkpoint(rundir.best_checkpoint)
        return facecom, [float(own["threshold"]), float(own.get("strict_threshold", own["threshold"]))], "facecom_only"
    headline = str(tracks["headline"])
    if headline == "facecom_only":
        return facecom, list(tracks["thresholds"][headline]), headline
    features = track_features(tracks, headline, paths, face_model_cache(cache_dir), face_workers(),
                              str(rundir.tracks_path))
    emb = track_embeddings(tracks, headline, {**features, "facecom": facecom}, np.asarray(gallery, bool))
    return emb, list(tracks["thresholds"][headline]), headline


def track_features(saved: dict[str, Any], track: str, paths: list[str], cache: Path, workers: int,
                   source: str) -> dict[str, np.ndarray]:
    """What a face-model track reads of each image, one row per path (alike for a gallery photo and a probe).

    ``face_model``, ``face_model_restored``, ``pixel_copies``: ``{"emb"}``. ``fused``: ``{"face", "kinds"}``
    (dlib's restored descriptor, L2-normalised, and the estimated type), plus ``"copies"`` when the fusion
    adds copy evidence; the caller adds the images' FACECOM embeddings as ``"facecom"``. Descriptors come from
    (and go to) the cache in ``cache``, by file content; mirrored when the run was (``saved["face_mirror"]``;
    a run folder from before that setting read plain descriptors).

    Args:
        saved: A loaded ``face_tracks.pt`` (estimator, fusion, restoration versions).
        track: The track.
        paths: Image files.
        cache: The face model's cache folder (:func:`~facecom_utils.face.descriptors.face_model_cache`).
        workers: Processes computing descriptors.
        source: The tracks file's name, for the restoration-version check's message.
    """
    from facecom_utils.face.descriptors import DescriptorStore

    if track == "pixel_copies":
        return {"emb": copy_descriptors(paths, workers=workers, cache_dir=cache)}
    store = DescriptorStore(cache, workers=workers, mirror=bool(saved.get("face_mirror", False)))
    if track == "face_model":
        return {"emb": store.describe(paths).normalised()}
    estimator = DistortionEstimator.from_state_dict(saved["estimator"])
    q = quality_feature_matrix(paths, workers=workers, cache_dir=cache)
    check_restoration_versions(saved.get("restoration_versions"), source)
    face = store.describe(paths, estimator.restorations(q)).normalised()
    if track != "fused":
        return {"emb": face}
    out = {"face": face, "kinds": np.asarray(estimator.predict(q)).astype(str)}
    if Fusion.from_state_dict(saved).uses_copies:
        out["copies"] = copy_descriptors(paths, workers=workers, cache_dir=cache)
    return out


def track_embeddings(saved: dict[str, Any], track: str, features: dict[str, np.ndarray],
                     gallery: np.ndarray) -> np.ndarray:
    """A face-model track's embeddings from :func:`track_features` (``fused`` also reads ``"facecom"``):
    their dot products are the track's scores. ``gallery`` marks the gallery rows (a probe's fusion
    weight comes from its estimated type, a gallery photo keeps both parts)."""
    if track != "fused":
        return np.asarray(features["emb"], np.float32)
    facecom = np.asarray(features["facecom"])
    facecom = facecom / np.maximum(np.linalg.norm(facecom, axis=1, keepdims=True), 1e-12)
    return Fusion.from_state_dict(saved).embed(features["face"], facecom, features["kinds"], np.asarray(gallery, bool),
                                               features.get("copies"))


def saved_track_embeddings(run_dir: str | Path, roles: list[str], track: str,
                           cache_dir: str | Path | None = None) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """A notebook-03 run's embeddings of its saved splits (``roles``) by one track, without re-embedding.

    ``facecom_only`` is the saved embeddings themselves; the other tracks are rebuilt from them,
    ``face_tracks.pt`` (estimator, fusion, calibration) and the descriptor caches (computed where
    missing), so they match the run's ``metrics.json`` ``tracks.<track>``.

    Raises:
        ValueError: An unknown track, or a ``face_tracks.pt`` that is truncated or not Task B's.
        FileNotFoundError: A face-model track asked of a run without ``face_tracks.pt``.
    """
    from facecom_utils.train.rundir import RunDir

    if track not in TRACKS:
        raise ValueError(f"unknown track {track!r}; expected one of {', '.join(TRACKS)}")
    rundir = RunDir(run_dir)
    loaded = {role: rundir.load_embeddings(role) for role in roles}
    if track == "facecom_only":
        return loaded
    saved = rundir.load_tracks("recognition")
    if saved is None:
        raise FileNotFoundError(f"{rundir.path}: no face_tracks.pt, so no {track!r} track; run notebook 03 with "
                                "face_model='auto' and dlib installed, or analyse track='facecom_only'")
    cache, workers = face_model_cache(cache_dir), face_workers()
    out = {}
    for role, (table, emb) in loaded.items():
        features = track_features(saved, track, table["path"].tolist(), cache, workers, str(rundir.tracks_path))
        out[role] = (table, track_embeddings(saved, track, {**features, "facecom": emb},
                                             table["distortion"].isna().to_numpy()))
    return out


def evaluate_run(run_dir: str | Path, data_root: str | Path, split: str = "val", device: str = "auto",
                 batch_size: int = 64, seed: int = 0) -> dict[str, Any]:
    """The Task B protocol (main and strict) of a run's headline track on ``Task_B/<split>``, thresholds from its fold."""
    from facecom_utils.data.layout import scan_task_b
    from facecom_utils.recognition.embedding import embedding_table

    table = embedding_table(scan_task_b(data_root, splits=(split,)))
    emb, (threshold, strict), track = run_embeddings(run_dir, table["path"].tolist(),
                                                     table["distortion"].isna().to_numpy(), device, batch_size)
    metrics = protocol_metrics(table, emb, threshold, strict, seed=seed)
    metrics.update(track=track, split=split, n_images=len(table), run_dir=str(run_dir))
    return metrics
