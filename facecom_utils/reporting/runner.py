"""Run the four notebooks headlessly with papermill and render the reports.

Usage (also ``facecom run``)::

    python -m facecom_utils.reporting.runner                                   # demo data (or FACECOM in Task_A/, Task_B/)
    python -m facecom_utils.reporting.runner --preset facecom_cpu --data-root ../shared/facecom --notebooks 01,02
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

Parameters: the notebooks' own defaults, then presets, then ``-p name value`` overrides (typed like
papermill's ``-p``: ``True``/``False``/``None``, int, float, a YAML flow list or mapping, else str),
which win over every preset. A preset is a plain papermill parameter file for one notebook,
``params/<notebook>/<preset>.yml``, listing only what differs from that notebook's defaults;
``--preset NAME`` picks ``params/<stem>/NAME.yml`` for each chosen notebook that has one, ``-f FILE``
names a file. A file outside a notebook's folder may hold top-level keys (for every notebook that
declares that parameter) and mappings under a notebook's key (``"02"`` or ``"02_gender_classification"``).
The runner sets ``data_root`` and ``output_dir`` of every notebook (a preset's ``data_root`` is the
run's data root unless ``--data-root`` is given), and notebook 04's ``run_dir`` to notebook 03's
output folder.

A failing notebook does not stop the run: its partial report is rendered, the notebooks that do not
depend on it still run (04 needs 03), ``index.html`` marks the failure, the error names the notebook
and the cell, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import html
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager

from facecom_utils.reporting.index import HEADLINE_METRICS, NotebookResult, RunResult, write_index
from facecom_utils.train.rundir import RunDir
from facecom_utils.common.paths import REPO_ROOT

__all__ = [
    "NOTEBOOKS",
    "HEADLINE_METRICS",
    "DEPENDENCIES",
    "NotebookResult",
    "RunResult",
    "RunError",
    "CurrentEnvKernelManager",
    "parse_value",
    "load_presets",
    "preset_files",
    "preset_notebook",
    "notebook_defaults",
    "resolve_notebooks",
    "notebook_parameters",
    "default_data_root",
    "run_notebook",
    "is_kernel_start_failure",
    "render_html",
    "run_reports",
    "write_index",
    "add_run_arguments",
    "gather_parameters",
    "run_from_args",
    "main",
]

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
REPORTS_DIR = REPO_ROOT / "reports"
PARAMS_DIR = REPO_ROOT / "params"

NOTEBOOKS: dict[str, str] = {
    "01": "01_eda",
    "02": "02_gender_classification",
    "03": "03_arcface_recognition",
    "04": "04_threshold_analysis",
}
"""Notebook id -> file stem, in running order."""

DEPENDENCIES: dict[str, str] = {"04_threshold_analysis": "03_arcface_recognition"}
"""Notebook -> the notebook whose output folder it reads (its ``run_dir``)."""

# Environment of the kernels: figures inline even when the runner has MPLBACKEND=Agg, no progress
# bars in the rendered reports, no debugger warning on stderr.
KERNEL_ENV: dict[str, str] = {
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    "TQDM_DISABLE": "1",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}

RUNNER_MANAGED = ("data_root", "output_dir")
# A kernel that dies while starting is started again, at most this many times in all (never a failing cell).
KERNEL_START_ATTEMPTS = 3
KERNEL_START_FAILURES = ("Kernel died before replying to kernel_info", "Address already in use")


class RunError(RuntimeError):
    """A bad runner argument (unknown notebook, unknown parameter, unreadable preset)."""


# --------------------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------------------


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
def _environment(updates: Mapping[str, str]) -> Iterator[None]:
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
# Parameters
# --------------------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """Type a ``-p name value`` string the way papermill's CLI does.

    ``"True"``/``"False"`` -> bool, ``"None"`` -> None, an int or float literal -> number, a YAML
    flow list or mapping (``"[0.85]"``, ``"{sunny: 2.0}"``) -> list or dict, else the string.
    """
    if text == "True":
        return True
    if text == "False":
        return False
    if text == "None":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.strip()[:1] in ("[", "{"):
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        if isinstance(value, (list, dict)):
            return value
    return text


def preset_notebook(path: str | Path) -> str | None:
    """The notebook a preset file is for: the stem of its folder (``params/<stem>/<name>.yml``), else None."""
    parent = Path(path).parent.name
    return parent if parent in NOTEBOOKS.values() else None


def preset_files(name: str, notebooks: str | Sequence[str] | None = None, params_dir: str | Path = PARAMS_DIR) -> list[Path]:
    """The files of preset ``name`` for the chosen notebooks: ``params/<stem>/<name>.yml`` where present.

    Raises:
        RunError: no chosen notebook has that preset (the message lists the presets there are).
    """
    stems = resolve_notebooks(notebooks)
    found = [Path(params_dir) / stem / f"{name}.yml" for stem in stems]
    found = [p for p in found if p.is_file()]
    if not found:
        known = sorted({p.stem for p in Path(params_dir).glob("*/*.yml")})
        raise RunError(f"no preset {name!r} for notebooks {', '.join(stems)}; presets: {', '.join(known) or 'none'} "
                       f"(files params/<notebook>/<preset>.yml)")
    return found


def load_presets(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Merge YAML presets in order (later files win; per-notebook sections are merged key by key).

    A file in a notebook's folder (``params/03_arcface_recognition/facecom_cpu.yml``) is a plain papermill
    parameter file for that notebook: its keys become that notebook's section. Any other file may hold
    top-level keys (for every notebook that declares them) and per-notebook sections (``"03":``).
    """
    import yaml

    merged: dict[str, Any] = {}
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise RunError(f"preset {p}: file not found (expected a YAML mapping of parameter: value)")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RunError(f"preset {p}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise RunError(f"preset {p}: expected a YAML mapping of parameter: value, got {type(data).__name__}")
        stem = preset_notebook(p)
        if stem is not None:
            data = {stem: data}
        for key, value in data.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged


def resolve_notebooks(selection: str | Sequence[str] | None) -> list[str]:
    """Notebook stems from ``"01,02"``-style ids or stems; ``None`` -> all four, in order."""
    if selection is None or selection == "" or selection == "all":
        return list(NOTEBOOKS.values())
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    chosen = set()
    for item in (s.strip() for s in items if s.strip()):
        key = item.removesuffix(".ipynb")
        stem = NOTEBOOKS.get(key) or NOTEBOOKS.get(key.zfill(2)) or (key if key in NOTEBOOKS.values() else None)
        if stem is None:
            raise RunError(f"unknown notebook {item!r}; expected ids {', '.join(NOTEBOOKS)} or names {', '.join(NOTEBOOKS.values())}")
        chosen.add(stem)
    return [stem for stem in NOTEBOOKS.values() if stem in chosen]


def notebook_parameters(path: str | Path) -> dict[str, Any]:
    """Names and defaults of a notebook's ``parameters`` cell."""
    import papermill as pm

    path = Path(path)
    if not path.is_file():
        raise RunError(f"notebook {path}: file not found")
    return {name: info["default"] for name, info in pm.inspect_notebook(str(path)).items()}


def notebook_defaults(path: str | Path) -> dict[str, Any]:
    """A notebook's parameters with their default values (the base every preset of it is written against)."""
    import ast

    values = {}
    for name, text in notebook_parameters(path).items():
        try:
            values[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise RunError(f"notebook {Path(path).name}: the default of {name} ({text}) is not a Python literal") from None
    return values


def _section(parameters: Mapping[str, Any], stem: str) -> dict[str, Any]:
    """The per-notebook section of a parameter mapping (by id ``"02"`` or stem)."""
    nid = stem.split("_", 1)[0]
    section: dict[str, Any] = {}
    for key in (nid, stem):
        if isinstance(parameters.get(key), dict):
            section.update(parameters[key])
    return section


def _route_parameters(
    parameters: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Split flat + per-notebook parameters into what each notebook gets; reject unknown names."""
    sections = {k for k in parameters if isinstance(parameters[k], dict) and (k in NOTEBOOKS or k in NOTEBOOKS.values())}
    flat = {k: v for k, v in parameters.items() if k not in sections}
    known = set().union(*declared.values()) if declared else set()
    unknown = sorted(set(flat) - known)
    if unknown:
        raise RunError(f"unknown parameter(s) {', '.join(unknown)}; the notebooks declare: {', '.join(sorted(known))}")
    routed = {}
    for stem, names in declared.items():
        own = _section(parameters, stem)
        bad = sorted(set(own) - set(names))
        if bad:
            raise RunError(f"{stem}: unknown parameter(s) {', '.join(bad)}; it declares: {', '.join(sorted(names))}")
        routed[stem] = {**{k: v for k, v in flat.items() if k in names}, **own}
    return routed


def _existing_path(path: str | Path) -> Path:
    """A relative path from a preset: relative to the working directory, else to the repository root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not (REPO_ROOT / p).exists():
        return p.resolve()
    return (REPO_ROOT / p).resolve()


def default_data_root() -> tuple[Path, bool]:
    """The repository root when ``Task_A/`` and ``Task_B/`` hold FACECOM, else the synthetic demo.

    Returns:
        ``(data_root, synthetic)``.
    """
    from facecom_utils.data.demo import is_demo_root, resolve_data_root

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the runner says it itself, once
        root = Path(resolve_data_root(None)).resolve()
    return root, bool(is_demo_root(root))


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


def run_notebook(
    input_path: str | Path,
    output_path: str | Path,
    parameters: Mapping[str, Any],
    cell_timeout: float | None = 3600,
    start_timeout: float = 120,
    cwd: str | Path | None = None,
    log_output: bool = False,
) -> tuple[float, str | None, int | None]:
    """Execute one notebook with papermill in the current environment.

    Args:
        input_path: the notebook.
        output_path: where the executed notebook is written (also when it fails).
        parameters: injected after the ``parameters`` cell.
        cell_timeout: seconds one cell may run (``None``: no limit).
        start_timeout: seconds to wait for the kernel.
        cwd: working directory of the kernel (default: the notebook's folder).
        log_output: stream the kernel's output to this process's stdout/stderr.

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
    start = time.perf_counter()
    error: str | None = None
    cell: int | None = None
    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        error, cell = None, None
        try:
            with _environment(env):
                pm.execute_notebook(
                    str(input_path),
                    str(output_path),
                    parameters=dict(parameters),
                    kernel_name="python3",
                    kernel_manager_class=CurrentEnvKernelManager,
                    progress_bar=False,
                    log_output=log_output,
                    execution_timeout=cell_timeout,
                    start_timeout=start_timeout,
                    cwd=str(cwd or input_path.parent),
                )
        except PapermillExecutionError as exc:
            cell, first = _failed_cell(output_path)
            where = f"code cell {cell}" if cell else f"cell index {exc.cell_index}"
            evalue = (exc.evalue or "").strip().splitlines()
            error = (f"{input_path.name}: {where} (`{first or _first_line(exc.source)}`) raised "
                     f"{exc.ename}: {evalue[0] if evalue else ''}")
        except Exception as exc:  # noqa: BLE001 - timeouts, dead kernels, bad notebooks: report, don't crash the run
            cell, first = _failed_cell(output_path)
            if cell is None and is_kernel_start_failure(str(exc)) and attempt < KERNEL_START_ATTEMPTS:
                _log(f"{input_path.name}: the kernel died while starting (attempt {attempt} of "
                     f"{KERNEL_START_ATTEMPTS}: {str(exc).strip()[:200]}); starting a new one")
                continue  # nothing ran yet: a new kernel is safe; a failing cell is never retried
            where = f"code cell {cell} (`{first}`)" if cell else "before any cell ran"
            kind = "timed out" if "timeout" in type(exc).__name__.lower() or "timed out" in str(exc).lower() else "failed"
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            error = f"{input_path.name}: {where} {kind}: {type(exc).__name__}: {message}"
        break
    return time.perf_counter() - start, error, cell


def is_kernel_start_failure(text: str) -> bool:
    """Whether an error (message or a process's stderr) says a Jupyter kernel died before it ran anything.

    jupyter_client picks the kernel's TCP ports by binding to port 0 and closing them; the kernel binds
    them a few seconds later, and on a busy machine another process can take one first (``ZMQError:
    Address already in use``): the kernel exits before replying to ``kernel_info``. Nothing has run, so
    starting a new kernel is safe.
    """
    return any(sign in text for sign in KERNEL_START_FAILURES)


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


# --------------------------------------------------------------------------------------------------
# A run
# --------------------------------------------------------------------------------------------------


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
        parameters: flat parameters and/or per-notebook sections (see the module docstring).
        name: run name, the folder under ``reports_dir`` (default: a timestamp).
        data_root: FACECOM-layout folder; ``None``: ``parameters["data_root"]`` if set, else
            :func:`default_data_root`.
        reports_dir: parent of the run folder.
        notebook_dir: where ``NN_name.ipynb`` are read from.
        cell_timeout: seconds a single cell may run.
        html: render ``.html`` and ``.nocode.html``.
        log_output: stream the kernels' output to the terminal.
        quiet: no progress lines on stderr.

    Returns:
        The :class:`RunResult` (check ``.ok``); failures never raise, bad arguments raise :class:`RunError`.
    """
    say = (lambda _m: None) if quiet else _log
    stems = resolve_notebooks(notebooks)
    notebook_dir = Path(notebook_dir)
    declared = {stem: notebook_parameters(notebook_dir / f"{stem}.ipynb") for stem in NOTEBOOKS.values()
                if (notebook_dir / f"{stem}.ipynb").is_file() or stem in stems}
    routed, preset_root = _split_runner_parameters(parameters or {}, declared, say)
    root, synthetic = _resolve_run_root(data_root if data_root not in (None, "") else preset_root, say)
    name = name or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run = RunResult(name=name, run_dir=str((Path(reports_dir) / name).resolve()), data_root=str(root),
                    synthetic=synthetic, notebooks=[])
    Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    say(f"run: {run.run_dir}")
    for stem in stems:
        params = _notebook_parameters(stem, run, routed, declared)
        if params is None:  # the notebook whose output it reads did not finish
            needs = DEPENDENCIES[stem]
            run.notebooks.append(NotebookResult(name=stem, status="skipped", output_dir=str(Path(run.run_dir) / stem),
                                                error=f"{stem}.ipynb: skipped because {needs} did not finish (its run_dir)"))
            say(f"[{stem}] skipped: {needs} failed")
            continue
        run.notebooks.append(_execute(stem, params, run, notebook_dir, cell_timeout, html, log_output, say))
        write_index(run)  # after every notebook, so a run killed midway still has one
    write_index(run)
    say(f"index: {run.index}")
    return run


def _split_runner_parameters(
    parameters: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]], say: Any
) -> tuple[dict[str, dict[str, Any]], Path | None]:
    """Each notebook's parameters, and the data root a preset names (the runner owns ``output_dir``
    and ``data_root``: a preset's ``output_dir`` is ignored, its ``data_root`` becomes the run's)."""
    parameters = {k: dict(v) if isinstance(v, dict) else v for k, v in parameters.items()}
    roots: list[Any] = []
    for scope in [parameters, *(v for v in parameters.values() if isinstance(v, dict))]:
        if scope.pop("output_dir", None) is not None:
            say("note: output_dir from the parameters is ignored; each notebook writes to reports/<run>/NN_name/")
        value = scope.pop("data_root", None)
        if value not in (None, ""):
            roots.append(value)
    root = _existing_path(roots[0]) if roots else None
    if len({str(r) for r in roots}) > 1:
        say(f"note: several data_root values in the parameters; using {root}")
    return _route_parameters(parameters, declared), root


def _resolve_run_root(data_root: str | Path | None, say: Any) -> tuple[Path, bool]:
    """``(data root, synthetic)``: the one given, else FACECOM in the repository, else the demo."""
    if data_root in (None, ""):
        root, synthetic = default_data_root()
        if synthetic:
            say(f"data: no FACECOM images in {REPO_ROOT / 'Task_A'} and {REPO_ROOT / 'Task_B'}; "
                f"using the SYNTHETIC demo dataset at {root} (results say nothing about real accuracy)")
        else:
            say(f"data: FACECOM found in the repository: {root}")
        return root, synthetic
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise RunError(f"data root {root}: folder not found (expected a folder holding Task_A/ and Task_B/)")
    from facecom_utils.data.demo import is_demo_root

    synthetic = bool(is_demo_root(root))
    say(f"data: {root}" + (" (SYNTHETIC demo dataset)" if synthetic else ""))
    return root, synthetic


def _notebook_parameters(stem: str, run: RunResult, routed: Mapping[str, Mapping[str, Any]],
                         declared: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """What one notebook gets: its routed parameters, ``output_dir``, ``data_root`` and, for a notebook
    that reads another's outputs (04 reads 03), ``run_dir``; None when that notebook failed in this run."""
    params: dict[str, Any] = {**routed.get(stem, {}), "output_dir": str(Path(run.run_dir) / stem)}
    if "data_root" in declared.get(stem, {"data_root": None}):
        params["data_root"] = run.data_root
    needs = DEPENDENCIES.get(stem)
    if needs is None or "run_dir" not in declared.get(stem, {}):
        return params
    if routed.get(stem, {}).get("run_dir") not in (None, ""):
        params["run_dir"] = str(Path(routed[stem]["run_dir"]).expanduser().resolve())
        return params
    earlier = {r.name: r.status for r in run.notebooks}
    if needs in earlier and earlier[needs] != "ok":
        return None
    params["run_dir"] = str(Path(run.run_dir) / needs)  # this run's 03, or an earlier run's of that name
    return params


def _execute(stem: str, params: dict[str, Any], run: RunResult, notebook_dir: Path, cell_timeout: float | None,
             html: bool, log_output: bool, say: Any) -> NotebookResult:
    """Run one notebook into the run folder and render it; failures are recorded, never raised."""
    run_dir = Path(run.run_dir)
    executed = run_dir / f"{stem}.ipynb"
    say(f"[{stem}] running ...")
    seconds, error, cell = run_notebook(notebook_dir / f"{stem}.ipynb", executed, params, cell_timeout=cell_timeout,
                                        cwd=notebook_dir, log_output=log_output)
    result = NotebookResult(name=stem, status="failed" if error else "ok", seconds=round(seconds, 1),
                            output_dir=params["output_dir"], parameters=params, error=error, failed_cell=cell,
                            metrics=RunDir(params["output_dir"]).read_metrics())
    if executed.is_file():
        result.notebook = executed.name
        if html:
            try:
                render_html(executed, run_dir / f"{stem}.html", run_dir / f"{stem}.nocode.html")
                result.html, result.nocode_html = f"{stem}.html", f"{stem}.nocode.html"
            except Exception as exc:  # noqa: BLE001 - a report that cannot render must not hide the others
                say(f"[{stem}] could not render HTML: {type(exc).__name__}: {exc}")
    say(f"[{stem}] {'FAILED: ' + error if error else 'ok'} ({seconds:.1f} s)")
    return result


# --------------------------------------------------------------------------------------------------
# Index page + summary.json
# --------------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the runner's options to ``parser`` (shared by ``python -m facecom_utils.reporting.runner`` and ``facecom run``)."""
    parser.add_argument("--preset", action="append", default=[], metavar="NAME",
                        help="named preset: params/<notebook>/NAME.yml for each chosen notebook that has one "
                             "(e.g. facecom_cpu); repeatable")
    parser.add_argument("-f", "--parameters-file", action="append", default=[], metavar="YAML",
                        help="parameter file (YAML), e.g. params/03_arcface_recognition/facecom_cpu.yml (applies to "
                             "the notebook of its folder); repeat to layer files, later ones win")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override one parameter (typed like papermill: True/False/None, int, float, str)")
    parser.add_argument("--name", default=None, help="run name: reports/<name>/ (default: a timestamp)")
    parser.add_argument("--notebooks", default=None, help="subset to run, e.g. 01,02 (default: all four)")
    parser.add_argument("--data-root", default=None,
                        help="FACECOM-layout folder (default: the repo root if Task_A/, Task_B/ hold FACECOM, else the synthetic demo)")
    parser.add_argument("--reports-dir", default=str(REPORTS_DIR), help="parent folder of the run (default: %(default)s)")
    parser.add_argument("--notebook-dir", default=str(NOTEBOOK_DIR), help=argparse.SUPPRESS)
    parser.add_argument("--cell-timeout", type=float, default=3600,
                        help="seconds a single notebook cell may run before the notebook fails (default: %(default)s)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML rendering")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the terminal")
    return parser


def gather_parameters(
    presets: Sequence[str] = (),
    files: Sequence[str | Path] = (),
    overrides: Sequence[Sequence[str]] = (),
    notebooks: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """The run's parameters: named presets, then preset files, then ``-p NAME VALUE`` overrides.

    An override wins over every file, a notebook's own preset included (it is written into each
    notebook section that sets the same name).
    """
    chosen = [f for name in presets for f in preset_files(name, notebooks)]
    parameters = load_presets([*chosen, *files])
    for key, text in overrides:
        value = parse_value(text)
        parameters[key] = value
        for section in (v for k, v in parameters.items() if isinstance(v, dict) and k != key):
            if key in section:
                section[key] = value
    return parameters


def run_from_args(args: argparse.Namespace) -> int:
    """Run from parsed arguments; returns the exit code (0 ok, 1 a notebook failed, 2 bad arguments)."""
    try:
        parameters = gather_parameters(args.preset, args.parameters_file, args.parameter, args.notebooks)
        run = run_reports(
            notebooks=args.notebooks,
            parameters=parameters,
            name=args.name,
            data_root=args.data_root,
            reports_dir=args.reports_dir,
            notebook_dir=args.notebook_dir,
            cell_timeout=args.cell_timeout,
            html=not args.no_html,
            log_output=args.log_output,
        )
    except RunError as exc:
        print(f"facecom run: error: {exc}", file=sys.stderr)
        return 2
    for failure in run.failures:
        print(f"facecom run: {failure.status}: {failure.error}", file=sys.stderr)
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
