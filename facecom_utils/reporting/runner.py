"""Run the four notebooks headlessly with papermill and render the reports.

Usage (also ``facecom run``)::

    python -m facecom_utils.reporting.runner                  # FACECOM in Task_A/, Task_B/ (its preset), else the demo
    python -m facecom_utils.reporting.runner --plan           # what it would run, with which parameters; runs nothing
    python -m facecom_utils.reporting.runner --preset facecom_cpu --data-root /path/to/FACECOM --notebooks 01,02
    python -m facecom_utils.reporting.runner -f params/03_arcface_recognition/facecom_cpu.yml --notebooks 03,04
    python -m facecom_utils.reporting.runner -p epochs 3 -p lr 0.001 --name quick

Each notebook ``NN_name.ipynb`` of ``notebooks/`` is executed in the current Python environment
(kernel ``python3`` launched with ``sys.executable``; no kernel registration needed) and written to
``reports/<run>/``::

    NN_name.ipynb         the executed notebook
    NN_name.html          rendered with nbconvert
    NN_name.nocode.html   the same without code cells (for readers)
    NN_name/              the notebook's output_dir: metrics.json, checkpoints, embeddings, ...
    index.html            links to every report and the headline metrics, failures marked
    summary.json          every notebook's status, timing, parameters and metrics.json

What runs with which parameters, presets and data is decided first (:mod:`facecom_utils.reporting.plan`:
on FACECOM without a named preset, the FACECOM preset for this machine) and printed as a banner: data
root, preset files, device, expected time per notebook. While a notebook runs, the terminal gets a line
whenever it enters a new section, and the notebook's own progress lines (counts, elapsed, ETA).

A failing notebook does not stop the run: its partial report is rendered, the notebooks that do not
depend on it still run (04 needs 03), ``index.html`` marks the failure, the error names the notebook
and the cell, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from facecom_utils.common import paths
from facecom_utils.common.paths import NOTEBOOKS_DIR, REPORTS_DIR
from facecom_utils.common.progress import format_seconds
from facecom_utils.reporting.execution import (
    KERNEL_ENV,
    KERNEL_START_ATTEMPTS,
    CurrentEnvKernelManager,
    environment,
    is_kernel_start_failure,
    kernel_command,
    render_html,
    run_notebook,
)
from facecom_utils.reporting.index import HEADLINE_METRICS, NotebookResult, RunResult, git_state, write_index
from facecom_utils.reporting.plan import (
    DEPENDENCIES,
    NOTEBOOKS,
    RunError,
    RunPlan,
    gather_parameters,
    load_presets,
    notebook_defaults,
    notebook_parameters,
    parse_value,
    plan_run,
    preset_files,
    preset_notebook,
    resolve_notebooks,
)
from facecom_utils.train.rundir import RunDir

__all__ = [
    "NOTEBOOKS",
    "HEADLINE_METRICS",
    "DEPENDENCIES",
    "KERNEL_ENV",
    "KERNEL_START_ATTEMPTS",
    "NotebookResult",
    "RunResult",
    "RunError",
    "RunPlan",
    "CurrentEnvKernelManager",
    "parse_value",
    "load_presets",
    "preset_files",
    "preset_notebook",
    "notebook_defaults",
    "resolve_notebooks",
    "notebook_parameters",
    "plan_run",
    "run_notebook",
    "is_kernel_start_failure",
    "kernel_command",
    "render_html",
    "run_reports",
    "run_plan",
    "write_index",
    "add_run_arguments",
    "gather_parameters",
    "run_from_args",
    "main",
]

NOTEBOOK_DIR = NOTEBOOKS_DIR  # the names this module has always had
_environment = environment  # tools/sync_notebooks.py imports it from here


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_reports(
    notebooks: str | Sequence[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    name: str | None = None,
    data_root: str | Path | None = None,
    reports_dir: str | Path = REPORTS_DIR,
    notebook_dir: str | Path = NOTEBOOK_DIR,
    cell_timeout: float | None = 3600,
    html: bool = True,
    log_output: bool = False,
    quiet: bool = False,
) -> RunResult:
    """Execute notebooks in order, render them, and write ``index.html`` + ``summary.json``.

    Args:
        notebooks: ids/stems to run (``"01,02"``, ``["03", "04"]``); ``None`` runs all four.
        parameters: flat parameters and/or per-notebook sections (see :mod:`facecom_utils.reporting.plan`);
            on FACECOM they are layered on the FACECOM preset for this machine.
        name: run name, the folder under ``reports_dir`` (default: a timestamp).
        data_root: FACECOM-layout folder; ``None``: ``parameters["data_root"]`` if set, else
            ``$FACECOM_DATA_ROOT``, else FACECOM in the repository, else the synthetic demo.
        reports_dir: parent of the run folder.
        notebook_dir: where ``NN_name.ipynb`` are read from.
        cell_timeout: seconds a single cell may run.
        html: render ``.html`` and ``.nocode.html``.
        log_output: stream the kernels' output to the terminal.
        quiet: no banner or progress lines on stderr.

    Returns:
        The :class:`RunResult` (check ``.ok``); failures never raise, bad arguments raise :class:`RunError`.
    """
    plan = plan_run(notebooks, parameters=parameters, data_root=data_root, name=name, reports_dir=reports_dir,
                    notebook_dir=notebook_dir)
    return run_plan(plan, notebook_dir, cell_timeout=cell_timeout, html=html, log_output=log_output,
                    say=None if quiet else _log)


def run_plan(plan: RunPlan, notebook_dir: str | Path = NOTEBOOK_DIR, cell_timeout: float | None = 3600,
             html: bool = True, log_output: bool = False, say: Callable[[str], None] | None = _log) -> RunResult:
    """Carry out a :class:`RunPlan`: print its banner, run its notebooks in order, write the index after each.

    Args:
        plan: From :func:`~facecom_utils.reporting.plan.plan_run`.
        notebook_dir: Where ``NN_name.ipynb`` are read from.
        cell_timeout: Seconds a single cell may run.
        html: Render ``.html`` and ``.nocode.html``.
        log_output: Stream the kernels' output to the terminal.
        say: Prints a line to the terminal (``None``: silent).

    Returns:
        The :class:`RunResult`.
    """
    from facecom_utils.data.demo import DEFAULT_DEMO_ROOT, ensure_demo_dataset

    tell = say or (lambda _line: None)
    tell(plan.banner())
    if plan.data_root == Path(DEFAULT_DEMO_ROOT).resolve():
        ensure_demo_dataset(DEFAULT_DEMO_ROOT)  # generated on the first run
    run = RunResult(name=plan.name, run_dir=str(plan.run_dir), data_root=str(plan.data_root),
                    synthetic=plan.synthetic, notebooks=[], device=plan.device,
                    presets={stem: [str(p) for p in plan.presets_of(stem)] for stem in plan.notebooks},
                    commit=git_state())
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    for stem in plan.notebooks:
        params = plan.parameters[stem]
        needs = DEPENDENCIES.get(stem)
        earlier = {r.name: r.status for r in run.notebooks}
        if needs in earlier and earlier[needs] != "ok" and params.get("run_dir") == str(plan.run_dir / needs):
            run.notebooks.append(NotebookResult(name=stem, status="skipped", output_dir=params["output_dir"],
                                                error=f"{stem}.ipynb: skipped because {needs} did not finish (its run_dir)"))
            tell(f"[{stem}] skipped: {needs} failed")
            continue
        run.notebooks.append(_execute(stem, params, plan, Path(notebook_dir), cell_timeout, html, log_output, say))
        write_index(run)  # after every notebook, so a run killed midway still has one
    write_index(run)
    tell(f"index: {run.index}")
    return run


def _execute(stem: str, params: dict[str, Any], plan: RunPlan, notebook_dir: Path, cell_timeout: float | None,
             html: bool, log_output: bool, say: Callable[[str], None] | None) -> NotebookResult:
    """Run one notebook into the run folder and render it; failures are recorded, never raised."""
    tell = say or (lambda _line: None)
    executed = plan.run_dir / f"{stem}.ipynb"
    minutes = plan.expected.get(stem)
    tell(f"[{stem}] running" + (f" (expected about {minutes:g} min)" if minutes is not None else "") + " ...")
    seconds, error, cell = run_notebook(notebook_dir / f"{stem}.ipynb", executed, params, cell_timeout=cell_timeout,
                                        cwd=notebook_dir, log_output=log_output, say=say)
    result = NotebookResult(name=stem, status="failed" if error else "ok", seconds=round(seconds, 1),
                            output_dir=params["output_dir"], parameters=params, error=error, failed_cell=cell,
                            metrics=RunDir(params["output_dir"]).read_metrics())
    if executed.is_file():
        result.notebook = executed.name
        if html:
            try:
                render_html(executed, plan.run_dir / f"{stem}.html", plan.run_dir / f"{stem}.nocode.html")
                result.html, result.nocode_html = f"{stem}.html", f"{stem}.nocode.html"
            except Exception as exc:  # noqa: BLE001 - a report that cannot render must not hide the others
                tell(f"[{stem}] could not render HTML: {type(exc).__name__}: {exc}")
    tell(f"[{stem}] {'FAILED: ' + error if error else 'ok'} ({format_seconds(seconds)})")
    return result


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the runner's options to ``parser`` (shared by ``python -m facecom_utils.reporting.runner`` and ``facecom run``)."""
    parser.add_argument("--preset", action="append", default=[], metavar="NAME",
                        help="named preset: params/<notebook>/NAME.yml for each chosen notebook that has one "
                             "(e.g. facecom_cpu; 'defaults': the notebooks' own demo-sized defaults); repeatable. "
                             "Default: on FACECOM, facecom_gpu with a CUDA GPU, else facecom_cpu; on the demo, none")
    parser.add_argument("-f", "--parameters-file", action="append", default=[], metavar="YAML",
                        help="parameter file (YAML), e.g. params/03_arcface_recognition/facecom_cpu.yml (applies to "
                             "the notebook of its folder); repeat to layer files, later ones win")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override one parameter (typed like papermill: True/False/None, int, float, str)")
    parser.add_argument("--name", default=None, help="run name: reports/<name>/ (default: a timestamp)")
    parser.add_argument("--notebooks", default=None, help="subset to run, e.g. 01,02 (default: all four)")
    parser.add_argument("--data-root", default=None,
                        help="FACECOM-layout folder (default: $FACECOM_DATA_ROOT, else the repo root if Task_A/, "
                             "Task_B/ hold FACECOM, else the synthetic demo)")
    parser.add_argument("--plan", action="store_true",
                        help="print the plan (notebooks, data root, presets, device, expected times, each notebook's "
                             "parameters) and run nothing")
    parser.add_argument("--reports-dir", default=str(REPORTS_DIR), help="parent folder of the run (default: %(default)s)")
    parser.add_argument("--notebook-dir", default=str(NOTEBOOK_DIR), help=argparse.SUPPRESS)
    parser.add_argument("--cell-timeout", type=float, default=3600,
                        help="seconds a single notebook cell may run before the notebook fails (default: %(default)s)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML rendering")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the terminal")
    parser.add_argument("--no-dataset-images", action="store_true",
                        help="leave out the figures that draw dataset images (sample grids, augmented batches, "
                             "near-duplicate pairs, error galleries): sets dataset_images=False in every notebook")
    parser.add_argument("--publish", default=None, metavar="DIR",
                        help="after a run in which every notebook finished, write its compact, path-free copy to DIR "
                             "(index.html, no-code reports, summary.json, metrics.json; implies --no-dataset-images), "
                             "e.g. docs/reference-run (make reference)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run from parsed arguments; returns the exit code (0 ok, 1 a notebook failed, 2 bad arguments)."""
    try:
        plan = plan_run(args.notebooks, presets=args.preset, files=args.parameters_file, overrides=args.parameter,
                        data_root=args.data_root, name=args.name, reports_dir=args.reports_dir,
                        notebook_dir=args.notebook_dir,
                        dataset_images=not (getattr(args, "no_dataset_images", False) or getattr(args, "publish", None)))
    except RunError as exc:
        print(f"facecom run: error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "plan", False):
        print(plan.describe())
        return 0
    run = run_plan(plan, args.notebook_dir, cell_timeout=args.cell_timeout, html=not args.no_html,
                   log_output=args.log_output)
    for failure in run.failures:
        print(f"facecom run: {failure.status}: {failure.error}", file=sys.stderr)
    if run.ok and getattr(args, "publish", None):
        from facecom_utils.reporting.publish import PublishError, publish_run

        try:
            _log(f"published: {publish_run(plan.run_dir, paths.repo_path(args.publish))}")
        except PublishError as exc:
            print(f"facecom run: error: cannot publish: {exc}", file=sys.stderr)
            return 1
    return 0 if run.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m facecom_utils.reporting.runner``."""
    parser = argparse.ArgumentParser(
        prog="python -m facecom_utils.reporting.runner",
        description="Run notebooks 01-04 with papermill and write reports/<run>/ (HTML reports, index.html, summary.json).",
    )
    add_run_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
