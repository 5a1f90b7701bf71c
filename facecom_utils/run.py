"""Run the four notebooks headlessly with papermill and render the reports.

Usage (also ``facecom run``)::

    python -m facecom_utils.run                                   # demo data (or FACECOM in Task_A/, Task_B/)
    python -m facecom_utils.run --preset facecom_cpu --data-root ../shared/facecom --notebooks 01,02
    python -m facecom_utils.run -f params/03_arcface_recognition/facecom_cpu.yml --notebooks 03,04
    python -m facecom_utils.run -p epochs 3 -p lr 0.001 --name quick

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
import dataclasses
import datetime as _dt
import html
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager

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

REPO_ROOT = Path(__file__).resolve().parents[1]
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

HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "01_eda": (
        "task_a_images",
        "task_b_images",
        "task_a_male_per_female.train",
        "leakage.task_b_identity_overlap",
        "leakage.cross_split_duplicates",
        "leakage.cross_identity_duplicates",
    ),
    "02_gender_classification": (
        "balanced_accuracy",
        "recall_female",
        "f1_macro",
        "roc_auc",
        "threshold",
        "train_seconds",
    ),
    "03_arcface_recognition": (
        "top1",
        "top5",
        "strict_top1",
        "roc_auc",
        "eer",
        "tar_at_far_1e-3",
        "match_f1_macro",
        "train_seconds",
    ),
    "04_threshold_analysis": (
        "recommended_threshold",
        "far_at_recommended",
        "tar_at_recommended",
        "match_f1_macro",
        "threshold_fold_std",
    ),
}
"""Metrics shown on the index page, per notebook (dotted keys reach into nested dicts)."""

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


@dataclasses.dataclass
class NotebookResult:
    """What happened to one notebook of a run."""

    name: str
    status: str  # "ok" | "failed" | "skipped"
    seconds: float = 0.0
    output_dir: str | None = None
    notebook: str | None = None
    html: str | None = None
    nocode_html: str | None = None
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    error: str | None = None
    failed_cell: int | None = None


@dataclasses.dataclass
class RunResult:
    """A whole run: where it went and what each notebook did."""

    name: str
    run_dir: str
    data_root: str
    synthetic: bool
    notebooks: list[NotebookResult]
    index: str | None = None
    summary: str | None = None

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.notebooks)

    @property
    def failures(self) -> list[NotebookResult]:
        return [r for r in self.notebooks if r.status != "ok"]


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
    from facecom_utils.demo import is_demo_root, resolve_data_root

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


def _lookup(metrics: Mapping[str, Any] | None, dotted: str) -> Any:
    value: Any = metrics
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _read_metrics(output_dir: Path) -> dict[str, Any] | None:
    from facecom_utils.rundir import RunDir

    return RunDir(output_dir).read_metrics()


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
    parameters = {k: dict(v) if isinstance(v, dict) else v for k, v in (parameters or {}).items()}
    stems = resolve_notebooks(notebooks)
    notebook_dir = Path(notebook_dir)
    declared_all = {
        stem: notebook_parameters(notebook_dir / f"{stem}.ipynb")
        for stem in NOTEBOOKS.values()
        if (notebook_dir / f"{stem}.ipynb").is_file() or stem in stems
    }
    # output_dir belongs to the runner (presets written for plain papermill carry one: ignored);
    # a data_root of a preset (top level first, then a notebook section) is the run's data root.
    roots: list[Any] = []
    for scope in [parameters, *(v for k, v in parameters.items() if isinstance(v, dict))]:
        if scope.pop("output_dir", None) is not None:
            say("note: output_dir from the parameters is ignored; each notebook writes to reports/<run>/NN_name/")
        value = scope.pop("data_root", None)
        if value not in (None, ""):
            roots.append(value)
    if data_root is None and roots:
        data_root = _existing_path(roots[0])
        if len({str(r) for r in roots}) > 1:
            say(f"note: several data_root values in the parameters; using {data_root}")
    routed = _route_parameters(parameters, declared_all)

    if data_root is None or str(data_root) == "":
        root, synthetic = default_data_root()
        if synthetic:
            say(f"data: no FACECOM images in {REPO_ROOT / 'Task_A'} and {REPO_ROOT / 'Task_B'}; "
                f"using the SYNTHETIC demo dataset at {root} (results say nothing about real accuracy)")
        else:
            say(f"data: FACECOM found in the repository: {root}")
    else:
        root = Path(data_root).expanduser().resolve()
        if not root.is_dir():
            raise RunError(f"data root {root}: folder not found (expected a folder holding Task_A/ and Task_B/)")
        from facecom_utils.demo import is_demo_root

        synthetic = bool(is_demo_root(root))
        say(f"data: {root}" + (" (SYNTHETIC demo dataset)" if synthetic else ""))

    name = name or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = (Path(reports_dir) / name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    say(f"run: {run_dir}")

    results: list[NotebookResult] = []
    outputs: dict[str, Path] = {}
    status: dict[str, str] = {}
    for stem in stems:
        out_dir = run_dir / stem
        outputs[stem] = out_dir
        params: dict[str, Any] = {**routed.get(stem, {}), "output_dir": str(out_dir)}
        if "data_root" in declared_all.get(stem, {"data_root": None}):
            params["data_root"] = str(root)
        result = NotebookResult(name=stem, status="skipped", output_dir=str(out_dir), parameters=params)
        needs = DEPENDENCIES.get(stem)
        if needs is not None and "run_dir" in declared_all.get(stem, {}):
            if "run_dir" in routed.get(stem, {}) and routed[stem]["run_dir"] not in (None, ""):
                params["run_dir"] = str(Path(routed[stem]["run_dir"]).expanduser().resolve())
            elif needs in status:
                if status[needs] != "ok":
                    result.error = f"{stem}.ipynb: skipped because {needs} did not finish (its run_dir)"
                    say(f"[{stem}] skipped: {needs} failed")
                    results.append(result)
                    status[stem] = "skipped"
                    continue
                params["run_dir"] = str(outputs[needs])
            else:
                params["run_dir"] = str(run_dir / needs)  # an earlier run's 03 folder, reused by name
        executed = run_dir / f"{stem}.ipynb"
        say(f"[{stem}] running ...")
        seconds, error, cell = run_notebook(
            notebook_dir / f"{stem}.ipynb", executed, params, cell_timeout=cell_timeout,
            cwd=notebook_dir, log_output=log_output,
        )
        result.seconds = round(seconds, 1)
        result.status = "failed" if error else "ok"
        result.error, result.failed_cell = error, cell
        result.metrics = _read_metrics(out_dir)
        if executed.is_file():
            result.notebook = executed.name
            if html:
                try:
                    render_html(executed, run_dir / f"{stem}.html", run_dir / f"{stem}.nocode.html")
                    result.html, result.nocode_html = f"{stem}.html", f"{stem}.nocode.html"
                except Exception as exc:  # noqa: BLE001 - a report that cannot render must not hide the others
                    say(f"[{stem}] could not render HTML: {type(exc).__name__}: {exc}")
        status[stem] = result.status
        say(f"[{stem}] {'FAILED: ' + error if error else 'ok'} ({seconds:.1f} s)")
        results.append(result)
        # write the index after every notebook, so a run killed midway still has one
        run = RunResult(name=name, run_dir=str(run_dir), data_root=str(root), synthetic=synthetic, notebooks=results)
        write_index(run)

    run = RunResult(name=name, run_dir=str(run_dir), data_root=str(root), synthetic=synthetic, notebooks=results)
    write_index(run)
    say(f"index: {run.index}")
    return run


# --------------------------------------------------------------------------------------------------
# Index page + summary.json
# --------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:1rem 0;width:100%} th,td{border:1px solid #ddd;padding:.35rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:600} .failed{color:#cf222e;font-weight:600} .skipped{color:#9a6700;font-weight:600}
.banner{background:#fff8c5;border:1px solid #d4a72c;padding:.6rem 1rem;border-radius:6px}
.error{background:#ffebe9;border:1px solid #cf222e;padding:.4rem .8rem;border-radius:6px;font-family:monospace;white-space:pre-wrap}
code{background:#f4f4f4;padding:0 .2rem}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return html.escape(json.dumps(value)[:60])
    return html.escape(str(value))


def _scalars(metrics: Mapping[str, Any] | None, prefix: str = "", depth: int = 2) -> dict[str, Any]:
    """Flatten nested metric dicts to dotted keys, keeping scalars only."""
    flat: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        if key in ("parameters",):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and depth > 0:
            flat.update(_scalars(value, name + ".", depth - 1))
        elif value is None or isinstance(value, (int, float, str, bool)):
            flat[name] = value
    return flat


def write_index(run: RunResult) -> Path:
    """Write ``index.html`` and ``summary.json`` into the run folder; returns the index path."""
    run_dir = Path(run.run_dir)
    summary = {
        "run": run.name,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "data_root": run.data_root,
        "synthetic": run.synthetic,
        "ok": run.ok,
        "python": sys.executable,
        "headline": {
            r.name: {k: _lookup(r.metrics, k) for k in HEADLINE_METRICS.get(r.name, ())} for r in run.notebooks
        },
        "notebooks": [dataclasses.asdict(r) for r in run.notebooks],
    }
    from facecom_utils.rundir import write_json

    write_json(run_dir / "summary.json", summary)

    rows = []
    for r in run.notebooks:
        links = []
        if r.nocode_html:
            links.append(f'<a href="{r.nocode_html}">report</a>')
        if r.html:
            links.append(f'<a href="{r.html}">with code</a>')
        if r.notebook:
            links.append(f'<a href="{r.notebook}">.ipynb</a>')
        if r.metrics is not None:
            links.append(f'<a href="{r.name}/metrics.json">metrics.json</a>')
        title = f'<a href="{r.nocode_html}">{r.name}</a>' if r.nocode_html else r.name
        headline = "<br>".join(
            f"{html.escape(k)} = <b>{_fmt(_lookup(r.metrics, k))}</b>"
            for k in HEADLINE_METRICS.get(r.name, ())
            if _lookup(r.metrics, k) is not None
        ) or "–"
        error = f'<div class="error">{html.escape(r.error)}</div>' if r.error else ""
        rows.append(
            f'<tr><td>{title}</td><td class="{r.status}">{r.status.upper()}</td><td class="num">{r.seconds:.1f}</td>'
            f"<td>{headline}{error}</td><td>{' · '.join(links)}</td></tr>"
        )

    detail = []
    for r in run.notebooks:
        flat = _scalars(r.metrics)
        if not flat:
            continue
        body = "".join(f"<tr><td><code>{html.escape(k)}</code></td><td class='num'>{_fmt(v)}</td></tr>" for k, v in flat.items())
        params = "".join(
            f"<tr><td><code>{html.escape(k)}</code></td><td>{_fmt(v)}</td></tr>" for k, v in r.parameters.items()
        )
        detail.append(
            f"<details><summary><b>{r.name}</b>: all metrics and parameters</summary>"
            f"<table><tr><th>metric</th><th>value</th></tr>{body}</table>"
            f"<table><tr><th>parameter</th><th>value</th></tr>{params}</table></details>"
        )

    banner = (
        '<p class="banner"><b>Synthetic demo data.</b> These reports ran on the generated demo dataset '
        f"(<code>{html.escape(run.data_root)}</code>), not on FACECOM: they show the pipeline works, "
        "not how accurate it is.</p>"
        if run.synthetic
        else f"<p>Data: <code>{html.escape(run.data_root)}</code></p>"
    )
    failed = [r for r in run.notebooks if r.status != "ok"]
    status = (
        f'<p class="failed">{len(failed)} of {len(run.notebooks)} notebook(s) did not finish: '
        + ", ".join(r.name for r in failed) + "</p>"
        if failed
        else f'<p class="ok">All {len(run.notebooks)} notebook(s) ran.</p>'
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>facecom reports: {html.escape(run.name)}</title>
<style>{_CSS}</style></head><body>
<h1>facecom reports: {html.escape(run.name)}</h1>
<p class="sub">{summary["created"]} · <a href="summary.json">summary.json</a></p>
{banner}
{status}
<table><tr><th>notebook</th><th>status</th><th>seconds</th><th>headline metrics</th><th>files</th></tr>
{''.join(rows)}
</table>
{''.join(detail)}
</body></html>
"""
    index = run_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    run.index, run.summary = str(index), str(run_dir / "summary.json")
    return index


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the runner's options to ``parser`` (shared by ``python -m facecom_utils.run`` and ``facecom run``)."""
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
    """``python -m facecom_utils.run``."""
    parser = argparse.ArgumentParser(
        prog="python -m facecom_utils.run",
        description="Run notebooks 01-04 with papermill and write reports/<run>/ (HTML reports, index.html, summary.json).",
    )
    add_run_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
