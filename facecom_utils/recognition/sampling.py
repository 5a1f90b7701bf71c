"""Who is drawn and how often: identity-disjoint splits, the identity subsample, the identity sampler's weights."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from facecom_utils.data.layout import DISTORTION_TYPES
from facecom_utils.data.splits import clean_counts

__all__ = ["identity_sample_weights"]


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
    counts = clean_counts(table)
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
