"""What the drivers in ``experiments/`` share: where FACECOM is, cached measurements, Markdown tables.

Not a driver itself. A driver run as ``python experiments/<name>.py`` finds this module beside it
(the script's folder is first on ``sys.path``); the tests load the drivers the same way
(``tests/conftest.py``'s ``load_script``).

Every driver writes the table it feeds as a Markdown file, regenerated from its cached results, so
a figure in ``docs/`` is produced, never typed: :func:`markdown_table` renders rows,
:func:`spread` writes one "mean ± SD (mean − SD)" cell, :func:`write_text` puts the file in place.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facecom_utils.common import paths
from facecom_utils.data.layout import DISTORTION_TYPES
from facecom_utils.train.rundir import to_jsonable, write_json

MISSING = "n/a"
"""What a table cell says when a metric was not measured (absent, ``None`` or NaN)."""


# ----------------------------------------------------------------------------- where FACECOM is


def add_data_root(parser: argparse.ArgumentParser) -> None:
    """Adds ``--data-root`` to a driver's arguments (read with :func:`data_root`).

    Args:
        parser: The driver's argument parser.
    """
    parser.add_argument(
        "--data-root", default=None,
        help=f"the FACECOM folder holding Task_A/ and Task_B/ (default: ${paths.DATA_ROOT_ENV} when set, "
             "else the repository itself, where FACECOM's README puts the images)")


def data_root(value: str | Path | None, need: Sequence[str] = ("Task_B/train",)) -> Path:
    """The FACECOM root a driver measures: ``--data-root``, else the environment variable, else the repository.

    Args:
        value: The ``--data-root`` argument (None: not given). ``demo`` asks for the synthetic demo
            (generated on first use), as it does for the notebooks: a smoke test, not a measurement.
        need: Folders the driver reads, relative to the root.

    Returns:
        The root, absolute.

    Raises:
        SystemExit: A needed folder is missing (the message says where the images go).
    """
    chosen = value or paths.data_root_from_env()
    if chosen == paths.DEMO_DATA_ROOT:
        from facecom_utils.data.demo import resolve_data_root

        return resolve_data_root(chosen)
    root = paths.repo_path(chosen) if chosen else paths.REPO_ROOT.resolve()
    missing = [part for part in need if not (root / part).is_dir()]
    if missing:
        raise SystemExit(f"{root}: no {', '.join(missing)}. Put FACECOM's training split in the repository's "
                         f"Task_A/ and Task_B/ (see their READMEs), or pass --data-root or set {paths.DATA_ROOT_ENV}.")
    return root


# ----------------------------------------------------------------------------- cached measurements


def cached(file: Path, params: Mapping[str, Any], compute: Callable[[], Any]) -> Any:
    """The result saved in ``file`` for the same ``params``, else ``compute()``, saved there first.

    Args:
        file: A JSON file holding ``{"params": ..., "result": ...}``.
        params: What the result depends on (the driver's arguments); a file saved with other
            parameters is recomputed and overwritten.
        compute: Measures; its result must be JSON-able (:func:`~facecom_utils.train.rundir.to_jsonable`).

    Returns:
        The result as read back from JSON (so a fresh and a cached run render the same table).
    """
    params = to_jsonable(dict(params))
    if file.is_file():
        saved = json.loads(file.read_text())
        if saved.get("params") == params:
            print(f"{file}: cached result of {params}", flush=True)
            return saved["result"]
    write_json(file, {"params": params, "result": compute()})
    return json.loads(file.read_text())["result"]


def write_text(file: Path, text: str) -> Path:
    """Writes ``text`` (a table) to ``file`` atomically, and says where.

    Args:
        file: The Markdown file; its folder is created.
        text: The content; a final newline is added when missing.

    Returns:
        ``file``.
    """
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    tmp.replace(file)
    print(f"wrote {file}", flush=True)
    return file


def run_config(config_cls: type, parameters: Mapping[str, Any], **overrides: Any) -> Any:
    """The configuration a finished notebook run was made with, rebuilt from its ``metrics.json`` parameters.

    Args:
        config_cls: The notebook's config dataclass (``GenderConfig``, ``RecognitionConfig``).
        parameters: The run's recorded parameters (``metrics["parameters"]``); those ``config_cls`` does not
            take (parameters of the notebook itself rather than of the package) are left out.
        overrides: Values that replace the run's own (``output_dir``, ``progress``, a tracks-stage setting).

    Returns:
        ``config_cls(**known parameters, **overrides)``.

    Raises:
        ValueError: An override that ``config_cls`` does not take (a misspelt setting is not dropped silently).
    """
    import dataclasses

    known = {f.name for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{config_cls.__name__} takes no {', '.join(unknown)}")
    return config_cls(**{k: v for k, v in {**parameters, **overrides}.items() if k in known})


# ----------------------------------------------------------------------------- Markdown tables


def is_missing(value: Any) -> bool:
    """Whether a metric was not measured: ``None`` or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value: Any, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, or :data:`MISSING`."""
    return MISSING if is_missing(value) else f"{float(value):.{digits}f}"


def spread(mean: Any, sd: Any, digits: int = 3, floor: bool = True) -> str:
    """One cell: ``mean ± sd``, with ``(mean − sd)`` after it when ``floor`` (the figure the bars are read at).

    Args:
        mean: The mean over the folds.
        sd: Their standard deviation (NaN with one fold: then the mean alone).
        digits: Decimals.
        floor: Whether to add ``(mean − sd)``.

    Returns:
        For example ``0.959 ± 0.005 (0.954)``.
    """
    if is_missing(mean):
        return MISSING
    if is_missing(sd):
        return number(mean, digits)
    text = f"{float(mean):.{digits}f} ± {float(sd):.{digits}f}"
    return f"{text} ({float(mean) - float(sd):.{digits}f})" if floor else text


def paired_cell(differences: Sequence[float], digits: int = 3) -> str:
    """One cell of paired per-fold differences: ``+mean ± sd (+mean − sd)``, signed; "n/a" below two folds.

    A change "beats" the baseline when the bracket is above zero.
    """
    d = np.asarray([x for x in differences if not is_missing(x)], float)
    if len(d) < 2:
        return MISSING
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    return f"{mean:+.{digits}f} ± {sd:.{digits}f} ({mean - sd:+.{digits}f})"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table (no trailing newline); ``|`` inside a cell is escaped.

    Args:
        header: The column names.
        rows: The cells, one sequence per row, as long as ``header``; each is written with ``str``.

    Returns:
        The table's lines.
    """
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rows = [list(r) for r in rows]
    bad = [r for r in rows if len(r) != len(header)]
    if bad:
        raise ValueError(f"a row of {len(bad[0])} cells under {len(header)} columns: {bad[0]}")
    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def frame_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a Markdown table: its index (one column per level) then its columns, numbers rounded.

    Args:
        frame: Any frame; integers are written whole, other numbers with ``digits`` decimals, missing
            ones as :data:`MISSING`.
        digits: Decimals.

    Returns:
        The table.
    """
    names = [n or "" for n in frame.index.names]
    header = [*names, *map(str, frame.columns)]

    def cell(v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return str(v)
        return str(int(v)) if isinstance(v, numbers.Integral) else number(v, digits)

    rows = []
    for key, values in zip(frame.index, frame.itertuples(index=False)):
        keys = key if isinstance(key, tuple) else (key,)
        rows.append([*map(str, keys), *(cell(v) for v in values)])
    return markdown_table(header, rows)


def gender_table(stats: pd.DataFrame) -> str:
    """Task A's table: one row per track, the headline metrics, the worst type and every type.

    Args:
        stats: Index ``(track, metric)``, columns ``mean`` and ``sd`` over the folds; metrics
            ``balanced_accuracy``, ``recall_female``, ``roc_auc`` and ``bal_acc <type>`` per
            distortion type (others are ignored). Tracks keep their order.

    Returns:
        Columns: track, balanced accuracy and female recall as ``mean ± SD (mean − SD)``, ROC AUC,
        the worst type (lowest mean) with its spread, then each type present as ``mean ± SD``.
    """
    tracks = list(dict.fromkeys(stats.index.get_level_values(0)))
    types = [t for t in DISTORTION_TYPES if any((tr, f"bal_acc {t}") in stats.index for tr in tracks)]
    header = ["track", "balanced acc.", "female recall", "ROC AUC", "worst type", *types]
    rows = []
    for track in tracks:
        means = {t: stats.loc[(track, f"bal_acc {t}"), "mean"] for t in types if (track, f"bal_acc {t}") in stats.index}
        worst = min(means, key=means.get) if means else None
        rows.append([f"`{track}`", stat_cell(stats, track, "balanced_accuracy"),
                     stat_cell(stats, track, "recall_female"), stat_cell(stats, track, "roc_auc", floor=False),
                     MISSING if worst is None else f"{worst} {stat_cell(stats, track, f'bal_acc {worst}')}",
                     *(stat_cell(stats, track, f"bal_acc {t}", floor=False) for t in types)])
    return markdown_table(header, rows)


def stat_cell(stats: pd.DataFrame, track: str, metric: str, floor: bool = True, digits: int = 3) -> str:
    """The :func:`spread` cell of one ``(track, metric)`` row of a ``mean``/``sd`` frame (:data:`MISSING` if absent)."""
    if (track, metric) not in stats.index:
        return MISSING
    row = stats.loc[(track, metric)]
    return spread(row["mean"], row["sd"], digits, floor)
