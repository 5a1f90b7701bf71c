"""The seven FACECOM distortions as fast, seeded image functions.

FACECOM's Task B ships every clean face with seven distorted copies: blurred, foggy, lowlight,
noisy, rainy, resized and sunny. This module re-creates them so that (a) the synthetic demo
dataset can carry the same distortions and (b) training can use them as on-the-fly augmentation.

Each distortion is a function ``(image, severity, rng) -> image`` on PIL images. It keeps the
image's size and mode, is deterministic for a given seed, and at the default ``severity=1.0``
reproduces the statistics measured on FACECOM itself (``docs/facecom-distortions.md``;
``experiments/measure_distortions.py`` recomputes that table for these functions). Severity 0 leaves
the image (almost) unchanged and larger values make the distortion stronger. Spatial parameters
(blur radius, streak length, glare size) scale with the image, relative to FACECOM's 224 px.

How each type was modelled from FACECOM's own pairs:

- ``blurred``: Gaussian blur (keeps ~32% of the edge energy).
- ``foggy``: a blend of about 50% toward a cloudy light-grey haze, with slight softening.
- ``lowlight``: multiplicative darkening by 0.30 plus a little sensor noise.
- ``noisy``: dense salt-and-pepper on ~19% of pixels (mostly black/white, some coloured).
- ``rainy``: ``0.8 * image + 0.2 * rain`` where the rain layer holds slanted white streaks on
  black, i.e. semi-transparent streaks over a slightly darkened, desaturated image.
- ``resized``: down-sampling by ~2.4x then up-sampling back (keeps ~63% of the edge energy).
- ``sunny``: a large radial glare blended toward an over-exposed white, saturating the centre.

Example:
    >>> from PIL import Image
    >>> img = Image.new("RGB", (64, 64), (120, 90, 70))
    >>> apply_distortion(img, "sunny", rng=0).size
    (64, 64)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter

from facecom_utils.data.layout import DISTORTION_TYPES

__all__ = [
    "DISTORTIONS",
    "DISTORTION_TYPES",
    "DistortionFn",
    "FACECOM_REFERENCE",
    "RandomFacecomDistortion",
    "apply_distortion",
    "blurred",
    "distortion_statistics",
    "foggy",
    "lowlight",
    "noisy",
    "rainy",
    "resized",
    "STATISTICS",
    "sunny",
]

DistortionFn = Callable[[Image.Image, float, np.random.Generator], Image.Image]
RngLike = np.random.Generator | int | None

REFERENCE_SIZE = 224  # FACECOM's image size; spatial parameters below are tuned at this size.


# ----------------------------------------------------------------------------- helpers


def _as_rng(rng: RngLike) -> np.random.Generator:
    """Return a numpy Generator from a Generator, an integer seed or None (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _to_array(image: Image.Image) -> np.ndarray:
    """RGB float32 array in [0, 255] with shape (H, W, 3)."""
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def _to_image(array: np.ndarray, mode: str) -> Image.Image:
    """Clip, round and convert an (H, W, 3) float array back to a PIL image of ``mode``."""
    out = Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), "RGB")
    return out if mode == "RGB" else out.convert(mode)


def _scale(image: Image.Image) -> float:
    """Size of ``image`` relative to FACECOM's 224 px (by its shorter side)."""
    return min(image.size) / REFERENCE_SIZE


def _smooth_noise(
    height: int, width: int, cells: int, rng: np.random.Generator
) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random ``cells x cells`` grid upsampled bicubically."""
    grid = rng.random((cells, cells), dtype=np.float32)
    field = Image.fromarray(grid, "F").resize((width, height), Image.BICUBIC)
    return np.clip(np.asarray(field), 0.0, 1.0)


def _check_severity(severity: float) -> float:
    severity = float(severity)
    if not np.isfinite(severity) or severity < 0:
        raise ValueError(f"severity must be a finite number >= 0, got {severity!r}")
    return severity


# ----------------------------------------------------------------------------- distortions


def blurred(
    image: Image.Image, severity: float = 1.0, rng: RngLike = None
) -> Image.Image:
    """Gaussian blur; sigma 2.0 px at 224 px and severity 1.

    Args:
        image: Input PIL image (any mode PIL can blur; size and mode are kept).
        severity: Strength; the blur sigma grows linearly with it.
        rng: Unused (the blur is deterministic); accepted for a uniform signature.

    Returns:
        The blurred image.
    """
    severity = _check_severity(severity)
    sigma = 2.0 * severity * _scale(image)
    if sigma <= 0:
        return image.copy()
    mode = image.mode
    source = image if mode in ("RGB", "L", "RGBA") else image.convert("RGB")
    out = source.filter(ImageFilter.GaussianBlur(sigma))
    return out if out.mode == mode else out.convert(mode)


def resized(
    image: Image.Image, severity: float = 1.0, rng: RngLike = None
) -> Image.Image:
    """Down-sample then up-sample back (bilinear); factor 1.6 at severity 1.

    Args:
        image: Input PIL image.
        severity: Strength; the down-sampling factor is ``1 + 0.6 * severity``.
        rng: Unused; accepted for a uniform signature.

    Returns:
        The image at its original size with the detail of a smaller one.
    """
    severity = _check_severity(severity)
    factor = 1.0 + 0.6 * severity
    width, height = image.size
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    if small == image.size:
        return image.copy()
    mode = image.mode
    source = image if mode in ("RGB", "L", "RGBA") else image.convert("RGB")
    out = source.resize(small, Image.BILINEAR, reducing_gap=None).resize(
        image.size, Image.BILINEAR
    )
    return out if out.mode == mode else out.convert(mode)


def lowlight(
    image: Image.Image, severity: float = 1.0, rng: RngLike = None
) -> Image.Image:
    """Multiplicative darkening (x0.30 at severity 1) with a little Gaussian sensor noise.

    Args:
        image: Input PIL image.
        severity: Strength; the image is scaled by ``0.30 ** severity``.
        rng: Seed or Generator for the noise.

    Returns:
        The darkened image.
    """
    severity = _check_severity(severity)
    rng = _as_rng(rng)
    x = _to_array(image)
    gain = 0.30**severity
    noise = rng.normal(0.0, 0.8 * min(severity, 2.0), size=x.shape[:2]).astype(np.float32)
    return _to_image(x * gain + noise[..., None], image.mode)


def noisy(
    image: Image.Image, severity: float = 1.0, rng: RngLike = None
) -> Image.Image:
    """Dense salt-and-pepper noise on ~17% of the pixels at severity 1.

    Noise pixels are black or white, a few of them a random saturated colour. As in FACECOM's
    files the dots are slightly soft (resampled by a quarter pixel) rather than pure 0/255, and
    the image loses a little colour.

    Args:
        image: Input PIL image.
        severity: Strength; the fraction of noise pixels is ``0.17 * severity`` (at most 0.9).
        rng: Seed or Generator for the noise pattern.

    Returns:
        The noisy image.
    """
    severity = _check_severity(severity)
    rng = _as_rng(rng)
    x = _to_array(image)
    height, width = x.shape[:2]
    fraction = min(0.17 * severity, 0.9)
    hit = rng.random((height, width), dtype=np.float32) < fraction
    n = int(hit.sum())
    # Per noise pixel: salt or pepper, or (3%) a random corner of the RGB cube (coloured).
    value = np.where(rng.random(n) < 0.5, 255.0, 0.0).astype(np.float32)
    values = np.repeat(value[:, None], 3, axis=1)
    coloured = rng.random(n) < 0.03
    values[coloured] = 255.0 * (rng.random((int(coloured.sum()), 3)) < 0.5)
    delta = np.zeros_like(x)
    delta[hit] = values - x[hit]
    # Soften the dots: a bilinear quarter-pixel shift of the noise layer.
    soft = 0.64 * delta
    soft[1:] += 0.16 * delta[:-1]
    soft[:, 1:] += 0.16 * delta[:, :-1]
    soft[1:, 1:] += 0.04 * delta[:-1, :-1]
    grey = x.mean(axis=2, keepdims=True)
    desaturate = min(0.025 * severity, 1.0)
    x = x + desaturate * (grey - x)
    return _to_image(x + soft, image.mode)


def rainy(
    image: Image.Image, severity: float = 1.0, rng: RngLike = None
) -> Image.Image:
    """Semi-transparent slanted white rain streaks over a slightly darkened image.

    The output is ``(1 - w) * image + w * rain`` with ``w = 0.21 * severity`` and ``rain`` a
    layer of white streaks (about a quarter of the pixels) on black, which both draws the
    streaks and dims and desaturates the rest, as FACECOM's rainy images do.

    Args:
        image: Input PIL image.
        severity: Strength; the rain layer's weight grows linearly with it (at most 0.8).
        rng: Seed or Generator for the streak pattern and angle.

    Returns:
        The rainy image.
    """
    severity = _check_severity(severity)
    rng = _as_rng(rng)
    x = _to_array(image)
    height, width = x.shape[:2]
    scale = _scale(image)
    length = max(3, round(11 * scale))
    angle = np.deg2rad(rng.uniform(8.0, 20.0)) * rng.choice([-1.0, 1.0])
    # Seed drops, then smear them along the slanted fall direction (a motion blur by shifts).
    drops = (rng.random((height, width), dtype=np.float32) < 0.025).astype(np.float32)
    rain = np.zeros_like(drops)
    for k in range(length):
        dy, dx = k, round(k * np.tan(angle))
        rain = np.maximum(rain, np.roll(drops, (dy, dx), axis=(0, 1)))
    weight = min(0.21 * severity, 0.8)
    out = (1.0 - weight) * x + weight * 255.0 * rain[..., None]
    return _to_image(out, image.mode)


def foggy(
    image: Image.Image, severity: float = 1.0, rng: RngLike = None
) -> Image.Image:
    """Blend toward a cloudy light-grey haze (about 50% at severity 1) with slight softening.

    Args:
        image: Input PIL image.
        severity: Strength; the haze opacity is ``0.5 * severity`` (at most 0.95) and the
            softening blur grows with it.
        rng: Seed or Generator for the cloud pattern.

    Returns:
        The foggy image.
    """
    severity = _check_severity(severity)
    rng = _as_rng(rng)
    sigma = 0.3 * severity * _scale(image)
    soft = image.convert("RGB")
    if sigma > 0:
        soft = soft.filter(ImageFilter.GaussianBlur(sigma))
    x = _to_array(soft)
    height, width = x.shape[:2]
    clouds = 0.6 * _smooth_noise(height, width, 4, rng) + 0.4 * _smooth_noise(
        height, width, 9, rng
    )
    haze = 170.0 + 70.0 * clouds  # light grey, brighter where the cloud is thicker
    opacity = min(0.5 * severity, 0.95) * (0.85 + 0.3 * clouds)
    out = (1.0 - opacity[..., None]) * x + (opacity * haze)[..., None]
    return _to_image(out, image.mode)


def sunny(
    image: Image.Image, severity: float = 1.0, rng: RngLike = None
) -> Image.Image:
    """A strong over-exposed glare that washes the face out.

    A Gaussian glare ``g`` (centred near the middle, where FACECOM's crops have the face, with
    a random radius) blends each pixel toward white with weight ``m = min(1, 1.5 * g)``, so
    the centre saturates, and lifts the rest of the image by up to 85 grey levels:
    ``x + m * (255 - x) + 85 * (1 - m)``, clipped. At other severities ``m`` and the lift
    scale with it.

    Args:
        image: Input PIL image.
        severity: Strength of the glare (mask amplitude and over-exposure).
        rng: Seed or Generator for the glare centre and radius.

    Returns:
        The sunny image.
    """
    severity = _check_severity(severity)
    rng = _as_rng(rng)
    x = _to_array(image)
    height, width = x.shape[:2]
    size = min(height, width)
    cy = height * (0.5 + rng.uniform(-0.1, 0.1))
    cx = width * (0.5 + rng.uniform(-0.1, 0.1))
    radius = size * rng.uniform(0.12, 0.32)
    yy = (np.arange(height, dtype=np.float32) - cy)[:, None]
    xx = (np.arange(width, dtype=np.float32) - cx)[None, :]
    glare = np.exp(-(yy**2 + xx**2) / (2.0 * radius**2))
    mask = np.minimum(1.0, 1.5 * severity * glare)[..., None]
    lift = 85.0 * min(severity, 1.5)
    out = x + mask * (255.0 - x) + lift * (1.0 - mask)
    return _to_image(out, image.mode)


DISTORTIONS: dict[str, DistortionFn] = {
    "blurred": blurred,
    "foggy": foggy,
    "lowlight": lowlight,
    "noisy": noisy,
    "rainy": rainy,
    "resized": resized,
    "sunny": sunny,
}
assert tuple(DISTORTIONS) == tuple(DISTORTION_TYPES), "DISTORTIONS must follow DISTORTION_TYPES"


def apply_distortion(
    image: Image.Image, kind: str, severity: float = 1.0, rng: RngLike = None
) -> Image.Image:
    """Apply one FACECOM distortion by name.

    Args:
        image: Input PIL image.
        kind: One of :data:`DISTORTION_TYPES`.
        severity: Strength; 1.0 matches FACECOM's own distorted images.
        rng: ``np.random.Generator``, integer seed, or None for fresh randomness.

    Returns:
        A new image with the same size and mode.

    Raises:
        KeyError: ``kind`` is not a known distortion type.
    """
    try:
        fn = DISTORTIONS[kind]
    except KeyError:
        raise KeyError(
            f"unknown distortion {kind!r}; expected one of {', '.join(DISTORTION_TYPES)}"
        ) from None
    return fn(image, severity, _as_rng(rng))


class RandomFacecomDistortion:
    """Training transform: with probability ``p`` apply one random FACECOM distortion.

    The type is drawn uniformly from ``kinds`` and the severity uniformly from
    ``severity_range``. Use it on PIL images before ``ToTensor``.

    Args:
        p: Probability of distorting an image.
        severity_range: ``(low, high)`` range of severities to draw from.
        kinds: Distortion types to draw from.
        seed: Seed for reproducible draws; None draws fresh entropy. Inside a PyTorch
            DataLoader worker the generator is re-seeded from the worker's own seed (mixed
            with ``seed``), so workers never repeat each other's draws and runs stay
            reproducible under ``torch.manual_seed``.
    """

    def __init__(
        self,
        p: float = 0.5,
        severity_range: tuple[float, float] = (0.5, 1.5),
        kinds: Sequence[str] = DISTORTION_TYPES,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        low, high = severity_range
        if not 0.0 <= low <= high:
            raise ValueError(f"severity_range must satisfy 0 <= low <= high, got {severity_range}")
        unknown = [k for k in kinds if k not in DISTORTIONS]
        if unknown or not kinds:
            raise ValueError(
                f"kinds must be a non-empty subset of {DISTORTION_TYPES}, got {tuple(kinds)}"
            )
        self.p = float(p)
        self.severity_range = (float(low), float(high))
        self.kinds = tuple(kinds)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._owner: tuple[int, int | None] = (os.getpid(), None)

    def _worker_rng(self) -> np.random.Generator:
        """This process's generator: re-seeded once per DataLoader worker (see class doc)."""
        torch = sys.modules.get("torch")  # only consult torch if the caller already uses it
        info = torch.utils.data.get_worker_info() if torch is not None else None
        owner = (os.getpid(), None if info is None else int(info.seed))
        if owner != self._owner:
            self._owner = owner
            if info is not None:
                entropy = [info.seed] if self.seed is None else [self.seed, info.seed]
                self.rng = np.random.default_rng(entropy)
            elif self.seed is None:  # a forked process outside torch: fresh entropy
                self.rng = np.random.default_rng()
        return self.rng

    def __call__(self, image: Image.Image) -> Image.Image:
        """Distort ``image`` with probability ``p``; otherwise return it unchanged."""
        rng = self._worker_rng()
        if self.p <= 0.0 or rng.random() >= self.p:
            return image
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        severity = float(rng.uniform(*self.severity_range))
        return DISTORTIONS[kind](image, severity, rng)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(p={self.p}, severity_range={self.severity_range}, "
            f"kinds={self.kinds}, seed={self.seed})"
        )


# ----------------------------------------------------------------------------- statistics


STATISTICS = (
    "mean_brightness_delta",
    "contrast_ratio",
    "edge_energy_ratio",
    "saturated_px_frac",
    "black_px_frac",
    "colourfulness_ratio",
    "mean_abs_diff",
)

# Per-type statistics of FACECOM's own distorted images against their clean sources, as
# ``(median, p10, p90)`` over 200 training identities (``docs/facecom-distortions.md``).
# At severity 1.0 each distortion here should land inside these bands.
FACECOM_REFERENCE: dict[str, dict[str, tuple[float, float, float]]] = {
    "blurred": {
        "mean_brightness_delta": (-0.024, -0.081, 0.028),
        "contrast_ratio": (0.946, 0.917, 0.974),
        "edge_energy_ratio": (0.319, 0.236, 0.566),
        "saturated_px_frac": (0.0, 0.0, 0.004),
        "black_px_frac": (0.005, 0.0, 0.096),
        "colourfulness_ratio": (0.991, 0.976, 1.001),
        "mean_abs_diff": (6.677, 3.879, 8.959),
    },
    "foggy": {
        "mean_brightness_delta": (50.743, 19.87, 68.412),
        "contrast_ratio": (0.553, 0.504, 0.627),
        "edge_energy_ratio": (0.548, 0.514, 0.597),
        "saturated_px_frac": (0.0, 0.0, 0.0),
        "black_px_frac": (0.0, 0.0, 0.0),
        "colourfulness_ratio": (0.486, 0.468, 0.504),
        "mean_abs_diff": (53.739, 34.768, 69.612),
    },
    "lowlight": {
        "mean_brightness_delta": (-69.865, -112.357, -46.246),
        "contrast_ratio": (0.3, 0.298, 0.301),
        "edge_energy_ratio": (0.341, 0.305, 0.38),
        "saturated_px_frac": (0.0, 0.0, 0.0),
        "black_px_frac": (0.054, 0.0, 0.222),
        "colourfulness_ratio": (0.302, 0.295, 0.308),
        "mean_abs_diff": (69.868, 46.261, 112.372),
    },
    "noisy": {
        "mean_brightness_delta": (4.257, -4.799, 9.392),
        "contrast_ratio": (1.063, 0.956, 1.175),
        "edge_energy_ratio": (13.205, 6.847, 19.968),
        "saturated_px_frac": (0.001, 0.0, 0.02),
        "black_px_frac": (0.024, 0.0, 0.091),
        "colourfulness_ratio": (0.801, 0.79, 0.809),
        "mean_abs_diff": (23.789, 23.303, 24.182),
    },
    "rainy": {
        "mean_brightness_delta": (-6.309, -19.41, 0.64),
        "contrast_ratio": (0.886, 0.823, 0.958),
        "edge_energy_ratio": (6.012, 3.21, 8.979),
        "saturated_px_frac": (0.0, 0.0, 0.004),
        "black_px_frac": (0.019, 0.0, 0.079),
        "colourfulness_ratio": (0.794, 0.778, 0.799),
        "mean_abs_diff": (22.943, 20.217, 27.657),
    },
    "resized": {
        "mean_brightness_delta": (0.054, 0.009, 0.086),
        "contrast_ratio": (0.984, 0.976, 0.993),
        "edge_energy_ratio": (0.627, 0.527, 0.817),
        "saturated_px_frac": (0.0, 0.0, 0.008),
        "black_px_frac": (0.011, 0.0, 0.11),
        "colourfulness_ratio": (0.998, 0.993, 1.001),
        "mean_abs_diff": (2.838, 1.523, 3.952),
    },
    "sunny": {
        "mean_brightness_delta": (113.904, 69.169, 126.619),
        "contrast_ratio": (0.835, 0.566, 1.02),
        "edge_energy_ratio": (0.551, 0.399, 0.702),
        "saturated_px_frac": (0.291, 0.161, 0.596),
        "black_px_frac": (0.0, 0.0, 0.0),
        "colourfulness_ratio": (0.44, 0.208, 0.635),
        "mean_abs_diff": (113.904, 69.176, 126.619),
    },
}


def _grey(x: np.ndarray) -> np.ndarray:
    return x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _edge_energy(grey: np.ndarray) -> float:
    """Mean absolute 4-neighbour Laplacian over the interior pixels."""
    lap = (
        grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
        - 4.0 * grey[1:-1, 1:-1]
    )
    return float(np.abs(lap).mean())


def distortion_statistics(clean: Image.Image, distorted: Image.Image) -> dict[str, float]:
    """Statistics of a distorted image against its clean source (docs/facecom-distortions.md).

    Brightness and differences are in 0-255 grey levels (ITU-R 601 luma); ratios are
    distorted / clean. Edge energy is the mean absolute Laplacian of the grey image;
    colourfulness the mean per-pixel standard deviation across R, G, B; saturated / black
    the fraction of pixels with all channels > 250 / < 5.

    Args:
        clean: The clean image.
        distorted: Its distorted copy, same size.

    Returns:
        A dict keyed by :data:`STATISTICS`.
    """
    a, b = _to_array(clean), _to_array(distorted)
    if a.shape != b.shape:
        raise ValueError(f"size mismatch: clean {a.shape[:2]} vs distorted {b.shape[:2]}")
    ga, gb = _grey(a), _grey(b)
    eps = 1e-6
    return {
        "mean_brightness_delta": float(gb.mean() - ga.mean()),
        "contrast_ratio": float(gb.std() / (ga.std() + eps)),
        "edge_energy_ratio": _edge_energy(gb) / (_edge_energy(ga) + eps),
        "saturated_px_frac": float((b.min(axis=2) > 250).mean()),
        "black_px_frac": float((b.max(axis=2) < 5).mean()),
        "colourfulness_ratio": float(b.std(axis=2).mean() / (a.std(axis=2).mean() + eps)),
        "mean_abs_diff": float(np.abs(gb - ga).mean()),
    }
