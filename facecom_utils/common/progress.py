"""Progress lines for long stages: a count, the elapsed time and an ETA, at most once a minute.

tqdm bars (the ``progress`` parameters) are for JupyterLab; a headless run (``facecom run``,
papermill, a CLI command) shows nothing of them. :class:`ProgressLog` prints a plain line instead,
the same in every way of running: on stdout, so it lands in the notebook's output (and so in the
rendered report) and, in a terminal, on the screen; the runner echoes a kernel's progress lines (the
ones starting with :data:`PREFIX`) to its own terminal::

    [progress] face descriptors: 1200/5400 (22%), elapsed 2m10s, ETA 7m35s

A stage that ends before the first interval prints nothing, so short runs stay quiet; one that printed
a line prints a last one when it closes.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

__all__ = ["PREFIX", "ProgressLog", "format_seconds", "is_progress_line", "lines_to", "steps"]

PREFIX = "[progress] "
"""Every progress line starts with this (the runner echoes such lines from the kernels)."""

_STREAM: list[TextIO] = []  # where lines go when a ProgressLog names no stream: the innermost lines_to, else stdout


@contextlib.contextmanager
def lines_to(stream: TextIO) -> Iterator[None]:
    """Within the block, progress lines of logs that name no stream go to ``stream``.

    The ``facecom`` commands send them to stderr, so a command's data on stdout (a CSV, ``--json``) stays
    clean; notebooks keep stdout, where the lines land in the rendered report.

    Args:
        stream: A text stream, e.g. ``sys.stderr``.
    """
    _STREAM.append(stream)
    try:
        yield
    finally:
        _STREAM.pop()


def format_seconds(seconds: float) -> str:
    """``"45s"``, ``"4m05s"`` or ``"1h02m"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def is_progress_line(line: str) -> bool:
    """Whether a line of output is a :class:`ProgressLog` line."""
    return line.startswith(PREFIX)


def steps(iterable: Any, times: int = 1) -> int | None:
    """``len(iterable) * times``, or None when the iterable has no length (a stream)."""
    try:
        return len(iterable) * times
    except TypeError:
        return None


class ProgressLog:
    """Counts the steps of a long stage and prints ``label: i/total, elapsed, ETA`` every ``every_s`` seconds.

    Args:
        total: Steps the stage will take (``None``: unknown, no percentage or ETA).
        label: What is counted, e.g. ``"training"`` or ``"face descriptors"``.
        every_s: Seconds between two lines at most (a line is printed at the first update after it).
        enabled: False prints nothing (e.g. on the ranks other than 0 of a distributed run).
        stream: Where lines go (default: ``sys.stdout`` at the time of printing).
        clock: Monotonic seconds (tests pass a fake one).

    Example:
        >>> log = ProgressLog(len(batches), "training")          # doctest: +SKIP
        >>> for batch in batches:                                  # doctest: +SKIP
        ...     step(batch); log.update(detail=f"epoch {epoch}")   # doctest: +SKIP
        >>> log.close()                                            # doctest: +SKIP
    """

    def __init__(self, total: int | None, label: str, every_s: float = 60.0, enabled: bool = True,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.label = label
        self.every_s = every_s
        self.enabled = enabled
        self.stream = stream
        self.clock = clock
        self.count = 0
        self.lines = 0
        self.start = clock()
        self._last = self.start
        self._detail = ""

    def line(self) -> str:
        """The current progress line (without printing it)."""
        elapsed = self.clock() - self.start
        done = f"{self.count}"
        eta = ""
        if self.total:
            done += f"/{self.total} ({100 * self.count / self.total:.0f}%)"
            if 0 < self.count < self.total:
                eta = f", ETA {format_seconds(elapsed / self.count * (self.total - self.count))}"
        detail = f" [{self._detail}]" if self._detail else ""
        return f"{PREFIX}{self.label}: {done}{detail}, elapsed {format_seconds(elapsed)}{eta}"

    def update(self, n: int = 1, detail: str | None = None) -> None:
        """Count ``n`` more steps; print a line when ``every_s`` has passed since the last one.

        Args:
            n: Steps just done.
            detail: Shown in brackets after the count (e.g. ``"epoch 3/10"``); kept until changed.
        """
        self.count += n
        if detail is not None:
            self._detail = detail
        if self.enabled and self.clock() - self._last >= self.every_s:
            self._print(self.line())

    def close(self) -> None:
        """Print a last line with the total time, when the stage printed any line before."""
        if self.enabled and self.lines:
            self._detail = ""
            self._print(f"{PREFIX}{self.label}: done, {self.count} in "
                        f"{format_seconds(self.clock() - self.start)}")
            self.lines = 0

    def _print(self, text: str) -> None:
        print(text, file=self.stream or (_STREAM[-1] if _STREAM else sys.stdout), flush=True)
        self._last = self.clock()
        self.lines += 1

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
