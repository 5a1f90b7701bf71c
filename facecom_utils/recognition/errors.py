"""The error gallery of Task B: which probes a model gets wrong, and whom it takes them for."""

from __future__ import annotations

import numpy as np
import pandas as pd

from facecom_utils.recognition.embedding import protocol_inputs

__all__ = ["identification_failures", "worst_failures"]


def identification_failures(table: pd.DataFrame, emb: np.ndarray, strict: bool = False,
                            chunk: int = 2048) -> pd.DataFrame:
    """Every probe whose top-1 identity is wrong, with the two gallery photos that decided it.

    A probe fails when some other identity's best gallery photo scores at least as high as its own
    identity's best (ties count against the probe, as in top-1). In the ``strict`` protocol the
    probe's own clean source is not in the gallery, and probes with no other photo of their person
    (or an unknown source) are left out.

    Args:
        table: An :func:`~facecom_utils.recognition.embedding.embedding_table` (gallery rows have no
            ``distortion``); emb: its ``[N, D]`` embeddings (any whose dot product is the score).

    Returns:
        One row per failure: ``type``, ``probe``, ``identity``, ``predicted``, ``score_wrong``,
        ``score_true``, ``margin`` (wrong - true; larger is worse), ``wrong_image``, ``true_image``.
    """
    args = protocol_inputs(table, emb)
    probes = table[table["distortion"].notna()]
    gallery_paths = table.loc[table["distortion"].isna(), "path"].to_numpy()
    gid = np.asarray(args["gallery_identity"])
    pid = np.asarray(args["probe_identity"])
    source = args["probe_source_idx"]
    G = np.asarray(args["gallery_emb"], np.float32)
    rows = []
    for start in range(0, len(pid), chunk):
        idx = np.arange(start, min(start + chunk, len(pid)))
        S = np.asarray(args["probe_emb"][idx], np.float32) @ G.T
        own = gid[None, :] == pid[idx, None]
        if strict:
            has = source[idx] >= 0
            S[np.flatnonzero(has), source[idx][has]] = -np.inf
            own_usable = own & np.isfinite(S)
            keep = has & own_usable.any(axis=1)
        else:
            keep = own.any(axis=1)
        true_s = np.where(own, S, -np.inf)
        wrong_s = np.where(own, -np.inf, S)
        tj, wj = true_s.argmax(axis=1), wrong_s.argmax(axis=1)
        t_best, w_best = true_s[np.arange(len(idx)), tj], wrong_s[np.arange(len(idx)), wj]
        for k in np.flatnonzero(keep & (w_best >= t_best)):
            i = idx[k]
            rows.append({"type": args["probe_distortion"][i], "probe": probes["path"].iloc[i], "identity": pid[i],
                         "predicted": gid[wj[k]], "score_wrong": float(w_best[k]), "score_true": float(t_best[k]),
                         "margin": float(w_best[k] - t_best[k]), "wrong_image": gallery_paths[wj[k]],
                         "true_image": gallery_paths[tj[k]]})
    cols = ["type", "probe", "identity", "predicted", "score_wrong", "score_true", "margin", "wrong_image", "true_image"]
    return pd.DataFrame(rows, columns=cols)


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
