"""The run folder every model command takes first: checked before anything runs, problems as one line.

A **run folder** is the ``output_dir`` of a training run (notebook 02 / ``facecom train-gender`` for
Task A, notebook 03 / ``facecom train-recognition`` for Task B): ``checkpoints/best.pt`` and, when
the run added the face-model tracks, ``face_tracks.pt`` with its headline track. Its ``best.pt``
given alone runs the FACECOM-only model. :func:`resolve_run` opens both files (weights only) and
checks their task and the entries the commands read, so a missing folder, another task's run, a
truncated or foreign file each stop the command with one line naming the file and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facecom_utils.cli.inputs import CliError

__all__ = ["RunInput", "expected_run", "resolve_run"]

#: task -> (name, what writes its runs, the commands that read them)
_TASKS = {
    "gender": ("Task A (gender)", "notebook 02 / facecom train-gender", "evaluate-gender / predict-gender"),
    "recognition": ("Task B (recognition)", "notebook 03 / facecom train-recognition",
                    "evaluate-recognition / identify / verify / enroll"),
}
#: Entries each file must hold, per task (``task`` and ``headline`` of face_tracks.pt: checked by RunDir.load_tracks).
_CHECKPOINT_KEYS = ("model", "model_config")
_TRACKS_KEYS = {"gender": ("model",), "recognition": ("thresholds",)}


@dataclass(frozen=True)
class RunInput:
    """A checked run folder or checkpoint.

    Attributes:
        path: As given (expanded).
        best: Its ``best.pt`` (None: a Task A run folder whose headline track needs no CNN).
        tracks: Its ``face_tracks.pt`` (None: absent, or a checkpoint given alone).
        headline: The track the commands run (``facecom_only`` without ``face_tracks.pt``).
    """

    path: Path
    best: Path | None
    tracks: Path | None
    headline: str

    @property
    def is_dir(self) -> bool:
        return self.path.is_dir()


def expected_run(task: str) -> str:
    """What a command of ``task`` expects as its first argument, in words."""
    name, writer, _ = _TASKS[task]
    return f"a {name} run folder ({writer}) or its checkpoints/best.pt"


def _load(path: Path, what: str, task: str, command: str) -> dict[str, Any]:
    """A weights-only torch file of ``task`` (tensors memory-mapped, not read); any other file is a one-line
    :class:`CliError`."""
    import torch

    expected = expected_run(task)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - every unreadable file is the same user problem
        raise CliError(f"{path}: unreadable {what} ({type(err).__name__}: truncated or not a torch file); "
                       f"expected {expected}") from None
    found = payload.get("task") if isinstance(payload, dict) else None
    if found is None:
        raise CliError(f"{path}: not a facecom {what} (no task entry); expected {expected}")
    if found != task:
        other = _TASKS.get(str(found))
        hint = f" (use `facecom {other[2]}` with it)" if other else ""
        raise CliError(f"{path}: a {other[0] if other else repr(found)} {what}; `facecom {command}` needs "
                       f"{expected}{hint}")
    return payload


def _check_checkpoint(path: Path, task: str, command: str) -> None:
    payload = _load(path, "checkpoint", task, command)
    missing = [k for k in _CHECKPOINT_KEYS if k not in payload]
    if missing:
        raise CliError(f"{path}: not a {_TASKS[task][0]} checkpoint (no {', '.join(missing)}); "
                       f"expected {expected_run(task)}")


def _check_tracks(run: Path, task: str, command: str) -> str:
    """The headline of a run folder's ``face_tracks.pt`` (read by :meth:`RunDir.load_tracks
    <facecom_utils.train.rundir.RunDir.load_tracks>`) once it holds what its task's commands read."""
    from facecom_utils.train.rundir import RunDir

    rundir = RunDir(run)
    try:
        payload = rundir.load_tracks(task)
    except ValueError as err:
        raise CliError(f"{str(err).splitlines()[0]}; `facecom {command}` needs {expected_run(task)}") from None
    missing = [k for k in _TRACKS_KEYS[task] if k not in payload]
    headline = str(payload.get("headline"))
    if task == "gender" and headline == "stacked" and payload.get("stacker") is None:
        missing.append("stacker (its headline is 'stacked')")
    if task == "recognition" and not missing:
        from facecom_utils.recognition.face_tracks import TRACKS

        needs = {"face_model_restored": ("estimator",), "fused": ("estimator", "weights")}.get(headline, ())
        missing = [k for k in needs if k not in payload]
        if headline not in TRACKS or headline not in payload["thresholds"]:
            missing.append(f"thresholds of its headline {headline!r}")
    if missing:
        raise CliError(f"{rundir.tracks_path}: not a {_TASKS[task][0]} face_tracks.pt (no {', '.join(missing)}); "
                       f"expected the one {_TASKS[task][1]} writes beside checkpoints/")
    return headline


def resolve_run(path: str | Path, task: str, command: str) -> RunInput:
    """Check a run folder or checkpoint of ``task`` before ``facecom command`` reads it.

    Args:
        path: The run folder or a ``best.pt``.
        task: ``"gender"`` or ``"recognition"``.
        command: The subcommand, for the messages.

    Raises:
        CliError: One line naming the file: no such path, not a run folder, another task's run,
            or a truncated or foreign ``best.pt`` / ``face_tracks.pt``.
    """
    p = Path(path).expanduser()
    if p.is_file():
        _check_checkpoint(p, task, command)
        return RunInput(p, p, None, "facecom_only")
    if not p.is_dir():
        raise CliError(f"{p}: no such run folder or checkpoint (expected {expected_run(task)})")
    best, tracks = p / "checkpoints" / "best.pt", p / "face_tracks.pt"
    if not best.is_file() and not tracks.is_file():
        raise CliError(f"{p}: not a run folder (no checkpoints/best.pt, no face_tracks.pt); expected {expected_run(task)}")
    headline = _check_tracks(p, task, command) if tracks.is_file() else "facecom_only"
    needs_best = task == "recognition" or headline in ("facecom_only", "stacked")
    if best.is_file():
        _check_checkpoint(best, task, command)
    elif needs_best:
        raise CliError(f"{best}: missing; the {headline} track of {p} needs it (expected {expected_run(task)})")
    return RunInput(p, best if best.is_file() else None, tracks if tracks.is_file() else None, headline)
