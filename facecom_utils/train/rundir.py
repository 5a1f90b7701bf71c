"""One owner of a run's outputs: the run directory.

A training run (notebook 02 or 03, ``facecom train-*``) and an analysis (notebooks 01 and 04) write
into one folder, their ``output_dir``::

    metrics.json          the numbers, written once, with the parameters and the data provenance
    history.csv           one row per epoch
    checkpoints/          best.pt, last.pt (written atomically by the training loop)
    embeddings/<role>.*   Task B embeddings by role: ``fold`` and ``report`` (npz + csv)
    face_tracks.pt        a task's face-model tracks (:meth:`RunDir.write_tracks`, :meth:`RunDir.load_tracks`)

:class:`RunDir` is the only code that knows these names; the pipelines write through it and the
runner, the command line and notebook 04 read through it. :func:`to_jsonable` is the one JSON
sanitiser (NaN and infinities become ``null``), :func:`write_json` the one atomic JSON writer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FOLD_ROLE", "REPORT_ROLE", "TRACKS_TASKS", "RunDir", "provenance", "to_jsonable", "write_json"]

# Task B's saved embeddings are keyed by their *role*, never by the text that labels the reported split
# (``metrics["reported_split"]``: "val" or "holdout (0.2 of Task_B/train identities)"): the validation
# fold that chose the checkpoint and the threshold, and the reported split.
FOLD_ROLE = "fold"
REPORT_ROLE = "report"
_LEGACY_REPORT = "val"  # what runs wrote before the roles were named

#: The tasks whose runs write ``face_tracks.pt`` (its ``"task"`` entry).
TRACKS_TASKS = ("gender", "recognition")
#: What :func:`provenance` adds to ``metrics.json``; a run's metrics are written again without them.
_PROVENANCE_KEYS = ("parameters", "data_root", "synthetic")


def to_jsonable(value: Any) -> Any:
    """Numpy/pandas/torch/Path/dataclass values (recursively) as plain JSON types; NaN and inf -> None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (pd.Series, pd.Index)):
        return to_jsonable(value.tolist())
    if isinstance(value, pd.DataFrame):
        return to_jsonable(value.to_dict(orient="records"))
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "tolist") and callable(value.tolist):  # tensors
        try:
            return to_jsonable(value.tolist())
        except (TypeError, ValueError):
            pass
    return str(value)


def provenance(parameters: Any = None, data_root: str | Path | None = None) -> dict[str, Any]:
    """What ``metrics.json`` records beside the numbers: ``"parameters"`` (a config or mapping, as plain
    values), ``"data_root"`` and ``"synthetic"`` (whether it is the generated demo dataset)."""
    out: dict[str, Any] = {}
    if parameters is not None:
        out["parameters"] = to_jsonable(parameters)
    if data_root is not None:
        from facecom_utils.data.demo import is_demo_root

        out["data_root"] = str(data_root)
        out["synthetic"] = bool(is_demo_root(data_root))
    return out


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as strict JSON (via :func:`to_jsonable`), atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    return path


@dataclasses.dataclass(frozen=True)
class RunDir:
    """A run's output folder and the names of everything in it.

    Args:
        path: The folder (created on the first write).
    """

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path).expanduser())

    # ---- where things are
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def history_path(self) -> Path:
        return self.path / "history.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def embeddings_dir(self) -> Path:
        return self.path / "embeddings"

    # ---- metrics.json
    def write_metrics(self, metrics: Mapping[str, Any], parameters: Any = None,
                      data_root: str | Path | None = None) -> Path:
        """Write ``metrics.json`` once: the metrics, ``"parameters"`` (a config or mapping) and the
        data provenance (``"data_root"`` and ``"synthetic"``: whether it is the generated demo)."""
        return write_json(self.metrics_path, {**metrics, **provenance(parameters, data_root)})

    def read_metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` as a dict; None when it is missing or unreadable (a run that did not finish)."""
        try:
            return json.loads(self.metrics_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_history(self, history: pd.DataFrame) -> Path:
        """One row per epoch, as CSV."""
        self.path.mkdir(parents=True, exist_ok=True)
        history.to_csv(self.history_path, index=False)
        return self.history_path

    # ---- face_tracks.pt: a task's face-model tracks
    @property
    def tracks_path(self) -> Path:
        return self.path / "face_tracks.pt"

    def write_tracks(self, task: str, headline: str, state: Mapping[str, Any], metrics: Mapping[str, Any],
                     parameters: Any = None, data_root: str | Path | None = None) -> dict[str, Any]:
        """Write a task's face-model tracks: ``face_tracks.pt``, then ``metrics.json`` with the headline.

        ``face_tracks.pt`` is ``{"task", "headline", **state}`` (plain values and tensors), written
        atomically by :func:`~facecom_utils.common.checkpoints.save_checkpoint` and read back by
        :meth:`load_tracks`. ``metrics.json`` is then written again (:meth:`write_metrics`) from
        ``metrics`` (the run's metrics with its ``tracks`` and the headline's figures on top) with
        ``headline_track``; any old provenance in ``metrics`` gives way to ``parameters`` and
        ``data_root``.

        Args:
            task: One of :data:`TRACKS_TASKS`.
            headline: The track the run reports on top.
            state: What the task needs to rebuild its tracks (models, weights, thresholds).
            metrics: The metrics to write.
            parameters: The run's config (or mapping).
            data_root: The run's data root.

        Returns:
            The metrics as written, without the provenance (for the caller's in-memory run).

        Raises:
            ValueError: An unknown task.
        """
        from facecom_utils.common.checkpoints import save_checkpoint

        if task not in TRACKS_TASKS:
            raise ValueError(f"task must be one of {TRACKS_TASKS}, got {task!r}")
        save_checkpoint(self.tracks_path, {"task": task, "headline": headline, **state})
        body = {k: v for k, v in metrics.items() if k not in _PROVENANCE_KEYS}
        body["headline_track"] = headline
        self.write_metrics(body, parameters, data_root)
        return body

    def load_tracks(self, task: str | None = None) -> dict[str, Any] | None:
        """What :meth:`write_tracks` wrote (``torch.load(weights_only=True)``, on the CPU); None without the file.

        Args:
            task: When given, the file must hold this task's tracks.

        Raises:
            ValueError: One line naming the file: it is truncated or unreadable, not a tracks file
                (no ``task`` and ``headline``), or another task's.
        """
        import torch

        file = self.tracks_path
        if not file.is_file():
            return None
        try:
            payload = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"{file}: not a readable tracks file, truncated or not written by RunDir.write_tracks "
                             f"({reason}); run the notebook's tracks stage again") from err
        if not isinstance(payload, dict) or not {"task", "headline"} <= set(payload):
            raise ValueError(f"{file}: not a tracks file (no 'task' and 'headline' entries)")
        if task is not None and payload["task"] != task:
            raise ValueError(f"{file}: holds {payload['task']!r} tracks, not {task!r} ones")
        return payload

    # ---- embeddings by role
    def _embedding_files(self, role: str) -> tuple[Path, Path]:
        return self.embeddings_dir / f"{role}.npz", self.embeddings_dir / f"{role}.csv"

    def has_embeddings(self, role: str) -> bool:
        return all(p.is_file() for p in self._embedding_files(self._stored_role(role)))

    def _stored_role(self, role: str) -> str:
        if role == REPORT_ROLE and not self._embedding_files(role)[0].is_file() and (
                self._embedding_files(_LEGACY_REPORT)[0].is_file()):
            return _LEGACY_REPORT
        return role

    def save_embeddings(self, role: str, table: pd.DataFrame, emb: np.ndarray) -> tuple[Path, Path]:
        """Write ``embeddings/<role>.npz`` (``embeddings``, ``path``) and ``embeddings/<role>.csv`` (the table).

        Raises:
            ValueError: The table and the embeddings differ in length.
        """
        if len(table) != len(emb):
            raise ValueError(f"table has {len(table)} rows but there are {len(emb)} embeddings")
        npz, csv = self._embedding_files(role)
        npz.parent.mkdir(parents=True, exist_ok=True)
        paths = np.asarray(table["path"].astype(str).tolist(), dtype=np.str_)
        np.savez_compressed(npz, embeddings=np.asarray(emb, dtype=np.float32), path=paths)
        table.to_csv(csv, index=False)
        return npz, csv

    def load_embeddings(self, role: str) -> tuple[pd.DataFrame, np.ndarray]:
        """Read what :meth:`save_embeddings` wrote; ``distortion``/``source`` hold None for clean images.

        Runs written before the roles were named saved the reported split as ``val``; asking for
        :data:`REPORT_ROLE` finds those too.

        Raises:
            FileNotFoundError: Names the files expected.
            ValueError: The two files disagree.
        """
        npz, csv = self._embedding_files(self._stored_role(role))
        if not (npz.is_file() and csv.is_file()):
            raise FileNotFoundError(f"{self.embeddings_dir}: expected {npz.name} and {csv.name} (the {role!r} "
                                    "embeddings a Task B training run writes into its output_dir)")
        with np.load(npz, allow_pickle=False) as data:
            emb, paths = data["embeddings"], data["path"]
        table = pd.read_csv(csv, dtype={"identity": str}, keep_default_na=True)
        for col in ("distortion", "source"):
            if col in table:
                table[col] = pd.Series([v if isinstance(v, str) else None for v in table[col]], dtype=object)
        if len(table) != len(emb) or list(table["path"].astype(str)) != [str(p) for p in paths]:
            raise ValueError(f"{csv} and {npz} disagree (rows or paths differ)")
        return table, emb
