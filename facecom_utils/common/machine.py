"""What machine a number was measured on: the CPU model, its cores, the operating system.

The published reference run (:mod:`facecom_utils.reporting.publish`) and the speed benchmark
(:mod:`facecom_utils.bench.speed`) both name the machine; they read it here, the same way.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["cpu_model", "machine_description"]


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux's ``cpuinfo``), else what :mod:`platform` knows (e.g. ``x86_64``)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """The CPU model, core count and operating system, e.g. ``"Intel Xeon ... · 2 cores · Linux-6.1"``."""
    return f"{cpu_model()} · {os.cpu_count()} cores · {platform.system()}-{platform.release().split('-')[0]}"
