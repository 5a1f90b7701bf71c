"""Checkpoint I/O, out of the training loop: written atomically, read back safely.

A checkpoint is a dict of plain Python values and tensors (:func:`to_plain` converts numpy values,
paths and dataclasses, and refuses anything else), so :func:`load_checkpoint` reads it with
``torch.load(..., weights_only=True)``. :func:`save_checkpoint` writes to a temporary file, fsyncs it
and renames it into place: an interrupted write never leaves a half checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = ["load_checkpoint", "save_checkpoint", "to_plain"]


def to_plain(obj: Any, where: str = "payload") -> Any:
    """Converts a checkpoint payload to plain python types + tensors (``weights_only``-safe).

    numpy scalars become python numbers, numpy arrays become tensors, paths and devices become
    strings, dataclasses become dicts. Anything else raises.

    Raises:
        TypeError: An object that ``torch.load(weights_only=True)`` could not read back; the
            message names where it sits in the payload.
    """
    if isinstance(obj, np.generic):  # before float: np.float64 subclasses float
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_plain(dataclasses.asdict(obj), where)
    if isinstance(obj, Mapping):
        return {to_plain(k, where): to_plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, (list, set, frozenset)):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, pd.DataFrame):
        return to_plain(obj.to_dict(orient="records"), where)
    raise TypeError(f"{where}: {type(obj).__name__} cannot go into a weights_only checkpoint; "
                    "use plain python types, numpy values or tensors")


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Writes a checkpoint atomically: to a temporary file beside ``path``, then ``os.replace``.

    A crash or error mid-write never leaves a partial file at ``path`` (an older checkpoint
    there stays intact), and no temporary file is left behind.

    Args:
        path: Destination (parent folders are created).
        payload: Plain python types + tensors (converted with :func:`to_plain`).

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = to_plain(payload)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(plain, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint with ``torch.load(weights_only=True)`` (no arbitrary code runs).

    Raises:
        FileNotFoundError: No file at ``path``.
        RuntimeError: The file is not a readable weights-only checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (expected a .pt file written by save_checkpoint)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise RuntimeError(f"{path}: cannot be loaded as a weights-only checkpoint ({err})") from err
