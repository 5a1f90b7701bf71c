"""A Task B run's headline track as a scorer, for ``facecom identify`` on new folders.

``facecom identify`` scores with the same track a run reports
(:func:`~facecom_utils.recognition.face_tracks.run_embeddings` runs it for whole splits): the run's
``headline`` in ``face_tracks.pt``, or the FACECOM-only embedder of ``checkpoints/best.pt`` when the run
has no face-model tracks (or a ``best.pt`` is given alone).

The track is split in two so that a gallery can be embedded apart from the probes:

* :meth:`RunScorer.features`: what the track reads of each image on its own (the FACECOM embedding,
  dlib's descriptor after the restoration the run's estimator picks, the estimated type, the copy
  descriptor), independent of the image's role;
* :meth:`RunScorer.embed`: a gallery's and some probes' features to embeddings whose dot products
  are the track's scores (for ``fused``: w * cos(face model) + (1 - w) * cos(FACECOM) + gamma * copy
  evidence against each gallery photo, calibrated per estimated type; see
  :class:`~facecom_utils.recognition.face_tracks.Fusion`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunScorer"]

#: Tracks whose features are one embedding per image (``fused`` keeps its parts apart).
_SINGLE = ("facecom_only", "face_model", "face_model_restored", "pixel_copies")


def _stack(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    return {k: np.concatenate([np.asarray(first[k]), np.asarray(second[k])]) for k in first}


@dataclass
class RunScorer:
    """The headline track of a Task B run folder (or the FACECOM-only embedder of a ``best.pt``).

    Attributes:
        source: The run folder or checkpoint given.
        best: Its ``checkpoints/best.pt`` (or the checkpoint itself).
        tracks_file: The ``face_tracks.pt`` the track reads (None: the FACECOM-only embedder).
        track: The track that scores (``facecom_only``, ``face_model``, ``face_model_restored``,
            ``pixel_copies`` or ``fused``).
        thresholds: ``(main, strict)`` match thresholds the run's validation fold chose for that track.
    """

    source: Path
    best: Path
    tracks_file: Path | None
    track: str
    thresholds: tuple[float, float]
    device: str = "auto"
    batch_size: int = 64
    cache_dir: Path | None = None
    saved: dict[str, Any] = field(default_factory=dict, repr=False)
    _model: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, run: str | Path, device: str = "auto", batch_size: int = 64,
             cache_dir: str | Path | None = None) -> "RunScorer":
        """The scorer of a run folder (its headline track) or of a ``best.pt`` (the FACECOM-only embedder).

        Raises:
            FileNotFoundError: No ``best.pt`` where one is needed.
            ValueError: A checkpoint or ``face_tracks.pt`` of another task.
        """
        from facecom_utils.common.checkpoints import load_checkpoint
        from facecom_utils.train.rundir import RunDir

        source = Path(run).expanduser()
        rundir = RunDir(source) if source.is_dir() else None
        best = rundir.best_checkpoint if rundir is not None else source
        saved = (rundir.load_tracks("recognition") if rundir is not None else None) or {}
        tracks_file = rundir.tracks_path if saved else None
        track = str(saved.get("headline", "facecom_only"))
        if track == "facecom_only":
            own = load_checkpoint(best)
            if own.get("task") != "recognition":
                raise ValueError(f"{best}: not a recognition checkpoint (task {own.get('task')!r})")
            thresholds = (float(own["threshold"]), float(own.get("strict_threshold", own["threshold"])))
            tracks_file, saved = None, {}
        else:
            main, strict = saved["thresholds"][track]
            thresholds = (float(main), float(strict))
        return cls(source, best, tracks_file, track, thresholds, device, batch_size,
                   None if cache_dir is None else Path(cache_dir), saved)

    # ------------------------------------------------------------------------------------------ features
    @property
    def _cache(self) -> Path:
        from facecom_utils.face.descriptors import face_model_cache

        return face_model_cache(self.cache_dir)

    @property
    def _workers(self) -> int:
        from facecom_utils.face.descriptors import face_workers

        return face_workers()

    def _facecom(self, paths: list[str]) -> np.ndarray:
        """The run's FACECOM embeddings (L2-normalised), with the views the run reported with."""
        from facecom_utils.recognition.embedding import extract_embeddings
        from facecom_utils.recognition.model import load_recognition_model

        if self._model is None:
            self._model = load_recognition_model(self.best, self.device)
        model, payload = self._model
        cfg = payload.get("config", {})
        return extract_embeddings(
            model, paths, image_size=int(cfg.get("image_size", 112)), batch_size=self.batch_size, device=self.device,
            flip_tta=bool(cfg.get("flip_tta", True)), face_crop=float(cfg.get("face_crop", 1.0)),
            source=str(payload.get("embedding_source", "neck")), tta_crops=tuple(cfg.get("tta_crops") or ()))

    def features(self, paths: Sequence[str | Path]) -> dict[str, np.ndarray]:
        """What the track reads of each image, one row per path (the same for a gallery photo and a probe).

        Single-embedding tracks: ``{"emb"}``. ``fused``: ``{"face", "facecom", "kinds"}`` (dlib's restored
        descriptor, the FACECOM embedding, both L2-normalised, and the estimated type) and ``"copies"``
        when the fusion adds copy evidence. Descriptors come from (and go to) the cache by file content.
        """
        from facecom_utils.face.copies import copy_descriptors

        paths = [str(p) for p in paths]
        if self.track == "facecom_only":
            return {"emb": self._facecom(paths)}
        if self.track == "pixel_copies":
            return {"emb": copy_descriptors(paths, workers=self._workers, cache_dir=self._cache)}
        from facecom_utils.face.descriptors import DescriptorStore

        store = DescriptorStore(self._cache, workers=self._workers)
        if self.track == "face_model":
            return {"emb": store.describe(paths).normalised()}
        from facecom_utils.face.quality import DistortionEstimator, quality_feature_matrix
        from facecom_utils.face.restoration import check_restoration_versions

        estimator = DistortionEstimator.from_state_dict(self.saved["estimator"])
        q = quality_feature_matrix(paths, workers=self._workers, cache_dir=self._cache)
        check_restoration_versions(self.saved.get("restoration_versions"), str(self.tracks_file))
        face = store.describe(paths, estimator.restorations(q)).normalised()
        if self.track != "fused":
            return {"emb": face}
        out = {"face": face, "facecom": self._facecom(paths), "kinds": np.asarray(estimator.predict(q)).astype(str)}
        if self._fusion().uses_copies:
            out["copies"] = copy_descriptors(paths, workers=self._workers, cache_dir=self._cache)
        return out

    def _fusion(self) -> Any:
        from facecom_utils.recognition.face_tracks import Fusion

        return Fusion.from_state_dict(self.saved)

    def embed(self, gallery: dict[str, np.ndarray], probes: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(gallery embeddings, probe embeddings)`` whose dot products are the track's scores.

        Args:
            gallery: :meth:`features` of the gallery photos.
            probes: :meth:`features` of the probes.
        """
        if self.track in _SINGLE:
            return np.asarray(gallery["emb"], np.float32), np.asarray(probes["emb"], np.float32)
        rows = _stack(gallery, probes)
        is_gallery = np.arange(len(rows["face"])) < len(gallery["face"])
        emb = self._fusion().embed(rows["face"], rows["facecom"], rows["kinds"], is_gallery, rows.get("copies"))
        return emb[is_gallery], emb[~is_gallery]

