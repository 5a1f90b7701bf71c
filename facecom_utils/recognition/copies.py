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

It is one part of the fused Task B track (:mod:`~facecom_utils.recognition.face_tracks`): the
probe's score against a gallery photo gains ``gamma * copy_similarity``, with ``gamma`` chosen on
the validation fold. The ``pixel_copies`` track reports it alone: near-perfect main top-1 and
chance-level strict top-1 show what each protocol measures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["COPY_SIZE", "copy_descriptor", "copy_descriptors"]

#: Thumbnail side in pixels.
COPY_SIZE = 32


def copy_descriptor(image: "np.ndarray | os.PathLike[str] | str", size: int = COPY_SIZE) -> np.ndarray:
    """The copy descriptor of one image ``[2 * (size - 1) ** 2]`` float32, unit norm.

    Args:
        image: An image file, or an ``[H, W]`` / ``[H, W, 3]`` uint8 array.
        size: Thumbnail side.
    """
    from PIL import Image

    from ..data import load_image

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

    from ..feature_cache import cached_features

    def compute(files: list[str]) -> np.ndarray:
        if workers <= 1 or len(files) < 256:
            return _describe(files, size)
        chunks = [files[i:i + 256] for i in range(0, len(files), 256)]
        with ProcessPoolExecutor(workers) as pool:
            return np.concatenate(list(pool.map(partial(_describe, size=size), chunks)))

    file = Path(cache_dir) / f"copy_grad{size}.npz" if cache_dir is not None else None
    return cached_features(paths, compute, file, desc="copy descriptors")
