"""The error gallery of Task B: which probes a model gets wrong, and whom it takes them for."""

from __future__ import annotations

import numpy as np
import pandas as pd

from facecom_utils.recognition.identification import best_gallery_images, score_analysis

__all__ = ["identification_failures", "worst_failures"]

FAILURE_COLUMNS = ["type", "probe", "identity", "predicted", "score_wrong", "score_true", "margin", "wrong_image",
                   "true_image"]


def identification_failures(table: pd.DataFrame, emb: np.ndarray, strict: bool = False) -> pd.DataFrame:
    """Every probe whose top-1 identity is wrong, with the two gallery photos that decided it.

    The probes and their identity scores are :func:`~facecom_utils.recognition.identification.score_analysis`'s:
    a probe fails when it is not a top-1 hit under the rank rule
    (:func:`~facecom_utils.metrics.scoring.identity_ranks`: some other identity's best gallery photo
    scores at least as high as its own identity's best; a tie counts against the probe). In the
    ``strict`` protocol the probe's own clean source is not in the gallery, and probes with no other
    photo of their person (or an unknown source) are left out.

    Args:
        table: An :func:`~facecom_utils.recognition.embedding.embedding_table` (gallery rows have no
            ``distortion``).
        emb: Its ``[N, D]`` embeddings (any whose dot product is the score).
        strict: Score under the strict protocol.

    Returns:
        One row per failure: ``type``, ``probe``, ``identity``, ``predicted`` (the best other identity),
        ``score_wrong``, ``score_true``, ``margin`` (wrong - true; larger is worse), ``wrong_image``,
        ``true_image`` (each identity's gallery photo closest to the probe).
    """
    analysis = score_analysis(table, np.asarray(emb, np.float32), strict=strict)
    failed = analysis.probes[~analysis.probes["top1_correct"]]
    rows = failed.index.tolist()
    predicted = failed["impostor_identity"].tolist()
    return pd.DataFrame({
        "type": failed["distortion"].tolist(),
        "probe": failed["path"].tolist(),
        "identity": failed["identity"].tolist(),
        "predicted": predicted,
        "score_wrong": failed["impostor"].astype(float).tolist(),
        "score_true": failed["genuine"].astype(float).tolist(),
        "margin": (failed["impostor"] - failed["genuine"]).astype(float).tolist(),
        "wrong_image": best_gallery_images(analysis, rows, predicted),
        "true_image": best_gallery_images(analysis, rows, failed["identity"].tolist()),
    }, columns=FAILURE_COLUMNS)


def worst_failures(table: pd.DataFrame, emb: np.ndarray, per_type: int = 2) -> pd.DataFrame:
    """The ``per_type`` worst main and strict failures of each distortion type (largest margin first).

    Returns:
        :func:`identification_failures` rows plus ``protocol`` (``main`` / ``strict``).
    """
    parts = []
    for protocol, strict in (("main", False), ("strict", True)):
        f = identification_failures(table, emb, strict=strict)
        f = f.sort_values("margin", ascending=False, kind="stable").groupby("type", sort=True).head(per_type)
        parts.append(f.assign(protocol=protocol))
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["protocol", "type", "margin"], ascending=[True, True, False], kind="stable").reset_index(drop=True)
