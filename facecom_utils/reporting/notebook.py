"""The plumbing every notebook shares, so that the notebooks stay thin.

* where a notebook reads and writes: :func:`notebook_paths`, :func:`default_output_dir`,
  :func:`resolve_output_dir`, and a banner saying which data it runs on (:func:`data_banner`);
* its one config dataclass, built from the ``parameters`` cell (:func:`build_config`);
* ``<output_dir>/metrics.json`` with the parameters and data provenance (:func:`write_metrics`,
  through :class:`~facecom_utils.train.rundir.RunDir`), and the closing summary tables (:func:`metrics_table`, :func:`flatten_metrics`,
  :func:`side_by_side`);
* the most confident mistakes of the Task A classifier (:func:`worst_errors`, :func:`plot_worst_errors`).

Importing this module also keeps tqdm's "IProgress not found" warning out of the reports.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from facecom_utils.train.rundir import RunDir
from facecom_utils.common.paths import REPO_ROOT

__all__ = [
    "default_output_dir",
    "resolve_output_dir",
    "notebook_paths",
    "data_banner",
    "build_config",
    "write_metrics",
    "side_by_side",
    "flatten_metrics",
    "metrics_table",
    "worst_errors",
    "plot_worst_errors",
]

# Notebook hygiene: without ipywidgets, importing tqdm.auto in a kernel warns "IProgress not found" on
# stderr; the notebooks import this module first, so the warning stays out of the reports.
warnings.filterwarnings("ignore", message="IProgress not found")



def default_output_dir(name: str) -> Path:
    """Where a notebook run with its default parameters writes: ``<repo>/reports/default/<name>``.

    ``reports/`` is git-ignored; the runner always passes its own ``output_dir``. When the package is
    not installed from a checkout (no ``pyproject.toml`` beside it), the current directory is used.
    """
    base = REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()
    return base / "reports" / "default" / name


def resolve_output_dir(output_dir: str | Path | None, name: str) -> Path:
    """``output_dir`` as an absolute, existing folder (``None``: :func:`default_output_dir`)."""
    out = Path(output_dir).expanduser().resolve() if output_dir not in (None, "") else default_output_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    return out


def notebook_paths(data_root: str | Path | None, output_dir: str | Path | None, name: str) -> tuple[Path, Path]:
    """Resolve a notebook's ``data_root`` and ``output_dir`` parameters.

    ``data_root=None`` -> ``demo.resolve_data_root`` (FACECOM in the repository, else the synthetic demo,
    generated once); the synthetic-data warning is not repeated since :func:`data_banner` shows it.
    ``output_dir=None`` -> :func:`default_output_dir`. The output folder is created.

    Returns:
        ``(data_root, output_dir)`` as absolute paths.
    """
    from facecom_utils.data.demo import resolve_data_root

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ynthetic.*")
        root = Path(resolve_data_root(data_root)).resolve()
    return root, resolve_output_dir(output_dir, name)


def data_banner(data_root: str | Path | None) -> Any:
    """A display object saying which data a notebook runs on; loud when it is the synthetic demo.

    Returns:
        ``IPython.display.Markdown`` in a notebook (falls back to a plain string without IPython).
    """
    from facecom_utils.data.demo import is_demo_root

    if data_root in (None, ""):
        text = "> Data: unknown (the run did not record its data root)"
    elif is_demo_root(data_root):
        text = (
            "> **⚠ SYNTHETIC DEMO DATA** — these results come from the generated demo dataset at "
            f"`{data_root}`, not from FACECOM. They show that the pipeline runs; they say nothing about "
            "real accuracy. Point `data_root` at a FACECOM folder for real numbers."
        )
    else:
        text = f"> Data: `{data_root}`"
    try:
        from IPython.display import Markdown
    except ImportError:  # pragma: no cover - IPython ships with ipykernel
        return text
    return Markdown(text)


def build_config(cls: type, namespace: Mapping[str, Any], **fixed: Any) -> Any:
    """Build a config dataclass from a notebook's parameter variables.

    Every ``init`` field of ``cls`` found in ``namespace`` (the notebook's ``globals()``, i.e. its
    ``parameters`` cell plus papermill's injected overrides) is passed on; ``fixed`` values win.

    Example:
        ``config = notebook.build_config(GenderConfig, globals(), data_root=str(data_root))``
    """
    kwargs = {f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.init and f.name in namespace}
    kwargs.update(fixed)
    return cls(**kwargs)


def write_metrics(
    output_dir: str | Path,
    metrics: Mapping[str, Any],
    parameters: Mapping[str, Any] | Any | None = None,
    data_root: str | Path | None = None,
) -> Path:
    """Write ``<output_dir>/metrics.json`` through the run directory (:meth:`facecom_utils.train.rundir.RunDir.write_metrics`):
    the metrics, the parameters used and the data provenance.

    Args:
        output_dir: created if missing.
        metrics: the notebook's numbers (numpy/pandas values are converted).
        parameters: the run's config (dataclass or mapping), stored under ``"parameters"``.
        data_root: stored as ``"data_root"`` with ``"synthetic": True/False``.

    Returns:
        Path of the written file.
    """
    return RunDir(output_dir).write_metrics(metrics, parameters, data_root)


def side_by_side(
    metrics: Mapping[str, Any],
    keys: Sequence[str],
    columns: Mapping[str, tuple[str, str]],
    digits: int = 4,
) -> pd.DataFrame:
    """Metrics in columns, e.g. at the fold threshold vs at 0.5, or main vs strict protocol.

    Args:
        metrics: flat metrics.
        keys: base metric names (rows).
        columns: column title -> ``(prefix, suffix)`` added to each key, e.g.
            ``{"fold threshold": ("", ""), "at 0.5": ("", "_at_0.5")}``.
        digits: rounding of floats.
    """
    table = {}
    for title, (prefix, suffix) in columns.items():
        values = []
        for key in keys:
            value = metrics.get(f"{prefix}{key}{suffix}")
            values.append(round(value, digits) if isinstance(value, float) else value)
        table[title] = values
    return pd.DataFrame(table, index=pd.Index(list(keys), name="metric"))


def worst_errors(probabilities: pd.DataFrame, n: int = 8, positive: str = "female") -> tuple[list[str], list[str]]:
    """The most confident mistakes of a classifier, as ``(paths, captions)`` for ``plots.image_grid``.

    Args:
        probabilities: one row per image with ``path``, ``label``, ``prob`` (of ``positive``), ``pred``.
        n: how many.
        positive: the class ``prob`` refers to.
    """
    wrong = probabilities[probabilities["pred"] != probabilities["label"]].copy()
    wrong["confidence"] = np.where(wrong["pred"] == positive, wrong["prob"], 1 - wrong["prob"])
    wrong = wrong.sort_values("confidence", ascending=False).head(n)
    captions = [f"true {t}, p({positive})={p:.2f}" for t, p in zip(wrong["label"], wrong["prob"])]
    return wrong["path"].astype(str).tolist(), captions


def plot_worst_errors(probabilities: pd.DataFrame, n: int = 8, positive: str = "female",
                      title: str = "Most confident errors on the reported split") -> Figure:
    """Grid of the classifier's most confident mistakes (see :func:`worst_errors`)."""
    from facecom_utils.reporting.plots import image_grid, message_figure

    paths, captions = worst_errors(probabilities, n, positive)
    if not paths:
        return message_figure(title, "no errors")
    return image_grid(paths, captions, ncols=4, title=title)


def flatten_metrics(
    metrics: Mapping[str, Any], exclude: Sequence[str] = ("examples", "parameters"), prefix: str = ""
) -> dict[str, Any]:
    """Nested metric dicts flattened to dotted keys (``"task_a_counts.train.female"``); lists dropped."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in exclude:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, exclude, name + "."))
        elif not isinstance(value, (list, tuple)):
            flat[name] = value
    return flat


def metrics_table(metrics: Mapping[str, Any], keys: Sequence[str] | None = None, digits: int = 4) -> pd.DataFrame:
    """Metrics as a one-column table.

    Args:
        metrics: possibly nested metrics (flattened with :func:`flatten_metrics`).
        keys: dotted keys to show, in order (default: every scalar).
        digits: rounding of floats.
    """
    flat = flatten_metrics(metrics)
    names = list(keys) if keys is not None else list(flat)
    values = []
    for name in names:
        value = flat.get(name)
        if isinstance(value, float):
            value = round(value, digits)
        values.append(value)
    return pd.DataFrame({"value": values}, index=pd.Index(names, name="metric"))
