"""A Task B run's headline track as a scorer: enrolled galleries and pair verification.

``facecom identify`` with a gallery folder, ``facecom enroll`` and ``facecom verify`` score with the
same track a run reports (:func:`~facecom_utils.recognition.face_tracks.run_embeddings` runs it for
whole splits): the run's ``headline`` in ``face_tracks.pt``, or the FACECOM-only embedder of
``checkpoints/best.pt`` when the run has no face-model tracks (or a ``best.pt`` is given alone).

The track is split in two so that a gallery can be embedded once:

* :meth:`RunScorer.features`: what the track reads of each image on its own (the FACECOM embedding,
  dlib's descriptor after the restoration the run's estimator picks, the estimated type, the copy
  descriptor), independent of the image's role;
* :meth:`RunScorer.embed`: a gallery's and some probes' features to embeddings whose dot products
  are the track's scores (for ``fused``: w * cos(face model) + (1 - w) * cos(FACECOM) + gamma * copy
  evidence against each gallery photo, calibrated per estimated type; see
  :class:`~facecom_utils.recognition.face_tracks.Fusion`).

Every score is a function of one probe and one gallery photo, so a pair scores the same in a gallery
of two photos as in the whole split. A :class:`Gallery` file (``facecom enroll``) keeps the features of
its photos with a fingerprint of the run files that made them, and is refused by any other run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from facecom_utils.common.checkpoints import save_checkpoint

__all__ = ["GALLERY_FORMAT", "Gallery", "GalleryFileError", "RunScorer", "pair_scores", "run_fingerprint"]

#: The ``format`` entry of a gallery file (``facecom enroll``); the version is bumped when its content changes.
GALLERY_FORMAT = "facecom-gallery"
GALLERY_VERSION = 1


class GalleryFileError(ValueError):
    """A gallery file that cannot be used: unreadable, not written by ``facecom enroll``, or from another run."""


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_fingerprint(best: Path, tracks: Path | None) -> str:
    """SHA-256 of the files a track's scores depend on: ``best.pt`` and, for a face-model track, ``face_tracks.pt``."""
    parts = [_file_digest(best)] + ([_file_digest(tracks)] if tracks is not None else [])
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def _take(features: dict[str, Any], rows: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """The features of some rows (row order as given)."""
    index = np.asarray(rows, int)
    return {k: np.asarray(v)[index] for k, v in features.items()}


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

    @cached_property
    def fingerprint(self) -> str:
        """:func:`run_fingerprint` of the files the track reads (what a gallery file records)."""
        return run_fingerprint(self.best, self.tracks_file)

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
        from facecom_utils.recognition.embedding import embed_as_run
        from facecom_utils.recognition.model import load_recognition_model

        if self._model is None:
            self._model = load_recognition_model(self.best, self.device)
        return embed_as_run(*self._model, paths, self.batch_size, self.device)

    def features(self, paths: Sequence[str | Path]) -> dict[str, np.ndarray]:
        """What the track reads of each image, one row per path (the same for a gallery photo and a probe).

        Single-embedding tracks: ``{"emb"}``. ``fused``: ``{"face", "facecom", "kinds"}`` (dlib's restored
        descriptor, the FACECOM embedding, both L2-normalised, and the estimated type) and ``"copies"``
        when the fusion adds copy evidence (:func:`~facecom_utils.recognition.face_tracks.track_features`,
        the rule notebook 03's tracks use). Descriptors come from (and go to) the cache by file content.
        """
        from facecom_utils.recognition.face_tracks import track_features

        paths = [str(p) for p in paths]
        if self.track == "facecom_only":
            return {"emb": self._facecom(paths)}
        out = track_features(self.saved, self.track, paths, self._cache, self._workers, str(self.tracks_file))
        if self.track == "fused":
            out["facecom"] = self._facecom(paths)
        return out

    def embed(self, gallery: dict[str, np.ndarray], probes: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(gallery embeddings, probe embeddings)`` whose dot products are the track's scores.

        Args:
            gallery: :meth:`features` of the gallery photos.
            probes: :meth:`features` of the probes.
        """
        from facecom_utils.recognition.face_tracks import track_embeddings

        if self.track == "facecom_only":
            return np.asarray(gallery["emb"], np.float32), np.asarray(probes["emb"], np.float32)
        rows = _stack(gallery, probes)
        is_gallery = np.arange(len(next(iter(rows.values())))) < len(next(iter(gallery.values())))
        emb = track_embeddings(self.saved, self.track, rows, is_gallery)
        return emb[is_gallery], emb[~is_gallery]


def pair_scores(scorer: RunScorer, references: Sequence[str | Path], probes: Sequence[str | Path]) -> np.ndarray:
    """The track's score of each (reference, probe) pair: the reference in the gallery role.

    Every image is read once, however many pairs it is in.
    """
    references = [str(p) for p in references]
    probes = [str(p) for p in probes]
    if len(references) != len(probes):
        raise ValueError(f"{len(references)} references for {len(probes)} probes")
    unique = list(dict.fromkeys([*references, *probes]))
    row = {p: k for k, p in enumerate(unique)}
    features = scorer.features(unique)
    gallery_paths, probe_paths = list(dict.fromkeys(references)), list(dict.fromkeys(probes))
    gallery_emb, probe_emb = scorer.embed(_take(features, [row[p] for p in gallery_paths]),
                                          _take(features, [row[p] for p in probe_paths]))
    g = {p: k for k, p in enumerate(gallery_paths)}
    q = {p: k for k, p in enumerate(probe_paths)}
    return np.array([float(probe_emb[q[b]] @ gallery_emb[g[a]]) for a, b in zip(references, probes)])


@dataclass
class Gallery:
    """Enrolled gallery photos: their identities and the features a run's track reads of them.

    Attributes:
        paths, identities: One entry per photo.
        features: :meth:`RunScorer.features` of the photos.
        track, fingerprint, run: The scorer that made them (:func:`run_fingerprint`) and where it was.
    """

    paths: list[str]
    identities: list[str]
    features: dict[str, np.ndarray]
    track: str
    fingerprint: str
    run: str

    @classmethod
    def enroll(cls, scorer: RunScorer, paths: Sequence[str | Path], identities: Sequence[str]) -> "Gallery":
        """Reads every photo once with ``scorer``."""
        return cls([str(p) for p in paths], [str(i) for i in identities], scorer.features(paths), scorer.track,
                   scorer.fingerprint, str(scorer.source))

    def save(self, path: str | Path) -> Path:
        """Writes the gallery atomically (loadable with ``weights_only=True``)."""
        import torch

        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in self.features.items()
                  if k != "kinds"}
        payload = {"format": GALLERY_FORMAT, "version": GALLERY_VERSION, "task": "recognition", "track": self.track,
                   "fingerprint": self.fingerprint, "run": self.run, "paths": list(self.paths),
                   "identities": list(self.identities), "features": arrays,
                   "kinds": [str(k) for k in self.features.get("kinds", [])]}
        return save_checkpoint(path, payload)  # atomic, fsynced, no temporary file left on an error

    @classmethod
    def load(cls, path: str | Path, scorer: RunScorer) -> "Gallery":
        """A gallery file written by :meth:`save` for ``scorer``'s run.

        Raises:
            GalleryFileError: One line naming the file: unreadable (truncated, not a torch file), not a
                gallery file, or enrolled with another run or track.
        """
        import torch

        path = Path(path).expanduser()
        expected = "expected a gallery file written by `facecom enroll`"
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same user problem
            raise GalleryFileError(f"{path}: unreadable ({type(err).__name__}: truncated or not a torch file); "
                                   f"{expected}") from None
        if not isinstance(payload, dict) or payload.get("format") != GALLERY_FORMAT:
            raise GalleryFileError(f"{path}: not a gallery file; {expected}")
        if payload.get("version") != GALLERY_VERSION:
            raise GalleryFileError(f"{path}: gallery file version {payload.get('version')!r}, this facecom reads "
                                   f"version {GALLERY_VERSION}; enroll the gallery again")
        gallery = cls._from_payload(path, payload)
        if gallery.fingerprint != scorer.fingerprint or gallery.track != scorer.track:
            raise GalleryFileError(f"{path}: enrolled with another run ({gallery.run}, track {gallery.track}); "
                                   f"{scorer.source} needs its own: facecom enroll {scorer.source} GALLERY_DIR -o {path}")
        return gallery

    @classmethod
    def _from_payload(cls, path: Path, payload: dict[str, Any]) -> "Gallery":
        try:
            features = {str(k): v.numpy() for k, v in payload["features"].items()}
            if payload["kinds"]:
                features["kinds"] = np.asarray(payload["kinds"], dtype=str)
            paths, identities = list(map(str, payload["paths"])), list(map(str, payload["identities"]))
            gallery = cls(paths, identities, features, str(payload["track"]), str(payload["fingerprint"]),
                          str(payload.get("run", "?")))
        except (KeyError, AttributeError, TypeError, ValueError) as err:
            raise GalleryFileError(f"{path}: damaged gallery file ({type(err).__name__}: {err}); enroll it again") from None
        if not paths:
            raise GalleryFileError(f"{path}: holds no gallery photo; enroll a folder with <identity>/<image>.jpg")
        if len(identities) != len(paths) or any(len(v) != len(paths) for v in features.values()):
            raise GalleryFileError(f"{path}: damaged gallery file (rows of different lengths); enroll it again")
        return gallery
