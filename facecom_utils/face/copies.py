"""A pixel copy detector: is a probe a distorted copy of this gallery photo?

FACECOM's distorted probes are copies of clean photos: the distortion is painted on the very same
pixels (blur, fog, darkening, noise, rain streaks, down-and-up sampling, a glare disc). In the
**main** protocol the probe's own clean source is in the gallery, so main top-1 measures how well
a model finds that copy; the **strict** protocol removes the source and measures recognising the
person from another photo.

This detector answers the copy question without any learning and without face data: a 32 x 32
grey thumbnail is turned into its horizontal and vertical differences (fog, darkening and glare
change levels more than edges), centred and L2-normalised, so the dot product of two descriptors
is the Pearson correlation of their gradient thumbnails. Averaging 7 x 7 pixels into one removes
most noise and rain; blur and resizing barely move a 32-pixel thumbnail.

The ``pixel_copies`` track reports the correlation alone: near-perfect main top-1 and
chance-level strict top-1 show what each protocol measures.

As one part of the fused Task B track (:mod:`~facecom_utils.recognition.face_tracks`) the
correlation is sharpened into **copy evidence** (:func:`copy_evidence`): a probe's correlation
with a gallery photo counts only where it beats the probe's best correlation with a **cohort** of
other people's clean photos (the run's training identities) by a margin. Unrelated portraits
correlate up to about 0.75 with each other, and glare pulls a true copy down to 0.4-0.6, so no
fixed threshold separates copies; relative to the probe's own cohort maximum they separate well.
Measured on FACECOM's training split (a cohort of 1,000 clean photos of 600 people, probes of the
other 277): every true copy beats the cohort maximum (sunny: 99.1 % by more than the margin 0.1,
the other types 100 % by more than 0.3), while 2 % of probes have a non-source photo that beats
it by more than 0.1. Each evidence value depends only on the probe, the photo and the fixed
cohort, never on the rest of the gallery, so the strict protocol (source photo removed) sees
exactly the scores it would see had the source never been enrolled.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["COHORT_SIZE", "COPY_MARGIN", "COPY_RAMP", "COPY_SIZE", "cohort_max", "copy_descriptor", "copy_descriptors",
           "copy_evidence"]

#: Thumbnail side in pixels.
COPY_SIZE = 32
#: Copy evidence starts where a correlation beats the probe's cohort maximum by this much ...
COPY_MARGIN = 0.1
#: ... and reaches 1 this much further on.
COPY_RAMP = 0.1
#: Clean photos of other people kept as the cohort (float16 in the run directory: ~3.8 MB).
COHORT_SIZE = 1000


def copy_descriptor(image: "np.ndarray | os.PathLike[str] | str", size: int = COPY_SIZE) -> np.ndarray:
    """The copy descriptor of one image ``[2 * (size - 1) ** 2]`` float32, unit norm.

    Args:
        image: An image file, or an ``[H, W]`` / ``[H, W, 3]`` uint8 array.
        size: Thumbnail side.
    """
    from PIL import Image

    from facecom_utils.data.layout import load_image

    if isinstance(image, np.ndarray):
        pil = Image.fromarray(np.asarray(image, np.uint8))
    else:
        pil = load_image(image)
    grey = np.asarray(pil.convert("L").resize((size, size), Image.BILINEAR), np.float32)
    gx = np.diff(grey, axis=1)[:-1, :]
    gy = np.diff(grey, axis=0)[:, :-1]
    v = np.concatenate([gx.ravel(), gy.ravel()])
    v = v - v.mean()
    norm = float(np.linalg.norm(v))
    return (v / norm if norm > 1e-6 else v).astype(np.float32)


def _describe(paths: list[str], size: int = COPY_SIZE) -> np.ndarray:
    return np.stack([copy_descriptor(p, size) for p in paths])


def copy_descriptors(paths: Sequence[str | os.PathLike[str]], size: int = COPY_SIZE, workers: int = 1,
                     cache_dir: str | os.PathLike[str] | None = None) -> np.ndarray:
    """Copy descriptors of image files ``[N, 2 * (size - 1) ** 2]``, cached by file content in ``cache_dir``.

    ``workers`` > 1 describes in worker processes (about 2,000 images/s per core).
    """
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from facecom_utils.data.features import cached_features

    def compute(files: list[str]) -> np.ndarray:
        if workers <= 1 or len(files) < 256:
            return _describe(files, size)
        chunks = [files[i:i + 256] for i in range(0, len(files), 256)]
        with ProcessPoolExecutor(workers) as pool:
            return np.concatenate(list(pool.map(partial(_describe, size=size), chunks)))

    file = Path(cache_dir) / f"copy_grad{size}.npz" if cache_dir is not None else None
    return cached_features(paths, compute, file, desc="copy descriptors")


def cohort_max(descriptors: np.ndarray, cohort: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """``[N]`` each row's highest copy correlation with the cohort's photos (``[C, D]``)."""
    d = np.asarray(descriptors, np.float32)
    c = np.asarray(cohort, np.float32)
    if len(c) == 0:
        raise ValueError("the copy cohort is empty: it needs clean photos of people outside the gallery")
    return np.concatenate([(d[i:i + chunk] @ c.T).max(axis=1) for i in range(0, len(d), chunk)] or [np.zeros(0)])


def copy_evidence(probes: np.ndarray, gallery: np.ndarray, cohort: np.ndarray, margin: float = COPY_MARGIN,
                  ramp: float = COPY_RAMP) -> np.ndarray:
    """``[P, G]`` in [0, 1]: how surely each probe is a copy of each gallery photo.

    ``clip((corr(probe, photo) - max corr(probe, cohort) - margin) / ramp, 0, 1)``: 0 unless the
    photo beats every cohort photo by ``margin``; 1 once it beats them by ``margin + ramp``.
    The cohort holds clean photos of people in neither the gallery nor the probes.
    """
    top = cohort_max(probes, cohort)
    sims = np.asarray(probes, np.float32) @ np.asarray(gallery, np.float32).T
    return np.clip((sims - top[:, None] - margin) / ramp, 0.0, 1.0).astype(np.float32)
