"""Face verification metrics and the FACECOM Task B evaluation protocol.

The scores themselves (identity scores, :class:`~facecom_utils.metrics.scoring.ScoreTable`, the strict
variant's gallery exclusion and the top-k rank rule) come from :mod:`facecom_utils.metrics.scoring`.

Vocabulary:

* **identity score**: the cosine similarity of a probe to an identity = the maximum cosine over that
  identity's gallery images (:func:`facecom_utils.metrics.scoring.identity_scores`).
* **genuine score**: a probe's score for its own identity; **impostor score**: its score for any
  other identity. Verification metrics (ROC AUC, EER, TAR@FAR) use *all* probe x identity scores:
  P genuine and P * (I - 1) impostor scores.
* **match decision** (the hackathon's rule): a probe is declared to match a claimed identity when its
  top-1 score against that identity (the best cosine over the identity's gallery images, i.e. the
  identity score) is ``>= threshold``. It is evaluated over equal numbers of genuine and impostor
  pairs (:func:`match_pairs`): for every probe one genuine pair (probe, its true identity) and one
  impostor pair (probe, an identity drawn uniformly at random, seeded, among the others). An impostor
  pair declared a match is a false match. Precision is therefore not trivially 1.0.
* **thresholds** are chosen on a validation fold (:func:`choose_match_threshold`, by best accuracy,
  at a target FAR, or by k-fold cross-validation) and applied unchanged to the reported split; the
  *oracle* threshold tuned on the reported split is reported beside it, labelled ``oracle_``.
* **strict variant**: each probe's own clean source image is removed from the gallery before
  scoring, so near-duplicate matching cannot help; probes whose identity then has no gallery image
  left are left out and counted (``strict_n_excluded``).

All embeddings are expected L2-normalised (cosine = dot product); they may be numpy arrays or torch
tensors. Scores are float32. Accept rule everywhere: ``score >= threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from facecom_utils.metrics.classification import choose_threshold
from facecom_utils.metrics.scoring import (
    DEFAULT_CHUNK_SIZE,
    ScoreTable,
    _check_embeddings,
    _to_numpy,
    identity_macro_top1,
    score_table,
    strict_score_table,
    topk_accuracy,
)

__all__ = [
    "DEFAULT_FARS",
    "accept_rates",
    "choose_match_threshold",
    "eer",
    "eer_threshold",
    "evaluate_protocol",
    "far_key",
    "genuine_impostor_scores",
    "kfold_threshold",
    "match_metrics",
    "match_pairs",
    "roc_auc",
    "roc_points",
    "tar_at_far",
    "threshold_at_far",
    "verification_metrics",
]

DEFAULT_FARS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)


def far_key(far: float) -> str:
    """Name of a TAR@FAR metric key.

    ``far_key(1e-3) == "tar_at_far_1e-3"``; a FAR that is not a power of ten keeps its digits:
    ``far_key(0.25) == "tar_at_far_0.25"``.
    """
    exponent = round(math.log10(far)) if far > 0 else 0
    if far > 0 and math.isclose(far, 10.0**exponent, rel_tol=1e-9):
        return f"tar_at_far_1e{exponent}"
    return f"tar_at_far_{far:g}"


# --------------------------------------------------------------------------------------------------
# Verification metrics
# --------------------------------------------------------------------------------------------------


def genuine_impostor_scores(scores: np.ndarray, true_idx: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Splits all probe x identity scores into genuine and impostor arrays (e.g. for histograms).

    Probes with ``true_idx == -1`` and ``-inf`` (masked) scores are left out.

    Returns:
        ``(genuine [n_genuine], impostor [n_impostor])`` float32 arrays.
    """
    s = np.asarray(scores)
    t = np.asarray(true_idx, dtype=np.int64).reshape(-1)
    keep = t >= 0
    s, t = s[keep], t[keep]
    is_genuine = np.zeros(s.shape, dtype=bool)
    is_genuine[np.arange(t.size), t] = True
    finite = np.isfinite(s)
    return s[is_genuine & finite].astype(np.float32), s[~is_genuine & finite].astype(np.float32)


def _as_scores(x: Any) -> np.ndarray:
    """1-D score array, kept in float32 when given in float32 (so thresholds compare exactly), else float64."""
    arr = _to_numpy(x, dtype=None).reshape(-1) if hasattr(x, "detach") else np.asarray(x).reshape(-1)
    return arr.astype(np.float32 if arr.dtype == np.float32 else np.float64, copy=False)


def _check_genuine_impostor(genuine: Any, impostor: Any) -> tuple[np.ndarray, np.ndarray]:
    return _as_scores(genuine), _as_scores(impostor)


def roc_points(genuine: Any, impostor: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of genuine (positive) vs impostor (negative) scores, from one sort.

    Same points as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``: one per distinct
    score, accept rule ``score >= threshold``, starting at (0, 0) with threshold +inf.

    Returns:
        ``(far, tar, thresholds)`` float64 arrays (FAR = false positive rate, TAR = true positive rate).
    """
    g, i = _check_genuine_impostor(genuine, impostor)
    if g.size == 0 or i.size == 0:
        raise ValueError("a ROC curve needs both genuine and impostor scores")
    scores = np.r_[g.astype(np.float64), i.astype(np.float64)]
    is_genuine = np.r_[np.ones(g.size), np.zeros(i.size)]
    order = np.argsort(-scores, kind="stable")
    scores, is_genuine = scores[order], is_genuine[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(is_genuine)[last_of_value]
    fp = last_of_value + 1 - tp
    far = np.r_[0.0, fp / i.size]
    tar = np.r_[0.0, tp / g.size]
    return far, tar, np.r_[np.inf, scores[last_of_value]]


def roc_auc(genuine: Any, impostor: Any) -> float:
    """ROC AUC of genuine (positive) vs impostor (negative) scores (ties count one half); NaN if
    either is empty."""
    g, i = _check_genuine_impostor(genuine, impostor)
    if g.size == 0 or i.size == 0:
        return float("nan")
    far, tar, _ = roc_points(g, i)
    return _auc(far, tar)


def _auc(far: np.ndarray, tar: np.ndarray) -> float:
    """Trapezoidal area under the ROC points (equals the Mann-Whitney statistic with half-credit ties)."""
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2.0))


def _eer_point(far: np.ndarray, tar: np.ndarray, thr: np.ndarray) -> tuple[float, float]:
    """(EER, threshold) by linear interpolation where FAR and FRR cross on the ROC curve."""
    frr = 1.0 - tar
    diff = far - frr  # increases from -1 to +1 along the curve
    k = int(np.argmax(diff >= 0))
    if k == 0 or diff[k] == 0:
        return float((far[k] + frr[k]) / 2.0), float(min(thr[k], np.finfo(np.float64).max))
    w = diff[k - 1] / (diff[k - 1] - diff[k])  # fraction of the way from point k-1 to k
    rate = far[k - 1] + w * (far[k] - far[k - 1])
    t_hi = thr[k - 1] if np.isfinite(thr[k - 1]) else thr[k]
    return float(rate), float(t_hi + w * (thr[k] - t_hi))


def _eer_of(genuine: Any, impostor: Any) -> tuple[float, float]:
    """``(EER, its threshold)`` of genuine and impostor scores; both NaN if either array is empty."""
    g, i = _check_genuine_impostor(genuine, impostor)
    if g.size == 0 or i.size == 0:
        return float("nan"), float("nan")
    return _eer_point(*roc_points(g, i))


def eer(genuine: Any, impostor: Any) -> float:
    """Equal error rate: where the false accept rate equals the false reject rate.

    Linearly interpolated between the two ROC points that bracket the crossing (the usual
    convention); NaN if either array is empty.
    """
    return _eer_of(genuine, impostor)[0]


def eer_threshold(genuine: Any, impostor: Any) -> float:
    """Score threshold at the equal error rate (interpolated like :func:`eer`)."""
    return _eer_of(genuine, impostor)[1]


def threshold_at_far(impostor: Any, far: float) -> float:
    """Lowest threshold whose false accept rate (``impostor >= t``) is at most ``far``.

    With n impostor scores sorted descending, ``k = floor(far * n)`` false accepts are allowed, so
    the threshold sits just above the (k+1)-th highest impostor score. When ``far < 1/n`` no false
    accept is allowed and the threshold sits just above the highest impostor score (FAR 0).
    """
    imp = _as_scores(impostor)
    if imp.size == 0:
        raise ValueError("impostor is empty; cannot set a threshold at a FAR")
    return _threshold_at_far_sorted(np.sort(imp)[::-1], far)


def _threshold_at_far_sorted(imp_desc: np.ndarray, far: float) -> float:
    """:func:`threshold_at_far` for impostor scores already sorted in descending order."""
    k = int(np.floor(far * imp_desc.size + 1e-9))
    if k >= imp_desc.size:
        return float(imp_desc[-1])  # everything may be accepted
    # Step up in the scores' own precision: float32 scores compared with a python float threshold
    # are compared in float32 (NumPy 2 promotion), where a float64 step would round away.
    return float(np.nextafter(imp_desc[k], imp_desc.dtype.type(np.inf)))


def accept_rates(genuine: Any, impostor: Any, threshold: float) -> dict[str, Any]:
    """FAR and TAR of the accept rule ``score >= threshold`` over all genuine and impostor scores.

    The one place a FAR and a TAR at a given threshold are counted (:func:`tar_at_far` and the
    threshold analysis of notebook 04 read them here). The scores are compared with the threshold as
    given (in float64), so a threshold of :func:`threshold_at_far` (a value of the scores' own dtype)
    accepts exactly the scores at or above it.

    Args:
        genuine: Genuine scores.
        impostor: Impostor scores.
        threshold: The decision threshold.

    Returns:
        ``threshold``, ``far`` (accepted impostors / impostors), ``tar`` (accepted genuines / genuines;
        NaN where there are none), ``false_accepts``, ``n_genuine`` and ``n_impostor``.
    """
    g, i = _check_genuine_impostor(genuine, impostor)
    t = np.float64(threshold)
    false_accepts = int(np.count_nonzero(i >= t))
    return {
        "threshold": float(threshold),
        "far": false_accepts / i.size if i.size else math.nan,
        "tar": 1.0 - np.count_nonzero(g < t) / g.size if g.size else math.nan,  # 1 - share rejected
        "false_accepts": false_accepts,
        "n_genuine": int(g.size),
        "n_impostor": int(i.size),
    }


def tar_at_far(genuine: Any, impostor: Any, fars: Sequence[float] = DEFAULT_FARS) -> dict[float, dict[str, Any]]:
    """True accept rate at target false accept rates.

    The threshold of each target is :func:`threshold_at_far`'s; its TAR and achieved FAR are
    :func:`accept_rates`'.

    Args:
        genuine: Genuine scores.
        impostor: Impostor scores.
        fars: Target FAR values.

    Returns:
        ``{far: {"tar", "threshold", "far_achieved", "reachable", "n_genuine", "n_impostor"}}``.
        ``reachable`` is False when ``far < 1 / n_impostor`` (fewer than one false accept allowed):
        the target cannot be resolved with this many impostor scores and ``tar`` is NaN (the TAR at
        zero false accepts is still given as ``tar_at_zero_far``).
    """
    g, i = _check_genuine_impostor(genuine, impostor)
    i_desc = np.sort(i)[::-1]
    out: dict[float, dict[str, Any]] = {}
    for far in fars:
        row: dict[str, Any] = {"n_genuine": int(g.size), "n_impostor": int(i.size)}
        if g.size == 0 or i.size == 0:
            row.update(tar=float("nan"), threshold=float("nan"), far_achieved=float("nan"), reachable=False)
        else:
            t = _threshold_at_far_sorted(i_desc, far)
            rates = accept_rates(g, i, t)
            reachable = far * i.size >= 1 - 1e-9
            row.update(
                tar=rates["tar"] if reachable else float("nan"),
                threshold=t,
                far_achieved=rates["far"],
                reachable=bool(reachable),
            )
            if not reachable:
                row["tar_at_zero_far"] = rates["tar"]
        out[float(far)] = row
    return out


def verification_metrics(genuine: Any, impostor: Any, fars: Sequence[float] = DEFAULT_FARS) -> dict[str, Any]:
    """ROC AUC, EER and TAR@FAR as a flat dict (keys ``roc_auc``, ``eer``, ``tar_at_far_1e-2``, ...,
    ``n_genuine``, ``n_impostor``)."""
    g, i = _check_genuine_impostor(genuine, impostor)
    if g.size and i.size:
        far, tar, thr = roc_points(g, i)  # one sort for AUC and EER
        out: dict[str, Any] = {"roc_auc": _auc(far, tar), "eer": _eer_point(far, tar, thr)[0]}
    else:
        out = {"roc_auc": float("nan"), "eer": float("nan")}
    for far, row in tar_at_far(g, i, fars).items():
        out[far_key(far)] = row["tar"]
    out["n_genuine"] = int(g.size)
    out["n_impostor"] = int(i.size)
    return out


# --------------------------------------------------------------------------------------------------
# Match decision over balanced genuine / impostor pairs
# --------------------------------------------------------------------------------------------------


def match_pairs(
    scores: np.ndarray,
    true_idx: Sequence[int] | np.ndarray,
    seed: int = 0,
    impostor: str = "random",
) -> dict[str, np.ndarray]:
    """Builds one genuine and one impostor pair per probe (equal numbers, seeded).

    Args:
        scores: [P, I] identity scores.
        true_idx: [P] true column per probe; probes with ``-1`` are skipped.
        seed: Seed of the impostor draw.
        impostor: ``"random"`` (default): the claimed identity is drawn uniformly among the probe's
            other identities with a finite score -- the honest 1:1 claim. ``"hardest"``: the claimed
            identity is the probe's best-scoring wrong identity, i.e. the open-set case "the probe's
            identity is absent from the gallery and its top-1 match is someone else".

    Returns:
        Dict of [2 * n] arrays: ``score`` (decision score = the claimed identity's score), ``label``
        (1 genuine, 0 impostor), ``probe`` (row in ``scores``), ``claimed`` (column). Genuine pairs
        come first, then impostor pairs in the same probe order. A probe with no other identity to
        claim (a one-identity gallery) is skipped entirely, so the two halves stay equal.
    """
    s = np.asarray(scores)
    t = np.asarray(true_idx, dtype=np.int64).reshape(-1)
    if impostor not in ("random", "hardest"):
        raise ValueError(f"impostor must be 'random' or 'hardest', got {impostor!r}")
    rng = np.random.default_rng(seed)
    probes = np.flatnonzero(t >= 0)
    other = np.isfinite(s[probes])
    other[np.arange(probes.size), t[probes]] = False
    usable = other.any(axis=1)
    probes, other = probes[usable], other[usable]
    if impostor == "random":
        # Uniform draw among each probe's other identities: the argmax of masked random keys.
        keys = np.where(other, rng.random(other.shape), -1.0)
        claimed = keys.argmax(axis=1)
    else:
        claimed = np.where(other, s[probes], -np.inf).argmax(axis=1)
    genuine_col = t[probes]
    return {
        "score": np.r_[s[probes, genuine_col], s[probes, claimed]].astype(np.float32),
        "label": np.r_[np.ones(probes.size, np.int64), np.zeros(probes.size, np.int64)],
        "probe": np.r_[probes, probes],
        "claimed": np.r_[genuine_col, claimed],
    }


def match_metrics(pair_scores: Any, pair_labels: Any, threshold: float) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 (of "match"), macro F1 and confusion matrix of the match decision.

    Args:
        pair_scores: Decision score of each pair.
        pair_labels: 1 for genuine pairs, 0 for impostor pairs.
        threshold: A pair is declared a match when ``score >= threshold``.

    Returns:
        Flat dict: ``match_accuracy``, ``match_precision``, ``match_recall``, ``match_f1``,
        ``match_f1_macro``, ``match_confusion_matrix`` ([[TN, FP], [FN, TP]], rows = truth),
        ``n_pairs``.
    """
    y = np.asarray(pair_labels, dtype=np.int64).reshape(-1)
    pred = (_as_scores(pair_scores) >= threshold).astype(np.int64)
    if y.size == 0:
        nan = float("nan")
        return {"match_accuracy": nan, "match_precision": nan, "match_recall": nan, "match_f1": nan,
                "match_f1_macro": nan, "match_confusion_matrix": [[0, 0], [0, 0]], "n_pairs": 0}
    cm = skm.confusion_matrix(y, pred, labels=[0, 1])
    return {
        "match_accuracy": float(np.mean(pred == y)),
        "match_precision": float(skm.precision_score(y, pred, zero_division=0)),
        "match_recall": float(skm.recall_score(y, pred, zero_division=0)),
        "match_f1": float(skm.f1_score(y, pred, zero_division=0)),
        "match_f1_macro": float(skm.f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0)),
        "match_confusion_matrix": cm.astype(int).tolist(),
        "n_pairs": int(y.size),
    }


# --------------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------------


def kfold_threshold(
    pair_scores: Any,
    pair_labels: Any,
    n_folds: int = 10,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
    criterion: str = "accuracy",
) -> dict[str, Any]:
    """k-fold threshold selection (insightface style): choose on k-1 folds, test on the k-th.

    Args:
        pair_scores: Decision scores of the (validation) pairs.
        pair_labels: 1 genuine / 0 impostor.
        n_folds: Number of folds (reduced to the number of groups when there are fewer).
        seed: Seed of the fold assignment.
        groups: Optional group per pair (e.g. the probe index): a group's pairs share a fold, so a
            probe's genuine and impostor pairs are never split between choosing and testing.
        criterion: Passed to :func:`facecom_utils.metrics.classification.choose_threshold`.

    Returns:
        Dict with ``threshold`` (mean of the fold thresholds: the one to apply elsewhere),
        ``threshold_std``, ``fold_thresholds``, ``fold_accuracies`` (held-out accuracy of each
        fold's threshold), ``accuracy_mean`` and ``accuracy_std``.
    """
    s = _as_scores(pair_scores)
    y = np.asarray(pair_labels, dtype=np.int64).reshape(-1)
    grp = np.arange(s.size) if groups is None else np.asarray(groups).reshape(-1)
    unique_groups, group_code = np.unique(grp, return_inverse=True)
    k = min(int(n_folds), unique_groups.size)
    if k < 2:
        raise ValueError(f"k-fold thresholding needs at least 2 folds/groups, got {k}")
    fold_of_group = np.random.default_rng(seed).permutation(unique_groups.size) % k
    fold = fold_of_group[group_code]
    thresholds, accuracies = [], []
    for f in range(k):
        train, test = fold != f, fold == f
        t = choose_threshold(y[train], s[train], criterion=criterion, prefer=None)
        thresholds.append(t)
        accuracies.append(float(np.mean((s[test] >= t) == y[test])))
    return {
        "threshold": float(np.mean(thresholds)),
        "threshold_std": float(np.std(thresholds)),
        "fold_thresholds": thresholds,
        "fold_accuracies": accuracies,
        "accuracy_mean": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
    }


def choose_match_threshold(
    table: ScoreTable,
    method: str = "accuracy",
    far: float = 1e-3,
    n_folds: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Chooses the match threshold on a validation score table (to apply unchanged elsewhere).

    Args:
        table: Validation :class:`~facecom_utils.metrics.scoring.ScoreTable` (see :func:`~facecom_utils.metrics.scoring.score_table`).
        method: ``"accuracy"``: best accuracy over the balanced match pairs; ``"kfold"``: the mean of
            k-fold accuracy thresholds (pairs grouped by probe), with the per-fold spread; ``"far"``:
            the threshold giving at most ``far`` false accepts over all impostor scores.
        far: Target FAR for ``method="far"``.
        n_folds: Folds for ``method="kfold"``.
        seed: Seed of the impostor draw and the folds.

    Returns:
        Dict with at least ``threshold`` and ``method`` (and the fold details for ``"kfold"``).
    """
    if method == "far":
        _, imp = genuine_impostor_scores(table.scores, table.true_idx)
        return {"threshold": threshold_at_far(imp, far), "method": "far", "far": float(far)}
    pairs = match_pairs(table.scores, table.true_idx, seed=seed)
    if pairs["label"].size == 0:
        raise ValueError("no usable probes in the validation table; cannot choose a threshold")
    if method == "accuracy":
        t = choose_threshold(pairs["label"], pairs["score"], criterion="accuracy", prefer=None)
        return {"threshold": t, "method": "accuracy"}
    if method == "kfold":
        result = kfold_threshold(pairs["score"], pairs["label"], n_folds=n_folds, seed=seed, groups=pairs["probe"])
        return {**result, "method": "kfold"}
    raise ValueError(f"unknown method {method!r}; expected 'accuracy', 'kfold' or 'far'")


# --------------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------------


def _protocol_metrics(
    table: ScoreTable, pairs: dict[str, np.ndarray], threshold: float, fars: Sequence[float]
) -> dict[str, Any]:
    """Identification + verification + match metrics of the valid probes of ``table``."""
    valid = table.subset(table.valid)
    top = topk_accuracy(valid.scores, valid.true_idx, ks=(1, 5))
    genuine, impostor = genuine_impostor_scores(valid.scores, valid.true_idx)
    out: dict[str, Any] = {"n_probes": int(valid.true_idx.size), "top1": top[1], "top5": top[5]}
    out.update(verification_metrics(genuine, impostor, fars))
    out.update(match_metrics(pairs["score"], pairs["label"], threshold))
    return out


def _subset_pairs(pairs: dict[str, np.ndarray], probe_mask: np.ndarray) -> dict[str, np.ndarray]:
    keep = probe_mask[pairs["probe"]]
    return {k: v[keep] for k, v in pairs.items()}


def _protocol_block(
    table: ScoreTable,
    distortion: np.ndarray,
    threshold: float,
    seed: int,
    fars: Sequence[float],
) -> dict[str, Any]:
    pairs = match_pairs(table.scores, table.true_idx, seed=seed)
    out = _protocol_metrics(table, pairs, threshold, fars)
    out["threshold"] = float(threshold)
    if pairs["label"].size:
        oracle = choose_threshold(pairs["label"], pairs["score"], criterion="accuracy", prefer=None)
        out["oracle_threshold"] = oracle
        out["oracle_match_accuracy"] = match_metrics(pairs["score"], pairs["label"], oracle)["match_accuracy"]
    else:
        out["oracle_threshold"] = out["oracle_match_accuracy"] = float("nan")
    per: dict[str, dict[str, Any]] = {}
    for kind in sorted({str(d) for d in distortion.tolist()}):
        mask = (distortion == kind) & table.valid
        per[kind] = _protocol_metrics(table.subset(mask), _subset_pairs(pairs, mask), threshold, fars)
    out["per_distortion"] = per
    return out


def evaluate_protocol(
    probe_emb: Any,
    probe_identity: Sequence[Any] | np.ndarray,
    probe_distortion: Sequence[Any] | np.ndarray,
    probe_source_idx: Sequence[int] | np.ndarray,
    gallery_emb: Any,
    gallery_identity: Sequence[Any] | np.ndarray,
    threshold: float,
    seed: int = 0,
    strict_threshold: float | None = None,
    fars: Sequence[float] = DEFAULT_FARS,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> dict[str, Any]:
    """Runs the full FACECOM Task B protocol, main and strict, overall and per distortion.

    Args:
        probe_emb: [P, D] L2-normalised embeddings of the distorted images.
        probe_identity: [P] identity of each probe.
        probe_distortion: [P] distortion type of each probe (e.g. ``"foggy"``).
        probe_source_idx: [P] gallery row of each probe's clean source image (``-1`` when unknown;
            such probes are left out of the strict variant and counted in ``strict_n_excluded``).
        gallery_emb: [G, D] L2-normalised embeddings of every clean image of the evaluated identities.
        gallery_identity: [G] identity of each gallery image.
        threshold: Match threshold chosen on the validation fold (:func:`choose_match_threshold`),
            applied unchanged here.
        seed: Seed of the impostor-pair draw.
        strict_threshold: Threshold of the strict variant; defaults to ``threshold``.
        fars: FAR targets of the TAR@FAR metrics.
        chunk_size: Probes per matrix product.

    Returns:
        Flat dict: ``top1``, ``top5``, ``roc_auc``, ``eer``, ``tar_at_far_1e-2``/``1e-3``/``1e-4``,
        ``n_genuine``, ``n_impostor``, ``match_accuracy``, ``match_precision``, ``match_recall``,
        ``match_f1``, ``match_f1_macro``, ``match_confusion_matrix``, ``n_pairs``, ``n_probes``,
        ``threshold``, ``oracle_threshold`` and ``oracle_match_accuracy`` (tuned on this split:
        for reference only), ``per_distortion`` (type -> the same metrics without thresholds),
        ``n_gallery``, ``n_identities``; and all of them again prefixed ``strict_`` for the strict
        variant, plus ``strict_n_excluded``. TAR at an unreachable FAR (< 1/n_impostor) is NaN.

    Raises:
        ValueError: If a probe's identity has no image in the gallery.
    """
    distortion = np.asarray([str(d) for d in np.asarray(probe_distortion).tolist()], dtype=object)
    source = np.asarray(probe_source_idx, dtype=np.int64).reshape(-1)
    n_probes = _check_embeddings(probe_emb, "probe_emb").shape[0]
    if distortion.shape[0] != n_probes or source.shape[0] != n_probes:
        raise ValueError(
            f"probe_distortion ({distortion.shape[0]}) and probe_source_idx ({source.shape[0]}) "
            f"must have one entry per probe ({n_probes})"
        )
    gallery_ids = np.asarray(gallery_identity)

    main = score_table(probe_emb, probe_identity, gallery_emb, gallery_ids, chunk_size=chunk_size)
    if not main.valid.all():
        missing = sorted({str(v) for v, ok in zip(np.asarray(probe_identity).tolist(), main.valid) if not ok})
        raise ValueError(f"probe identities {missing[:5]} have no image in the gallery; the gallery must hold "
                         "every clean image of the evaluated identities")
    out = _protocol_block(main, distortion, threshold, seed, fars)
    out["n_gallery"] = int(gallery_ids.size)
    out["n_identities"] = len(main.identities)

    strict = strict_score_table(probe_emb, probe_identity, gallery_emb, gallery_ids, source, chunk_size=chunk_size)
    t_strict = threshold if strict_threshold is None else strict_threshold
    strict_block = _protocol_block(strict, distortion, t_strict, seed, fars)
    strict_block["n_excluded"] = int((~strict.valid).sum())
    strict_block["top1_identity_macro"] = identity_macro_top1(strict, probe_identity)
    out.update({f"strict_{k}": v for k, v in strict_block.items()})
    return out
