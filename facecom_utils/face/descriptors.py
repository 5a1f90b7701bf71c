"""The face-trained model: dlib's 128-d ResNet face descriptor behind the face front end.

Outside face knowledge: dlib's descriptor (``face-recognition-models``) was trained by its author
on about 3 million faces of about 7,500 people from public face datasets (its named identities
look like LFW's), which may include people who are also in FACECOM. Every result that uses it is
reported as its own track (``face_model``, ``face_model_restored``, ``fused``), apart from the
FACECOM-only one.

One image goes through:

1. a restoration (:mod:`facecom_utils.face.restoration`), chosen per image by the caller -- in this
   project from the pixels alone, by :class:`~facecom_utils.face.quality.DistortionEstimator`;
2. the face front end (:func:`facecom_utils.face.detect.detect_faces`: HOG detector, 5 landmarks, the
   measured fallback box when no face is found);
3. :func:`facecom_utils.face.detect.align_face` to dlib's 150 px chip (padding 0.25), and the descriptor.

:class:`DescriptorStore` caches descriptors on disk by **file content** (SHA-1 of the bytes) and
restoration, so a Task A image and the identical Task B clean image are described once, a
changed file is described again, and an interrupted run resumes where it stopped (the store is
saved atomically every ``save_every`` new descriptors). dlib holds the GIL: ``workers > 1``
runs worker processes. The descriptor network runs in PyTorch by default
(:mod:`facecom_utils.face.dlib_network`, the same numbers to ~5e-6): on a quiet core an image then costs
the front end (detector, landmarks, alignment: ~45 ms) and ~5-8 ms of network in chunks of 16,
against 105-160 ms for dlib's own network (``python -m facecom_utils.bench.speed --parts descriptors``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from facecom_utils.common.progress import ProgressLog
from facecom_utils.data.layout import load_image
from facecom_utils.data.features import file_digest
from facecom_utils.face.dlib_network import CHIP, MODEL_FILE
from facecom_utils.face.detect import DEFAULT_FALLBACK, align_face, detect_faces, _model_file
from facecom_utils.face.restoration import RESTORATION_VERSIONS, RESTORATIONS, restore

__all__ = ["BACKENDS", "CHUNK", "DESCRIPTOR_DIM", "DescriptorStore", "Descriptions", "cached_rows", "chip_descriptors", "describe_image", "face_model_available", "face_tracks_wanted",
           "face_model_cache", "face_workers", "mirrored_mean",
           "file_digest", "write_rows"]

DESCRIPTOR_DIM = 128
_STORE_VERSION = 1


def face_model_available() -> bool:
    """Whether dlib and face-recognition-models are installed."""
    import importlib.util

    return importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None


def face_tracks_wanted(face_model: bool | str, alone: str) -> bool:
    """Whether a run adds the face-model tracks: ``face_model`` True / ``"auto"`` and dlib installed.

    Prints why not (``alone``: what metrics.json then holds).

    Raises:
        ImportError: ``face_model=True`` without dlib / face-recognition-models.
    """
    if face_model is False:
        print(f"face-model tracks off (face_model=False): metrics.json holds {alone} alone")
        return False
    if not face_model_available():
        if face_model is True:
            raise ImportError("face_model=True needs dlib and its models: pip install dlib-bin face-recognition-models")
        print("face-model tracks skipped: dlib / face-recognition-models not installed (face_model='auto')")
        return False
    return True


def face_model_cache(cache_dir: str | Path | None = None) -> Path:
    """The face model's cache folder: ``<cache root>/face_model``, where :class:`DescriptorStore`, the
    quality features and the copy descriptors keep their files.

    Args:
        cache_dir: The cache root; None: :func:`~facecom_utils.data.cache.default_cache_dir`.
    """
    from facecom_utils.data.cache import default_cache_dir

    return (Path(cache_dir) if cache_dir else default_cache_dir()) / "face_model"


def face_workers(workers: int | None = None) -> int:
    """Worker processes of the face front end: ``workers`` when given, else the CPU cores, at most 4."""
    return int(workers) if workers else max(1, min(4, os.cpu_count() or 1))


@functools.lru_cache(maxsize=None)
def _descriptor_net() -> Any:
    """dlib's own descriptor network (the reference :data:`BACKENDS` ``"dlib"``)."""
    try:
        import dlib
    except ImportError as err:
        raise ImportError("the face model needs dlib: pip install dlib-bin face-recognition-models") from err
    return dlib.face_recognition_model_v1(str(_model_file(MODEL_FILE)))


BACKENDS = ("torch", "dlib")
#: Images per task of :class:`DescriptorStore`: the descriptor network runs once per chunk.
CHUNK = 16


def chip_descriptors(chips: np.ndarray, backend: str = "torch", weights: str | Path | None = None,
                     weights_digest: str | None = None, mirror: bool = False) -> np.ndarray:
    """Raw descriptors ``float32 [N, 128]`` of aligned uint8 RGB chips ``[N, 150, 150, 3]``.

    ``"torch"`` runs dlib's network in PyTorch on the CPU (:mod:`facecom_utils.face.dlib_network`: the same
    numbers to ~5e-6, about 20x faster on one core in chunks of 16); ``"dlib"`` runs dlib itself
    (dlib-bin has no BLAS: 105-160 ms a chip on one core). ``weights``: a fine-tuned network's file
    (:func:`facecom_utils.face.finetune.save_finetuned`) instead of dlib's weights (torch only);
    ``weights_digest``: the weights expected in that file (refused when it holds others).
    ``mirror``: each chip's descriptor is the mean of its own and its left-right mirror's unit
    descriptors (:func:`mirrored_mean`), the network run once on both.

    Raises:
        ValueError: Chips of another shape (one chip ``[150, 150, 3]`` is taken as a batch of one), or
            ``weights`` with the dlib backend.
    """
    chips = np.ascontiguousarray(chips, dtype=np.uint8)
    if chips.ndim == 3:
        chips = chips[None]
    if chips.ndim != 4 or chips.shape[1:] != (CHIP, CHIP, 3):
        raise ValueError(f"expected aligned uint8 RGB chips [N, {CHIP}, {CHIP}, 3], got shape {chips.shape}")
    if mirror:
        return mirrored_mean(*_with_mirrors(chips, backend, weights, weights_digest))
    if weights is not None:
        if backend != "torch":
            raise ValueError("fine-tuned weights run on the torch backend only")
        from facecom_utils.face.finetune import finetuned_descriptors

        return finetuned_descriptors(chips, weights, digest=weights_digest)
    if backend == "torch":
        from facecom_utils.face.dlib_network import torch_descriptors

        return torch_descriptors(chips, _model_file(MODEL_FILE))
    if backend == "dlib":
        net = _descriptor_net()
        return np.array([net.compute_face_descriptor(c) for c in chips], np.float32).reshape(-1, DESCRIPTOR_DIM)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _with_mirrors(chips: np.ndarray, backend: str, weights: str | Path | None,
                  weights_digest: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``(descriptors of the chips, descriptors of their left-right mirrors)``, the network run once on both."""
    both = chip_descriptors(np.concatenate([chips, chips[:, :, ::-1]]), backend, weights, weights_digest)
    return both[:len(chips)], both[len(chips):]


def _unit(d: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    return d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)


def mirrored_mean(plain: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """The mirrored descriptor ``float32 [N, 128]``: the mean of a chip's unit descriptor and its mirror's.

    A face and its mirror image are the same person, so the two descriptors' mean keeps what they
    agree on and halves what the network reads from the pose and lighting's left-right asymmetry.
    Measured on the notebook-03 CV's folds (docs/results.md § Task B — fine-tuning the face network):
    strict top-1 over the six types other than sunny +0.010 ± 0.007 (paired, 3 folds) over the plain
    descriptor. Its length is below 1 where the two disagree; consumers normalise (cosine).
    """
    plain = np.asarray(plain, np.float32)
    mirrored = np.asarray(mirrored, np.float32)
    if plain.shape != mirrored.shape:
        raise ValueError(f"plain and mirrored descriptors differ in shape: {plain.shape} vs {mirrored.shape}")
    return ((_unit(plain) + _unit(mirrored)) / 2).astype(np.float32)


def _front_end(image: np.ndarray, restoration: str, upsample: int) -> tuple[np.ndarray, bool, float]:
    """``(150 px aligned chip, detected, detector score)`` of one image after ``restoration``."""
    restored = restore(np.ascontiguousarray(image, dtype=np.uint8), restoration)
    record = detect_faces(restored, upsample=upsample, fallback=DEFAULT_FALLBACK)
    chip = np.ascontiguousarray(align_face(restored, record.landmarks, size=CHIP, padding=0.25))
    return chip, bool(record.detected), float(record.score)


def describe_image(image: np.ndarray, restoration: str = "identity", upsample: int = 1,
                   backend: str = "torch") -> tuple[np.ndarray, bool, float]:
    """One image's descriptor after ``restoration``: ``(float32 [128], detected, detector score)``.

    Args:
        image: uint8 RGB ``[H, W, 3]``.
        restoration: A name of :data:`~facecom_utils.face.restoration.RESTORATIONS`.
        upsample: HOG detector upsampling passes.
        backend: Where the descriptor network runs (:func:`chip_descriptors`).
    """
    chip, detected, score = _front_end(image, restoration, upsample)
    return chip_descriptors(chip, backend)[0], detected, score


def _describe_paths(jobs: Sequence[tuple[str, str]], upsample: int,
                    backend: str = "torch", weights: str | None = None,
                    weights_digest: str | None = None, mirror: bool = False) -> list[tuple[Any, ...]]:
    """:func:`describe_image` of ``(path, restoration)`` jobs, the descriptor network run once on all their chips:
    ``(descriptor, detected, score)`` rows; with ``mirror``, ``(mirrored descriptor, detected, score, plain
    descriptor)`` (the plain one comes free with the mirrored one)."""
    fronts = [_front_end(np.asarray(load_image(path), dtype=np.uint8), restoration, upsample) for path, restoration in jobs]
    if not fronts:
        return []
    chips = np.stack([f[0] for f in fronts])
    if mirror:
        plain, mirrors = _with_mirrors(chips, backend, weights, weights_digest)
        return [(d, det, score, p) for d, p, (_, det, score) in zip(mirrored_mean(plain, mirrors), plain, fronts)]
    descriptors = chip_descriptors(chips, backend, weights, weights_digest)
    return [(d, det, score) for d, (_, det, score) in zip(descriptors, fronts)]


def _one_thread(backend: str) -> None:
    """Worker start-up: one torch thread per worker process (the workers already fill the cores)."""
    if backend == "torch":
        import torch

        torch.set_num_threads(1)


@dataclass(frozen=True)
class Descriptions:
    """Descriptors of a list of images, in order.

    Attributes:
        descriptors: float32 ``[N, 128]`` (raw dlib descriptors, or a mirrored store's :func:`mirrored_mean`;
            :meth:`normalised` for cosine).
        detected: bool ``[N]``: the detector found a face (else the fallback box was used).
        score: float64 ``[N]``: the detector's score (NaN when not detected).
        restoration: The restoration applied to each image ``[N]``.
    """

    descriptors: np.ndarray
    detected: np.ndarray
    score: np.ndarray
    restoration: np.ndarray

    def normalised(self) -> np.ndarray:
        """The descriptors scaled to unit length ``[N, 128]``."""
        return _unit(self.descriptors)


def write_rows(file: Path, table: dict[str, tuple[np.ndarray, bool, float]], field: str, dtype: Any) -> None:
    """Writes ``{key: (values, detected, score)}`` rows to ``file`` (``.npz``: ``keys``, ``field``, ``detected``,
    ``score``) atomically: a temporary file, then a rename."""
    keys = list(table)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=np.array(keys, dtype="U40"),
                     **{field: np.array([table[k][0] for k in keys], dtype)},
                     detected=np.array([table[k][1] for k in keys], bool),
                     score=np.array([table[k][2] for k in keys], np.float64))
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cached_rows(store: Any, paths: Sequence[str | Path],
                restorations: Sequence[str] | str) -> tuple[list[str], list[tuple[np.ndarray, bool, float]]]:
    """``(restoration names, rows)`` of ``paths`` from a store keyed by file content and restoration
    (:class:`DescriptorStore`, :class:`~facecom_utils.face.chips.ChipStore`): the store's ``_compute`` is called
    once with every missing ``{(key, restoration): path}``, then every row is read from ``store._table``.

    Raises:
        ValueError: A different number of paths and restorations.
        KeyError: An unknown restoration name.
        FileNotFoundError: A missing file (named).
    """
    paths = [str(p) for p in paths]
    names = [restorations] * len(paths) if isinstance(restorations, str) else [str(r) for r in restorations]
    if len(names) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(names)} restorations")
    for name in set(names):
        if name not in RESTORATIONS:
            raise KeyError(f"unknown restoration {name!r}; expected one of {', '.join(RESTORATIONS)}")
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p}: image file not found")
    keys = [file_digest(p) for p in paths]
    todo: dict[tuple[str, str], str] = {}
    for p, k, name in zip(paths, keys, names):
        if k not in store._table(name):
            todo.setdefault((k, name), p)
    if todo:
        store._compute(todo)
    return names, [store._table(name)[k] for k, name in zip(keys, names)]


class DescriptorStore:
    """Descriptors cached on disk by file content and restoration; computed when missing.

    Args:
        folder: Where the store's ``.npz`` files live (one per restoration and settings).
        upsample: HOG detector upsampling passes (part of the key).
        workers: Worker processes for missing descriptors (1: in this process).
        save_every: Save the store after this many new descriptors (resumable runs).
        progress: Show a progress bar while describing.
        backend: Where the descriptor network runs (:func:`chip_descriptors`). Not part of the key:
            both backends give the same descriptors to float rounding, so a store filled by one
            serves the other.
        chunk: Images per task; the descriptor network runs once per chunk.
        weights: A fine-tuned network's file (:func:`facecom_utils.face.finetune.save_finetuned`; torch
            backend) instead of dlib's own weights. **Part of the key**: the store's files carry the
            weights' digest, so a fine-tuned network never reads descriptors another network wrote
            (weights equal to dlib's share dlib's files).
        mirror: Store the mirrored descriptor (:func:`mirrored_mean`: a chip's and its mirror's unit
            descriptors averaged) instead of the chip's own. **Part of the key**: its own files. It costs
            the network twice (5-8 ms more an image on a quiet core) and nothing more of the front end; the
            plain descriptors it computes on the way go to the plain store's files too (same settings), so
            turning the mirror off later recomputes nothing.
    """

    def __init__(self, folder: str | Path, upsample: int = 1, workers: int = 1, save_every: int = 1000,
                 progress: bool = False, backend: str = "torch", chunk: int = CHUNK,
                 weights: str | Path | None = None, mirror: bool = False) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.weights = None if weights is None else str(weights)
        self.weights_digest: str | None = None
        if self.weights is not None:
            if backend != "torch":
                raise ValueError("fine-tuned weights run on the torch backend only")
            from facecom_utils.face.finetune import saved_digest, stock_digest

            self._saved_digest = saved_digest(self.weights)
            self.weights_digest = None if self._saved_digest == stock_digest() else self._saved_digest
        self.backend = backend
        self.mirror = bool(mirror)
        self.chunk = max(1, int(chunk))
        self.folder = Path(folder)
        self.upsample = int(upsample)
        self.workers = max(1, int(workers))
        self.save_every = max(1, int(save_every))
        self.progress = progress
        self._tables: dict[str, dict[str, tuple[np.ndarray, bool, float]]] = {}

    def _file(self, restoration: str) -> Path:
        settings: list[Any] = [_STORE_VERSION, restoration, self.upsample, list(DEFAULT_FALLBACK.box)]
        version = RESTORATION_VERSIONS.get(restoration, 1)
        if version > 1:  # stores of restorations at version 1 keep their names (and their cached work)
            settings.append(version)
        if self.weights_digest is not None:  # dlib's own weights keep their names too
            settings.append(self.weights_digest)
        if self.mirror:  # the plain descriptor keeps its names
            settings.append("mirror")
        digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]
        return self.folder / f"dlib_{restoration}{'_mirror' if self.mirror else ''}_{digest}.npz"

    def _table(self, restoration: str) -> dict[str, tuple[np.ndarray, bool, float]]:
        if restoration not in self._tables:
            table: dict[str, tuple[np.ndarray, bool, float]] = {}
            try:
                with np.load(self._file(restoration)) as z:
                    for k, d, det, s in zip(z["keys"], z["descriptors"], z["detected"], z["score"]):
                        table[str(k)] = (d, bool(det), float(s))
            except (OSError, ValueError, KeyError):
                pass
            self._tables[restoration] = table
        return self._tables[restoration]

    def _save(self, restoration: str) -> None:
        file = self._file(restoration)
        file.parent.mkdir(parents=True, exist_ok=True)
        write_rows(file, self._table(restoration), "descriptors", np.float32)

    def describe(self, paths: Sequence[str | Path], restorations: Sequence[str] | str = "identity") -> Descriptions:
        """The descriptors of ``paths``, each after its restoration (one name for all, or one per path).

        Raises:
            KeyError: An unknown restoration name.
            FileNotFoundError: A missing file (named).
        """
        names, rows = cached_rows(self, paths, restorations)
        return Descriptions(np.array([r[0] for r in rows], np.float32).reshape(-1, DESCRIPTOR_DIM),
                            np.array([r[1] for r in rows], bool), np.array([r[2] for r in rows], np.float64),
                            np.array(names, dtype=object))

    def _compute(self, todo: dict[tuple[str, str], str]) -> None:
        items = list(todo.items())
        jobs = [(path, name) for (_, name), path in items]
        starts = range(0, len(jobs), self.chunk)
        chunks = [jobs[i:i + self.chunk] for i in starts]
        describe = functools.partial(_describe_paths, upsample=self.upsample, backend=self.backend, weights=self.weights,
                                     weights_digest=self._saved_digest if self.weights else None, mirror=self.mirror)
        bar = tqdm(total=len(jobs), desc="face descriptors", leave=False, disable=not self.progress)
        log = ProgressLog(len(jobs), "face descriptors")
        dirty: set[str] = set()
        since = 0
        plain = self._plain_twin() if self.mirror else None

        def save_dirty() -> None:
            for n in dirty:
                self._save(n)
                if plain is not None:
                    plain._save(n)
            dirty.clear()

        def take(item: tuple[tuple[str, str], str], result: tuple[Any, ...]) -> None:
            nonlocal since
            (key, name), _ = item
            self._table(name)[key] = result[:3]
            if plain is not None:
                plain._table(name).setdefault(key, (result[3], result[1], result[2]))
            dirty.add(name)
            since += 1
            bar.update(1)
            log.update()
            if since >= self.save_every:
                save_dirty()
                since = 0

        try:
            if self.workers <= 1 or len(chunks) < 2:
                results = map(describe, chunks)
                for start, chunk_results in zip(starts, results):
                    for item, result in zip(items[start:start + self.chunk], chunk_results, strict=True):
                        take(item, result)
            else:
                with ProcessPoolExecutor(min(self.workers, len(chunks)), mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_one_thread, initargs=(self.backend,)) as pool:
                    for start, chunk_results in zip(starts, pool.map(describe, chunks)):
                        for item, result in zip(items[start:start + self.chunk], chunk_results, strict=True):
                            take(item, result)
        finally:
            save_dirty()
            bar.close()
            log.close()

    def _plain_twin(self) -> "DescriptorStore":
        """The plain store of the same folder, settings and weights (where a mirrored store's plain rows go)."""
        twin = copy.copy(self)
        twin.mirror, twin._tables = False, {}
        return twin
