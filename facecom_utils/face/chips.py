"""The face front end's aligned chips, cached on disk: what a fine-tuned face network trains and runs on.

:class:`~facecom_utils.face.descriptors.DescriptorStore` keeps only the 128 numbers of an image; a
network that is being trained needs the 150 px chip itself (dlib's alignment, padding 0.25, after
the image's restoration). :class:`ChipStore` keeps those chips, keyed like the descriptor store (file
content, restoration, detector settings, the fallback box), so the front end (restoration, HOG
detector, landmarks, alignment: most of an image's cost) runs once per image and restoration.

A chip is 67.5 KB (uint8 150 x 150 x 3): FACECOM's 15,408 training images take about 1 GB. The store
writes **shards**: every ``save_every`` new chips go into a new ``.npz`` file (written atomically),
so an interrupted run keeps what it computed and no save rewrites the chips already on disk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import zipfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from facecom_utils.common.progress import ProgressLog
from facecom_utils.data.layout import load_image
from facecom_utils.face.detect import DEFAULT_FALLBACK
from facecom_utils.face.dlib_network import CHIP
from facecom_utils.face import descriptors
from facecom_utils.face.descriptors import cached_rows, write_rows
from facecom_utils.face.restoration import RESTORATION_VERSIONS

__all__ = ["ChipStore", "Chips"]

_CHIP_VERSION = 1


def _chips_of_paths(jobs: Sequence[tuple[str, str]], upsample: int) -> list[tuple[np.ndarray, bool, float]]:
    """``(chip, detected, score)`` of ``(path, restoration)`` jobs (the descriptor store's front end)."""
    return [descriptors._front_end(np.asarray(load_image(path), dtype=np.uint8), restoration, upsample) for path, restoration in jobs]


class Chips:
    """Aligned chips of a list of images, in order: ``chips`` uint8 ``[N, 150, 150, 3]``,
    ``detected`` bool ``[N]``, ``score`` float64 ``[N]`` (NaN when the fallback box was used)."""

    def __init__(self, chips: np.ndarray, detected: np.ndarray, score: np.ndarray) -> None:
        self.chips, self.detected, self.score = chips, detected, score

    def __len__(self) -> int:
        return len(self.chips)


class ChipStore:
    """Aligned chips cached on disk by file content and restoration; computed when missing.

    Args:
        folder: Where the store keeps its shards (one sub-folder per restoration and settings).
        upsample: HOG detector upsampling passes (part of the key).
        workers: Worker processes for missing chips (1: in this process).
        save_every: Write a shard after this many new chips.
        progress: Show a progress bar.
        chunk: Images per worker task.
    """

    def __init__(self, folder: str | Path, upsample: int = 1, workers: int = 1, save_every: int = 1000,
                 progress: bool = False, chunk: int = 16) -> None:
        self.folder = Path(folder)
        self.upsample = int(upsample)
        self.workers = max(1, int(workers))
        self.save_every = max(1, int(save_every))
        self.progress = progress
        self.chunk = max(1, int(chunk))
        self._tables: dict[str, dict[str, tuple[np.ndarray, bool, float]]] = {}

    def _dir(self, restoration: str) -> Path:
        settings: list[Any] = [_CHIP_VERSION, restoration, self.upsample, list(DEFAULT_FALLBACK.box),
                               RESTORATION_VERSIONS.get(restoration, 1), CHIP]
        digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]
        return self.folder / f"chips_{restoration}_{digest}"

    def _table(self, restoration: str) -> dict[str, tuple[np.ndarray, bool, float]]:
        if restoration not in self._tables:
            table: dict[str, tuple[np.ndarray, bool, float]] = {}
            for shard in sorted(self._dir(restoration).glob("part-*.npz")):
                try:
                    with np.load(shard) as z:
                        for k, c, det, s in zip(z["keys"], z["chips"], z["detected"], z["score"]):
                            table[str(k)] = (c, bool(det), float(s))
                except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # a damaged shard: computed again
                    continue
            self._tables[restoration] = table
        return self._tables[restoration]

    def _write_shard(self, restoration: str, rows: dict[str, tuple[np.ndarray, bool, float]]) -> None:
        folder = self._dir(restoration)
        folder.mkdir(parents=True, exist_ok=True)
        keys = list(rows)
        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:16]
        write_rows(folder / f"part-{name}.npz", rows, "chips", np.uint8)

    def chips(self, paths: Sequence[str | Path], restorations: Sequence[str] | str = "identity") -> Chips:
        """The chips of ``paths``, each after its restoration (one name for all, or one per path).

        Raises:
            KeyError: An unknown restoration name.
            FileNotFoundError: A missing file (named).
        """
        _, rows = cached_rows(self, paths, restorations)
        if not rows:
            return Chips(np.zeros((0, CHIP, CHIP, 3), np.uint8), np.zeros(0, bool), np.zeros(0))
        return Chips(np.stack([r[0] for r in rows]), np.array([r[1] for r in rows], bool),
                     np.array([r[2] for r in rows], np.float64))

    def _compute(self, todo: dict[tuple[str, str], str]) -> None:
        items = list(todo.items())
        jobs = [(path, name) for (_, name), path in items]
        chunks = [jobs[i:i + self.chunk] for i in range(0, len(jobs), self.chunk)]
        work = functools.partial(_chips_of_paths, upsample=self.upsample)
        bar = tqdm(total=len(jobs), desc="face chips", leave=False, disable=not self.progress)
        log = ProgressLog(len(jobs), "face chips")
        pending: dict[str, dict[str, tuple[np.ndarray, bool, float]]] = {}

        def flush() -> None:
            for name, rows in pending.items():
                if rows:
                    self._write_shard(name, rows)
            pending.clear()

        def take(start: int, results: list[tuple[np.ndarray, bool, float]]) -> None:
            for ((key, name), _), result in zip(items[start:start + self.chunk], results, strict=True):
                self._table(name)[key] = result
                pending.setdefault(name, {})[key] = result
                bar.update(1)
                log.update()
            if sum(len(r) for r in pending.values()) >= self.save_every:
                flush()

        try:
            starts = range(0, len(jobs), self.chunk)
            if self.workers <= 1 or len(chunks) < 2:
                for start, chunk in zip(starts, chunks):
                    take(start, work(chunk))
            else:
                with ProcessPoolExecutor(min(self.workers, len(chunks)), mp_context=multiprocessing.get_context("spawn")) as pool:
                    for start, results in zip(starts, pool.map(work, chunks)):
                        take(start, results)
        finally:
            flush()
            bar.close()
            log.close()
