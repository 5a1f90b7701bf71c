"""Who is drawn and how often: identity-disjoint splits, the identity subsample, the identity sampler's weights."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..data import DISTORTION_TYPES

__all__ = ["split_identities", "identity_sample_weights"]


def _clean_counts(table: pd.DataFrame) -> pd.Series:
    """Number of clean images per identity (0 for identities with distorted images only)."""
    counts = table[table["distortion"].isna()].groupby("identity").size()
    return counts.reindex(sorted(table["identity"].unique()), fill_value=0)

def _bucket(n_clean: int) -> str:
    return "0-1" if n_clean <= 1 else "2" if n_clean == 2 else "3-5" if n_clean <= 5 else "6+"

def split_identities(table: pd.DataFrame, val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Seeded identity-disjoint split, stratified by clean-image count (1, 2, 3-5, 6+).

    Args:
        table: A :func:`~facecom_utils.data.scan_task_b` table.
        val_fraction: Share of identities in the second list, in (0, 1); at least two identities
            are held out when there are four or more (one with two or three), and at least one
            is kept.
        seed: Seed of the draw.

    Returns:
        ``(kept identities, held-out identities)``, both sorted.
    """
    counts = _clean_counts(table)
    rng = np.random.default_rng(seed)
    held: list[str] = []
    strata: dict[str, list[str]] = {}
    for identity, n in counts.items():
        strata.setdefault(_bucket(int(n)), []).append(str(identity))
    for key in sorted(strata):
        members = sorted(strata[key])
        n_take = int(round(val_fraction * len(members)))
        held += list(rng.permutation(members)[:n_take])
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

def _subsample_identities(table: pd.DataFrame, max_identities: int | None, seed: int) -> pd.DataFrame:
    n = table["identity"].nunique()
    if max_identities is None or max_identities >= n:
        return table
    _, keep = split_identities(table, max_identities / n, seed=seed + 7919)
    return table[table["identity"].isin(set(keep))].reset_index(drop=True)

def identity_sample_weights(
    table: pd.DataFrame,
    clean_cap: int,
    clean_fraction: float | None = None,
    distortion_weights: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Per-image sampling weights: identity weight ``min(max(n_clean, 1), clean_cap)``, split over its images.

    Args:
        table: The training rows (one per image) with ``identity`` and ``distortion``.
        clean_cap: Cap of the identity weight (1 gives class-balanced sampling).
        clean_fraction: Share of an identity's weight given to its clean images (the rest to its
            distorted ones), when it has both; None: the identity's weight is split over all its
            images in proportion to their ``distortion_weights`` (equally without them).
        distortion_weights: Relative weight of each distortion type within an identity's share
            (types not named, and clean images, weigh 1), e.g. ``{"sunny": 2}`` draws an
            identity's sunny images twice as often as each other type. An identity's total weight
            is unchanged.

    Returns:
        float64 [N] weights; each identity's weights sum to its identity weight.
    """
    extra = dict(distortion_weights or {})
    unknown = sorted(set(extra) - set(DISTORTION_TYPES))
    if unknown or any(float(v) <= 0 for v in extra.values()):
        raise ValueError(f"distortion_weights must map distortion types {DISTORTION_TYPES} to positive weights, "
                         f"got {extra}")
    counts = _clean_counts(table)
    identity_weight = table["identity"].map(counts.clip(lower=1, upper=max(1, int(clean_cap))).astype(float))
    is_clean = table["distortion"].isna()
    raw = table["distortion"].map(lambda d: 1.0 if pd.isna(d) else float(extra.get(d, 1.0))).astype(float)
    by_identity = table["identity"]
    if clean_fraction is None:
        return np.array(identity_weight * raw / raw.groupby(by_identity).transform("sum"), dtype=np.float64)
    n_clean = is_clean.groupby(by_identity).transform("sum")
    n_distorted = table.groupby("identity")["path"].transform("size") - n_clean
    both = (n_clean > 0) & (n_distorted > 0)
    share = np.where(is_clean, float(clean_fraction), 1.0 - float(clean_fraction))
    per_kind = raw.groupby([by_identity, is_clean]).transform("sum")  # within the identity's clean / distorted
    weights = np.where(both, identity_weight * share * raw / per_kind,
                       identity_weight * raw / raw.groupby(by_identity).transform("sum"))
    return np.asarray(weights, dtype=np.float64)
