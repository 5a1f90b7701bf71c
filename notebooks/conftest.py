"""nbval run of the notebooks (``pytest --nbval-lax --nbval-current-env notebooks/``).

nbval throws its kernels' stderr away and gives up on a kernel that dies at start. Here its kernel
is :class:`facecom_utils.reporting.kernel.CapturingKernel`: connected over IPC instead of localhost TCP
ports (which another process can take between jupyter_client's pick and the kernel's bind), stderr
kept and quoted when a kernel dies or fails to start, and a failed START retried by the report
runner's own retry (``facecom_utils.reporting.execution.start_with_retries``: at most 3 attempts;
cells are never retried).
"""

from __future__ import annotations

import pytest

try:
    import nbval.plugin as _nbval_plugin
except ImportError:  # nbval not installed: nothing here runs the notebooks
    _nbval_plugin = None


def pytest_configure(config: pytest.Config) -> None:
    if _nbval_plugin is None:
        return
    from facecom_utils.reporting.kernel import CapturingKernel

    # IPyNbFile.setup looks up RunningKernel in nbval.plugin's namespace at call time.
    _nbval_plugin.RunningKernel = CapturingKernel


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if _nbval_plugin is None or not report.failed or not isinstance(item, _nbval_plugin.IPyNbCell):
        return
    from facecom_utils.reporting.kernel import KernelDiedError, KernelStartError

    if call.excinfo is not None and call.excinfo.errisinstance(KernelStartError):
        # pytest re-raises the notebook's setup error for each of its cells: the attempts and their
        # stderr once, at the first cell, without pytest's own frames; a line for the others.
        error = call.excinfo.value
        if getattr(error, "reported_at", None) is None:
            error.reported_at = item.nodeid
            report.longrepr = f"{type(error).__name__}: {error}"
        else:
            report.longrepr = f"{type(error).__name__}: the kernel did not start (see {error.reported_at})"
        return
    if call.excinfo is not None and call.excinfo.errisinstance(KernelDiedError):
        return  # its message already is the kernel's exit code and stderr
    kernel = getattr(item.parent, "kernel", None)
    if kernel is not None and hasattr(kernel, "death_report") and not kernel.is_alive():
        report.sections.append(("kernel stderr", kernel.death_report()))
