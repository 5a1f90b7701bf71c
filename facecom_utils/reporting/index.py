"""The run's index: what each notebook did, collected into ``index.html`` and ``summary.json``.

:class:`NotebookResult` and :class:`RunResult` are what :func:`facecom_utils.reporting.runner.run_reports` returns;
:func:`write_index` renders them (status, timing, the headline metrics of each notebook, failures with
the notebook and cell that failed, every metric and parameter) beside the reports.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from facecom_utils.train.rundir import write_json

__all__ = ["HEADLINE_METRICS", "NotebookResult", "RunResult", "git_state", "write_index"]

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
    device: str | None = None
    presets: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # per notebook, the preset files applied
    provenance: dict[str, Any] | None = None  # a published copy's commit, machine, versions (reporting.publish)
    commit: dict[str, Any] | None = None  # the code the run ran: {"commit", "dirty"} (git_state at its start)

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.notebooks)

    @property
    def failures(self) -> list[NotebookResult]:
        return [r for r in self.notebooks if r.status != "ok"]


def _lookup(metrics: Mapping[str, Any] | None, dotted: str) -> Any:
    value: Any = metrics
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


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


def _notebook_row(r: NotebookResult) -> str:
    """One notebook's row of the index table: status, seconds, headline metrics or error, links."""
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
    return (f'<tr><td>{title}</td><td class="{r.status}">{r.status.upper()}</td><td class="num">{r.seconds:.1f}</td>'
            f"<td>{headline}{error}</td><td>{' · '.join(links)}</td></tr>")


def _notebook_details(r: NotebookResult) -> str:
    """A collapsed table of every scalar metric and parameter of one notebook ("" without metrics)."""
    flat = _scalars(r.metrics)
    if not flat:
        return ""
    body = "".join(f"<tr><td><code>{html.escape(k)}</code></td><td class='num'>{_fmt(v)}</td></tr>" for k, v in flat.items())
    params = "".join(f"<tr><td><code>{html.escape(k)}</code></td><td>{_fmt(v)}</td></tr>" for k, v in r.parameters.items())
    return (f"<details><summary><b>{r.name}</b>: all metrics and parameters</summary>"
            f"<table><tr><th>metric</th><th>value</th></tr>{body}</table>"
            f"<table><tr><th>parameter</th><th>value</th></tr>{params}</table></details>")


def git_state(folder: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": HEAD's hash or None, "dirty": tracked files differ from it (None when unknown)}`` of the
    checkout holding the package (or ``folder``)."""
    import subprocess

    from facecom_utils.common.paths import REPO_ROOT

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=folder or REPO_ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def _provenance_line(origin: Mapping[str, Any]) -> str:
    """Where a published run came from: its commit, machine and versions."""
    commit = origin.get("commit") or "unknown"
    dirty = " (with uncommitted changes)" if origin.get("dirty") else ""
    return (f"<p>Published copy of run <code>{html.escape(str(origin.get('published_from')))}</code>, made "
            f"{html.escape(str(origin.get('created')))} at commit <code>{html.escape(commit[:12])}</code>{dirty} on "
            f"{html.escape(str(origin.get('machine')))} (Python {html.escape(str(origin.get('python')))}, torch "
            f"{html.escape(str(origin.get('torch')))}). Figures that would show dataset images are left out; the "
            "executed notebooks, checkpoints and embeddings are not published.</p>")


def write_index(run: RunResult) -> Path:
    """Write ``index.html`` and ``summary.json`` into the run folder; returns the index path."""
    run_dir = Path(run.run_dir)
    summary = {
        "run": run.name,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "data_root": run.data_root,
        "synthetic": run.synthetic,
        "device": run.device,
        "presets": run.presets,
        "ok": run.ok,
        "python": sys.executable,
        "headline": {
            r.name: {k: _lookup(r.metrics, k) for k in HEADLINE_METRICS.get(r.name, ())} for r in run.notebooks
        },
        "notebooks": [dataclasses.asdict(r) for r in run.notebooks],
    }
    if run.commit is not None:
        from facecom_utils.common.paths import REPO_ROOT

        summary["commit"], summary["repo"] = run.commit, str(REPO_ROOT)
    if run.provenance is not None:
        summary["provenance"] = run.provenance
    write_json(run_dir / "summary.json", summary)

    rows, detail = [_notebook_row(r) for r in run.notebooks], [_notebook_details(r) for r in run.notebooks]

    banner = (
        '<p class="banner"><b>Synthetic demo data.</b> These reports ran on the generated demo dataset '
        f"(<code>{html.escape(run.data_root)}</code>), not on FACECOM: they show the pipeline works, "
        "not how accurate it is.</p>"
        if run.synthetic
        else f"<p>Data: <code>{html.escape(run.data_root)}</code></p>"
    )
    applied = sorted({p for files in run.presets.values() for p in files})
    banner += (f"<p>Presets: {', '.join(f'<code>{html.escape(p)}</code>' for p in applied) or 'none (notebook defaults)'}"
               + (f" · device: {html.escape(run.device)}" if run.device else "") + "</p>")
    if run.provenance is not None:
        banner += _provenance_line(run.provenance)
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
