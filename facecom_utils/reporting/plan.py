"""What a run will do, decided before anything runs: notebooks, parameters, data, presets, device, time.

:func:`plan_run` turns the runner's arguments into a :class:`RunPlan`; ``facecom run --plan`` prints it
(:meth:`RunPlan.describe`) and stops, a run prints its :meth:`RunPlan.banner` first.

Parameters: the notebooks' own defaults, then presets, then ``-p name value`` overrides (typed like
papermill's ``-p``, :func:`parse_value`), which win over every preset. A preset is a plain papermill
parameter file for one notebook, ``params/<notebook>/<preset>.yml``, listing only what differs from that
notebook's defaults; ``--preset NAME`` picks ``params/<stem>/NAME.yml`` for each chosen notebook that has
one, ``-f FILE`` names a file. A file outside a notebook's folder may hold top-level keys (for every
notebook that declares that parameter) and mappings under a notebook's key (``"02"`` or
``"02_gender_classification"``). A preset file's comment line ``# expected_minutes: N`` is the time one
run of its notebook takes with it (the banner shows it).

Real data gets the real recipe: when no preset or file is named and the data root holds FACECOM (the
repository's ``Task_A/``, ``Task_B/``, or a ``--data-root`` that is not the synthetic demo), each notebook
gets its :data:`AUTO_PRESETS` preset for this machine (``facecom_gpu`` with a CUDA GPU, else
``facecom_cpu``), where it has one. The notebooks' demo-sized defaults run on the demo only, unless asked
for by name (``--preset defaults``).

The runner sets ``data_root`` and ``output_dir`` of every notebook (a preset's ``data_root`` is the run's
data root unless ``--data-root`` is given), and notebook 04's ``run_dir`` to notebook 03's output folder.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from facecom_utils.common import paths
from facecom_utils.common.paths import NOTEBOOKS_DIR, PARAMS_DIR, REPORTS_DIR

__all__ = [
    "AUTO_PRESETS",
    "DEPENDENCIES",
    "NOTEBOOKS",
    "NOTEBOOK_DEFAULTS",
    "RunError",
    "RunPlan",
    "device_summary",
    "expected_minutes",
    "gather_parameters",
    "load_presets",
    "notebook_defaults",
    "notebook_parameters",
    "parse_value",
    "plan_run",
    "preset_files",
    "preset_notebook",
    "resolve_notebooks",
]

NOTEBOOKS: dict[str, str] = {
    "01": "01_eda",
    "02": "02_gender_classification",
    "03": "03_arcface_recognition",
    "04": "04_threshold_analysis",
}
"""Notebook id -> file stem, in running order."""

DEPENDENCIES: dict[str, str] = {"04_threshold_analysis": "03_arcface_recognition"}
"""Notebook -> the notebook whose output folder it reads (its ``run_dir``)."""

AUTO_PRESETS: dict[str, str] = {"cuda": "facecom_gpu", "cpu": "facecom_cpu"}
"""The preset a run on FACECOM gets when none is named: with a CUDA GPU, else on the CPU."""

NOTEBOOK_DEFAULTS = "defaults"
"""``--preset defaults``: no preset file, the notebooks' own (demo-sized) defaults, on any data."""

RUNNER_MANAGED = ("data_root", "output_dir")
_EXPECTED = re.compile(r"^#\s*expected_minutes:\s*([0-9]+(?:\.[0-9]+)?)", re.MULTILINE)


class RunError(RuntimeError):
    """A bad runner argument (unknown notebook, unknown parameter, unreadable preset)."""


# --------------------------------------------------------------------------------------------------
# Parameters and presets
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


def preset_files(name: str, notebooks: str | Sequence[str] | None = None, params_dir: str | Path = PARAMS_DIR,
                 missing_ok: bool = False) -> list[Path]:
    """The files of preset ``name`` for the chosen notebooks: ``params/<stem>/<name>.yml`` where present.

    Args:
        name: A preset name (``facecom_cpu``); :data:`NOTEBOOK_DEFAULTS` names no file (the notebooks' defaults).
        notebooks: The chosen notebooks (ids or stems; ``None``: all).
        params_dir: The presets' folder.
        missing_ok: Return ``[]`` when no chosen notebook has that preset.

    Raises:
        RunError: no chosen notebook has that preset (the message lists the presets there are).
    """
    stems = resolve_notebooks(notebooks)
    if name == NOTEBOOK_DEFAULTS:
        return []
    found = [Path(params_dir) / stem / f"{name}.yml" for stem in stems]
    found = [p for p in found if p.is_file()]
    if not found and not missing_ok:
        known = sorted({p.stem for p in Path(params_dir).glob("*/*.yml")})
        raise RunError(f"no preset {name!r} for notebooks {', '.join(stems)}; presets: {', '.join([*known, NOTEBOOK_DEFAULTS])} "
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
        _merge(merged, {stem: data} if stem is not None else data)
    return merged


def _merge(merged: dict[str, Any], data: Mapping[str, Any]) -> None:
    """Layer ``data`` on ``merged``: later values win, per-notebook sections are merged key by key."""
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = dict(value) if isinstance(value, dict) else value


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




def gather_parameters(
    presets: Sequence[str] = (),
    files: Sequence[str | Path] = (),
    overrides: Sequence[Sequence[str]] = (),
    notebooks: str | Sequence[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's parameters: named presets, then preset files, then ``parameters``, then ``-p NAME VALUE``.

    An override wins over every file, a notebook's own preset included (it is written into each
    notebook section that sets the same name).

    Args:
        presets: Preset names (``facecom_cpu``), for the chosen ``notebooks``.
        files: Preset files.
        overrides: ``(name, value text)`` pairs, typed by :func:`parse_value`.
        notebooks: The chosen notebooks.
        parameters: Flat parameters and/or per-notebook sections, layered after the files.
    """
    chosen = [f for name in presets for f in preset_files(name, notebooks)]
    return _layer([*chosen, *files], parameters, overrides)


def _layer(files: Sequence[str | Path], parameters: Mapping[str, Any] | None,
           overrides: Sequence[Sequence[str]]) -> dict[str, Any]:
    merged = load_presets(files)
    _merge(merged, parameters or {})
    for key, text in overrides:
        value = parse_value(text)
        merged[key] = value
        for section in (v for k, v in merged.items() if isinstance(v, dict) and k != key):
            if key in section:
                section[key] = value
    return merged


def _split_runner_parameters(
    parameters: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]], notes: list[str]
) -> tuple[dict[str, dict[str, Any]], Path | None]:
    """Each notebook's parameters, and the data root they name (the runner owns ``output_dir`` and
    ``data_root``: a preset's ``output_dir`` is ignored, its ``data_root`` becomes the run's)."""
    parameters = {k: dict(v) if isinstance(v, dict) else v for k, v in parameters.items()}
    roots: list[Any] = []
    for scope in [parameters, *(v for v in parameters.values() if isinstance(v, dict))]:
        if scope.pop("output_dir", None) is not None:
            notes.append("output_dir from the parameters is ignored; each notebook writes to reports/<run>/NN_name/")
        value = scope.pop("data_root", None)
        if value not in (None, ""):
            roots.append(value)
    root = paths.repo_path(roots[0]) if roots else None
    if len({str(r) for r in roots}) > 1:
        notes.append(f"several data_root values in the parameters; using {root}")
    return _route_parameters(parameters, declared), root


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------


def expected_minutes(preset: str | Path) -> float | None:
    """The ``# expected_minutes: N`` comment of a preset file (None when it has none)."""
    match = _EXPECTED.search(Path(preset).read_text(encoding="utf-8"))
    return float(match.group(1)) if match else None


def device_summary() -> tuple[str, str]:
    """``("cuda", "cuda: <GPU name> (1 GPU)")`` when torch sees a CUDA GPU, else ``("cpu", "cpu: N cores, ...")``."""
    import os

    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return "cuda", f"cuda: {torch.cuda.get_device_name(0)} ({count} GPU{'s' if count > 1 else ''})"
    return "cpu", f"cpu: {os.cpu_count()} cores, no CUDA GPU"


def _data_root(given: str | Path | None, from_parameters: Path | None) -> tuple[Path, str]:
    """``(data root, where it came from)``: ``--data-root``, else a preset's, else the default rule
    (``$FACECOM_DATA_ROOT``, FACECOM in the repository, the demo; the demo is not generated here)."""
    from facecom_utils.data.demo import resolve_data_root

    if given not in (None, ""):
        root, source = paths.repo_path(given), "--data-root"
    elif from_parameters is not None:
        root, source = from_parameters, "the parameters' data_root"
    else:
        try:
            root = resolve_data_root(None, generate=False).resolve()
        except FileNotFoundError as exc:
            raise RunError(f"${paths.DATA_ROOT_ENV}: {exc}") from None
        env = paths.data_root_from_env()
        source = (f"${paths.DATA_ROOT_ENV}={env}" if env else "the repository's Task_A/, Task_B/"
                  if paths.facecom_in_repo() else "no FACECOM in the repository's Task_A/, Task_B/")
        return root, source
    if not root.is_dir():
        raise RunError(f"data root {root}: folder not found (expected a folder holding Task_A/ and Task_B/)")
    return root, source


def _is_synthetic(root: Path) -> bool:
    """The synthetic demo: a folder with the demo's marker, or the default demo folder (generated on first run)."""
    from facecom_utils.data.demo import DEFAULT_DEMO_ROOT, is_demo_root

    return bool(is_demo_root(root)) or root == Path(DEFAULT_DEMO_ROOT).resolve()


def _tolerant_defaults(path: Path) -> dict[str, Any]:
    """A notebook's defaults as values where they are literals, else as their source text."""
    import ast

    values = {}
    for name, text in notebook_parameters(path).items():
        try:
            values[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[name] = text
    return values


@dataclasses.dataclass
class RunPlan:
    """What one run will do.

    Attributes:
        name: The run's name (its folder under the reports folder).
        run_dir: ``reports/<name>``.
        notebooks: The stems to run, in order.
        data_root: The data every notebook reads.
        data_source: Where that root came from (``--data-root``, the repository, ...).
        synthetic: The data is the synthetic demo.
        facecom: The data holds FACECOM (not the demo).
        device: This machine's device, in words.
        preset_files: The preset files applied, in order.
        auto_preset: The preset chosen for FACECOM on this machine (None: named, or none).
        overrides: The names set by ``-p``.
        parameters: Per notebook, what papermill injects.
        defaults: Per notebook, its parameters' defaults.
        expected: Per notebook, the minutes its preset expects (None: no estimate).
        notes: Things the user should know (ignored parameters, ...).
    """

    name: str
    run_dir: Path
    notebooks: list[str]
    data_root: Path
    data_source: str
    synthetic: bool
    facecom: bool
    device: str
    preset_files: list[Path]
    auto_preset: str | None
    overrides: list[str]
    parameters: dict[str, dict[str, Any]]
    defaults: dict[str, dict[str, Any]]
    expected: dict[str, float | None]
    notes: list[str] = dataclasses.field(default_factory=list)

    def presets_of(self, stem: str) -> list[Path]:
        """The preset files of one notebook (its folder's files; files for every notebook included)."""
        return [p for p in self.preset_files if preset_notebook(p) in (stem, None)]

    def banner(self) -> str:
        """The lines a run starts with: data, presets, device, and the expected time of each notebook."""
        data = (f"SYNTHETIC demo at {self.data_root} ({self.data_source}): results say nothing about real accuracy"
                if self.synthetic else f"{self.data_root} ({'FACECOM' if self.facecom else 'not FACECOM layout'}, "
                f"from {self.data_source})")
        if self.auto_preset:
            why = "a CUDA GPU" if self.auto_preset == AUTO_PRESETS["cuda"] else "no CUDA GPU"
            presets = f"{self.auto_preset}, chosen for FACECOM on this machine ({why})"
        elif self.preset_files:
            presets = "as named"
        else:
            presets = "none: the notebooks' own defaults (demo-sized)"
        lines = [f"facecom run {self.name}: {len(self.notebooks)} notebook(s) -> {_show(self.run_dir)}",
                 f"  data:    {data}", f"  presets: {presets}", f"  device:  {self.device}"]
        if self.overrides:
            lines.append(f"  -p:      {', '.join(self.overrides)} (win over the presets)")
        width = max(len(s) for s in self.notebooks)
        for stem in self.notebooks:
            files = ", ".join(_show(p) for p in self.presets_of(stem)) or "notebook defaults"
            lines.append(f"  {stem:<{width}}  {files}; {self._time(stem)}")
        known = [m for m in (self.expected.get(s) for s in self.notebooks) if m is not None]
        if known:
            rest = len(self.notebooks) - len(known)
            lines.append(f"  expected in all: about {sum(known):.0f} min" + (f" (+ {rest} not estimated)" if rest else ""))
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])

    def _time(self, stem: str) -> str:
        minutes = self.expected.get(stem)
        if minutes is None:
            return "time: not estimated"
        changed = [k for k in self.overrides if k in self.parameters.get(stem, {})]
        return f"expected about {minutes:g} min" + (" (before the -p overrides)" if changed else "")

    def describe(self) -> str:
        """The banner, then each notebook's parameters: the runner's, and those that differ from its defaults."""
        out = [self.banner(), ""]
        for stem in self.notebooks:
            params, defaults = self.parameters[stem], self.defaults.get(stem, {})
            out.append(f"{stem}:")
            same = 0
            for key, value in params.items():
                if key in (*RUNNER_MANAGED, "run_dir") or key not in defaults or value != defaults[key]:
                    was = f"   (default {defaults[key]!r})" if key in defaults and key not in RUNNER_MANAGED else ""
                    out.append(f"    {key}: {value!r}{was}")
                else:
                    same += 1
            same += len(set(defaults) - set(params))
            out.append(f"    ({same} other parameter(s) at the notebook's defaults)")
        return "\n".join(out)


def _show(path: Path) -> str:
    """A path relative to the repository when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(paths.REPO_ROOT.resolve()))
    except ValueError:
        return str(path)


def plan_run(
    notebooks: str | Sequence[str] | None = None,
    presets: Sequence[str] = (),
    files: Sequence[str | Path] = (),
    overrides: Sequence[Sequence[str]] = (),
    parameters: Mapping[str, Any] | None = None,
    data_root: str | Path | None = None,
    name: str | None = None,
    reports_dir: str | Path = REPORTS_DIR,
    notebook_dir: str | Path = NOTEBOOKS_DIR,
    dataset_images: bool = True,
) -> RunPlan:
    """Decide what a run does, running nothing (the demo is not generated either).

    Args:
        notebooks: ids/stems to run (``"01,02"``); ``None`` runs all four.
        presets: Preset names (``--preset``; ``defaults`` names the notebooks' own defaults) or YAML files.
        files: Preset files (``-f``).
        overrides: ``-p NAME VALUE`` pairs.
        parameters: Flat parameters and/or per-notebook sections, after the files, before the overrides.
        data_root: FACECOM-layout folder; ``None``: a preset's ``data_root``, else ``$FACECOM_DATA_ROOT``,
            else FACECOM in the repository, else the synthetic demo.
        name: The run's folder under ``reports_dir`` (default: a timestamp).
        reports_dir: Parent of the run folder.
        notebook_dir: Where ``NN_name.ipynb`` are read from.
        dataset_images: ``False`` sets ``dataset_images=False`` in every notebook that declares it (no figure
            draws a dataset image: ``facecom run --no-dataset-images``, what a published run needs).

    Raises:
        RunError: An unknown notebook, preset or parameter, an unreadable preset, a missing data root.
    """
    import datetime as _dt

    stems = resolve_notebooks(notebooks)
    notebook_dir = Path(notebook_dir)
    found = [s for s in NOTEBOOKS.values() if (notebook_dir / f"{s}.ipynb").is_file() or s in stems]
    declared = {stem: notebook_parameters(notebook_dir / f"{stem}.ipynb") for stem in found}
    named = [*(f for preset in presets for f in _preset(preset, stems)), *(Path(f) for f in files)]
    notes: list[str] = []
    routed, preset_root = _split_runner_parameters(_layer(named, parameters, overrides), declared, notes)
    root, source = _data_root(data_root, preset_root)
    synthetic = _is_synthetic(root)
    facecom = not synthetic and paths.holds_facecom(root)
    kind, device = device_summary()
    auto = AUTO_PRESETS[kind] if facecom and not presets and not files else None
    if auto is not None:
        named = preset_files(auto, stems, missing_ok=True)
        routed, _ = _split_runner_parameters(_layer(named, parameters, overrides), declared, [])
    run_dir = Path(reports_dir).resolve() / (name or _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    expected = {stem: next((m for m in (expected_minutes(p) for p in reversed(named) if preset_notebook(p) == stem)
                            if m is not None), None) for stem in stems}
    return RunPlan(
        name=run_dir.name, run_dir=run_dir, notebooks=stems, data_root=root, data_source=source,
        synthetic=synthetic, facecom=facecom, device=device, preset_files=[Path(p) for p in named], auto_preset=auto,
        overrides=[key for key, _ in overrides],
        parameters={stem: _notebook_parameters(stem, run_dir, root, routed, declared, dataset_images) for stem in stems},
        defaults={stem: _tolerant_defaults(notebook_dir / f"{stem}.ipynb") for stem in stems},
        expected=expected, notes=list(dict.fromkeys(notes)),
    )


def _preset(preset: str | Path, stems: Sequence[str]) -> list[Path]:
    """A ``--preset`` value: a YAML file (``*.yml``, ``*.yaml``) as itself, else a name (:func:`preset_files`)."""
    if str(preset).endswith((".yml", ".yaml")):
        return [Path(preset)]
    return preset_files(str(preset), stems)


def _notebook_parameters(stem: str, run_dir: Path, root: Path, routed: Mapping[str, Mapping[str, Any]],
                         declared: Mapping[str, Mapping[str, Any]], dataset_images: bool = True) -> dict[str, Any]:
    """What one notebook gets: its routed parameters, ``output_dir``, ``data_root`` and, for a notebook that
    reads another's outputs (04 reads 03), ``run_dir`` (this run's folder of it, unless given)."""
    params: dict[str, Any] = {**routed.get(stem, {}), "output_dir": str(run_dir / stem)}
    if not dataset_images and "dataset_images" in declared.get(stem, {}):
        params["dataset_images"] = False
    if "data_root" in declared.get(stem, {"data_root": None}):
        params["data_root"] = str(root)
    needs = DEPENDENCIES.get(stem)
    if needs is not None and "run_dir" in declared.get(stem, {}):
        given = routed.get(stem, {}).get("run_dir")
        params["run_dir"] = str(paths.repo_path(given)) if given not in (None, "") else str(run_dir / needs)
    return params
