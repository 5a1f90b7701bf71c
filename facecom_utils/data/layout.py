"""FACECOM on disk -> tables of samples.

The data layer reads FACECOM exactly as it is published and turns the folders into pandas
DataFrames (one row per image) that the rest of the pipeline consumes::

    Task_A/{train,val}/{female,male}/<image>.jpg
    Task_B/{train,val}/<identity>/<image>.jpg
    Task_B/{train,val}/<identity>/distortion/<stem>_<type>.jpg

Identity folders come in two naming styles: ``First_Last`` holding ``First_Last_0001.jpg`` and
``NNN_frontal`` holding ``NNN_frontal.jpg``; a distorted copy ``<stem>_<type>.jpg`` is traced
back to its clean image ``<stem>.<ext>`` in the same identity folder.

Decisions (documented here once, relied upon by the tests):

* Folder names (split, class, ``distortion``) match in any letter case; the ``split`` and
  ``label`` columns are always lower case. Image extensions ``.jpg .jpeg .png`` in any case.
* Hidden and system entries (any name starting with ``.`` -- so ``.DS_Store``, ``._*``,
  ``.ipynb_checkpoints`` -- plus ``Thumbs.db``, ``desktop.ini`` and ``__MACOSX``) are ignored
  silently. Any other unexpected entry (a stray ``notes.txt``, an extra class folder) is ignored
  with one :class:`FacecomDataWarning` listing them.
* Layout problems (missing split/class folder, empty class, a root without FACECOM) raise
  :class:`FacecomLayoutError` naming the path and the expected layout.
* Each image is checked cheaply during a scan: zero bytes, a header PIL cannot parse, or a
  missing end marker (JPEG ``FFD9`` / PNG ``IEND``, i.e. a truncated file). With
  ``on_error="raise"`` one :class:`BadImageError` names every bad file; with ``"skip"`` the bad
  files are dropped and one warning lists them (``"keep"`` keeps them unchecked, for callers that
  screen them). Files that only fail when fully decoded raise :class:`BadImageError` from
  :func:`load_image`.
* Batch jobs (``facecom predict-gender``, ``identify``, ``evaluate-*``) screen their images first
  with :func:`screen_images` / :func:`drop_unreadable`: the cheap check plus a full decode, so one
  bad file is skipped with a warning naming it (or stops the job with ``on_error="raise"``)
  instead of failing the batch half-way.
* A distorted image with an unknown suffix is kept (``distortion`` = the suffix, lower-cased,
  or ``"unknown"`` when the name has no ``_``) and reported in one warning. A distorted image
  whose clean image is missing is kept with ``source=None`` and reported in one warning.
* An identity folder without any clean image keeps its distorted images (they are valid probes,
  ``source=None``) and is reported in one warning; it cannot serve as a gallery identity.
* :func:`load_image` composites transparent images (RGBA, LA, palette with transparency) onto a
  **white** background rather than dropping alpha, because the colour under fully transparent
  pixels is arbitrary (often black) and face crops sit on light backgrounds.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from facecom_utils.common.paths import IMAGE_EXTENSIONS

__all__ = [
    "DISTORTION_TYPES",
    "central_crop",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "TASK_A_CLASSES",
    "TASK_A_LAYOUT",
    "TASK_B_LAYOUT",
    "FacecomLayoutError",
    "BadImageError",
    "FacecomDataWarning",
    "find_task_dir",
    "person_from_filename",
    "scan_task_a",
    "scan_task_b",
    "check_image",
    "image_problem",
    "screen_images",
    "drop_unreadable",
    "load_image",
    "summarize",
]

DISTORTION_TYPES: tuple[str, ...] = ("blurred", "foggy", "lowlight", "noisy", "rainy", "resized", "sunny")
SPLITS: tuple[str, ...] = ("train", "val")
TASK_A_CLASSES: tuple[str, ...] = ("female", "male")
DISTORTION_DIR = "distortion"

TASK_A_LAYOUT = "Task_A/{train,val}/{female,male}/<image>.jpg"
TASK_B_LAYOUT = (
    "Task_B/{train,val}/<identity>/<image>.jpg plus Task_B/{train,val}/<identity>/distortion/<stem>_<type>.jpg"
)
_LAYOUTS = {"Task_A": TASK_A_LAYOUT, "Task_B": TASK_B_LAYOUT}

_SYSTEM_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
_NUMBERED_STEM = re.compile(r"^(?P<person>.+)_\d+$")
_SPLIT_MARKER = "SPLIT.json"

OnError = Literal["raise", "skip"]
ScanOnError = Literal["raise", "skip", "keep"]


class FacecomLayoutError(ValueError):
    """A folder does not follow the FACECOM layout; the message names the path and the layout."""


class BadImageError(ValueError):
    """One or more image files cannot be read.

    Attributes:
        paths: The offending file paths, in the order reported.
    """

    def __init__(self, message: str, paths: Sequence[str | Path] = ()) -> None:
        super().__init__(message)
        self.paths: list[str] = [str(p) for p in paths]


class FacecomDataWarning(UserWarning):
    """Something in a FACECOM folder is odd but usable (unknown suffix, missing clean image, ...)."""


# ----------------------------------------------------------------------------------------------
# small helpers


def _is_hidden(name: str) -> bool:
    """True for hidden/system entries that are ignored silently (``.DS_Store``, ``._x``, ...)."""
    return name.startswith(".") or name.lower() in _SYSTEM_NAMES


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _warn(message: str) -> None:
    warnings.warn(message, FacecomDataWarning, stacklevel=3)


def _list_block(items: Iterable[object]) -> str:
    return "".join(f"\n  {item}" for item in items)


def _entries(folder: Path) -> tuple[dict[str, Path], list[Path], list[Path]]:
    """Split a folder's visible entries into sub-folders (keyed by lower-case name), image files and others.

    Raises:
        FacecomLayoutError: Two sub-folders differ only in letter case (ambiguous).
    """
    dirs: dict[str, Path] = {}
    images: list[Path] = []
    others: list[Path] = []
    with os.scandir(folder) as it:
        for entry in it:
            if _is_hidden(entry.name):
                continue
            path = Path(entry.path)
            if entry.is_dir():
                key = entry.name.lower()
                if key in dirs:
                    raise FacecomLayoutError(
                        f"{folder}: folders {dirs[key].name!r} and {entry.name!r} differ only in letter case; "
                        "keep exactly one."
                    )
                dirs[key] = path
            elif entry.is_file() and _is_image_name(entry.name):
                images.append(path)
            else:
                others.append(path)
    images.sort()
    return dirs, images, others


def _abs(path: str | Path) -> Path:
    """Absolute, normalised path *without* resolving symlinks (split folders are made of links)."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _check_on_error(on_error: str, choices: tuple[str, ...] = ("raise", "skip")) -> None:
    if on_error not in choices:
        raise ValueError(f"on_error must be one of {', '.join(map(repr, choices))}, got {on_error!r}")


def find_task_dir(data_root: str | Path, task: str) -> Path:
    """Locate ``Task_A`` or ``Task_B`` given the folder holding it, or the task folder itself.

    Args:
        data_root: The dataset root (holding ``Task_A/`` and/or ``Task_B/``) or the task folder.
        task: ``"Task_A"`` or ``"Task_B"`` (letter case of the folder on disk does not matter).

    Returns:
        The absolute path of the task folder.

    Raises:
        FacecomLayoutError: ``data_root`` does not exist or holds no such task folder.
    """
    if task not in _LAYOUTS:
        raise ValueError(f"task must be 'Task_A' or 'Task_B', got {task!r}")
    root = _abs(data_root)
    layout = _LAYOUTS[task]
    if not root.is_dir():
        raise FacecomLayoutError(f"{root}: not a folder. Expected a folder holding {layout}")
    if root.name.lower() == task.lower():
        return root
    dirs, _, _ = _entries(root)
    if task.lower() in dirs:
        return dirs[task.lower()]
    raise FacecomLayoutError(
        f"{root}: no {task}/ folder here and this is not a {task} folder itself. Expected {layout} "
        f"(pass the folder that holds {task}/, or {task}/ itself)."
    )


def _split_dirs(task_dir: Path, task: str, splits: str | Sequence[str] | None) -> list[tuple[str, Path]]:
    """Resolve the requested split folders of a task folder (see :func:`scan_task_a`)."""
    layout = _LAYOUTS[task]
    dirs, _, _ = _entries(task_dir)
    if splits is None:
        found = [(s, dirs[s]) for s in SPLITS if s in dirs]
        if not found:
            raise FacecomLayoutError(
                f"{task_dir}: no split folder (train/ or val/) found. Expected {layout}. "
                "See Task_A/README.md and Task_B/README.md for where FACECOM goes."
            )
        return found
    wanted = [splits] if isinstance(splits, str) else list(splits)
    if not wanted:
        raise ValueError("splits must be None or a non-empty sequence of split names")
    out = []
    for split in wanted:
        key = split.lower()
        if key not in dirs:
            raise FacecomLayoutError(f"{task_dir / split}: split folder missing. Expected {layout}")
        out.append((key, dirs[key]))
    return out


# ----------------------------------------------------------------------------------------------
# image checks and loading


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (DHT, JPG, DAC excluded)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _jpeg_frame_size(fh: BinaryIO, size: int) -> tuple[int, int] | str:
    """Walk a JPEG's marker segments up to its frame header; return (width, height) or a reason."""
    pos = 2  # after SOI
    while pos + 4 <= size:
        fh.seek(pos)
        head = fh.read(9)
        if head[0] != 0xFF:
            return f"corrupt JPEG header (no marker at byte {pos})"
        marker = head[1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # stand-alone markers
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            return "corrupt JPEG header (no frame header before the image data)"
        length = int.from_bytes(head[2:4], "big")
        if length < 2:
            return f"corrupt JPEG header (segment length {length} at byte {pos})"
        if marker in _JPEG_SOF:
            if len(head) < 9:
                break
            return int.from_bytes(head[7:9], "big"), int.from_bytes(head[5:7], "big")
        pos += 2 + length
    return "truncated JPEG (file ends inside the header)"


def check_image(path: str | Path) -> str | None:
    """Cheaply check one image file: size, header, and end-of-file marker.

    JPEG and PNG files are checked from their bytes: the JPEG marker segments are walked up to the
    frame header (SOF, which holds the image size) and the file must end with the end-of-image
    marker ``FFD9`` (trailing zero padding allowed); a PNG must start with its signature and an
    ``IHDR`` chunk and end with its ``IEND`` chunk. Any other file is opened with ``PIL.Image.open``
    (header only). This catches zero-byte, non-image and truncated files at ~20 microseconds per
    file (PIL's own header parser costs ~10x more, which matters for FACECOM's 15k images);
    corruption inside the compressed data is only found when decoding, by :func:`load_image`.

    Args:
        path: The image file.

    Returns:
        ``None`` when the file looks fine, else a short reason (e.g. ``"zero-byte file"``).
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if size == 0:
                return "zero-byte file"
            fh.seek(0)
            magic = fh.read(8)
            if magic[:3] == b"\xff\xd8\xff":
                dims = _jpeg_frame_size(fh, size)
                if isinstance(dims, str):
                    return dims
                fh.seek(max(0, size - 64))
                if not fh.read().rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
                    return "truncated JPEG (no end-of-image marker FFD9)"
            elif magic == _PNG_SIGNATURE:
                ihdr = fh.read(25)
                if len(ihdr) < 25 or ihdr[4:8] != b"IHDR":
                    return "corrupt PNG header (no IHDR chunk)"
                dims = int.from_bytes(ihdr[8:12], "big"), int.from_bytes(ihdr[12:16], "big")
                fh.seek(max(0, size - 64))
                if b"IEND" not in fh.read():
                    return "truncated PNG (no IEND chunk)"
            else:
                fh.seek(0)
                try:
                    with Image.open(fh) as img:
                        dims = img.size
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                    return f"not a readable image ({type(e).__name__}: {e})"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if dims[0] <= 0 or dims[1] <= 0:
        return f"empty image size {dims[0]}x{dims[1]}"
    return None


def _filter_bad(paths: Sequence[Path], on_error: str, what: str) -> set[Path]:
    """Check every path; raise or warn once about the bad ones. Returns the set of bad paths."""
    bad = [(p, reason) for p in paths if (reason := check_image(p)) is not None]
    if not bad:
        return set()
    listing = _list_block(f"{p}: {reason}" for p, reason in bad)
    if on_error == "raise":
        raise BadImageError(
            f"{len(bad)} unreadable image file(s) in {what} (pass on_error='skip' to skip them):{listing}",
            [p for p, _ in bad],
        )
    _warn(f"skipped {len(bad)} unreadable image file(s) in {what}:{listing}")
    return {p for p, _ in bad}


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (see :func:`load_image` for the rules)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img.copy()
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        # 16-bit (or 32-bit int holding 16-bit data): full range 0..65535 -> 0..255.
        arr = np.asarray(img).astype(np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite_max = float(np.nanmax(arr)) if arr.size else 0.0
        scale = 255.0 if finite_max <= 1.0 else 1.0  # floats in [0, 1] or already in [0, 255]
        arr = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, ...


def central_crop(image: Image.Image, fraction: float) -> Image.Image:
    """The central ``fraction`` of each side of ``image`` (the image itself at 1.0 or more).

    Task B's ``face_crop``: one definition for the evaluation transform and the decoded-image
    cache, which must agree to the pixel.
    """
    if fraction >= 1.0:
        return image
    w, h = image.size
    cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def load_image(path: str | Path, size: int | None = None) -> Image.Image:
    """Load an image as 8-bit RGB, whatever its mode.

    Conversion rules: grayscale (``L``, ``1``) is replicated to three channels; ``CMYK`` and
    ``YCbCr`` are converted by PIL; 16-bit grayscale (``I;16*``, and ``I``, which PIL uses for
    16-bit files) is scaled from 0..65535 to 0..255 (65535 -> 255); ``F`` is taken as 0..1 when
    its maximum is <= 1, else as 0..255; transparent images (``RGBA``, ``LA``, ``PA``, palette or
    grayscale with a ``transparency`` entry) are composited onto white. EXIF orientation is applied.

    Args:
        path: The image file.
        size: When given, resize to ``size x size`` with bilinear interpolation.

    Returns:
        A fully loaded ``PIL.Image`` in mode ``"RGB"`` (the file is closed).

    Raises:
        BadImageError: The file is missing, empty, not an image, truncated or fails to decode;
            the message names the path.
        ValueError: ``size`` is not a positive integer.
    """
    if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size <= 0):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(f"{path}: cannot load image (zero-byte file)", [path])
        with Image.open(path) as img:
            img.load()
            try:
                img = ImageOps.exif_transpose(img) or img
            except Exception:  # a broken EXIF block must not make a decodable image unusable
                pass
            rgb = _to_rgb(img)
    except BadImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(f"{path}: cannot load image ({type(e).__name__}: {e})", [path]) from e
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((int(size), int(size)), Image.Resampling.BILINEAR)
    return rgb


def _decode_problem(path: str | Path) -> str | None:
    """Decode ``path`` as :func:`load_image` would; ``None`` when it works, else the reason.

    A JPEG is decoded at 1/8 scale (``Image.draft``): about half the cost of a full decode, and it
    still reads every byte of the compressed data, so broken data streams are found.
    """
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
            _to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"fails to decode ({type(e).__name__}: {e})"
    return None


def image_problem(path: str | Path) -> str | None:
    """Why :func:`load_image` cannot read ``path`` (``None`` when it can): :func:`check_image`, then a decode.

    Grayscale, 16-bit, CMYK, palette and transparent images are readable (they are converted to RGB).

    Args:
        path: The image file.

    Returns:
        ``None`` for a readable image, else a short reason (``"zero-byte file"``,
        ``"truncated JPEG (no end-of-image marker FFD9)"``, ``"not a readable image (...)"``,
        ``"fails to decode (...)"``).
    """
    return check_image(path) or _decode_problem(path)


def screen_images(paths: Iterable[str | Path], on_error: OnError = "skip", what: str = "image") -> dict[str, str]:
    """Find the unreadable images of a batch job before it starts (:func:`image_problem` on each).

    Args:
        paths: The images, in the job's order.
        on_error: ``"skip"``: warn once per unreadable image and go on; ``"raise"``: stop at the
            first one.
        what: What the images are, for the messages (e.g. ``"gallery image"``).

    Returns:
        ``{str(path): reason}`` of the unreadable images, in input order (empty when all are fine).

    Raises:
        BadImageError: ``on_error="raise"`` and an image is unreadable; the message is one line
            naming it.

    Warns:
        FacecomDataWarning: ``on_error="skip"``: one per unreadable image, naming it and the reason.
    """
    _check_on_error(on_error)
    bad: dict[str, str] = {}
    for path in paths:
        reason = image_problem(path)
        if reason is None:
            continue
        if on_error == "raise":
            raise BadImageError(f"{path}: unreadable {what}: {reason}", [path])
        _warn(f"skipped unreadable {what} {path}: {reason}")
        bad[str(path)] = reason
    return bad


def drop_unreadable(table: pd.DataFrame, on_error: OnError = "skip") -> tuple[pd.DataFrame, dict[str, str]]:
    """A scan table without its unreadable images (:func:`screen_images` on its ``path`` column).

    A Task B distorted image whose clean image was dropped keeps its row with ``source=None``.

    Args:
        table: A :func:`scan_task_a` / :func:`scan_task_b` table (e.g. scanned with ``on_error="keep"``).
        on_error: ``"skip"`` (warn per image) or ``"raise"`` (stop at the first), see :func:`screen_images`.

    Returns:
        ``(kept rows with a fresh index, {path: reason} of the dropped ones)``; ``table`` itself
        when nothing was dropped.
    """
    bad = screen_images(table["path"].tolist(), on_error)
    if not bad:
        return table, bad
    kept = table[~table["path"].isin(bad.keys())].reset_index(drop=True)
    if "source" in kept.columns:
        kept["source"] = pd.Series([None if s in bad else s for s in kept["source"]], dtype=object)
    return kept, bad


# ----------------------------------------------------------------------------------------------
# scanning


def person_from_filename(name: str | Path) -> str:
    """The person an image file belongs to, from its name.

    ``"First_Last_0001.jpg"`` -> ``"First_Last"``; ``"041_frontal.jpg"`` -> ``"041_frontal"``.
    A known distortion suffix is stripped first, so ``"First_Last_0001_blurred.jpg"`` ->
    ``"First_Last"``. Directories in ``name`` are ignored.

    Args:
        name: A file name or path.

    Returns:
        The person / identity name.
    """
    stem = Path(str(name)).stem
    for kind in DISTORTION_TYPES:
        if stem.lower().endswith("_" + kind):
            stem = stem[: -len(kind) - 1]
            break
    match = _NUMBERED_STEM.match(stem)
    return match.group("person") if match else stem


def scan_task_a(
    data_root: str | Path,
    splits: str | Sequence[str] | None = None,
    on_error: ScanOnError = "raise",
) -> pd.DataFrame:
    """Scan FACECOM Task A (gender classification) into a table, one row per image.

    Args:
        data_root: The folder holding ``Task_A/`` or ``Task_A/`` itself.
        splits: ``None`` for every split folder present among ``train``/``val`` (at least one is
            required), or the split names that must exist.
        on_error: ``"raise"``: one :class:`BadImageError` naming every unreadable image;
            ``"skip"``: drop them with one warning listing them; ``"keep"``: no check (the caller
            screens them, e.g. with :func:`drop_unreadable`).

    Returns:
        DataFrame with columns ``path`` (absolute str), ``split``, ``label`` (``"female"`` /
        ``"male"``) and ``person`` (:func:`person_from_filename`), sorted by split, label, path.

    Raises:
        FacecomLayoutError: No ``Task_A``, a missing split or class folder, or an empty class.
        BadImageError: Unreadable images and ``on_error="raise"``.
    """
    _check_on_error(on_error, ("raise", "skip", "keep"))
    task_dir = find_task_dir(data_root, "Task_A")
    rows: list[tuple[str, str, str, str]] = []
    unexpected: list[Path] = []
    for split, split_dir in _split_dirs(task_dir, "Task_A", splits):
        class_dirs, stray_images, others = _entries(split_dir)
        unexpected += stray_images + others
        unexpected += [p for key, p in class_dirs.items() if key not in TASK_A_CLASSES]
        for label in TASK_A_CLASSES:
            if label not in class_dirs:
                raise FacecomLayoutError(f"{split_dir / label}: class folder missing. Expected {TASK_A_LAYOUT}")
            sub_dirs, images, others = _entries(class_dirs[label])
            unexpected += list(sub_dirs.values()) + others
            if not images:
                raise FacecomLayoutError(
                    f"{class_dirs[label]}: class folder holds no image ({', '.join(IMAGE_EXTENSIONS)}). "
                    f"Expected {TASK_A_LAYOUT}"
                )
            rows += [(str(p), split, label, person_from_filename(p.name)) for p in images]
    if unexpected:
        _warn(f"ignored {len(unexpected)} unexpected entr(y/ies) in {task_dir} (layout {TASK_A_LAYOUT}):"
              + _list_block(sorted(unexpected)))
    bad = _filter_bad([Path(r[0]) for r in rows], on_error, str(task_dir)) if on_error != "keep" else set()
    if bad:
        rows = [r for r in rows if Path(r[0]) not in bad]
    df = pd.DataFrame(rows, columns=["path", "split", "label", "person"])
    return df.sort_values(["split", "label", "path"], kind="stable").reset_index(drop=True)


def _parse_distorted(stem: str) -> tuple[str, str, bool]:
    """``"X_0001_blurred"`` -> ``("X_0001", "blurred", True)``; unknown suffix -> known=False."""
    lower = stem.lower()
    for kind in DISTORTION_TYPES:
        if lower.endswith("_" + kind):
            return stem[: -len(kind) - 1], kind, True
    if "_" in stem:
        base, suffix = stem.rsplit("_", 1)
        return base, suffix.lower(), False
    return stem, "unknown", False


def scan_task_b(
    data_root: str | Path,
    splits: str | Sequence[str] | None = None,
    on_error: ScanOnError = "raise",
) -> pd.DataFrame:
    """Scan FACECOM Task B (face recognition) into a table, one row per image.

    Clean images sit directly in ``<split>/<identity>/``; distorted copies in
    ``<split>/<identity>/distortion/<stem>_<type>.<ext>``, traced back to the clean image with the
    same stem (any image extension, exact stem first, then ignoring letter case).

    Args:
        data_root: The folder holding ``Task_B/`` or ``Task_B/`` itself.
        splits: ``None`` for every split folder present among ``train``/``val`` (at least one is
            required), or the split names that must exist.
        on_error: ``"raise"``: one :class:`BadImageError` naming every unreadable image;
            ``"skip"``: drop them with one warning listing them; ``"keep"``: no check (the caller
            screens them, e.g. with :func:`drop_unreadable`).

    Returns:
        DataFrame with columns ``path`` (absolute str), ``split``, ``identity`` (folder name),
        ``distortion`` (``None`` for a clean image, else the type) and ``source`` (for a distorted
        image the absolute path of its clean image, ``None`` if missing or for clean images);
        ``distortion`` and ``source`` have object dtype with ``None`` (never NaN). Sorted by
        split, identity, path.

    Raises:
        FacecomLayoutError: No ``Task_B``, a missing split folder, or a split with no identity folder.
        BadImageError: Unreadable images and ``on_error="raise"``.

    Warns:
        FacecomDataWarning: Unknown distortion suffixes, distorted images without a clean image,
            identity folders without a clean image, unexpected entries, skipped bad images
            (one warning per kind, listing every file).
    """
    _check_on_error(on_error, ("raise", "skip", "keep"))
    task_dir = find_task_dir(data_root, "Task_B")
    scan = _TaskBScan()
    for split, split_dir in _split_dirs(task_dir, "Task_B", splits):
        identity_dirs, stray_images, others = _entries(split_dir)
        scan.unexpected += stray_images + others
        if not identity_dirs:
            raise FacecomLayoutError(f"{split_dir}: no identity folder. Expected {TASK_B_LAYOUT}")
        for identity_dir in sorted(identity_dirs.values()):
            _scan_identity_dir(identity_dir, split, scan)
    _warn_task_b_findings(task_dir, scan)
    rows = scan.rows
    bad = _filter_bad([Path(r[0]) for r in rows], on_error, str(task_dir)) if on_error != "keep" else set()
    if bad:
        bad_str = {str(p) for p in bad}
        rows = [r for r in rows if r[0] not in bad_str]
        # a distorted image whose clean image was skipped as unreadable loses its source
        rows = [r if r[4] not in bad_str else (*r[:4], None) for r in rows]
    return _task_b_frame(rows)


_TaskBRow = tuple[str, str, str, str | None, str | None]  # path, split, identity, distortion, source


@dataclass
class _TaskBScan:
    """What a Task B scan collects: one row per image, and the entries to warn about."""

    rows: list[_TaskBRow] = field(default_factory=list)
    unexpected: list[Path] = field(default_factory=list)  # entries outside the layout (ignored)
    unknown_suffix: list[Path] = field(default_factory=list)  # distorted images of no known type
    no_clean: list[Path] = field(default_factory=list)  # identity folders without a clean image


def _scan_identity_dir(identity_dir: Path, split: str, scan: _TaskBScan) -> None:
    """Adds one identity folder's images to ``scan``; a distorted image's source is the clean image
    with the same stem (exact first, then ignoring letter case), ``None`` when there is none."""
    identity = identity_dir.name
    sub_dirs, clean, others = _entries(identity_dir)
    scan.unexpected += others + [p for key, p in sub_dirs.items() if key != DISTORTION_DIR]
    distorted: list[Path] = []
    if DISTORTION_DIR in sub_dirs:
        deeper, distorted, others = _entries(sub_dirs[DISTORTION_DIR])
        scan.unexpected += list(deeper.values()) + others
    if not clean:
        scan.no_clean.append(identity_dir)
    scan.rows += [(str(p), split, identity, None, None) for p in clean]
    by_stem = {p.stem: p for p in clean}
    by_stem_lower = {p.stem.lower(): p for p in clean}
    for p in distorted:
        base, kind, known = _parse_distorted(p.stem)
        if not known:
            scan.unknown_suffix.append(p)
        src = by_stem.get(base) or by_stem_lower.get(base.lower())
        scan.rows.append((str(p), split, identity, kind, str(src) if src is not None else None))


def _warn_task_b_findings(task_dir: Path, scan: _TaskBScan) -> None:
    """One :class:`FacecomDataWarning` per kind of finding: unexpected entries, unknown distortion
    suffixes, identity folders without a clean image, distorted images whose clean image is missing."""
    if scan.unexpected:
        _warn(f"ignored {len(scan.unexpected)} unexpected entr(y/ies) in {task_dir} (layout {TASK_B_LAYOUT}):"
              + _list_block(sorted(scan.unexpected)))
    if scan.unknown_suffix:
        _warn(f"{len(scan.unknown_suffix)} distorted image(s) with an unknown distortion suffix (known: "
              f"{', '.join(DISTORTION_TYPES)}); kept with distortion=<suffix>:" + _list_block(scan.unknown_suffix))
    if scan.no_clean:
        _warn(f"{len(scan.no_clean)} identity folder(s) hold no clean image; their distorted images are kept with "
              "source=None, but they cannot serve as gallery identities:" + _list_block(scan.no_clean))
    no_clean_set = {str(p) for p in scan.no_clean}
    missing_source = [r[0] for r in scan.rows
                      if r[3] is not None and r[4] is None and str(Path(r[0]).parent.parent) not in no_clean_set]
    if missing_source:
        _warn(f"{len(missing_source)} distorted image(s) whose clean image <stem>.jpg is missing from the identity "
              "folder; kept with source=None:" + _list_block(missing_source))


def _task_b_frame(rows: list[_TaskBRow]) -> pd.DataFrame:
    """The Task B table of :func:`scan_task_b`: sorted by split, identity, path; ``distortion`` and
    ``source`` of object dtype holding ``None`` (never NaN)."""
    columns = ["path", "split", "identity", "distortion", "source"]
    df = pd.DataFrame({c: pd.Series([r[i] for r in rows], dtype=object) for i, c in enumerate(columns)})
    df = df.sort_values(["split", "identity", "path"], kind="stable").reset_index(drop=True)
    for c in ("distortion", "source"):  # guarantee None (not NaN) after any pandas operation
        df[c] = pd.Series([v if isinstance(v, str) else None for v in df[c]], dtype=object)
    return df


# ----------------------------------------------------------------------------------------------
# summaries


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Count a Task A or Task B table.

    Args:
        df: A table from :func:`scan_task_a` (has ``label``) or :func:`scan_task_b` (has
            ``identity`` and ``distortion``).

    Returns:
        Task A: one row per split x class (both classes always present) with columns ``split``,
        ``label``, ``images``, ``persons``, ``fraction`` (share of the split's images).
        Task B: one row per split with columns ``split``, ``identities``, ``clean``, ``distorted``,
        ``identities_2plus_clean`` (identities with >= 2 clean images), ``identities_no_clean``,
        ``missing_source``, then one column per distortion type (all seven, plus any unknown
        suffix found).

    Raises:
        ValueError: ``df`` is neither a Task A nor a Task B table.
    """
    if {"split", "label"} <= set(df.columns):
        records = []
        for split in sorted(df["split"].unique(), key=_split_order):
            part = df[df["split"] == split]
            for label in TASK_A_CLASSES:
                sel = part[part["label"] == label]
                records.append({
                    "split": split,
                    "label": label,
                    "images": len(sel),
                    "persons": sel["person"].nunique() if "person" in sel else np.nan,
                    "fraction": len(sel) / len(part) if len(part) else 0.0,
                })
        return pd.DataFrame(records, columns=["split", "label", "images", "persons", "fraction"])
    if {"split", "identity", "distortion"} <= set(df.columns):
        kinds = list(DISTORTION_TYPES) + sorted(
            {k for k in df["distortion"].dropna().unique() if k not in DISTORTION_TYPES}
        )
        records = []
        for split in sorted(df["split"].unique(), key=_split_order):
            part = df[df["split"] == split]
            is_clean = part["distortion"].isna()
            clean_per_id = part[is_clean].groupby("identity").size()
            rec = {
                "split": split,
                "identities": part["identity"].nunique(),
                "clean": int(is_clean.sum()),
                "distorted": int((~is_clean).sum()),
                "identities_2plus_clean": int((clean_per_id >= 2).sum()),
                "identities_no_clean": int(part["identity"].nunique() - len(clean_per_id)),
                "missing_source": int((~is_clean & part["source"].isna()).sum()) if "source" in part else 0,
            }
            counts = part["distortion"].value_counts()
            rec.update({k: int(counts.get(k, 0)) for k in kinds})
            records.append(rec)
        columns = ["split", "identities", "clean", "distorted", "identities_2plus_clean",
                   "identities_no_clean", "missing_source", *kinds]
        return pd.DataFrame(records, columns=columns)
    raise ValueError(
        f"summarize expects a scan_task_a table (columns split, label) or a scan_task_b table "
        f"(columns split, identity, distortion); got columns {list(df.columns)}"
    )


def _split_order(split: str) -> tuple[int, str]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


# ----------------------------------------------------------------------------------------------
# identity-disjoint splits


