"""Person- and identity-disjoint splits: the one module that decides who goes where.

Nobody is ever on two sides of a split: Task A is split by person (the person comes from the file
name), Task B by identity. Every split is seeded and stratified, and draws in the same way
(:func:`_draw_per_stratum`: sorted strata, sorted members, one seeded permutation each):

* :func:`person_grouped_split` -- Task A's validation fold and held-out part, stratified by label;
* :func:`split_identities` -- Task B's validation fold and held-out part, stratified by clean-image
  count (:func:`clean_count_bucket`); :func:`subsample_identities` for quick runs;
* :func:`split_by_identity` -- a whole train/val FACECOM root written as links (``facecom split``),
  stratified by gender and clean-image count, allocated by largest remainder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facecom_utils.data.layout import (
    SPLITS,
    TASK_A_CLASSES,
    TASK_A_LAYOUT,
    TASK_B_LAYOUT,
    _SPLIT_MARKER,
    _abs,
    FacecomLayoutError,
    OnError,
    find_task_dir,
    person_from_filename,
    scan_task_a,
    scan_task_b,
)

__all__ = [
    "grouped_folds",
    "person_folds",
    "usable_folds",
    "clean_count_bucket",
    "clean_counts",
    "person_grouped_split",
    "split_by_identity",
    "split_identities",
    "subsample_identities",
]


def clean_count_bucket(n_clean: int) -> str:
    """The clean-image-count stratum of an identity: ``"1"`` (or none), ``"2"``, ``"3-5"``, ``"6+"``.

    Identities with two or more clean images are the ones that keep probes in the strict protocol, so
    every split spreads them in proportion.
    """
    if n_clean <= 1:
        return "1"
    if n_clean == 2:
        return "2"
    return "3-5" if n_clean <= 5 else "6+"


def clean_counts(table: pd.DataFrame) -> pd.Series:
    """Number of clean images per identity (0 for identities with distorted images only)."""
    counts = table[table["distortion"].isna()].groupby("identity").size()
    return counts.reindex(sorted(table["identity"].unique()), fill_value=0)


def _draw_per_stratum(strata: dict[Any, list[Any]], fraction: float, rng: np.random.Generator,
                      keep_both_sides: bool) -> list[Any]:
    """``round(fraction * n)`` seeded members of each stratum (keys and members in sorted order).

    With ``keep_both_sides`` a stratum of two or more members gives at least one and keeps at least one.
    """
    drawn: list[Any] = []
    for key in sorted(strata):
        members = sorted(strata[key])
        n = int(round(fraction * len(members)))
        if keep_both_sides and len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        drawn += list(rng.permutation(members)[:n])
    return drawn


def person_grouped_split(
    df: pd.DataFrame,
    val_fraction: float = 0.15,
    seed: int = 0,
    label_col: str = "label",
    group_col: str = "person",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carves a validation fold from a table: stratified by label, grouped by person, seeded.

    Each person gets the majority label of their images; within each label, a seeded random
    ``val_fraction`` of the persons (at least one, never all, when the label has two or more
    persons) go to validation with all their images. Nobody is on both sides.

    Args:
        df: One row per image with ``label_col`` and ``group_col``.
        val_fraction: Fraction of each label's persons in the validation fold, in (0, 1).
        seed: Seed of the draw.
        label_col: Stratification column.
        group_col: Grouping column (the person).

    Returns:
        ``(train_df, val_df)``, each with a fresh index and the original row order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    for col in (label_col, group_col):
        if col not in df.columns:
            raise ValueError(f"the table has no column {col!r}; columns: {list(df.columns)}")
    person_label = (
        df.groupby(group_col)[label_col].agg(lambda s: s.value_counts().sort_index().idxmax()).sort_index()
    )
    strata = {label: list(person_label.index[person_label == label]) for label in person_label.unique()}
    val_people = _draw_per_stratum(strata, val_fraction, np.random.default_rng(seed), keep_both_sides=True)
    in_val = df[group_col].isin(set(val_people))
    return df[~in_val].reset_index(drop=True), df[in_val].reset_index(drop=True)


def split_identities(table: pd.DataFrame, val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Seeded identity-disjoint split, stratified by clean-image count (1, 2, 3-5, 6+).

    Args:
        table: A :func:`~facecom_utils.data.layout.scan_task_b` table.
        val_fraction: Share of identities in the second list, in (0, 1); at least two identities
            are held out when there are four or more (one with two or three), and at least one
            is kept.
        seed: Seed of the draw.

    Returns:
        ``(kept identities, held-out identities)``, both sorted.
    """
    counts = clean_counts(table)
    rng = np.random.default_rng(seed)
    strata: dict[str, list[str]] = {}
    for identity, n in counts.items():
        strata.setdefault(clean_count_bucket(int(n)), []).append(str(identity))
    held = [str(i) for i in _draw_per_stratum(strata, val_fraction, rng, keep_both_sides=False)]
    # Tiny tables: the protocol needs impostors, so hold out at least two identities (one when
    # there are only two or three), preferring identities with two or more photos.
    minimum = 2 if len(counts) >= 4 else 1 if len(counts) >= 2 else 0
    while len(held) < minimum:
        rest = [str(i) for i in counts.index if str(i) not in held]
        multi = sorted(i for i in rest if counts[i] >= 2) or sorted(rest)
        held.append(str(rng.choice(multi)))
    if len(held) == len(counts):
        held = held[:-1]
    held_set = set(held)
    return sorted(i for i in counts.index if i not in held_set), sorted(held_set)


def subsample_identities(table: pd.DataFrame, max_identities: int | None, seed: int) -> pd.DataFrame:
    """Keep ``max_identities`` identities (seeded, stratified like :func:`split_identities`); None: all."""
    n = table["identity"].nunique()
    if max_identities is None or max_identities >= n:
        return table
    _, keep = split_identities(table, max_identities / n, seed=seed + 7919)
    return table[table["identity"].isin(set(keep))].reset_index(drop=True)


def _allocate(strata: dict[tuple[str, str], list[str]], val_fraction: float, rng: np.random.Generator) -> set[str]:
    """Pick ``round(val_fraction * N)`` identities, spread over strata by largest remainder."""
    total = sum(len(v) for v in strata.values())
    n_val = min(max(int(round(val_fraction * total)), 1), total - 1)
    keys = sorted(strata)
    quotas = {k: val_fraction * len(strata[k]) for k in keys}
    take = {k: int(math.floor(quotas[k])) for k in keys}
    # remainders, ties broken by a seeded random key so no stratum is systematically favoured
    tiebreak = rng.random(len(keys))
    order = sorted(range(len(keys)), key=lambda i: (-(quotas[keys[i]] - take[keys[i]]), tiebreak[i]))
    i = 0
    while sum(take.values()) < n_val:
        k = keys[order[i % len(keys)]]
        if take[k] < len(strata[k]):
            take[k] += 1
        i += 1
    while sum(take.values()) > n_val:  # only when the clamp to total-1 bites
        k = max(keys, key=lambda key: take[key])
        take[k] -= 1
    val: set[str] = set()
    for k in keys:
        members = sorted(strata[k])
        picked = rng.permutation(len(members))[: take[k]]
        val.update(members[j] for j in picked)
    return val


def _find_task_dir_or_none(root: Path, task: str) -> Path | None:
    try:
        return find_task_dir(root, task)
    except FacecomLayoutError:
        return None


def _link(target: str, link: Path) -> None:
    """Symlink ``link`` -> ``target`` (absolute, real path); hard link where symlinks are not allowed."""
    link.parent.mkdir(parents=True, exist_ok=True)
    real = os.path.realpath(target)
    try:
        os.symlink(real, link)
    except OSError:
        os.link(real, link)  # e.g. Windows without developer mode


def split_by_identity(
    src_root: str | Path,
    dst_root: str | Path,
    val_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
    on_error: OnError = "raise",
) -> Path:
    """Write an identity-disjoint train/val FACECOM root from ``src_root``'s ``train`` split.

    Every identity of ``src_root``'s Task B ``train`` (and every Task A person, matched to Task B
    by file name -- Task A images are Task B clean images -- else by :func:`person_from_filename`)
    goes wholly to ``dst/…/train`` or ``dst/…/val``. Images are symbolic links to the real files
    (hard links where symlinks are unavailable), never copies. The held-out identities are
    stratified by gender (from Task A; ``"unknown"`` when absent) and by clean-image count
    (1, 2, 3-5, 6+), so Task A's female/male ratio is preserved roughly and identities with >= 2
    clean images (needed by the strict recognition protocol) are held out in proportion.
    ``src_root``'s own ``val`` split, if any, is ignored. Either task may be absent from
    ``src_root``, not both.

    ``dst/SPLIT.json`` records the source, seed, fraction, strata and identity lists.

    Args:
        src_root: A FACECOM root (holding ``Task_A/`` and/or ``Task_B/`` with a ``train`` split).
        dst_root: Where to write; created if needed. Must not be ``src_root`` or inside its Task folders.
        val_fraction: Share of identities held out, in (0, 1).
        seed: Seed of the deterministic selection.
        overwrite: Replace an earlier output of this function at ``dst_root`` (a folder holding
            ``SPLIT.json``). Any other non-empty ``dst_root`` is refused.
        on_error: Passed to the scans of ``src_root`` (bad images are never linked with "skip").

    Returns:
        ``dst_root`` as an absolute path.

    Raises:
        FileExistsError: ``dst_root`` is not empty and ``overwrite`` is False, or it was not
            written by this function.
        FacecomLayoutError: ``src_root`` holds neither task's ``train`` split.
        ValueError: Bad ``val_fraction``, fewer than two identities, or ``dst_root`` equal to
            ``src_root`` or inside one of its Task folders.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    src = _abs(src_root)
    dst = _abs(dst_root)
    task_dirs = _source_task_dirs(src, dst)
    # a task folder that exists must be well formed (its errors propagate); an absent one is skipped
    task_b = scan_task_b(src, splits=("train",), on_error=on_error) if task_dirs["Task_B"] else None
    task_a = scan_task_a(src, splits=("train",), on_error=on_error) if task_dirs["Task_A"] else None
    identities, a_identity, strata = _stratified_identities(task_a, task_b)
    if len(identities) < 2:
        raise ValueError(f"{src}: need at least two identities to split, found {len(identities)}")
    val_ids = _allocate(strata, val_fraction, np.random.default_rng(seed))
    _prepare_destination(dst, overwrite)
    counts = _link_split(dst, task_a, a_identity, task_b, val_ids)
    record = _split_record(src, seed, val_fraction, strata, counts, identities, val_ids)
    (dst / _SPLIT_MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return dst


def _source_task_dirs(src: Path, dst: Path) -> dict[str, Path | None]:
    """``src``'s ``Task_A``/``Task_B`` folders (``None`` when absent), with ``dst`` checked against them.

    Raises:
        FacecomLayoutError: ``src`` holds neither task.
        ValueError: ``dst`` is ``src`` or inside one of its Task folders.
    """
    task_dirs = {task: _find_task_dir_or_none(src, task) for task in ("Task_A", "Task_B")}
    if not any(task_dirs.values()):
        raise FacecomLayoutError(
            f"{src}: holds neither Task_A/ nor Task_B/. Expected {TASK_A_LAYOUT} and/or {TASK_B_LAYOUT}"
        )
    dst_real = Path(os.path.realpath(dst))
    for guarded in [src, *(d for d in task_dirs.values() if d is not None)]:
        guarded_real = Path(os.path.realpath(guarded))
        if dst_real == guarded_real or (guarded != src and guarded_real in dst_real.parents):
            raise ValueError(f"dst_root {dst} must not be src_root {src} or inside its Task folders")
    return task_dirs


def _stratified_identities(
    task_a: pd.DataFrame | None, task_b: pd.DataFrame | None
) -> tuple[set[str], list[str], dict[tuple[str, str], list[str]]]:
    """Every identity of the two ``train`` scans, the identity of each Task A image, and the strata.

    A Task A image's identity is the Task B identity holding the same file name, else
    :func:`person_from_filename`. An identity's gender is the majority of its Task A labels (ties:
    the first label in sorted order; ``"unknown"`` without Task A images); its clean-image count
    comes from Task B (from Task A when Task B is absent).

    Returns:
        ``(identities, a_identity, strata)``: ``a_identity`` in ``task_a`` row order; ``strata`` maps
        ``(gender, clean_count_bucket)`` to its identities in sorted order.
    """
    n_clean: Counter[str] = Counter()
    name_to_identity: dict[str, str] = {}
    identities: set[str] = set()
    if task_b is not None:
        identities.update(task_b["identity"])
        clean = task_b[task_b["distortion"].isna()]
        n_clean.update(clean["identity"])
        name_to_identity = {Path(p).name: i for p, i in zip(clean["path"], clean["identity"])}
    gender_votes: dict[str, Counter[str]] = defaultdict(Counter)
    a_identity: list[str] = []
    if task_a is not None:
        for path, label in zip(task_a["path"], task_a["label"]):
            name = Path(path).name
            ident = name_to_identity.get(name, person_from_filename(name))
            a_identity.append(ident)
            gender_votes[ident][label] += 1
        identities.update(a_identity)
        if task_b is None:
            n_clean.update(a_identity)

    def gender(ident: str) -> str:
        votes = gender_votes.get(ident)
        return max(sorted(votes), key=votes.__getitem__) if votes else "unknown"

    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    for ident in sorted(identities):
        strata[(gender(ident), clean_count_bucket(n_clean.get(ident, 0)))].append(ident)
    return identities, a_identity, dict(strata)


def _prepare_destination(dst: Path, overwrite: bool) -> None:
    """Creates ``dst``, or empties an earlier :func:`split_by_identity` output there when ``overwrite``.

    Raises:
        FileExistsError: ``dst`` is not a folder, or is not empty and either ``overwrite`` is False
            or it holds no split marker (was not written by :func:`split_by_identity`).
    """
    if dst.exists():
        if not dst.is_dir():
            raise FileExistsError(f"{dst}: exists and is not a folder")
        if any(dst.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{dst}: folder is not empty; pass overwrite=True to replace an earlier split")
            if not (dst / _SPLIT_MARKER).is_file():
                raise FileExistsError(
                    f"{dst}: not empty and holds no {_SPLIT_MARKER}, so it was not written by split_by_identity; "
                    "refusing to delete it even with overwrite=True"
                )
            for name in ("Task_A", "Task_B", _SPLIT_MARKER):
                target = dst / name
                if target.is_symlink() or target.is_file():
                    target.unlink()
                elif target.is_dir():
                    shutil.rmtree(target)  # holds links only; rmtree never follows them
    dst.mkdir(parents=True, exist_ok=True)


def _link_split(
    dst: Path,
    task_a: pd.DataFrame | None,
    a_identity: list[str],
    task_b: pd.DataFrame | None,
    val_ids: set[str],
) -> dict[str, dict[str, dict[str, int]]]:
    """Links every image of the scans into ``dst/<task>/<train|val>/...`` by its identity's side.

    Returns:
        Per task and split: Task B ``identities``/``clean``/``distorted`` counts, Task A counts per label.
    """

    def split_of(ident: str) -> str:
        return "val" if ident in val_ids else "train"

    counts: dict[str, dict[str, dict[str, int]]] = {}
    if task_b is not None:
        counts["Task_B"] = {s: {"identities": 0, "clean": 0, "distorted": 0} for s in SPLITS}
        for path, ident, kind in zip(task_b["path"], task_b["identity"], task_b["distortion"]):
            split = split_of(ident)
            rel = Path(path).name if kind is None else Path(Path(path).parent.name, Path(path).name)
            _link(path, dst / "Task_B" / split / ident / rel)
            counts["Task_B"][split]["clean" if kind is None else "distorted"] += 1
        for ident in set(task_b["identity"]):
            counts["Task_B"][split_of(ident)]["identities"] += 1
    if task_a is not None:
        counts["Task_A"] = {s: {label: 0 for label in TASK_A_CLASSES} for s in SPLITS}
        for path, label, ident in zip(task_a["path"], task_a["label"], a_identity):
            split = split_of(ident)
            _link(path, dst / "Task_A" / split / label / Path(path).name)
            counts["Task_A"][split][label] += 1
    return counts


def _split_record(
    src: Path,
    seed: int,
    val_fraction: float,
    strata: dict[tuple[str, str], list[str]],
    counts: dict[str, dict[str, dict[str, int]]],
    identities: set[str],
    val_ids: set[str],
) -> dict[str, Any]:
    """The content of ``SPLIT.json``: source, seed, fraction, strata, counts and identity lists."""
    return {
        "created_by": "facecom_utils.data.splits.split_by_identity",
        "source": str(src),
        "source_split": "train",
        "seed": seed,
        "val_fraction": val_fraction,
        "stratified_by": ["gender (Task A majority label, 'unknown' if absent)", "clean images: 1, 2, 3-5, 6+"],
        "strata": {
            f"{g}|{b}": {"identities": len(m), "val": sum(i in val_ids for i in m)}
            for (g, b), m in sorted(strata.items())
        },
        "counts": counts,
        "train_identities": sorted(identities - val_ids),
        "val_identities": sorted(val_ids),
    }


# ----------------------------------------------------------------------------- person-grouped K-fold (Task A)


def grouped_folds(persons: Sequence[str], labels: Sequence[int], k: int = 5, repeats: int = 1,
                  seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Repeated person-grouped, label-stratified K-fold: ``[(train_idx, test_idx), ...]``.

    A person's label is the majority of theirs; each repeat shuffles persons with ``seed + repeat``.
    Every person is in exactly one test part per repeat.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    persons = np.asarray(persons)
    labels = np.asarray(labels)
    k = usable_folds(persons, labels, k)
    if k < 2:
        raise ValueError("person-grouped folds need at least two persons of each label; got "
                         f"{pd.Series(labels).groupby(persons).first().value_counts().to_dict()} persons per label")
    folds = []
    for r in range(repeats):
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + r)
        folds += [(tr, te) for tr, te in cv.split(np.zeros(len(labels)), labels, persons)]
    return folds


def person_folds(persons: Sequence[str], labels: Sequence[int], k: int = 5, repeats: int = 1,
                 seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Like :func:`grouped_folds`, but the *persons* are balanced, not the images: ``[(train_idx, test_idx), ...]``.

    The folds are drawn over one row per person (label: the majority of theirs), so every test part
    holds about 1/k of each label's persons whatever their numbers of images (image-balanced group
    folds can give one part a few persons with many images: FACECOM's training split has a person
    with 236); each person's images follow them.
    """
    persons = np.asarray(persons)
    people = pd.Series(np.asarray(labels)).groupby(persons).agg(lambda v: int(v.mean() >= 0.5))
    names = people.index.to_numpy()
    out = []
    for tr, te in grouped_folds(names, people.to_numpy(), k, repeats, seed):
        out.append((np.flatnonzero(np.isin(persons, names[tr])), np.flatnonzero(np.isin(persons, names[te]))))
    return out


def usable_folds(persons: Sequence[str], labels: Sequence[int], k: int) -> int:
    """``k``, lowered to the number of persons of the rarer label (each test part gets one of them)."""
    per_person = pd.Series(np.asarray(labels)).groupby(np.asarray(persons)).first()
    counts = per_person.value_counts()
    return int(min(k, counts.min() if len(counts) == 2 else 0))
