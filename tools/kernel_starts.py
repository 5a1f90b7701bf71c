"""Start and stop nbval's notebook kernel many times and print how often a start fails, and why.

Measures the flake "kernel died before replying to kernel_info" of ``make test``: each start is the
one nbval makes for ``pytest --nbval-current-env notebooks/`` (its KernelManager, its kernelspec
manager for the parent environment, its startup timeout, its IOPub handshake, cwd ``notebooks/``,
the environment the Makefile exports), except that the kernel's stderr goes to a file we read
instead of /dev/null.

    python tools/kernel_starts.py --starts 100 --load 2                 # nbval as it is
    python tools/kernel_starts.py --starts 100 --load 2 --mode fixed    # notebooks/conftest.py's start
    python tools/kernel_starts.py --starts 40 --fresh-home              # first-start costs (fresh HOME)
    python tools/kernel_starts.py --starts 100 --workers 4 --load 2     # several test runs at once
    python tools/kernel_starts.py --starts 100 --port-churn 1           # other processes taking ports

``--load N`` runs N busy processes beside the starts (``spin``: a Python busy loop; ``torch``: a
matmul loop) for the whole measurement; ``--port-churn N`` runs N processes that keep taking and
releasing localhost ports, as other test runs on the machine do. Prints one JSON summary (``--json`` also writes every start).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from facecom_utils.common.paths import NOTEBOOKS_DIR, REPO_ROOT

# What `make test` exports for the nbval run (Makefile: export PYTHONHASHSEED/MPLBACKEND, then the line).
MAKE_TEST_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TQDM_DISABLE": "1",
    "MPLBACKEND": "Agg",
    "PYTHONHASHSEED": "0",
    "FACECOM_DATA_ROOT": "demo",
}
LOADS = {
    "spin": "while True: pass",
    "torch": (
        "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\n"
        "while True: a = (a @ a).tanh()"
    ),
}
# Other processes taking localhost ports (test runs, kernels and their clients, torch.distributed
# stores): each loop binds a listener on port 0, connects to it and keeps the last 200 pairs open.
PORT_CHURN = """
import collections, socket
held = collections.deque(maxlen=200)
while True:
    server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
    client = socket.create_connection(server.getsockname()); peer, _ = server.accept()
    held.append((server, client, peer))
"""
# Variables that point the kernel's first-start files away from HOME; cleared for --fresh-home.
HOME_VARS = ("IPYTHONDIR", "MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
             "XDG_RUNTIME_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR")


def start_nbval(startup_timeout: float, stderr_path: Path):
    """nbval 0.11's RunningKernel.__init__ for --nbval-current-env, stderr to a file instead of /dev/null."""
    from nbval.kernel import CURRENT_ENV_KERNEL_NAME, RunningKernel, start_new_kernel

    kernel = RunningKernel.__new__(RunningKernel)
    with open(stderr_path, "wb") as stderr:
        kernel.km, kernel.kc = start_new_kernel(
            startup_timeout=startup_timeout,
            kernel_name=CURRENT_ENV_KERNEL_NAME,
            stderr=stderr,
            cwd=str(NOTEBOOKS_DIR),
        )
    kernel._ensure_iopub_up()
    return kernel


def start_fixed(startup_timeout: float, stderr_path: Path):
    """The start notebooks/conftest.py gives nbval (capture + bounded retry of the start)."""
    from nbval.kernel import CURRENT_ENV_KERNEL_NAME

    from facecom_utils.reporting.kernel import CapturingKernel

    return CapturingKernel(CURRENT_ENV_KERNEL_NAME, cwd=str(NOTEBOOKS_DIR), startup_timeout=startup_timeout)


def exit_code(kernel_or_none) -> int | None:
    km = getattr(kernel_or_none, "km", None)
    process = getattr(getattr(km, "provisioner", None), "process", None)
    return None if process is None else process.poll()


def one_start(i: int, mode: str, startup_timeout: float, fresh_home: bool, workdir: Path) -> dict:
    saved = {k: os.environ.get(k) for k in ("HOME", *HOME_VARS)}
    home = None
    if fresh_home:
        home = Path(tempfile.mkdtemp(prefix="home-", dir=workdir))
        os.environ["HOME"] = str(home)
        for k in HOME_VARS:
            os.environ.pop(k, None)
    stderr_path = workdir / f"stderr-{os.getpid()}-{i}.txt"
    record: dict = {"i": i, "pid": os.getpid()}
    t0 = time.monotonic()
    kernel = None
    try:
        kernel = (start_nbval if mode == "nbval" else start_fixed)(startup_timeout, stderr_path)
        record["ok"] = True
        record["attempts"] = getattr(kernel, "start_attempts", 1)
    except Exception as e:  # noqa: BLE001 - a failed start is what we count
        record["ok"] = False
        record["error"] = f"{type(e).__name__}: {e}"
    record["seconds"] = round(time.monotonic() - t0, 3)
    try:
        if kernel is not None:
            # One trivial cell, as the first notebook cell would.
            msg_id = kernel.execute_cell_input("1 + 1")
            kernel.await_reply(msg_id, timeout=max(startup_timeout, 60))
            kernel.stop()
    except Exception as e:  # noqa: BLE001
        record["ok_after"] = False
        record["error_after"] = f"{type(e).__name__}: {e}"
    stderr_file = getattr(kernel, "stderr_path", None) if mode == "fixed" else stderr_path
    if stderr_file and Path(stderr_file).exists():
        record["stderr"] = Path(stderr_file).read_text(errors="replace")[-3000:]
    if mode == "nbval" and stderr_path.exists():
        stderr_path.unlink()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)
    return record


def worker(args) -> None:
    os.environ.update(MAKE_TEST_ENV)
    workdir = Path(args.workdir)
    for i in range(args.starts):
        print(json.dumps(one_start(i, args.mode, args.startup_timeout, args.fresh_home, workdir)), flush=True)


def summarize(records: list[dict], args, wall: float, load_avg: tuple[float, float, float]) -> dict:
    times = sorted(r["seconds"] for r in records if r["ok"])
    failures = [r for r in records if not r["ok"] or r.get("ok_after") is False]

    def first_lines(text: str) -> str:
        lines = [ln for ln in text.splitlines() if ln.strip() and "without encryption" not in ln]
        return re.sub(r"\d{4,}", "N", " | ".join(lines[-2:]))[:300]  # ports, pids: one kind

    stderr_kinds: dict[str, int] = {}
    for r in records:
        key = first_lines(r.get("stderr", "")) or "(empty, or only the TCP-encryption warning)"
        stderr_kinds[key] = stderr_kinds.get(key, 0) + 1
    q = lambda p: times[min(len(times) - 1, int(p * len(times)))] if times else None  # noqa: E731
    return {
        "mode": args.mode,
        "starts": len(records),
        "workers": args.workers,
        "load": f"{args.load}x {args.load_kind}" + (f" + {args.port_churn}x port churn" if args.port_churn else ""),
        "fresh_home": args.fresh_home,
        "startup_timeout_s": args.startup_timeout,
        "failed_starts": sum(not r["ok"] for r in records),
        "failed_after_start": sum(r.get("ok_after") is False for r in records),
        "retried_starts": sum(r.get("attempts", 1) > 1 for r in records),
        "start_seconds": {"p50": q(0.5), "p90": q(0.9), "max": times[-1] if times else None,
                          "mean": round(statistics.mean(times), 3) if times else None},
        "loadavg_end": load_avg,
        "wall_seconds": round(wall, 1),
        "stderr_kinds": stderr_kinds,
        "failures": [{k: r.get(k) for k in ("i", "pid", "seconds", "error", "error_after", "stderr")}
                     for r in failures][:10],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--starts", type=int, default=100, help="kernel starts in all (split over workers)")
    p.add_argument("--mode", choices=("nbval", "fixed"), default="nbval")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="nbval's default is 60")
    p.add_argument("--workers", type=int, default=1, help="processes starting kernels at the same time")
    p.add_argument("--load", type=int, default=2, help="busy processes beside the starts")
    p.add_argument("--load-kind", choices=sorted(LOADS), default="spin")
    p.add_argument("--port-churn", type=int, default=0, help="processes taking localhost ports beside the starts")
    p.add_argument("--fresh-home", action="store_true", help="each start in a new empty HOME")
    p.add_argument("--json", type=Path, help="also write every start's record here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="kernel-starts-"))
    env = {**os.environ, **MAKE_TEST_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    loads = [subprocess.Popen([sys.executable, "-c", LOADS[args.load_kind]], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(args.load)]
    loads += [subprocess.Popen([sys.executable, "-c", PORT_CHURN], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) for _ in range(args.port_churn)]
    t0 = time.monotonic()
    try:
        per = [args.starts // args.workers + (w < args.starts % args.workers) for w in range(args.workers)]
        cmd = [sys.executable, __file__, "--worker", "--workdir", str(workdir), "--mode", args.mode,
               "--startup-timeout", str(args.startup_timeout)] + (["--fresh-home"] if args.fresh_home else [])
        workers = [subprocess.Popen(cmd + ["--starts", str(n)], env=env, stdout=subprocess.PIPE, text=True)
                   for n in per if n]
        records = []
        for w in workers:
            out, _ = w.communicate()
            records += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    finally:
        for proc in loads:
            proc.kill()
            proc.wait()
    summary = summarize(records, args, time.monotonic() - t0, os.getloadavg())
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "records": records}, indent=1))
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
