"""One embedded Task B split scored probe by probe: each probe's own identity, its best rival and top-1.

:func:`score_analysis` scores every probe against the gallery (main or strict protocol) with the
identity scores of :mod:`facecom_utils.metrics.scoring` and decides top-1 by its rank rule
(:func:`~facecom_utils.metrics.scoring.identity_ranks`); :func:`best_gallery_images` finds the gallery
photo behind an identity's score. The threshold analysis of notebook 04
(:mod:`facecom_utils.recognition.analysis`) and the error gallery (:mod:`facecom_utils.recognition.errors`)
read both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from facecom_utils.metrics.scoring import best_rival, identity_ranks, score_table, strict_score_table
from facecom_utils.metrics.verification import genuine_impostor_scores
from facecom_utils.recognition.embedding import protocol_inputs

__all__ = ["ScoreAnalysis", "best_gallery_images", "score_analysis"]


@dataclass
class ScoreAnalysis:
    """Identity scores of every probe of one split, main or strict protocol.

    Attributes:
        probes: one row per evaluable probe: ``path``, ``identity``, ``distortion``, ``genuine``
            (score of its own identity), ``impostor`` (best other identity's score), ``impostor_identity``,
            ``top1_correct`` (the rank rule of :func:`~facecom_utils.metrics.scoring.identity_ranks`: a tie
            for first place is a miss).
        scores: ``[P, I]`` identity scores (max score over the identity's gallery images).
        true_idx: ``[P]`` column of each probe's identity.
        identities: the ``I`` gallery identities.
        gallery: the gallery rows (``path``, ``identity``) and their embeddings, for picking images.
        probe_emb: ``[P, D]`` probe embeddings.
        exclude: ``[P]`` gallery row excluded per probe (strict protocol) or ``-1``.
        strict: whether the probe's own clean source was removed from the gallery.
    """

    probes: pd.DataFrame
    scores: np.ndarray
    true_idx: np.ndarray
    identities: list[str]
    gallery: pd.DataFrame
    gallery_emb: np.ndarray
    probe_emb: np.ndarray
    exclude: np.ndarray
    strict: bool

    def genuine_impostor(self, distortion: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Genuine and impostor scores (all probe x identity pairs), optionally of one distortion type."""
        mask = np.ones(len(self.probes), bool) if distortion is None else (self.probes["distortion"] == distortion).to_numpy()
        return genuine_impostor_scores(self.scores[mask], self.true_idx[mask])

    @property
    def distortions(self) -> list[str]:
        return sorted(self.probes["distortion"].astype(str).unique())


def score_analysis(table: pd.DataFrame, emb: np.ndarray, strict: bool = False) -> ScoreAnalysis:
    """Score every probe (distorted image) against the gallery (clean images) of one embedded split.

    Args:
        table: rows of :func:`facecom_utils.recognition.load_embeddings` (gallery rows have no distortion).
        emb: their L2-normalised embeddings.
        strict: remove each probe's own clean source from the gallery (probes left without any image of
            their identity are dropped, as in the strict protocol).
    """
    args = protocol_inputs(table, emb)
    probe_gallery = (args["probe_emb"], args["probe_identity"], args["gallery_emb"], args["gallery_identity"])
    if strict:
        exclude = args["probe_source_idx"]
        st = strict_score_table(*probe_gallery, exclude)
    else:
        exclude = np.full(len(args["probe_emb"]), -1, np.int64)
        st = score_table(*probe_gallery)
    keep = st.valid
    is_gallery = table["distortion"].isna().to_numpy()
    probes = table[~is_gallery].reset_index(drop=True)[keep].reset_index(drop=True)
    scores, true_idx = st.scores[keep], st.true_idx[keep]
    rival, impostor = best_rival(scores, true_idx)
    probes = pd.DataFrame({
        "path": probes["path"].astype(str),
        "identity": probes["identity"].astype(str),
        "distortion": probes["distortion"].astype(str),
        "genuine": scores[np.arange(len(true_idx)), true_idx],
        "impostor": impostor,
        "impostor_identity": [str(st.identities[j]) for j in rival],
        "top1_correct": identity_ranks(scores, true_idx) == 0,
    })
    gallery = table[is_gallery].reset_index(drop=True)[["path", "identity"]]
    return ScoreAnalysis(
        probes=probes, scores=scores, true_idx=true_idx, identities=[str(i) for i in st.identities],
        gallery=gallery, gallery_emb=args["gallery_emb"], probe_emb=args["probe_emb"][keep],
        exclude=exclude[keep], strict=strict,
    )


def best_gallery_images(analysis: ScoreAnalysis, probe_rows: Sequence[int], identities: Sequence[str]) -> list[str]:
    """Path of the gallery image of each ``identities[k]`` closest to probe ``probe_rows[k]``.

    The image that gave the identity its score (the first of equals); in the strict protocol the
    probe's own clean source is not a candidate.
    """
    gallery_identity = analysis.gallery["identity"].astype(str).to_numpy()
    paths = analysis.gallery["path"].astype(str).to_numpy()
    out = []
    for probe_row, identity in zip(probe_rows, identities):
        rows = np.flatnonzero(gallery_identity == identity)
        rows = rows[rows != analysis.exclude[probe_row]]
        sims = analysis.gallery_emb[rows] @ analysis.probe_emb[probe_row]
        out.append(str(paths[rows[int(np.argmax(sims))]]))
    return out
