"""Executing one notebook: its kernel, the one kernel-start retry, and what the terminal sees.

* :class:`CurrentEnvKernelManager`: the ``python3`` kernel always runs on this interpreter;
* :func:`start_with_retries`: the ONE bounded retry of a kernel that dies while starting (the report
  runner's papermill run here and nbval's kernel, :mod:`facecom_utils.reporting.kernel`, both use it;
  a failing cell is never retried);
* :func:`run_notebook`: papermill in this environment, and never silent: a line when the run enters a
  new section of the notebook (a markdown heading) with the elapsed time, and the kernel's progress lines
  (:class:`~facecom_utils.common.progress.ProgressLog`) echoed to the terminal, while the executed
  notebook keeps them too;
* :func:`render_html`: the executed notebook as HTML, with and without code.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from jupyter_client.manager import AsyncKernelManager

from facecom_utils.common.progress import PREFIX, format_seconds, is_progress_line

__all__ = [
    "KERNEL_ENV",
    "KERNEL_START_ATTEMPTS",
    "KernelStartError",
    "CurrentEnvKernelManager",
    "ProgressEcho",
    "SectionLog",
    "environment",
    "is_kernel_start_failure",
    "kernel_command",
    "render_html",
    "run_notebook",
    "section_titles",
    "start_with_retries",
]

T = TypeVar("T")

# Environment of the kernels: figures inline even when the runner has MPLBACKEND=Agg (the notebooks also
# ask for it themselves), no tqdm bars in the rendered reports (ProgressLog lines instead), no debugger
# warning on stderr.
KERNEL_ENV: dict[str, str] = {
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    "TQDM_DISABLE": "1",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}

KERNEL_START_ATTEMPTS = 3
"""Attempts at starting one notebook's kernel, the first included."""
KERNEL_START_FAILURES = ("Kernel died before replying to kernel_info", "Address already in use")
SECTION_ENGINE = "facecom-sections"
_registered = False  # SECTION_ENGINE is registered with papermill (once per process)


# --------------------------------------------------------------------------------------------------
# Kernel start
# --------------------------------------------------------------------------------------------------


class KernelStartError(RuntimeError):
    """Every attempt at starting a kernel failed; the message describes each attempt.

    Attributes:
        failures: One line per failed attempt.
    """

    def __init__(self, message: str, failures: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)


def is_kernel_start_failure(text: str) -> bool:
    """Whether an error (message or a process's stderr) says a Jupyter kernel died before it ran anything.

    jupyter_client picks the kernel's TCP ports by binding to port 0 and closing them; the kernel binds
    them a few seconds later, and on a busy machine another process can take one first (``ZMQError:
    Address already in use``): the kernel exits before replying to ``kernel_info``. Nothing has run, so
    starting a new kernel is safe.
    """
    return any(sign in text for sign in KERNEL_START_FAILURES)


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def start_with_retries(
    start: Callable[[int], T],
    attempts: int = KERNEL_START_ATTEMPTS,
    *,
    retryable: Callable[[BaseException], bool] = lambda error: True,
    describe: Callable[[BaseException], str] = _describe,
    notify: Callable[[str], None] | None = None,
    what: str = "the kernel",
) -> tuple[T, list[str]]:
    """Call ``start(attempt)`` until it returns, starting again after a failure of the START only.

    Args:
        start: Starts a kernel (and, for papermill, runs the notebook); gets the attempt number (from 1).
        attempts: Attempts in all, the first included (at least 1).
        retryable: Whether a failure happened before anything ran (only those are tried again); any
            other failure is raised at once, unchanged.
        describe: One line for a failure (default: its type and message).
        notify: Called with a line after every failure that is tried again (a warning, a log line).
        what: Names the kernel in the messages.

    Returns:
        ``(what start returned, a line per failed attempt before it)``.

    Raises:
        KernelStartError: ``attempts`` start failures in a row (the last one is its ``__cause__``).
    """
    attempts = max(1, int(attempts))
    failures: list[str] = []
    for attempt in range(1, attempts + 1):
        try:
            return start(attempt), failures
        except Exception as error:  # noqa: BLE001 - sorted by `retryable`; the rest is re-raised
            if not retryable(error):
                raise
            failures.append(f"attempt {attempt} of {attempts} failed: {describe(error)}")
            if attempt == attempts:
                raise KernelStartError(f"{what} failed to start {attempts} times:\n" + "\n".join(failures),
                                       failures) from error
            if notify is not None:
                notify(f"{what} died while starting ({failures[-1]}); starting a new one")
    raise AssertionError("unreachable")  # pragma: no cover


class CurrentEnvKernelManager(AsyncKernelManager):
    """Kernel manager whose ipykernel kernels run on this interpreter (``sys.executable``).

    jupyter_client already maps a kernelspec ``argv[0]`` of ``python``/``python3`` to
    ``sys.executable``; this also overrides a ``python3`` kernelspec registered elsewhere with an
    absolute interpreter path (e.g. a user-level kernel of another environment), so the notebooks
    always run against the package installed here. Transport encryption is used when available.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with contextlib.suppress(Exception):  # older jupyter_client / pyzmq without curve
            import zmq

            if zmq.has("curve") and self.has_trait("transport_encryption"):
                self.transport_encryption = "auto"

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        cmd = super().format_kernel_cmd(extra_arguments)
        if len(cmd) >= 3 and cmd[1] == "-m" and cmd[2].startswith("ipykernel"):
            cmd[0] = sys.executable
        return cmd


def kernel_command() -> list[str]:
    """The command the runner launches for the ``python3`` kernel (``{connection_file}`` unfilled)."""
    km = CurrentEnvKernelManager(kernel_name="python3")
    km.connection_file = "{connection_file}"
    return km.format_kernel_cmd()


@contextlib.contextmanager
def environment(updates: Mapping[str, str]) -> Iterator[None]:
    """Temporarily set environment variables (inherited by the kernels started inside)."""
    saved = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------------------------------
# What the terminal sees
# --------------------------------------------------------------------------------------------------


def section_titles(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    """For each cell, the section it sits in: the last ``##`` (or deeper) heading above it, else ``setup``."""
    titles, current = [], "setup"
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in str(cell.get("source", "")).splitlines():
                if line.startswith("##"):
                    current = line.lstrip("#").strip() or current
                    break
        titles.append(current)
    return titles


class SectionLog:
    """Says, for one notebook, when its run enters a new section: ``[name] 3. Training (code cell 9 of 31, 4m12s)``.

    Args:
        name: The notebook's name in the lines.
        say: Prints a line.
        clock: Monotonic seconds (the elapsed time counts from this object's creation).
    """

    def __init__(self, name: str, say: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.say, self.clock = name, say, clock
        self.titles: list[str] = []
        self.code: list[int] = []
        self.current: str | None = None
        self.start = clock()

    def __call__(self, cells: Sequence[Mapping[str, Any]], cell_index: int) -> None:
        """Papermill starts cell ``cell_index`` of ``cells`` (the notebook as executed): a line when it begins a
        new section."""
        if not self.titles:
            self.titles = section_titles(cells)
            self.code = [i for i, c in enumerate(cells) if c.get("cell_type") == "code"]
        if cell_index not in self.code or self.titles[cell_index] == self.current:
            return
        self.current = self.titles[cell_index]
        position = self.code.index(cell_index) + 1
        self.say(f"[{self.name}] {self.current} (code cell {position} of {len(self.code)}, "
                 f"{format_seconds(self.clock() - self.start)})")


class ProgressEcho:
    """A file for papermill's ``stdout_file``: the kernel's progress lines, echoed as ``[name] ...`` lines."""

    def __init__(self, name: str, say: Callable[[str], None]) -> None:
        self.name, self.say, self.buffer = name, say, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            line = line.rsplit("\r", 1)[-1]
            if is_progress_line(line):
                self.say(f"[{self.name}] {line[len(PREFIX):]}")
        return len(text)

    def flush(self) -> None:
        """Nothing is held back but an unfinished line."""


def _section_engine() -> str:
    """Register (once) papermill's nbclient engine with a per-cell hook (``on_cell``); return its name."""
    from papermill.engines import NBClientEngine, papermill_engines

    global _registered
    if _registered:
        return SECTION_ENGINE

    class SectionEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str,
                                     on_cell: Callable[[Sequence[Any], int], None] | None = None, **kwargs: Any) -> Any:
            if on_cell is not None:
                cell_start = nb_man.cell_start

                def announce(cell: Any, cell_index: int | None = None, **kw: Any) -> None:
                    cell_start(cell, cell_index, **kw)
                    if cell_index is not None:
                        on_cell(nb_man.nb.cells, cell_index)

                nb_man.cell_start = announce
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(SECTION_ENGINE, SectionEngine)
    _registered = True
    return SECTION_ENGINE


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# One notebook
# --------------------------------------------------------------------------------------------------


def _first_line(source: str, width: int = 80) -> str:
    lines = [ln for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    line = (lines[0] if lines else source.strip().splitlines()[0] if source.strip() else "").strip()
    return line if len(line) <= width else line[: width - 1] + "…"


def _failed_cell(output_path: Path) -> tuple[int | None, str]:
    """(1-based position among the original code cells, first line) of the cell that failed or hung."""
    import nbformat

    try:
        nb = nbformat.read(output_path, as_version=4)
    except Exception:  # noqa: BLE001 - the partial notebook may be missing
        return None, ""
    code_cells = [
        c for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])
    ]
    for position, cell in enumerate(code_cells, start=1):
        status = cell.metadata.get("papermill", {}).get("status")
        if status in ("failed", "running") or any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return position, _first_line(cell.source)
    return None, ""


def _error_line(input_path: Path, output_path: Path, error: BaseException) -> tuple[str, int | None]:
    """One line naming the notebook, the cell and the exception; and the cell's position."""
    from papermill.exceptions import PapermillExecutionError

    cell, first = _failed_cell(output_path)
    if isinstance(error, PapermillExecutionError):
        where = f"code cell {cell}" if cell else f"cell index {error.cell_index}"
        evalue = (error.evalue or "").strip().splitlines()
        return (f"{input_path.name}: {where} (`{first or _first_line(error.source)}`) raised "
                f"{error.ename}: {evalue[0] if evalue else ''}"), cell
    if isinstance(error, KernelStartError) and error.__cause__ is not None:
        error = error.__cause__
    where = f"code cell {cell} (`{first}`)" if cell else "before any cell ran"
    kind = "timed out" if "timeout" in type(error).__name__.lower() or "timed out" in str(error).lower() else "failed"
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{input_path.name}: {where} {kind}: {type(error).__name__}: {message}", cell


def run_notebook(
    input_path: str | Path,
    output_path: str | Path,
    parameters: Mapping[str, Any],
    cell_timeout: float | None = 3600,
    start_timeout: float = 120,
    cwd: str | Path | None = None,
    log_output: bool = False,
    say: Callable[[str], None] | None = _log,
) -> tuple[float, str | None, int | None]:
    """Execute one notebook with papermill in the current environment.

    Args:
        input_path: the notebook.
        output_path: where the executed notebook is written (also when it fails).
        parameters: injected after the ``parameters`` cell.
        cell_timeout: seconds one cell may run (``None``: no limit).
        start_timeout: seconds to wait for the kernel.
        cwd: working directory of the kernel (default: the notebook's folder).
        log_output: stream all the kernel's output to this process's stdout/stderr.
        say: prints a line to the terminal: the sections as the run enters them, the kernel's progress
            lines, a retried kernel start (``None``: silent).

    Returns:
        ``(seconds, error, failed_cell)``: ``error`` is ``None`` on success, else one line naming the
        notebook, the cell (position among its code cells, execution count and first line) and the
        exception; ``failed_cell`` the cell's position.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    input_path, output_path = Path(input_path), Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(KERNEL_ENV)
    if log_output:
        env.pop("TQDM_DISABLE")
    quiet = say is None
    say = say or (lambda _line: None)
    name = input_path.stem

    def execute(_attempt: int) -> None:
        hooks: dict[str, Any] = {}
        if not quiet:
            hooks = {"engine_name": _section_engine(), "on_cell": SectionLog(name, say)}
            if not log_output:
                hooks["stdout_file"] = ProgressEcho(name, say)
        with environment(env):
            pm.execute_notebook(str(input_path), str(output_path), parameters=dict(parameters), kernel_name="python3",
                                kernel_manager_class=CurrentEnvKernelManager, progress_bar=False,
                                log_output=log_output, execution_timeout=cell_timeout, start_timeout=start_timeout,
                                cwd=str(cwd or input_path.parent), **hooks)

    def nothing_ran(error: BaseException) -> bool:
        return (not isinstance(error, PapermillExecutionError) and _failed_cell(output_path)[0] is None
                and is_kernel_start_failure(str(error)))

    start = time.perf_counter()
    try:
        start_with_retries(execute, KERNEL_START_ATTEMPTS, retryable=nothing_ran,
                           notify=lambda line: say(f"{input_path.name}: {line}"))
    except Exception as exc:  # noqa: BLE001 - failing cells, timeouts, dead kernels: report, don't crash the run
        error, cell = _error_line(input_path, output_path, exc)
        return time.perf_counter() - start, error, cell
    return time.perf_counter() - start, None, None


def render_html(notebook_path: str | Path, html_path: str | Path, nocode_html_path: str | Path | None = None) -> None:
    """Render an executed notebook to HTML with nbconvert, and optionally a version without code."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook_path), as_version=4)
    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb)
    Path(html_path).write_text(body, encoding="utf-8")
    if nocode_html_path is not None:
        exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
        body, _ = exporter.from_notebook_node(nb)
        Path(nocode_html_path).write_text(body, encoding="utf-8")
