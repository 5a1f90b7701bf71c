"""Where things are: the repository root, and the path rules every entry point shares.

``REPO_ROOT`` is the checkout that holds ``facecom_utils/`` (an editable install, as the README's
commands make). The user's FACECOM folders (``Task_A/``, ``Task_B/``), the synthetic demo
(``data/demo_synthetic``), the presets (``params/``) and the reports (``reports/``) sit under it.

The rules, written once here (the functions read ``REPO_ROOT`` when called, so a test can point it
at a temporary folder):

* :func:`holds_facecom`: a folder holds FACECOM when its ``Task_A/`` and ``Task_B/`` each hold an
  image two levels down (``Task_A/<split>/<class>/<image>``, ``Task_B/<split>/<identity>/<image>``);
* :func:`facecom_in_repo`: the repository's own ``Task_A/``, ``Task_B/`` hold FACECOM;
* :data:`DATA_ROOT_ENV`: the environment variable naming the data root of a notebook or run given none
  (:data:`DEMO_DATA_ROOT` as its value forces the synthetic demo);
* :func:`repo_path`: a relative path from a preset or a command line is read against the working
  directory when it exists there, else against the repository root.

Choosing the data root itself (which may generate the demo) is
:func:`facecom_utils.data.demo.resolve_data_root`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "REPO_ROOT",
    "DEMO_ROOT",
    "PARAMS_DIR",
    "REPORTS_DIR",
    "NOTEBOOKS_DIR",
    "IMAGE_EXTENSIONS",
    "TASK_FOLDERS",
    "DATA_ROOT_ENV",
    "DEMO_DATA_ROOT",
    "holds_facecom",
    "facecom_in_repo",
    "data_root_from_env",
    "repo_path",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_ROOT = REPO_ROOT / "data" / "demo_synthetic"
PARAMS_DIR = REPO_ROOT / "params"
REPORTS_DIR = REPO_ROOT / "reports"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
"""Suffixes (lower case) of the image files FACECOM and the demo hold."""
TASK_FOLDERS: tuple[str, ...] = ("Task_A", "Task_B")
DATA_ROOT_ENV = "FACECOM_DATA_ROOT"
"""Environment variable: the data root of a notebook or run given none (``make test`` sets ``demo``)."""
DEMO_DATA_ROOT = "demo"
"""The value of :data:`DATA_ROOT_ENV` (or of a ``data_root``) that asks for the synthetic demo."""


def _has_image_two_down(folder: Path) -> bool:
    """Whether an image sits two levels below ``folder`` (``<split>/<class or identity>/<image>``)."""
    if not folder.is_dir():
        return False
    return any(p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") for p in folder.glob("*/*/*"))


def holds_facecom(root: str | Path) -> bool:
    """Whether ``root``'s ``Task_A/`` and ``Task_B/`` both hold images in FACECOM's layout.

    Args:
        root: A folder (a clone's root, or a FACECOM download).

    Returns:
        True when ``Task_A/<split>/<class>/`` and ``Task_B/<split>/<identity>/`` each hold an image.
    """
    root = Path(root).expanduser()
    return all(_has_image_two_down(root / task) for task in TASK_FOLDERS)


def facecom_in_repo() -> bool:
    """Whether FACECOM images were placed in the repository's ``Task_A/`` and ``Task_B/``."""
    return holds_facecom(REPO_ROOT)


def data_root_from_env() -> str | None:
    """The value of :data:`DATA_ROOT_ENV` (``None`` when unset or empty)."""
    return os.environ.get(DATA_ROOT_ENV) or None


def repo_path(path: str | Path) -> Path:
    """A path from a preset or a command line, absolute.

    Args:
        path: Absolute, or relative: to the working directory when it exists there, else to
            :data:`REPO_ROOT` when it exists there (a preset's ``reports/x`` works from any folder).

    Returns:
        The resolved path (relative to the working directory when it exists in neither place).
    """
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not (REPO_ROOT / p).exists():
        return p.resolve()
    return (REPO_ROOT / p).resolve()
