"""Per-image feature vectors cached on disk by file content (SHA-1 of the bytes), saved as they come.

One ``.npz`` per kind of feature holds ``keys`` (hex digests) and ``features`` ``[N, F]``. A
renamed or copied file (a Task A image is byte-identical to its Task B clean image) is found by
its content; a changed file is computed again. New rows are saved atomically after every batch,
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from facecom_utils.common.progress import ProgressLog

__all__ = ["cached_features", "file_digest"]


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes, remembered per process by path, size and modification time."""
    st = os.stat(path)
    return _digest(os.fspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=200_000)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha1(fh.read()).hexdigest()


def _load(file: Path | None) -> dict[str, np.ndarray]:
    if file is None or not file.is_file():
        return {}
    try:
        with np.load(file) as z:
            return dict(zip((str(k) for k in z["keys"]), z["features"]))
    except (OSError, ValueError, KeyError):
        return {}


def _save(file: Path, table: dict[str, np.ndarray]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=np.array(list(table), dtype="U40"), features=np.stack(list(table.values())))
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cached_features(
    paths: Sequence[str | Path],
    compute: Callable[[list[str]], np.ndarray],
    file: str | Path | None,
    batch: int = 2048,
    progress: bool = False,
    desc: str = "features",
) -> np.ndarray:
    """``compute``'s rows for ``paths`` ``[N, F]`` float32, computed only for contents not in ``file``.

    Args:
        paths: Image files (missing ones raise FileNotFoundError naming them).
        compute: Maps a list of paths to their ``[n, F]`` features.
        file: The cache (None: compute everything, keep nothing).
        batch: Paths per ``compute`` call (the cache is saved after each).
        progress: Show a progress bar.
    """
    paths = [str(p) for p in paths]
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: image file not found")
    file = Path(file) if file is not None else None
    keys = [file_digest(p) for p in paths] if file is not None else [str(i) for i in range(len(paths))]
    table = _load(file)
    todo = list(dict.fromkeys(k for k in keys if k not in table))
    where = dict(zip(keys, paths))
    with tqdm(total=len(todo), desc=desc, leave=False, disable=not progress) as bar, ProgressLog(len(todo), desc) as log:
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            rows = np.asarray(compute([where[k] for k in chunk]), dtype=np.float32)
            table.update(zip(chunk, rows))
            bar.update(len(chunk))
            log.update(len(chunk))
            if file is not None:
                _save(file, table)
    if not keys:
        return np.zeros((0, 0), np.float32)
    return np.stack([table[k] for k in keys]).astype(np.float32)
