"""notebooks/conftest.py's nbval kernel: stderr kept, a failed START retried, cells never retried.

The retry is the report runner's (``execution.start_with_retries``, tested on its own in tests/test_run.py).

Fake kernels (a command that writes to stderr and exits, then execs the real ipykernel) stand in
for a kernel that dies at start; no notebook is run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
import time
from queue import Empty

import pytest

pytest.importorskip("nbval")

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager  # noqa: E402
from nbval.kernel import CURRENT_ENV_KERNEL_NAME  # noqa: E402

from conftest import REPO_ROOT  # noqa: E402
from facecom_utils.reporting import execution  # noqa: E402
from facecom_utils.reporting.kernel import (  # noqa: E402
    CapturingKernel,
    KernelDiedError,
    KernelStartError,
    kernel_transport,
    tail,
)

FAKE_KERNEL = textwrap.dedent(
    """
    import os, pathlib, sys
    state, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
    if mode == "always" or not state.exists():
        state.touch()
        sys.stderr.write("fake kernel: zmq.error.ZMQError: Address already in use (simulated)\\n")
        sys.exit(3)
    os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *sys.argv[3:]])
    """
)


class FakeSpecs(KernelSpecManager):
    """Every kernel name maps to the fake kernel command."""

    argv: list[str] = []

    def get_kernel_spec(self, kernel_name):
        return KernelSpec(argv=self.argv, display_name="fake", language="python")


@pytest.fixture
def fake_specs(tmp_path):
    script = tmp_path / "fake_kernel.py"
    script.write_text(FAKE_KERNEL)

    def make(mode: str) -> FakeSpecs:
        specs = FakeSpecs()
        specs.argv = [sys.executable, str(script), str(tmp_path / "started-once"), mode, "-f", "{connection_file}"]
        return specs

    return make


def _run(kernel: CapturingKernel, code: str) -> None:
    kernel.await_reply(kernel.execute_cell_input(code), timeout=60)


def test_a_kernel_that_dies_once_at_start_is_started_again_and_its_stderr_kept(tmp_path, fake_specs, monkeypatch):
    calls = []
    shared = execution.start_with_retries

    def spy(*args, **kwargs):  # the one retry the report runner uses too
        calls.append(args[1])
        return shared(*args, **kwargs)

    monkeypatch.setattr(execution, "start_with_retries", spy)
    with pytest.warns(RuntimeWarning, match=r"(?s)attempt 1 of 3 failed.*Address already in use \(simulated\)"
                                            r".*starting a new one"):
        kernel = CapturingKernel(
            "fake", cwd=str(tmp_path), startup_timeout=60, attempts=3, kernel_spec_manager=fake_specs("once")
        )
    try:
        assert calls == [3]
        assert kernel.start_attempts == 2
        [failure] = kernel.start_failures
        assert "attempt 1 of 3 failed" in failure and "exit code 3" in failure
        assert "Address already in use (simulated)" in failure
        assert kernel.is_alive()
        _run(kernel, "x = 6 * 7")
    finally:
        kernel.stop()


def test_a_kernel_that_always_dies_fails_with_the_stderr_of_every_attempt(tmp_path, fake_specs):
    with pytest.raises(KernelStartError) as info, pytest.warns(RuntimeWarning, match="starting a new one"):
        CapturingKernel("fake", cwd=str(tmp_path), startup_timeout=60, attempts=3, kernel_spec_manager=fake_specs("always"))
    message = str(info.value)
    assert "failed to start 3 times" in message and len(info.value.failures) == 3
    for attempt in (1, 2, 3):
        assert f"attempt {attempt} of 3 failed" in message
    assert message.count("Address already in use (simulated)") == 3
    assert message.count("exit code 3") == 3
    assert "Kernel died before replying to kernel_info" in message


def test_attempts_default_from_the_environment(tmp_path, fake_specs, monkeypatch):
    monkeypatch.setenv("FACECOM_NBVAL_START_ATTEMPTS", "1")
    with pytest.raises(KernelStartError, match="failed to start 1 times"):
        CapturingKernel("fake", cwd=str(tmp_path), kernel_spec_manager=fake_specs("once"))


def test_a_kernel_that_dies_in_a_cell_fails_it_at_once_with_its_stderr_and_exit_code(tmp_path):
    kernel = CapturingKernel(CURRENT_ENV_KERNEL_NAME, cwd=str(tmp_path), startup_timeout=60)
    try:
        assert kernel.start_attempts == 1 and not kernel.start_failures
        if os.name != "nt":
            assert kernel.km.transport == "ipc"  # no localhost ports to lose to another process
        msg_id = kernel.execute_cell_input("import os; os.write(2, b'segfault-like death (simulated)\\n'); os._exit(5)")
        t0 = time.monotonic()
        with pytest.raises(KernelDiedError) as info:
            kernel.await_reply(msg_id, timeout=600)  # nbval would wait all of it
        assert time.monotonic() - t0 < 30
        assert not kernel.is_alive()
        for report in (str(info.value), kernel.death_report()):
            assert "exit code 5" in report and "segfault-like death (simulated)" in report
    finally:
        kernel.kc.stop_channels()
        kernel.km.shutdown_kernel(now=True)


def test_a_slow_cell_still_times_out_as_in_nbval(tmp_path):
    kernel = CapturingKernel(CURRENT_ENV_KERNEL_NAME, cwd=str(tmp_path), startup_timeout=60)
    try:
        msg_id = kernel.execute_cell_input("import time; time.sleep(30)")
        with pytest.raises(Empty):
            kernel.await_reply(msg_id, timeout=1.5)
        assert kernel.is_alive()
    finally:
        kernel.stop()


def test_tcp_transport_on_request(monkeypatch):
    monkeypatch.setenv("FACECOM_NBVAL_TRANSPORT", "tcp")
    assert kernel_transport() == "tcp"
    monkeypatch.setenv("FACECOM_NBVAL_TRANSPORT", "carrier-pigeon")
    with pytest.raises(ValueError):
        kernel_transport()


def test_tail_keeps_the_last_lines(tmp_path):
    path = tmp_path / "err.txt"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(path, lines=2) == "line 98\nline 99"
    assert tail(tmp_path / "absent") == ""


def test_notebooks_conftest_gives_nbval_the_capturing_kernel(monkeypatch):
    import nbval.plugin

    monkeypatch.setattr(nbval.plugin, "RunningKernel", nbval.plugin.RunningKernel)
    spec = importlib.util.spec_from_file_location("notebooks_conftest", REPO_ROOT / "notebooks" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.pytest_configure(None)
    assert nbval.plugin.RunningKernel is CapturingKernel
    # Only the kernel is swapped: running a cell (and never retrying one) stays nbval's.
    assert nbval.plugin.IPyNbCell.runtest.__module__ == "nbval.plugin"
