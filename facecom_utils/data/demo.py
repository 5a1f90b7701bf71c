"""A SYNTHETIC FACECOM-layout demo dataset of procedurally drawn faces.

FACECOM itself is not redistributable with this repository. So that a fresh clone runs every
notebook end to end, :func:`make_demo_dataset` draws a small dataset in FACECOM's exact layout:

- ``Task_A/{train,val}/{female,male}/<image>.jpg``: the clean images with gender labels;
- ``Task_B/{train,val}/<identity>/<image>.jpg`` plus ``<identity>/distortion/<stem>_<type>.jpg``
  for the seven FACECOM distortions (made by :mod:`facecom_utils.data.distortions`).

Train and val hold different people; Task A and Task B hold the same people (Task A images are
the Task B clean images), as in FACECOM. Identities come in both FACECOM naming styles:
``Demo_Person_007`` with ``Demo_Person_007_0001.jpg`` ..., and, for one identity in five (like
FACECOM's single-image identities), ``Demo_012_frontal`` with one image ``Demo_012_frontal.jpg``.

Each identity keeps stable traits (face shape, skin tone, eyes, brows, nose, mouth, hair style and
colour, optional glasses or beard) and each clean image varies pose, scale, expression and
lighting. Gender shows through visible cues (hair length, beard, brow weight, jaw, lip colour),
about 1 female to 5 male by default as in FACECOM. The data is SYNTHETIC: the folder is
``data/demo_synthetic``, its README says so, and :func:`resolve_data_root` warns when it
falls back to it. Numbers measured on it say nothing about real faces.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from facecom_utils.data.layout import DISTORTION_TYPES
from facecom_utils.data.distortions import apply_distortion
from facecom_utils.common import paths
from facecom_utils.common.paths import DEMO_ROOT

__all__ = [
    "DEFAULT_DEMO_ROOT",
    "DEMO_MARKER",
    "FaceTraits",
    "draw_face",
    "ensure_demo_dataset",
    "is_demo_root",
    "make_demo_dataset",
    "random_traits",
    "resolve_data_root",
]

DEFAULT_DEMO_ROOT = DEMO_ROOT
DEMO_MARKER = ".facecom_demo.json"  # written last; holds the generation parameters
DEMO_VERSION = 1  # bump when the drawing changes, so ensure_demo_dataset regenerates

CLEAN_JPEG_QUALITY = 90
DISTORTED_JPEG_QUALITY = 75  # FACECOM's distorted files are quality-75 JPEGs

README_TEXT = """# SYNTHETIC demo dataset (not real faces)

Everything in this folder was drawn by `facecom_utils.data.demo.make_demo_dataset` with
parameters {params}.

It mimics the FACECOM layout (Task_A gender folders, Task_B identity folders with a
`distortion/` subfolder holding the seven FACECOM distortions) so that the notebooks and tests
run on a fresh clone without the real data. The faces are cartoons with deliberately visible
cues; any metric measured here says nothing about performance on real faces.
Put the real FACECOM data in `Task_A/` and `Task_B/` at the repository root to use it instead.
"""

Color = tuple[int, int, int]

SKIN_TONES: tuple[Color, ...] = (
    (255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 140, 100),
    (170, 112, 76), (141, 85, 54), (110, 66, 42), (84, 50, 33),
)
HAIR_COLOURS: tuple[Color, ...] = (
    (20, 16, 14), (45, 30, 22), (80, 50, 30), (120, 80, 45),
    (190, 150, 90), (225, 195, 130), (140, 60, 30), (150, 150, 150),
)
IRIS_COLOURS: tuple[Color, ...] = ((70, 45, 25), (40, 25, 15), (60, 100, 150), (70, 110, 70))
MALE_HAIR = ("short", "flat_top", "side_part", "curly", "bald")
FEMALE_HAIR = ("long", "long", "bob", "wavy", "long")
BEARDS = ("full", "goatee", "moustache", "stubble")


@dataclass(frozen=True)
class FaceTraits:
    """The stable look of one synthetic person (all lengths in fractions of the canvas)."""

    female: bool
    skin: Color
    face_w: float
    face_h: float
    jaw: float
    eye_sep: float
    eye_w: float
    eye_h: float
    eye_y: float
    iris: Color
    brow_thick: float
    brow_tilt: float
    brow_arch: float
    nose_len: float
    nose_w: float
    mouth_w: float
    lip_thick: float
    lip: Color
    hair_style: str
    hair: Color
    hairline: float
    ear: float
    glasses: str | None
    glasses_colour: Color
    beard: str | None


def _jitter(colour: Color, rng: np.random.Generator, amount: float) -> Color:
    arr = np.asarray(colour, dtype=np.float64) + rng.normal(0, amount, 3)
    return tuple(int(v) for v in np.clip(arr, 0, 255))  # type: ignore[return-value]


def _mix(a: Color, b: Color, t: float) -> Color:
    return tuple(int(round((1 - t) * x + t * y)) for x, y in zip(a, b))  # type: ignore[return-value]


def random_traits(rng: np.random.Generator, female: bool) -> FaceTraits:
    """Draw one person's stable traits.

    Args:
        rng: Random generator (one per identity keeps identities reproducible).
        female: Whether the person carries the female cues.

    Returns:
        The person's :class:`FaceTraits`.
    """
    skin = _jitter(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], rng, 6)
    hair = _jitter(HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))], rng, 8)
    if female:
        lip = _jitter(((200, 70, 90), (180, 50, 70), (215, 100, 110))[int(rng.integers(3))], rng, 10)
    else:
        lip = _mix(skin, (150, 70, 60), 0.35)
    beard = None
    if not female and rng.random() < 0.5:
        beard = BEARDS[int(rng.integers(len(BEARDS)))]
    glasses = None
    if rng.random() < 0.25:
        glasses = ("round", "rect")[int(rng.integers(2))]
    return FaceTraits(
        female=female,
        skin=skin,
        face_w=rng.uniform(0.28, 0.33) if female else rng.uniform(0.30, 0.36),
        face_h=rng.uniform(0.37, 0.43),
        jaw=rng.uniform(0.50, 0.68) if female else rng.uniform(0.70, 0.92),
        eye_sep=rng.uniform(0.085, 0.12),
        eye_w=rng.uniform(0.042, 0.06),
        eye_h=rng.uniform(0.35, 0.6),
        eye_y=rng.uniform(-0.03, 0.02),
        iris=IRIS_COLOURS[int(rng.integers(len(IRIS_COLOURS)))],
        brow_thick=rng.uniform(0.007, 0.011) if female else rng.uniform(0.013, 0.022),
        brow_tilt=rng.uniform(-0.25, 0.25),
        brow_arch=rng.uniform(0.2, 0.5) if female else rng.uniform(0.0, 0.25),
        nose_len=rng.uniform(0.07, 0.11),
        nose_w=rng.uniform(0.028, 0.048),
        mouth_w=rng.uniform(0.075, 0.11),
        lip_thick=rng.uniform(0.012, 0.02) if female else rng.uniform(0.007, 0.013),
        lip=lip,
        hair_style=(FEMALE_HAIR if female else MALE_HAIR)[int(rng.integers(5))],
        hair=hair,
        hairline=rng.uniform(0.55, 0.75),
        ear=rng.uniform(0.035, 0.05),
        glasses=glasses,
        glasses_colour=((20, 20, 20), (120, 70, 30), (160, 160, 170))[int(rng.integers(3))],
        beard=beard,
    )


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    """A vertical two-colour gradient background (varies per image, not per person)."""
    grey = rng.uniform(50, 220)
    top = np.clip(grey + rng.normal(0, 25, 3), 0, 255).astype(np.float32)  # muted colours
    bottom = np.clip(top + rng.normal(0, 30, 3), 0, 255).astype(np.float32)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    grad = (1 - t) * top + t * bottom
    arr = np.broadcast_to(grad, (size, size, 3)).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, **kw: Any) -> None:
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), **kw)


def _face_outline(cx: float, cy: float, rx: float, ry: float, jaw: float, n: int = 64) -> list[tuple[float, float]]:
    """Head outline: an ellipse whose lower half narrows toward a chin of width ``jaw``."""
    points = []
    for k in range(n):
        t = 2 * math.pi * k / n
        s = math.sin(t)
        narrow = 1.0 - (1.0 - jaw) * s * s if s > 0 else 1.0
        points.append((cx + rx * math.cos(t) * narrow, cy + ry * s))
    return points


@dataclass(frozen=True)
class _FaceFrame:
    """Where one face sits on the drawing canvas: everything the part-drawing helpers share.

    ``u`` is the canvas side (traits are fractions of it); ``(cx, cy)`` the face centre;
    ``fw``/``fh`` the face half-width and half-height in pixels; ``shade`` the darker skin tone.
    """

    draw: ImageDraw.ImageDraw
    traits: FaceTraits
    u: float
    cx: float
    cy: float
    fw: float
    fh: float
    shade: Color


def _draw_body(f: _FaceFrame, shirt: tuple[int, ...]) -> None:
    """Shoulders (clothes vary per image) and neck."""
    d, cx, cy, fw, fh, u = f.draw, f.cx, f.cy, f.fw, f.fh, f.u
    _ellipse(d, cx, 1.08 * u, 0.46 * u, 0.3 * u, fill=shirt + (255,))
    d.rectangle((cx - 0.32 * fw, cy + 0.6 * fh, cx + 0.32 * fw, cy + 1.35 * fh), fill=f.shade + (255,))


def _draw_back_hair(f: _FaceFrame) -> None:
    """Hair behind the head: long hair falls onto the shoulders; a bob; a bun."""
    d, tr, cx, cy, fw, fh = f.draw, f.traits, f.cx, f.cy, f.fw, f.fh
    if tr.hair_style in ("long", "wavy"):
        d.rounded_rectangle(
            (cx - 1.22 * fw, cy - 1.05 * fh, cx + 1.22 * fw, cy + 1.45 * fh),
            radius=int(0.9 * fw), fill=tr.hair + (255,),
        )
        if tr.hair_style == "wavy":
            for k in range(7):
                y = cy + (0.1 + 0.2 * k) * fh
                for side in (-1, 1):
                    _ellipse(d, cx + side * 1.2 * fw, y, 0.14 * fw, 0.13 * fh, fill=tr.hair + (255,))
    elif tr.hair_style == "bob":
        d.rounded_rectangle(
            (cx - 1.18 * fw, cy - 1.08 * fh, cx + 1.18 * fw, cy + 0.55 * fh),
            radius=int(0.8 * fw), fill=tr.hair + (255,),
        )
    elif tr.hair_style == "bun":
        _ellipse(d, cx, cy - 1.12 * fh, 0.45 * fw, 0.3 * fh, fill=tr.hair + (255,))


def _draw_head(f: _FaceFrame) -> None:
    """Ears and the head outline."""
    d, tr, cx, cy, fw, fh, u = f.draw, f.traits, f.cx, f.cy, f.fw, f.fh, f.u
    for side in (-1, 1):
        _ellipse(d, cx + side * 0.98 * fw, cy + 0.02 * fh, tr.ear * u * 0.6, tr.ear * u, fill=f.shade + (255,))
    d.polygon(_face_outline(cx, cy, fw, fh, tr.jaw), fill=tr.skin + (255,))


def _draw_top_hair(f: _FaceFrame) -> None:
    """Hair on top of the head (side tufts when bald), down to the hairline, plus the style's detail."""
    d, tr, cx, cy, fw, fh = f.draw, f.traits, f.cx, f.cy, f.fw, f.fh
    hl = cy - tr.hairline * fh  # hairline height
    box = (cx - 1.06 * fw, cy - 1.1 * fh, cx + 1.06 * fw, cy + 0.9 * fh)
    if tr.hair_style == "bald":
        for side in (-1, 1):
            d.chord((cx + side * 0.9 * fw - 0.18 * fw, cy - 0.35 * fh, cx + side * 0.9 * fw + 0.18 * fw, cy + 0.25 * fh),
                    90 if side < 0 else 270, 270 if side < 0 else 90, fill=tr.hair + (255,))
        return
    d.chord(box, 180, 360, fill=tr.hair + (255,))
    top = cy - 1.1 * fh
    # Fill from the crown down to the hairline, keeping the face visible.
    d.polygon([(cx - 1.04 * fw, cy - 0.1 * fh), (cx - 0.95 * fw, hl), (cx + 0.95 * fw, hl),
               (cx + 1.04 * fw, cy - 0.1 * fh), (cx + 1.06 * fw, cy - 0.2 * fh),
               (cx + 1.0 * fw, top + 0.3 * fh), (cx - 1.0 * fw, top + 0.3 * fh),
               (cx - 1.06 * fw, cy - 0.2 * fh)], fill=tr.hair + (255,))
    d.polygon(_face_outline(cx, cy, 0.96 * fw, 0.99 * fh, tr.jaw)[5:28], fill=tr.skin + (255,))
    # Re-draw the forehead below the hairline (the outline above is the lower face).
    d.chord((cx - 0.93 * fw, hl, cx + 0.93 * fw, cy + 0.5 * fh), 180, 360, fill=tr.skin + (255,))
    d.rectangle((cx - 0.93 * fw, cy - 0.1 * fh + 0.5 * (hl - cy + 0.1 * fh) + 0.25 * fh, cx + 0.93 * fw, cy + 0.2 * fh),
                fill=tr.skin + (255,))
    if tr.hair_style == "side_part":
        d.polygon([(cx - 0.95 * fw, hl), (cx + 0.2 * fw, hl - 0.05 * fh), (cx - 0.4 * fw, hl + 0.18 * fh)],
                  fill=tr.hair + (255,))
    elif tr.hair_style == "curly":
        for k in range(9):
            x = cx + (-0.9 + 0.225 * k) * fw
            _ellipse(d, x, hl - 0.02 * fh, 0.14 * fw, 0.1 * fh, fill=tr.hair + (255,))
    elif tr.hair_style == "flat_top":
        d.rectangle((cx - 0.8 * fw, cy - 1.22 * fh, cx + 0.8 * fw, cy - 0.85 * fh), fill=tr.hair + (255,))
    elif tr.hair_style in ("long", "wavy", "bob"):
        d.polygon([(cx - 0.95 * fw, hl), (cx + 0.5 * fw, hl - 0.02 * fh), (cx - 0.1 * fw, hl + 0.22 * fh)],
                  fill=tr.hair + (255,))


def _draw_eyes(f: _FaceFrame, eye_open: float, brow_raise: float) -> tuple[float, float]:
    """Eyes (white, iris, pupil, lid) and brows.

    Args:
        f: The face frame.
        eye_open: How open the eyes are (1 = fully).
        brow_raise: How far the brows are raised, in pixels.

    Returns:
        ``(ey, ew)``: the eyes' centre height and half-width in pixels.
    """
    d, tr, cx, cy, fh, u = f.draw, f.traits, f.cx, f.cy, f.fh, f.u
    hair_dark = _mix(tr.hair, (0, 0, 0), 0.25)
    ey = cy - 0.12 * fh + tr.eye_y * u
    ew, eh = tr.eye_w * u, tr.eye_w * tr.eye_h * eye_open * u
    for side in (-1, 1):
        ex = cx + side * tr.eye_sep * u
        _ellipse(d, ex, ey, ew, max(eh, 1.0), fill=(250, 250, 245, 255))
        r = min(0.55 * ew, max(eh, 1.0) * 1.05)
        _ellipse(d, ex, ey, r, r, fill=tr.iris + (255,))
        _ellipse(d, ex, ey, 0.45 * r, 0.45 * r, fill=(10, 10, 10, 255))
        lid = max(1, int((0.012 if tr.female else 0.006) * u))
        d.arc((ex - ew, ey - max(eh, 1.0), ex + ew, ey + max(eh, 1.0)), 180, 360, fill=(30, 20, 20, 255), width=lid)
        # Brows.
        by = ey - 1.9 * tr.eye_w * u * 0.6 - 0.02 * u - brow_raise
        bw = 1.15 * ew
        tilt = side * tr.brow_tilt * 0.3 * bw
        arch = tr.brow_arch * 0.5 * bw
        d.line([(ex - bw, by + tilt), (ex, by - arch), (ex + bw, by - tilt)],
               fill=hair_dark + (255,), width=max(1, int(tr.brow_thick * u)), joint="curve")
    return ey, ew


def _draw_nose(f: _FaceFrame, ey: float) -> float:
    """The nose: a ridge line from eye height and an arc at the tip. Returns the tip height ``ny``."""
    d, tr, cx, cy, u = f.draw, f.traits, f.cx, f.cy, f.u
    ny = cy + tr.nose_len * u * 0.9
    nw = tr.nose_w * u
    d.line([(cx, ey), (cx - 0.3 * nw, ny)], fill=f.shade + (255,), width=max(1, int(0.006 * u)))
    d.arc((cx - nw, ny - 0.5 * nw, cx + nw, ny + 0.5 * nw), 10, 170, fill=f.shade + (255,),
          width=max(1, int(0.008 * u)))
    return ny


def _draw_beard(f: _FaceFrame, ny: float, my: float, mw: float) -> None:
    """Beard / moustache (male only), drawn before the mouth so the lips stay visible.

    ``ny`` is the nose-tip height, ``my`` the mouth height and ``mw`` the mouth half-width (pixels).
    """
    d, tr, cx, cy, fw, fh, u = f.draw, f.traits, f.cx, f.cy, f.fw, f.fh, f.u
    if tr.beard in ("full", "stubble"):
        beard_colour = tr.hair if tr.beard == "full" else _mix(tr.skin, tr.hair, 0.45)
        outline = _face_outline(cx, cy, fw, fh, tr.jaw)
        lower = [p for p in outline if p[1] > ny - 0.05 * fh]
        d.polygon(lower + [(cx - 0.7 * fw, ny - 0.05 * fh), (cx + 0.7 * fw, ny - 0.05 * fh)][::-1],
                  fill=beard_colour + (255,))
    if tr.beard == "goatee":
        _ellipse(d, cx, my + 0.16 * fh, 0.55 * mw, 0.17 * fh, fill=tr.hair + (255,))
    if tr.beard in ("full", "goatee", "moustache"):
        d.polygon([(cx - 1.1 * mw, my + 0.01 * u), (cx, my - 0.045 * u), (cx + 1.1 * mw, my + 0.01 * u),
                   (cx, my - 0.015 * u)], fill=tr.hair + (255,))


def _draw_mouth(f: _FaceFrame, smile: float, my: float, mw: float) -> None:
    """Mouth: a smile lifts the corners; a broad smile opens it and shows teeth. Blush when female.

    ``smile`` is the expression (-0.3 .. 1), ``my`` the mouth height, ``mw`` its half-width (pixels).
    """
    d, tr, cx, cy, fw, fh, u = f.draw, f.traits, f.cx, f.cy, f.fw, f.fh, f.u
    curve = smile * 0.025 * u
    lt = tr.lip_thick * u
    upper = [(cx - mw, my - curve), (cx - 0.4 * mw, my - 0.5 * lt), (cx, my - 0.3 * lt),
             (cx + 0.4 * mw, my - 0.5 * lt), (cx + mw, my - curve)]
    opening = max(0.0, smile - 0.55) * 0.05 * u
    lower_lip = [(cx + mw, my - curve), (cx + 0.5 * mw, my + 0.6 * lt + opening),
                 (cx, my + lt + opening), (cx - 0.5 * mw, my + 0.6 * lt + opening), (cx - mw, my - curve)]
    d.polygon(upper + lower_lip, fill=tr.lip + (255,))
    if opening > 0.004 * u:
        d.polygon([(cx - 0.75 * mw, my - 0.35 * curve), (cx + 0.75 * mw, my - 0.35 * curve),
                   (cx, my + 0.7 * opening)], fill=(245, 245, 235, 255))
    if tr.female:  # a touch of blush
        for side in (-1, 1):
            _ellipse(d, cx + side * 0.55 * fw, cy + 0.18 * fh, 0.13 * fw, 0.07 * fh,
                     fill=_mix(tr.skin, (230, 90, 100), 0.3) + (255,))


def _draw_glasses(f: _FaceFrame, ey: float, ew: float) -> None:
    """Glasses (round or rectangular frames and a bridge) when the person wears them.

    ``ey`` is the eyes' centre height and ``ew`` their half-width (pixels).
    """
    d, tr, cx, u = f.draw, f.traits, f.cx, f.u
    if not tr.glasses:
        return
    gw = max(1, int(0.009 * u))
    for side in (-1, 1):
        ex = cx + side * tr.eye_sep * u
        bbox = (ex - 1.45 * ew, ey - 1.2 * ew, ex + 1.45 * ew, ey + 1.1 * ew)
        if tr.glasses == "round":
            d.ellipse(bbox, outline=tr.glasses_colour + (255,), width=gw)
        else:
            d.rounded_rectangle(bbox, radius=int(0.3 * ew), outline=tr.glasses_colour + (255,), width=gw)
    d.line([(cx - tr.eye_sep * u + 1.45 * ew, ey), (cx + tr.eye_sep * u - 1.45 * ew, ey)],
           fill=tr.glasses_colour + (255,), width=gw)


def _pose_on_background(layer: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Pose: rotate, scale and shift the drawn person (an RGBA layer) over a fresh background.

    Draws the pose (angle, scale, shift) and then the background from ``rng``, in that order.
    """
    S = layer.size[0]
    u = float(S)
    angle = math.radians(rng.uniform(-8.0, 8.0))
    scale = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.05, 0.05, 2) * u
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    c0 = u / 2
    # Inverse map output -> input around the canvas centre.
    a, b = cos, sin
    coeffs = (a, b, c0 - a * (c0 + shift[0]) - b * (c0 + shift[1]),
              -sin, cos, c0 + sin * (c0 + shift[0]) - cos * (c0 + shift[1]))
    layer = layer.transform((S, S), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    canvas = _background(S, rng)
    canvas.paste(layer, (0, 0), layer)
    return canvas


def _downsample_and_light(canvas: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """Downsample to ``size`` and apply lighting: global gain, a side light gradient and a colour tint."""
    img = canvas.resize((size, size), Image.LANCZOS)
    x = np.asarray(img, dtype=np.float32)
    gain = rng.uniform(0.75, 1.15)
    side_light = rng.uniform(-0.25, 0.25)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)[None, :, None]
    tint = rng.normal(0, 0.04, 3).astype(np.float32)
    x = x * gain * (1.0 + side_light * ramp) * (1.0 + tint)
    return Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8), "RGB")


def draw_face(traits: FaceTraits, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one image of a person: a new pose, expression, lighting and background.

    The face is drawn on a ``2 * size`` canvas and downsampled (anti-aliasing).

    Args:
        traits: The person's stable traits.
        size: Output side in pixels.
        rng: Random generator for the per-image variation.

    Returns:
        An RGB ``size x size`` image.
    """
    S = 2 * size
    u = float(S)  # canvas unit: traits are fractions of the canvas
    layer = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    tr = traits
    frame = _FaceFrame(
        draw=ImageDraw.Draw(layer), traits=tr, u=u, cx=0.5 * u, cy=0.48 * u,
        fw=tr.face_w * u, fh=tr.face_h * u, shade=_mix(tr.skin, (0, 0, 0), 0.18),
    )
    # Per-image expression, then clothes (the order of the draws from rng is part of the data).
    smile = rng.uniform(-0.3, 1.0)
    eye_open = rng.uniform(0.65, 1.0)
    brow_raise = rng.uniform(-0.01, 0.015) * u
    shirt = tuple(int(v) for v in rng.integers(20, 230, 3))

    _draw_body(frame, shirt)
    _draw_back_hair(frame)
    _draw_head(frame)
    _draw_top_hair(frame)
    ey, ew = _draw_eyes(frame, eye_open, brow_raise)
    ny = _draw_nose(frame, ey)
    my = ny + 0.22 * frame.fh
    mw = tr.mouth_w * u
    _draw_beard(frame, ny, my, mw)
    _draw_mouth(frame, smile, my, mw)
    _draw_glasses(frame, ey, ew)

    canvas = _pose_on_background(layer, rng)
    return _downsample_and_light(canvas, size, rng)


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _params(**kw: Any) -> dict[str, Any]:
    params = {"version": DEMO_VERSION, **kw}
    params["female_fraction"] = float(params["female_fraction"])
    params["frontal_fraction"] = float(params["frontal_fraction"])
    return params


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / DEMO_MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_demo_root(path: str | Path) -> bool:
    """Whether ``path`` (a dataset root, or its ``Task_A``/``Task_B`` folder) is a synthetic demo.

    Args:
        path: A folder.

    Returns:
        True when the folder or its parent holds the demo marker file.
    """
    path = Path(path).expanduser()
    return (path / DEMO_MARKER).is_file() or (path.parent / DEMO_MARKER).is_file()


def _check_demo_args(
    train_identities: int, val_identities: int, clean_per_identity: int, image_size: int,
    female_fraction: float, frontal_fraction: float,
) -> None:
    """Raise ValueError when a :func:`make_demo_dataset` count, size or fraction is out of range."""
    if train_identities < 1 or val_identities < 1:
        raise ValueError("train_identities and val_identities must be >= 1")
    if clean_per_identity < 1:
        raise ValueError(f"clean_per_identity must be >= 1, got {clean_per_identity}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if not 0.0 <= female_fraction <= 1.0 or not 0.0 <= frontal_fraction <= 1.0:
        raise ValueError("female_fraction and frontal_fraction must be in [0, 1]")


def _clear_demo_root(root: Path, overwrite: bool) -> None:
    """Make ``root`` writable for a new demo: delete an old demo when ``overwrite``, else refuse.

    Raises:
        FileExistsError: ``root`` is non-empty and not a demo dataset, or a demo and ``overwrite``
            is False.
    """
    if root.exists() and any(root.iterdir()):
        if not is_demo_root(root):
            raise FileExistsError(
                f"{root} exists and is not a synthetic demo dataset (no {DEMO_MARKER}); "
                "refusing to write into it. Choose an empty or new folder."
            )
        if not overwrite:
            raise FileExistsError(
                f"{root} already holds a demo dataset; pass overwrite=True to regenerate it "
                "or use ensure_demo_dataset() to reuse it."
            )
        shutil.rmtree(root)


def _n_female(count: int, female_fraction: float) -> int:
    """People with the female cues in a split of ``count``: rounded, at least one of each gender
    when the fraction allows it and the split has two people or more."""
    n_female = round(count * female_fraction)
    if female_fraction > 0 and count >= 2:
        n_female = max(1, n_female)
    if female_fraction < 1 and count >= 2:
        n_female = min(count - 1, n_female)
    return n_female


def _identity_names(number: int, frontal_every: int, clean_per_identity: int) -> tuple[str, list[str]]:
    """The identity folder name and its clean image stems for person ``number`` (1-based).

    Every ``frontal_every``-th person (0: none) is a single-image ``Demo_NNN_frontal``; the others
    are ``Demo_Person_NNN`` with ``clean_per_identity`` images ``Demo_Person_NNN_0001`` ...
    """
    frontal = frontal_every > 0 and number % frontal_every == 0
    identity = f"Demo_{number:03d}_frontal" if frontal else f"Demo_Person_{number:03d}"
    stems = [identity] if frontal else [f"{identity}_{j + 1:04d}" for j in range(clean_per_identity)]
    return identity, stems


def _write_identity(
    root: Path, split: str, identity: str, stems: list[str], traits: FaceTraits, image_size: int,
    rng: np.random.Generator,
) -> None:
    """Write one person's clean images (Task_B identity folder and Task_A gender folder) and,
    per clean image, its seven distortions; ``rng`` draws each image, then its distortions."""
    person_dir = root / "Task_B" / split / identity
    (person_dir / "distortion").mkdir(parents=True, exist_ok=True)
    gender_dir = root / "Task_A" / split / ("female" if traits.female else "male")
    gender_dir.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        image = draw_face(traits, image_size, rng)
        data = _jpeg_bytes(image, CLEAN_JPEG_QUALITY)
        (person_dir / f"{stem}.jpg").write_bytes(data)
        (gender_dir / f"{stem}.jpg").write_bytes(data)
        clean = Image.open(io.BytesIO(data)).convert("RGB")
        for kind in DISTORTION_TYPES:
            distorted = apply_distortion(clean, kind, 1.0, rng)
            distorted.save(person_dir / "distortion" / f"{stem}_{kind}.jpg", quality=DISTORTED_JPEG_QUALITY)


def make_demo_dataset(
    root: str | Path,
    seed: int = 0,
    train_identities: int = 60,
    val_identities: int = 20,
    clean_per_identity: int = 2,
    image_size: int = 112,
    female_fraction: float = 1 / 6,
    overwrite: bool = False,
    frontal_fraction: float = 0.2,
) -> Path:
    """Write a SYNTHETIC FACECOM-layout dataset (Task_A and Task_B, train and val) to ``root``.

    Args:
        root: Output folder (created). Use a name that says it is synthetic.
        seed: Seed; the same seed and parameters give the same images.
        train_identities: People in ``train``.
        val_identities: People in ``val`` (disjoint from train).
        clean_per_identity: Clean images per ``Demo_Person_NNN`` identity.
        image_size: Side of the square images in pixels.
        female_fraction: Fraction of people with the female cues (rounded per split, at least
            one per split when positive and the split has two people or more).
        overwrite: Replace an existing demo dataset at ``root``. A non-empty folder that is not
            a demo dataset is never deleted.
        frontal_fraction: Fraction of identities named in FACECOM's ``NNN_frontal`` style, which
            (as in FACECOM) have a single clean image.

    Returns:
        ``root`` as an absolute path.

    Raises:
        FileExistsError: ``root`` is non-empty and ``overwrite`` is False, or it is not a demo
            dataset.
        ValueError: A count or size is out of range.
    """
    root = Path(root).expanduser().resolve()
    _check_demo_args(train_identities, val_identities, clean_per_identity, image_size,
                     female_fraction, frontal_fraction)
    _clear_demo_root(root, overwrite)
    params = _params(
        seed=seed, train_identities=train_identities, val_identities=val_identities,
        clean_per_identity=clean_per_identity, image_size=image_size,
        female_fraction=female_fraction, frontal_fraction=frontal_fraction,
    )
    root.mkdir(parents=True, exist_ok=True)
    master = np.random.default_rng(seed)
    frontal_every = round(1 / frontal_fraction) if frontal_fraction > 0 else 0
    number = 0
    for split, count in (("train", train_identities), ("val", val_identities)):
        females = set(master.permutation(count)[:_n_female(count, female_fraction)].tolist())
        for k in range(count):
            number += 1
            person_rng = np.random.default_rng([seed, number])  # one generator per person
            traits = random_traits(person_rng, k in females)
            identity, stems = _identity_names(number, frontal_every, clean_per_identity)
            _write_identity(root, split, identity, stems, traits, image_size, person_rng)
    for split in ("train", "val"):  # empty gender folders still exist, as the layout expects
        for label in ("female", "male"):
            (root / "Task_A" / split / label).mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(README_TEXT.format(params=json.dumps(params)))
    (root / DEMO_MARKER).write_text(json.dumps(params, indent=2, sort_keys=True))
    return root


def ensure_demo_dataset(root: str | Path = DEFAULT_DEMO_ROOT, **kwargs: Any) -> Path:
    """Generate the demo dataset once; reuse it while its parameters are unchanged.

    Args:
        root: Dataset folder (default ``<repo>/data/demo_synthetic``).
        **kwargs: Parameters of :func:`make_demo_dataset` (except ``root`` and ``overwrite``).

    Returns:
        ``root`` as an absolute path.
    """
    root = Path(root).expanduser().resolve()
    defaults = {
        "seed": 0, "train_identities": 60, "val_identities": 20, "clean_per_identity": 2,
        "image_size": 112, "female_fraction": 1 / 6, "frontal_fraction": 0.2,
    }
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"unknown demo parameters: {sorted(unknown)}")
    wanted = _params(**{**defaults, **kwargs})
    if _read_marker(root) == wanted:
        return root
    return make_demo_dataset(root, overwrite=True, **{**defaults, **kwargs})


def resolve_data_root(data_root: str | Path | None, generate: bool = True) -> Path:
    """The dataset root to use: the one given, real FACECOM in the repository, or the demo.

    The rules are :mod:`facecom_utils.common.paths`' (what holds FACECOM, the environment variable);
    this function adds the one step they cannot take: generating the demo.

    Args:
        data_root: A folder holding ``Task_A``/``Task_B``. None or ``""`` means: the folder in
            the environment variable ``FACECOM_DATA_ROOT`` when set (the value ``demo`` forces the
            synthetic demo: ``make test`` uses it so that nbval's checked counts never depend on
            what sits in ``Task_A/``), else the repository root when its ``Task_A/`` and
            ``Task_B/`` hold FACECOM images, else the synthetic demo at :data:`DEFAULT_DEMO_ROOT`
            (generated on first use, with a warning). A relative path is read as
            :func:`~facecom_utils.common.paths.repo_path` reads it.
        generate: False returns the demo's folder without generating it (and without the warning):
            where the data would come from, for a plan.

    Returns:
        An absolute path.

    Raises:
        FileNotFoundError: ``data_root`` was given and does not exist.
    """
    if data_root in (None, ""):
        data_root = paths.data_root_from_env()
    if data_root == paths.DEMO_DATA_ROOT:
        return ensure_demo_dataset(DEFAULT_DEMO_ROOT) if generate else Path(DEFAULT_DEMO_ROOT).resolve()
    if data_root not in (None, ""):
        path = paths.repo_path(data_root)
        if not path.exists():
            raise FileNotFoundError(f"{path}: data root not found; expected a folder holding Task_A/ and Task_B/")
        return path
    if paths.facecom_in_repo():
        return paths.REPO_ROOT.resolve()
    if not generate:
        return Path(DEFAULT_DEMO_ROOT).resolve()
    warnings.warn(
        f"No FACECOM images in {paths.REPO_ROOT / 'Task_A'} and {paths.REPO_ROOT / 'Task_B'}; using the "
        f"SYNTHETIC demo dataset at {DEFAULT_DEMO_ROOT}. Results on it say nothing about real faces.",
        stacklevel=2,
    )
    return ensure_demo_dataset(DEFAULT_DEMO_ROOT)
