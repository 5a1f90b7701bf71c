"""What the ``facecom`` commands read: image lists, galleries, data roots, unreadable-image screening.

Every problem with the user's input is a :class:`CliError`, printed as one line (exit code 2).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["EXIT_OK", "EXIT_SKIPPED", "EXIT_USAGE", "CliError", "collect_images", "data_root", "gallery_images",
           "readable_split", "screen", "show_data_warnings", "user_errors", "warn"]

EXIT_OK = 0
EXIT_SKIPPED = 1  # the batch finished, but some unreadable images were skipped (or check-data found errors)
EXIT_USAGE = 2  # bad input: one line on stderr, nothing written


class CliError(Exception):
    """A problem with the user's input, reported as one line (exit code 2)."""


def _visible(path: Path, under: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(under).parts)


def collect_images(items: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) under folders; hidden files skipped.

    Raises:
        CliError: A missing path, a file that is not an image, a folder without images, or nothing given.
    """
    from facecom_utils.data.layout import IMAGE_EXTENSIONS

    found: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_file():
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise CliError(f"{p}: not an image (expected {', '.join(IMAGE_EXTENSIONS)})")
            found.append(p.resolve())
        elif p.is_dir():
            images = sorted(f.resolve() for f in p.rglob("*")
                            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and _visible(f, p))
            if not images:
                raise CliError(f"{p}: folder holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            found += images
        else:
            raise CliError(f"{p}: no such file or folder")
    if not found:
        raise CliError("no image given")
    return found


def gallery_images(folder: str | Path) -> tuple[list[Path], list[str]]:
    """The clean images of ``folder/<identity>/`` and their identities (``distortion/`` subfolders skipped).

    ``folder`` may be a FACECOM split (``Task_B/val``) or any folder with one subfolder per identity.

    Raises:
        CliError: No such folder, or no identity folder with an image (an empty gallery).
    """
    from facecom_utils.data.layout import IMAGE_EXTENSIONS

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CliError(f"{root}: gallery folder not found (expected <gallery>/<identity>/<image>.jpg)")
    paths: list[Path] = []
    identities: list[str] = []
    for identity_dir in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for f in sorted(identity_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."):
                paths.append(f.resolve())
                identities.append(identity_dir.name)
    if not paths:
        raise CliError(f"{root}: empty gallery, no identity folder with images (expected <gallery>/<identity>/<image>.jpg)")
    return paths, identities


def data_root(path: str | Path, task: str, split: str) -> Path:
    """A FACECOM-layout root holding ``<task>/<split>/``.

    Raises:
        CliError: No such folder, or no such split in it.
    """
    from facecom_utils.data.layout import find_task_dir

    root = Path(path).expanduser()
    if not root.is_dir():
        raise CliError(f"{root}: data root not found (expected a folder holding {task}/{split}/)")
    task_dir = find_task_dir(root, task)
    if not (task_dir / split).is_dir():
        raise CliError(f"{task_dir / split}: split folder not found (choose another with --split)")
    return root.resolve()


def readable_split(args: argparse.Namespace, task: str) -> Path:
    """The data root of a run-folder evaluation, once every image of ``<task>/<split>`` is readable.

    The face-model tracks score whole tables (clean images with their copies), so the first
    unreadable image stops the evaluation with a one-line error, ``--strict`` or not.
    """
    from facecom_utils.data.layout import BadImageError, drop_unreadable, scan_task_a, scan_task_b

    root = data_root(args.data_root, task, args.split)
    scan = scan_task_a if task == "Task_A" else scan_task_b
    try:
        drop_unreadable(scan(root, splits=(args.split,), on_error="keep"), "raise")
    except BadImageError as err:
        raise CliError(f"{str(err).splitlines()[0]}; a run folder's evaluation needs every image of "
                       f"{task}/{args.split}") from None
    return root


def screen(paths: Sequence[str | Path], args: argparse.Namespace, what: str = "image") -> dict[str, str]:
    """``{path: reason}`` of the unreadable ``paths``: skipped with a warning, or the first raised under --strict."""
    from facecom_utils.data.layout import screen_images

    return screen_images([str(p) for p in paths], "raise" if args.strict else "skip", what)


def warn(args: argparse.Namespace, message: str) -> None:
    """``facecom COMMAND: warning: message`` on stderr."""
    print(f"facecom {args.command}: warning: {message}", file=sys.stderr)


def show_data_warnings(command: str) -> None:
    """Print each FacecomDataWarning (skipped image, odd folder entry) as ``facecom CMD: warning: ...``.

    Call inside ``warnings.catch_warnings()``, which restores the previous filters and printer.
    """
    from facecom_utils.data.layout import FacecomDataWarning

    previous = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if issubclass(category, FacecomDataWarning):
            print(f"facecom {command}: warning: {message}", file=sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.simplefilter("always", FacecomDataWarning)  # one line per skipped file, every run
    warnings.showwarning = show


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input, reported as one line."""
    from facecom_utils.data.layout import BadImageError, FacecomLayoutError
    from facecom_utils.recognition.gallery import GalleryFileError

    errors: list[type[BaseException]] = [CliError, FacecomLayoutError, BadImageError, GalleryFileError,
                                         FileNotFoundError, NotADirectoryError, FileExistsError, PermissionError]
    try:
        from facecom_utils.nn.backbones import WeightsUnavailableError

        errors.append(WeightsUnavailableError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)
