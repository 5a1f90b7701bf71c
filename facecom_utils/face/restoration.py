"""Classical restorations for FACECOM's distortions: a front end before recognition.

Each restoration is a pure function ``uint8 RGB (H, W, 3) array -> uint8 RGB (H, W, 3) array``
with keyword parameters (defaults tuned on FACECOM, see below). They see pixels only: no file
name, no distortion label, no randomness, so a later per-probe selector can run all of them with
:func:`restore_candidates` and pick one from the image alone.

- ``identity``: the image unchanged.
- ``denoise``: FACECOM's noise is dense (about 30 % of pixels off by more than 20 grey levels).
  A gate counts pixels that stand out from their 3 x 3 median: above 8 % the whole image gets a
  3 x 3 then a 5 x 5 median; below it only impulses (pixels far from their local median) take
  the median, so a clean image is almost untouched. (Version 2: version 1 switched impulses
  only; on 120 noisy training copies the gated median lifts dlib's face detection 0.86 -> 0.96
  and its top-1 match to the clean source 0.83 -> 0.98.)
- ``derain``: rain streaks are thin bright slanted lines. A grey opening with a short horizontal
  line removes bright structures narrower than it; pixels that lose more than a threshold take
  the opened value (again a switch, so a clean image is almost untouched).
- ``deblur``: a few Richardson-Lucy iterations with a Gaussian PSF (the blur FACECOM's
  ``blurred`` type is close to), per channel.
- ``dehaze``: fog is a blend toward light grey, i.e. an affine squeeze of the intensities. A
  percentile stretch of the luminance range back to ``[0, 255]`` (the same affine map on all
  three channels, so hues are kept) undoes it; an image that already spans the range is left
  nearly unchanged.
- ``lowlight``: low light is a multiplicative darkening. A gain that brings a high luminance
  percentile up to a target (never below 1) undoes it; a well-exposed image is left unchanged.

Measured on FACECOM's own pairs (``experiments/measure_restorations.py --identities 30 --tune``:
30 training identities, 69 clean images, 483 distorted copies, 69 per type). Mean PSNR gain in
dB on the type each filter is for, at the shipped defaults, and clean cost as the mean / min
PSNR of restore(clean) to clean over the 69 clean images (60 = unchanged)::

    restoration  type      base dB  gain dB  clean mean/min dB
    denoise      noisy     16.5     +5.0     56.1 / 42.2
    derain       rainy     19.0     +5.3     60.0 / 60.0   (40 pairs; misses ~10% light rain)
    deblur       blurred   27.5     +1.7     23.6 / 20.5
    dehaze       foggy     11.9     +2.6     56.7 / 18.8
    lowlight     lowlight   9.9     +18.2    60.0 / 60.0
    (any)        sunny      7.1     +2.0 with dehaze, which also fires on the washed-out image

``resized`` (34.7 dB already) gains from nothing here (deblur -6.9 dB). Deblur has no blur
gate: it sharpens, and rings on, whatever it is given. ``sunny`` glare saturates the face
centre to white; those pixels are gone and no classical filter here recovers them.

Example:
    >>> import numpy as np
    >>> img = np.full((32, 32, 3), 120, dtype=np.uint8)
    >>> restore(img, "denoise").shape
    (32, 32, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from scipy import ndimage

__all__ = [
    "RESTORATIONS",
    "RESTORATION_VERSIONS",
    "check_restoration_versions",
    "RestorationFn",
    "deblur",
    "dehaze",
    "denoise",
    "derain",
    "identity",
    "lowlight",
    "restore",
    "restore_candidates",
]

RestorationFn = Callable[[np.ndarray], np.ndarray]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ----------------------------------------------------------------------------- helpers


def _check(image: np.ndarray) -> np.ndarray:
    """Validate a uint8 RGB ``(H, W, 3)`` array and return it as float32."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB array of shape (H, W, 3), got {image.dtype} {image.shape}")
    return image.astype(np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Round and clip a float array to uint8."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _luma(x: np.ndarray) -> np.ndarray:
    """ITU-R 601 luminance of a float RGB array."""
    return x @ _LUMA


# ----------------------------------------------------------------------------- restorations


def identity(image: np.ndarray) -> np.ndarray:
    """Return a copy of the image (the no-restoration candidate).

    Args:
        image: uint8 RGB array ``(H, W, 3)``.

    Returns:
        A copy of ``image``.
    """
    _check(image)
    return np.array(image, copy=True)


def denoise(image: np.ndarray, size: int = 3, threshold: float = 60.0, dense_level: float = 20.0,
            dense_share: float = 0.08, dense_size: int = 5) -> np.ndarray:
    """Median filtering for FACECOM's noise, gated by how much of the image is noise.

    FACECOM's ``noisy`` copies carry dense grey noise (about 30 % of pixels off by more than 20
    levels, the three channels moving together) with impulses on top. When more than
    ``dense_share`` of the pixels' luminance differs from its 3 x 3 median by more than
    ``dense_level``, the image is dense noise: it gets a 3 x 3 then a ``dense_size`` x
    ``dense_size`` median on every pixel. Otherwise only impulses are switched: a pixel whose
    channel differs from that channel's ``size x size`` median by more than ``threshold`` takes
    the median, all other pixels are kept, so a clean image (at most ~4 % such pixels on
    FACECOM's training split) is almost untouched.

    Args:
        image: uint8 RGB array ``(H, W, 3)``.
        size: Side of the switching median window (odd).
        threshold: Grey levels a channel must differ from its median to count as an impulse.
        dense_level, dense_share: The gate: luminance deviation and share of pixels above it.
        dense_size: Side of the second median for dense noise.

    Returns:
        The denoised uint8 RGB array.
    """
    x = _check(image)
    luma = _luma(x)
    med3 = ndimage.median_filter(x, size=(3, 3, 1), mode="reflect")
    if float((np.abs(luma - ndimage.median_filter(luma, size=3, mode="reflect")) > dense_level).mean()) > dense_share:
        return _to_uint8(ndimage.median_filter(med3, size=(dense_size, dense_size, 1), mode="reflect"))
    med = med3 if size == 3 else ndimage.median_filter(x, size=(size, size, 1), mode="reflect")
    hit = (np.abs(x - med) > threshold).any(axis=2, keepdims=True)
    return _to_uint8(np.where(hit, med, x))


def derain(image: np.ndarray, size: int = 7, threshold: float = 8.0, weight: float = 0.2,
           min_streaks: float = 0.15) -> np.ndarray:
    """Remove bright rain streaks with a one-sided switching median, then undo the rain blend.

    Rain is ``(1 - weight) * image + weight * streaks``: bright thin lines over a dimmed image.
    Pixels brighter (in luminance) than their ``size x size`` median by more than ``threshold``
    are streaks and take the median; the result is then divided by ``1 - weight``. When fewer
    than ``min_streaks`` of the pixels are streaks the image is returned unchanged.

    Args:
        image: uint8 RGB array ``(H, W, 3)``.
        size: Side of the median window (odd; longer than a streak is wide).
        threshold: Luminance excess over the median (grey levels) that marks a streak pixel.
        weight: Weight of the rain layer whose dimming is undone (0 keeps the brightness).
        min_streaks: Smallest fraction of streak pixels for the image to count as rainy.

    Returns:
        The de-rained uint8 RGB array.
    """
    x = _check(image)
    med = ndimage.median_filter(x, size=(size, size, 1), mode="reflect")
    hit = _luma(x) - _luma(med) > threshold
    if hit.mean() < min_streaks:
        return _to_uint8(x)
    return _to_uint8(np.where(hit[..., None], med, x) / (1.0 - weight))


def deblur(image: np.ndarray, sigma: float = 2.0, iterations: int = 16) -> np.ndarray:
    """Richardson-Lucy deconvolution with a Gaussian PSF, per channel.

    Args:
        image: uint8 RGB array ``(H, W, 3)``.
        sigma: Standard deviation of the assumed Gaussian blur, in pixels.
        iterations: Richardson-Lucy iterations (more sharpens more and rings more).

    Returns:
        The deblurred uint8 RGB array.
    """
    x = _check(image).astype(np.float64) / 255.0 + 1e-3
    blur = (sigma, sigma, 0.0)  # the Gaussian PSF is symmetric: it is its own mirror
    estimate = x.copy()
    for _ in range(iterations):
        ratio = x / np.maximum(ndimage.gaussian_filter(estimate, blur, mode="reflect", truncate=3.0), 1e-6)
        estimate *= ndimage.gaussian_filter(ratio, blur, mode="reflect", truncate=3.0)
    return _to_uint8((estimate - 1e-3) * 255.0)


def dehaze(image: np.ndarray, low: float = 1.0, high: float = 99.0, white: float = 230.0,
           min_black: float = 24.0) -> np.ndarray:
    """Undo a blend toward grey haze with a luminance percentile stretch.

    Haze lifts the darkest pixels: when the ``low`` luminance percentile is at least
    ``min_black`` the image counts as hazy, and one affine map (the same on all three channels,
    so hues are kept) takes that percentile to 0 and the ``high`` percentile to ``white``.
    Otherwise the image is returned unchanged.

    Args:
        image: uint8 RGB array ``(H, W, 3)``.
        low: Lower luminance percentile, mapped to 0.
        high: Upper luminance percentile, mapped to ``white``.
        white: Grey level the upper percentile is mapped to.
        min_black: Smallest lower percentile (grey levels) for the image to count as hazy.

    Returns:
        The dehazed uint8 RGB array.
    """
    x = _check(image)
    lo, hi = np.percentile(_luma(x), [low, high])
    if lo < min_black or hi <= lo:
        return _to_uint8(x)
    return _to_uint8((x - lo) * (white / (hi - lo)))


def lowlight(image: np.ndarray, percentile: float = 99.0, target: float = 235.0,
             max_bright: float = 120.0) -> np.ndarray:
    """Undo a multiplicative darkening with a gain from a high luminance percentile.

    When the ``percentile`` luminance is below ``max_bright`` the image counts as dark and is
    multiplied by ``target / that percentile``; otherwise it is returned unchanged.

    Args:
        image: uint8 RGB array ``(H, W, 3)``.
        percentile: Luminance percentile taken as the image's bright end.
        target: Grey level the bright end is brought to.
        max_bright: Bright end (grey levels) at or above which an image is left alone.

    Returns:
        The brightened uint8 RGB array.
    """
    x = _check(image)
    bright = float(np.percentile(_luma(x), percentile))
    if bright >= max_bright:
        return _to_uint8(x)
    return _to_uint8(x * (target / max(bright, 1.0)))


#: Bumped when a restoration's output changes, so caches of its results are recomputed (1 if absent).
RESTORATION_VERSIONS: dict[str, int] = {"denoise": 2}


def check_restoration_versions(saved: dict[str, int] | None, source: str) -> None:
    """Warns when heads fitted on restored descriptors meet different restorations.

    ``saved`` is the :data:`RESTORATION_VERSIONS` stored with the fitted heads (None: a file
    written before versions were recorded, i.e. every restoration at version 1). The descriptors
    would still be computed and cached correctly, but thresholds, heads and fusion weights were
    chosen on the other ones.
    """
    saved = {str(k): int(v) for k, v in (saved or {}).items()}
    names = sorted(set(saved) | set(RESTORATION_VERSIONS))
    changed = [n for n in names if saved.get(n, 1) != RESTORATION_VERSIONS.get(n, 1)]
    if changed:
        import warnings

        detail = ", ".join(f"{n}: v{saved.get(n, 1)} then, v{RESTORATION_VERSIONS.get(n, 1)} now" for n in changed)
        warnings.warn(f"{source} was fitted on restorations of other versions ({detail}); its heads, fusion weights "
                      "and thresholds were chosen on other descriptors: re-run the notebook's face-model stage",
                      stacklevel=3)

RESTORATIONS: dict[str, RestorationFn] = {
    "identity": identity,
    "denoise": denoise,
    "derain": derain,
    "deblur": deblur,
    "dehaze": dehaze,
    "lowlight": lowlight,
}


def restore(image: np.ndarray, name: str) -> np.ndarray:
    """Apply one restoration by name with its tuned defaults.

    Args:
        image: uint8 RGB array ``(H, W, 3)``.
        name: One of :data:`RESTORATIONS`.

    Returns:
        The restored uint8 RGB array, same shape.

    Raises:
        KeyError: ``name`` is not a known restoration.
    """
    try:
        fn = RESTORATIONS[name]
    except KeyError:
        raise KeyError(f"unknown restoration {name!r}; expected one of {', '.join(RESTORATIONS)}") from None
    return fn(image)


def restore_candidates(image: np.ndarray, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Every restoration of one image, for a selector that picks among them from the pixels.

    Args:
        image: uint8 RGB array ``(H, W, 3)``.
        names: Restorations to run (default: all of :data:`RESTORATIONS`, in its order).

    Returns:
        ``{name: restored image}``.
    """
    return {name: restore(image, name) for name in (RESTORATIONS if names is None else names)}
