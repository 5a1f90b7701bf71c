"""nbval's notebook kernel, with its stderr kept and a bounded retry of the kernel START.

nbval 0.11 starts each notebook's kernel with ``stderr=open(os.devnull, "w")``: when a kernel dies
at start, ``pytest --nbval-lax notebooks/`` shows "Kernel died before replying to kernel_info" for
every cell of the notebook and nothing about why. ``notebooks/conftest.py`` puts
:class:`CapturingKernel` in place of nbval's ``RunningKernel``. It

* connects to the kernel over IPC (Unix sockets in a private temporary folder) rather than TCP
  on localhost. Over TCP, jupyter_client picks five free ports, closes them and writes them into
  the connection file; the kernel binds them about a second later. Any other process on the machine
  that takes one of those ports in between (another test run, its kernels, a torch.distributed
  store) makes the kernel exit with ``ZMQError: Address already in use`` - nbval's "Kernel died
  before replying to kernel_info". ``FACECOM_NBVAL_TRANSPORT=tcp`` brings TCP back (and Windows,
  which has no IPC transport, always uses it);
* sends the kernel's stderr to a temporary file and puts its tail, with the kernel's exit code,
  into the error of a start that fails and into the report of a cell that finds the kernel dead;
* notices a kernel that dies while running a cell: nbval would wait for the reply for the whole
  cell timeout (2000 s by default); here the cell fails at once with the kernel's exit code and
  stderr (:class:`KernelDiedError`), and the later cells report the dead kernel with its stderr;
* starts the kernel again when a START fails (the process died, or it did not answer
  ``kernel_info`` / IOPub within nbval's startup timeout), up to :data:`START_ATTEMPTS` times,
  warning about every retried start so that a flaky machine stays visible. The retry is the report
  runner's own, :func:`facecom_utils.reporting.execution.start_with_retries`. Nothing here runs a cell:
  once a kernel has started, a failing cell fails as before and is never retried.

Only the test tools import this module (it needs nbval, from the ``dev`` extra).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from queue import Empty

from jupyter_client.manager import KernelManager
from nbval.kernel import NbvalKernelspecManager, RunningKernel

from facecom_utils.reporting import execution
from facecom_utils.reporting.execution import KERNEL_START_ATTEMPTS, KernelStartError

__all__ = ["CapturingKernel", "KernelDiedError", "KernelStartError", "START_ATTEMPTS", "kernel_transport",
           "start_attempts", "tail"]

#: Attempts at starting one notebook's kernel (``FACECOM_NBVAL_START_ATTEMPTS`` overrides).
START_ATTEMPTS = KERNEL_START_ATTEMPTS
#: How much of a kernel's stderr a message quotes (its last lines).
STDERR_TAIL_LINES = 30
STDERR_TAIL_CHARS = 4000

# Unix socket paths are limited to 104-108 bytes; beyond this, IPC falls back to TCP.
MAX_IPC_PATH = 90

_private_dir: Path | None = None


def _private() -> Path:
    """This process's folder for kernels' stderr files and IPC sockets (removed when it exits)."""
    global _private_dir
    if _private_dir is None or not _private_dir.is_dir():
        _private_dir = Path(tempfile.mkdtemp(prefix="nbval-kernel-"))
        atexit.register(shutil.rmtree, _private_dir, True)
    return _private_dir


def _new_stderr_path() -> Path:
    """A fresh file for one kernel's stderr."""
    fd, name = tempfile.mkstemp(prefix="kernel-", suffix=".stderr", dir=_private())
    os.close(fd)
    return Path(name)


def kernel_transport() -> str:
    """``ipc`` (default where available) or ``tcp`` (Windows, or ``FACECOM_NBVAL_TRANSPORT=tcp``)."""
    wanted = os.environ.get("FACECOM_NBVAL_TRANSPORT", "ipc").strip().lower()
    if wanted not in ("ipc", "tcp"):
        raise ValueError(f"FACECOM_NBVAL_TRANSPORT must be ipc or tcp, not {wanted!r}")
    return "tcp" if os.name == "nt" else wanted


def connection_options() -> dict:
    """KernelManager arguments for :func:`kernel_transport`: a unique socket path prefix for IPC."""
    if kernel_transport() == "tcp":
        return {}
    prefix = _private() / f"kernel-{uuid.uuid4().hex[:12]}"
    if len(str(prefix)) + 3 > MAX_IPC_PATH:  # "-N" suffixes; the sockets must fit sun_path
        return {}
    return {"transport": "ipc", "ip": str(prefix)}


def tail(path: Path | str | None, lines: int = STDERR_TAIL_LINES, chars: int = STDERR_TAIL_CHARS) -> str:
    """The last ``lines`` lines (at most ``chars`` characters) of a text file; "" when absent."""
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return ""
    text = "\n".join(text.rstrip().splitlines()[-lines:])
    return text[-chars:]


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def start_attempts() -> int:
    """:data:`START_ATTEMPTS`, or ``FACECOM_NBVAL_START_ATTEMPTS`` when set (at least 1)."""
    value = os.environ.get("FACECOM_NBVAL_START_ATTEMPTS")
    return max(1, int(value)) if value else START_ATTEMPTS


class _FailedStart(RuntimeError):
    """One failed start, described (its cause is the original error)."""


class KernelDiedError(RuntimeError):
    """The kernel process exited while a reply was awaited; the message quotes its stderr."""


#: While awaiting a reply, how often to check that the kernel process is still alive (seconds).
ALIVE_CHECK_S = 1.0


class CapturingKernel(RunningKernel):
    """nbval's ``RunningKernel`` over IPC, whose stderr goes to a file, and whose start is retried.

    Same arguments as nbval's (``kernel_name``, ``cwd``, ``startup_timeout``) plus, for tests,
    ``attempts`` and ``kernel_spec_manager`` (default: nbval's, which maps ``:nbval-parent-env``
    to ipykernel on this interpreter).
    """

    def __init__(self, kernel_name, cwd=None, startup_timeout=60, *, attempts=None, kernel_spec_manager=None):
        attempts = start_attempts() if attempts is None else max(1, int(attempts))
        self.kernel_name = kernel_name
        self.stderr_path: Path | None = None

        def start(attempt: int) -> Path:
            stderr_path = _new_stderr_path()
            t0 = time.monotonic()
            try:
                self._start_once(kernel_name, cwd, startup_timeout, stderr_path, kernel_spec_manager)
            except Exception as error:  # noqa: BLE001 - any failure of the START is retried
                code = self._discard_failed_start()
                failed = _FailedStart(self._describe(time.monotonic() - t0, error, code, stderr_path))
                stderr_path.unlink(missing_ok=True)
                raise failed from error
            return stderr_path

        def warn(line: str) -> None:
            warnings.warn(line, RuntimeWarning, stacklevel=4)

        try:
            self.stderr_path, self.start_failures = execution.start_with_retries(
                start, attempts, describe=str, notify=warn, what=f"kernel {kernel_name!r}")
        except KernelStartError as error:
            raise KernelStartError(f"kernel {kernel_name!r} failed to start {attempts} times (startup timeout "
                                   f"{startup_timeout:g} s each):\n" + "\n".join(error.failures), error.failures) from None
        self.start_attempts = len(self.start_failures) + 1

    def _start_once(self, kernel_name, cwd, startup_timeout, stderr_path, kernel_spec_manager) -> None:
        """nbval.kernel.start_new_kernel + RunningKernel._ensure_iopub_up; stderr to ``stderr_path``, IPC."""
        self.km = KernelManager(
            kernel_name=kernel_name,
            kernel_spec_manager=kernel_spec_manager or NbvalKernelspecManager(),
            **connection_options(),
        )
        with open(stderr_path, "wb") as stderr:  # the child keeps its own descriptor
            self.km.start_kernel(stderr=stderr, cwd=cwd)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=startup_timeout)
        self._ensure_iopub_up()

    def _discard_failed_start(self) -> int | None:
        """Stop what a failed start left (channels, a hung process); return the process's exit code."""
        code = self.exit_code()
        kc, km = getattr(self, "kc", None), getattr(self, "km", None)
        for step in (getattr(kc, "stop_channels", None), lambda: km.shutdown_kernel(now=True) if km else None):
            try:
                if step is not None:
                    step()
            except Exception:  # noqa: BLE001, S110 - best effort: the start already failed
                pass
        for name in ("kc", "km"):
            self.__dict__.pop(name, None)
        return code

    @staticmethod
    def _describe(seconds: float, error: BaseException, code: int | None, stderr_path: Path) -> str:
        status = "still running (killed)" if code is None else f"exit code {code}"
        err = tail(stderr_path)
        quoted = f"kernel stderr (last lines):\n{_indent(err)}" if err else "kernel stderr: (empty)"
        return f"after {seconds:.1f} s: {type(error).__name__}: {error}; kernel process {status}; {quoted}"

    def await_reply(self, msg_id, timeout=None):
        """nbval's await_reply, failing at once (with stderr) when the kernel process has died.

        ``timeout`` keeps nbval's meaning (``queue.Empty`` after that long without a reply).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = ALIVE_CHECK_S if deadline is None else min(ALIVE_CHECK_S, max(0.0, deadline - time.monotonic()))
            try:
                return super().await_reply(msg_id, timeout=wait)
            except Empty:
                if not self.is_alive():
                    raise KernelDiedError(self.death_report()) from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    def exit_code(self) -> int | None:
        """The kernel process's exit code (negative: killed by that signal); None while it runs."""
        process = getattr(getattr(getattr(self, "km", None), "provisioner", None), "process", None)
        return None if process is None else process.poll()

    def stderr_tail(self) -> str:
        """The last lines the running (or dead) kernel wrote to its stderr."""
        return tail(self.stderr_path)

    def death_report(self) -> str:
        """What to add to a failing cell's report when the kernel is not alive."""
        code = self.exit_code()
        status = "stopped" if not hasattr(self, "km") else ("exit code %s" % code if code is not None else "unknown")
        err = self.stderr_tail()
        return f"kernel {self.kernel_name!r} is dead ({status}); its stderr (last lines):\n" + (err or "(empty)")
