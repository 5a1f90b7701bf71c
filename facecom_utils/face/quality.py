"""A distortion estimator: which of FACECOM's distortions an image shows, from its pixels alone.

The per-probe restoration selector of the face-model tracks (:mod:`facecom_utils.face.descriptors`)
asks this estimator, never a file name or a folder: :func:`quality_features` reads ~30 cheap
statistics of an image (luminance percentiles, impulse and streak shares, sharpness at two
scales, haze and glare cues), and :class:`DistortionEstimator` is a multinomial logistic
regression on them, fitted on the training split's images labelled with their distortion type
(``clean`` for a clean image). Its parameters are plain arrays (saved as tensors, loadable with
``torch.load(..., weights_only=True)``), so a run directory can carry it.

:data:`RESTORATION_FOR` maps a predicted type to the restoration run before the face model
(:mod:`facecom_utils.face.restoration`): noisy -> ``denoise``, rainy -> ``derain``, foggy ->
``dehaze``, lowlight -> ``lowlight``; every other type (clean, blurred, resized, sunny) keeps the
image (deblurring costs the face model more than it gives; glare is not recoverable).

Typical use::

    X = quality_feature_matrix(paths)                    # [N, F], from pixels
    est = DistortionEstimator.fit(X, kinds)               # kinds: "clean" / a distortion type
    est.restorations(X)                                   # ["denoise", "identity", ...]
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from facecom_utils.data.layout import load_image
from facecom_utils.data.features import cached_features
from facecom_utils.data.distortions import DISTORTION_TYPES

__all__ = [
    "DistortionEstimator",
    "KINDS",
    "RESTORATION_FOR",
    "quality_feature_matrix",
    "quality_features",
]

#: The estimator's classes: a clean image, then FACECOM's seven distortion types.
KINDS: tuple[str, ...] = ("clean", *DISTORTION_TYPES)

#: The restoration run for each estimated type (types not listed keep the image).
RESTORATION_FOR: dict[str, str] = {"noisy": "denoise", "rainy": "derain", "foggy": "dehaze",
                                   "lowlight": "lowlight"}

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_FEATURES_VERSION = 1


def quality_features(image: np.ndarray) -> np.ndarray:
    """About 30 statistics of one uint8 RGB image that tell FACECOM's distortions apart.

    Args:
        image: uint8 RGB ``[H, W, 3]``.

    Returns:
        float32 ``[F]`` (the same F for every image).
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected an RGB array [H, W, 3], got shape {x.shape}")
    y = x @ _LUMA
    h, w = y.shape
    pct = np.percentile(y, [1, 5, 25, 50, 75, 95, 99])
    med3 = ndimage.median_filter(y, size=3, mode="reflect")
    med7 = ndimage.median_filter(y, size=(1, 7), mode="reflect")
    impulse = np.abs(y - med3)
    streak = y - med7
    lap = ndimage.laplace(y)
    gx, gy = np.gradient(y)
    grad = np.hypot(gx, gy)
    small = y[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    up = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    # channel max / min as two elementwise passes (numpy's reduction over a length-3 last axis is slow); same values
    cmax = np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2])
    cmin = np.minimum(np.minimum(x[..., 0], x[..., 1]), x[..., 2])
    dark = ndimage.minimum_filter(cmin, size=7)
    sat = (cmax - cmin) / np.maximum(cmax, 1.0)
    cy, cx = slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4)
    centre = y[cy, cx]
    feats = [
        *pct, y.mean(), y.std(),
        (y > 250).mean(), (y < 15).mean(), (centre > 245).mean(), centre.mean() - y.mean(),
        (impulse > 60).mean(), (impulse > 30).mean(), np.median(impulse),
        (streak > 8).mean(), (streak > 20).mean(), streak.clip(min=0).mean(),
        np.log1p(lap.var()), np.log1p(grad.mean()), np.log1p(np.abs(y[:, 1:] - y[:, :-1]).mean()),
        np.log1p(np.abs(y[: h // 2 * 2, : w // 2 * 2] - up).mean()),
        np.log1p(np.abs(lap).mean()) - np.log1p(grad.mean()),
        dark.mean(), np.percentile(dark, 10), sat.mean(), sat.std(),
        *(x.reshape(-1, 3).mean(axis=0) - y.mean()),
    ]
    return np.asarray(feats, dtype=np.float32)


def _features_of_path(path: str) -> np.ndarray:
    return quality_features(np.asarray(load_image(path), dtype=np.uint8))


def quality_feature_matrix(paths: Sequence[str | Path], workers: int = 1, cache_dir: str | Path | None = None,
                           progress: bool = False) -> np.ndarray:
    """:func:`quality_features` of every image file, ``[N, F]`` float32.

    Args:
        paths: Image files.
        workers: Worker processes (1: in this process).
        cache_dir: When given, features are cached there by file content
            (:func:`~facecom_utils.data.features.cached_features`; an interrupted run resumes).
        progress: Show a progress bar.
    """
    def compute(files: list[str]) -> np.ndarray:
        if workers <= 1 or len(files) < 64:
            return np.stack([_features_of_path(f) for f in files])
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            return np.stack(list(pool.map(_features_of_path, files, chunksize=32)))

    file = Path(cache_dir) / f"quality_v{_FEATURES_VERSION}.npz" if cache_dir is not None else None
    out = cached_features(paths, compute, file, progress=progress, desc="quality features")
    return out if len(out) else np.zeros((0, _feature_count()), np.float32)


@dataclass(frozen=True)
class DistortionEstimator:
    """Multinomial logistic regression on standardised :func:`quality_features`.

    Attributes:
        mean, scale: Standardisation ``[F]``.
        coef: ``[C, F]``; intercept: ``[C]``; classes: the C class names (a subset of :data:`KINDS`).
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    classes: tuple[str, ...]

    @classmethod
    def fit(cls, features: np.ndarray, kinds: Sequence[str], C: float = 10.0, seed: int = 0) -> "DistortionEstimator":
        """Fits on training images' features and their true types (``"clean"`` or a distortion)."""
        from sklearn.linear_model import LogisticRegression

        features = np.asarray(features, dtype=np.float64)
        kinds = np.asarray([str(k) for k in kinds])
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown image types {unknown}; expected some of {KINDS}")
        if len(set(kinds)) < 2:
            raise ValueError("the distortion estimator needs images of at least two types")
        mean = features.mean(axis=0)
        scale = np.where(features.std(axis=0) > 1e-8, features.std(axis=0), 1.0)
        model = LogisticRegression(C=C, max_iter=2000, random_state=seed)
        model.fit((features - mean) / scale, kinds)
        return cls(mean.astype(np.float32), scale.astype(np.float32), model.coef_.astype(np.float32),
                   model.intercept_.astype(np.float32), tuple(str(c) for c in model.classes_))

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """``[N, C]`` class probabilities (columns in :attr:`classes` order)."""
        z = ((np.asarray(features, np.float32) - self.mean) / self.scale) @ self.coef.T + self.intercept
        if z.shape[1] == 1:  # two classes: sklearn keeps one row for the second class
            z = np.concatenate([np.zeros_like(z), z], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The most probable type of each image ``[N]`` (str)."""
        return np.asarray(self.classes)[self.probabilities(features).argmax(axis=1)]

    def restorations(self, features: np.ndarray) -> list[str]:
        """The restoration for each image: :data:`RESTORATION_FOR` of its predicted type."""
        return [RESTORATION_FOR.get(str(k), "identity") for k in self.predict(features)]

    def state_dict(self) -> dict:
        """Tensors and a list of names: ``torch.save`` it and load it with ``weights_only=True``."""
        import torch

        return {"mean": torch.from_numpy(self.mean), "scale": torch.from_numpy(self.scale),
                "coef": torch.from_numpy(self.coef), "intercept": torch.from_numpy(self.intercept),
                "classes": list(self.classes)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "DistortionEstimator":
        return cls(*(np.asarray(state[k], dtype=np.float32) for k in ("mean", "scale", "coef", "intercept")),
                   classes=tuple(str(c) for c in state["classes"]))


@functools.lru_cache(maxsize=1)
def _feature_count() -> int:
    return len(quality_features(np.zeros((8, 8, 3), np.uint8)))
