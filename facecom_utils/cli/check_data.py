"""``facecom check-data ROOT``: is this folder FACECOM, complete, readable and without train/val leakage?

Checks, each reported as ``error``, ``warning``, ``note`` or ``ok``:

* layout: ``Task_A/{train,val}/{female,male}/`` and ``Task_B/{train,val}/<identity>/[distortion/]``
  (a missing task, split or class folder is an error; entries outside the layout, distorted images
  without their clean image and unknown distortion suffixes are warnings); no ``val`` split is a note;
* counts against the published FACECOM counts (:data:`PUBLISHED`; a difference is a warning, and a
  synthetic demo or a ``facecom split`` copy is not compared);
* unreadable images (zero-byte, truncated, not an image, fails to decode): errors;
* identities (Task B) or people (Task A, from the file names) in both train and val: errors;
* near-duplicate images across train and val: warnings, found with the EDA's 256-bit perceptual hash
  (:func:`facecom_utils.reporting.eda.hash_images`) on the clean images of both tasks, at the EDA's
  near-duplicate distance (a distorted image derives from a clean one of its own split).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from facecom_utils.cli.inputs import CliError

__all__ = ["PUBLISHED", "DataCheck", "Finding", "check_data"]

#: The published FACECOM counts (COMSYS Hackathon-5): Task A images per label, Task B identities and images.
PUBLISHED: dict[tuple[str, str], dict[str, int]] = {
    ("Task_A", "train"): {"female": 303, "male": 1623},
    ("Task_A", "val"): {"female": 79, "male": 343},
    ("Task_B", "train"): {"identities": 877, "clean": 1926, "distorted": 13482},
    ("Task_B", "val"): {"identities": 250, "clean": 422, "distorted": 2954},
}
LEVELS = ("error", "warning", "note", "ok")
#: Files listed under one finding; the rest are counted.
MAX_LISTED = 5


@dataclass
class Finding:
    """One line of the report, with the files it is about.

    Attributes:
        level: ``error``, ``warning``, ``note`` or ``ok``.
        where: ``Task_B/train``, ``Task_A``, ``train/val`` ...
        message: What was found.
        items: The files or names concerned (listed up to :data:`MAX_LISTED`).
    """

    level: str
    where: str
    message: str
    items: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.level:<8} {self.where}: {self.message}"]
        out += [f"{'':<9}  {item}" for item in self.items[:MAX_LISTED]]
        if len(self.items) > MAX_LISTED:
            out.append(f"{'':<9}  ... and {len(self.items) - MAX_LISTED} more")
        return out


@dataclass
class DataCheck:
    """The findings of :func:`check_data` and the counts it made."""

    root: Path
    findings: list[Finding]
    counts: dict[str, dict[str, int]]

    @property
    def errors(self) -> int:
        return sum(f.level == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.level == "warning" for f in self.findings)

    def text(self) -> str:
        lines = [f"facecom check-data {self.root}"]
        for level in LEVELS:
            for finding in (f for f in self.findings if f.level == level):
                lines += finding.lines()
        lines.append(f"{self.errors} error(s), {self.warnings} warning(s)")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "errors": self.errors, "warnings": self.warnings, "counts": self.counts,
                "findings": [vars(f) for f in self.findings]}


def _scan(root: Path, task: str, findings: list[Finding]) -> pd.DataFrame | None:
    """The task's table (unreadable files kept); layout problems become findings."""
    from facecom_utils.data.layout import FacecomDataWarning, FacecomLayoutError, scan_task_a, scan_task_b

    scan = scan_task_a if task == "Task_A" else scan_task_b
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FacecomDataWarning)
        try:
            table = scan(root, on_error="keep")
        except FacecomLayoutError as err:
            findings.append(Finding("error", task, str(err).splitlines()[0]))
            return None
    for w in caught:
        if issubclass(w.category, FacecomDataWarning):
            head, *listed = str(w.message).splitlines()
            findings.append(Finding("warning", task, head.rstrip(":"), [s.strip() for s in listed if s.strip()]))
    return table


def _counts(task: str, split: str, table: pd.DataFrame) -> dict[str, int]:
    rows = table[table["split"] == split]
    if task == "Task_A":
        return {label: int((rows["label"] == label).sum()) for label in ("female", "male")}
    clean = rows["distortion"].isna()
    return {"identities": int(rows["identity"].nunique()), "clean": int(clean.sum()), "distorted": int((~clean).sum())}


def _count_findings(tables: dict[str, pd.DataFrame], compare: bool, findings: list[Finding]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for task, table in tables.items():
        for split in sorted(set(table["split"])):
            got = counts[f"{task}/{split}"] = _counts(task, split, table)
            text = ", ".join(f"{v} {k}" for k, v in got.items())
            want = PUBLISHED.get((task, split))
            if not compare or want is None:
                findings.append(Finding("ok", f"{task}/{split}", text))
            elif got == want:
                findings.append(Finding("ok", f"{task}/{split}", f"{text} (the published FACECOM counts)"))
            else:
                diff = ", ".join(f"{k} {got.get(k)} (published {v})" for k, v in want.items() if got.get(k) != v)
                findings.append(Finding("warning", f"{task}/{split}", f"counts differ from the published FACECOM: {diff}"))
    return counts


def _unreadable(tables: dict[str, pd.DataFrame], findings: list[Finding]) -> set[str]:
    from facecom_utils.data.layout import image_problem

    bad: set[str] = set()
    for task, table in tables.items():
        problems = [(p, r) for p in table["path"] if (r := image_problem(p)) is not None]
        if problems:
            findings.append(Finding("error", task, f"{len(problems)} unreadable image(s)", [f"{p}: {r}" for p, r in problems]))
            bad |= {p for p, _ in problems}
        else:
            findings.append(Finding("ok", task, f"all {len(table)} images readable"))
    return bad


def _overlaps(tables: dict[str, pd.DataFrame], findings: list[Finding]) -> None:
    for task, column, what in (("Task_A", "person", "people"), ("Task_B", "identity", "identities")):
        table = tables.get(task)
        if table is None:
            continue
        both = sorted(set(table.loc[table["split"] == "train", column]) & set(table.loc[table["split"] == "val", column]))
        if both:
            findings.append(Finding("error", f"{task} train/val", f"{len(both)} {what} in both train and val (leakage)", both))
        else:
            findings.append(Finding("ok", f"{task} train/val", f"no {what} in both train and val"))


def _near_duplicates(tables: dict[str, pd.DataFrame], bad: set[str], findings: list[Finding],
                     max_distance: int) -> None:
    """Clean images of either task in train with a near-duplicate in val (the EDA's perceptual hash)."""
    from facecom_utils.reporting.eda import hash_images, near_duplicate_pairs

    clean = pd.concat([t if "distortion" not in t else t[t["distortion"].isna()] for t in tables.values()])
    clean = clean[~clean["path"].isin(bad)]
    train = clean[clean["split"] == "train"]["path"].tolist()
    val = clean[clean["split"] == "val"]["path"].tolist()
    pairs = near_duplicate_pairs(hash_images(train), hash_images(val), max_distance=max_distance)
    if len(pairs):
        findings.append(Finding("warning", "train/val",
                                f"{len(pairs)} near-duplicate image pair(s) across train and val "
                                f"(perceptual hash distance <= {max_distance})",
                                [f"{train[i]} ~ {val[j]} (distance {d})" for i, j, d in pairs.itertuples(index=False)]))
    else:
        findings.append(Finding("ok", "train/val", f"no near-duplicate image across train and val "
                                f"({len(train)} and {len(val)} clean images hashed)"))


def _compare_counts(root: Path, findings: list[Finding]) -> bool:
    from facecom_utils.data.demo import is_demo_root

    if is_demo_root(root):
        findings.append(Finding("note", "counts", "a synthetic demo dataset: counts not compared with FACECOM's"))
        return False
    if (root / "SPLIT.json").is_file():
        findings.append(Finding("note", "counts", "a `facecom split` copy (SPLIT.json): counts not compared with FACECOM's"))
        return False
    return True


def check_data(root: str | Path, duplicates: bool = True, max_distance: int | None = None) -> DataCheck:
    """Check a FACECOM-layout folder (see the module docstring).

    Args:
        root: The folder holding ``Task_A/`` and ``Task_B/``.
        duplicates: Search near-duplicate images across train and val (needs both splits).
        max_distance: Hamming distance of a near-duplicate (default: the EDA's).

    Raises:
        CliError: ``root`` is not a folder, or holds neither task.
    """
    from facecom_utils.reporting.eda import EDAConfig

    path = Path(root).expanduser()
    if not path.is_dir():
        raise CliError(f"{path}: no such folder (expected a FACECOM root holding Task_A/ and Task_B/)")
    if not any(d.is_dir() and d.name.lower() in ("task_a", "task_b") for d in path.iterdir()):
        raise CliError(f"{path}: holds neither Task_A/ nor Task_B/ (expected a FACECOM root)")
    findings: list[Finding] = []
    tables = {task: t for task in ("Task_A", "Task_B") if (t := _scan(path, task, findings)) is not None}
    counts = _count_findings(tables, _compare_counts(path, findings), findings)
    bad = _unreadable(tables, findings)
    if not any("val" in set(t["split"]) for t in tables.values()):
        findings.append(Finding("note", "splits", "no val split: the train/val checks (shared identities, near-duplicates "
                                "across splits) were skipped"))
        return DataCheck(path, findings, counts)
    _overlaps(tables, findings)
    if duplicates:
        limit = EDAConfig.max_hash_distance if max_distance is None else int(max_distance)
        _near_duplicates(tables, bad, findings, limit)
    return DataCheck(path, findings, counts)

