"""Binary classification metrics, decision thresholds and calibration (Task A).

Conventions used throughout:

* ``y_true`` holds 0/1 labels; ``prob`` holds the model's probability (or any score) of class 1.
  For FACECOM gender classification class 1 is ``"female"`` (the minority class), so the default
  ``class_names`` are ``("male", "female")``.
* A sample is predicted positive when ``prob >= threshold``.
* Every returned number is a plain python ``float``/``int`` (or a list of them), so the dicts go
  straight into ``json.dump``. Quantities that are undefined on the given data (ROC AUC when only
  one class is present, say) are ``float("nan")`` rather than an exception.

Example::

    threshold = choose_threshold(y_val, prob_val, criterion="balanced_accuracy")
    report = binary_metrics(y_test, prob_test, threshold=threshold)   # chosen on val, applied unchanged
    at_half = binary_metrics(y_test, prob_test, threshold=0.5)        # shown beside it
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

__all__ = [
    "THRESHOLD_CRITERIA",
    "binary_metrics",
    "choose_threshold",
    "classification_report_table",
    "expected_calibration_error",
    "logit",
    "reliability_curve",
    "threshold_candidates",
    "threshold_criterion",
]

THRESHOLD_CRITERIA = ("balanced_accuracy", "youden", "f1", "f1_macro", "accuracy", "mcc")


def _as_binary_arrays(y_true: Any, prob: Any, *, check_range: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validates and converts labels and probabilities to 1-D numpy arrays."""
    y = np.asarray(y_true).reshape(-1)
    if hasattr(prob, "detach"):  # torch tensor
        prob = prob.detach().cpu().numpy()
    p = np.asarray(prob).reshape(-1)
    # float32 stays float32 so thresholds compare exactly the way callers compare them.
    p = p.astype(np.float32 if p.dtype == np.float32 else np.float64, copy=False)
    if y.shape != p.shape:
        raise ValueError(f"y_true and prob must have the same length, got {y.shape[0]} and {p.shape[0]}")
    if y.size == 0:
        raise ValueError("y_true and prob are empty; expected at least one sample")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must contain only 0/1 labels, got values {np.unique(y)[:10].tolist()}")
    if not np.isfinite(p).all():
        raise ValueError("prob contains NaN or infinite values")
    if check_range and ((p < 0).any() or (p > 1).any()):
        raise ValueError(f"prob must lie in [0, 1], got range [{p.min():.4g}, {p.max():.4g}]")
    return y.astype(np.int64), p


def _safe_div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's ``zero_division=0``)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def binary_metrics(
    y_true: Sequence[int] | np.ndarray,
    prob: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
    class_names: Sequence[str] = ("male", "female"),
) -> dict[str, Any]:
    """Computes the full set of binary classification metrics at one threshold.

    Args:
        y_true: True labels in {0, 1}, shape [N].
        prob: Probability of class 1, shape [N], values in [0, 1].
        threshold: A sample is predicted class 1 when ``prob >= threshold``.
        class_names: Names of class 0 and class 1, used in the per-class keys.

    Returns:
        A flat dict of plain python values: ``accuracy``, ``balanced_accuracy``,
        ``precision_<c>``, ``recall_<c>``, ``f1_<c>`` for both classes, ``f1_macro``, ``mcc``,
        ``roc_auc``, ``average_precision`` (of class 1), ``brier``, ``confusion_matrix``
        ([[TN, FP], [FN, TP]], rows = true class, columns = predicted), ``threshold``, ``n`` and
        ``n_positive``. Precision/recall/F1 of a class that is never predicted/present is 0.0
        (sklearn's ``zero_division=0``); ``roc_auc`` and ``average_precision`` are NaN when
        only one class is present.
    """
    if len(class_names) != 2:
        raise ValueError(f"class_names must name exactly two classes, got {list(class_names)}")
    y, p = _as_binary_arrays(y_true, prob)
    pred = (p >= threshold).astype(np.int64)

    cm = skm.confusion_matrix(y, pred, labels=[0, 1])
    (tn, fp), (fn, tp) = cm
    n = int(y.size)
    support = cm.sum(axis=1)  # true counts per class
    predicted = cm.sum(axis=0)  # predicted counts per class
    correct = np.diag(cm)
    precision = _safe_div(correct, predicted)
    recall = _safe_div(correct, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    both_classes = support.min() > 0

    out: dict[str, Any] = {
        "accuracy": float((tp + tn) / n),
        # Mean recall over the classes that are present (sklearn's definition).
        "balanced_accuracy": float(recall[support > 0].mean()),
    }
    for i, name in enumerate(class_names):
        out[f"precision_{name}"] = float(precision[i])
        out[f"recall_{name}"] = float(recall[i])
        out[f"f1_{name}"] = float(f1[i])
    out["f1_macro"] = float(f1.mean())
    out["mcc"] = float(skm.matthews_corrcoef(y, pred))
    out["roc_auc"] = float(skm.roc_auc_score(y, p)) if both_classes else float("nan")
    out["average_precision"] = float(skm.average_precision_score(y, p)) if both_classes else float("nan")
    out["brier"] = float(np.mean((p - y) ** 2))
    out["confusion_matrix"] = [[int(tn), int(fp)], [int(fn), int(tp)]]
    out["threshold"] = float(threshold)
    out["n"] = n
    out["n_positive"] = int(support[1])
    return out


def threshold_candidates(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Every threshold that gives a distinct split of ``scores`` under the rule ``score >= t``.

    The candidates are the midpoints between consecutive sorted unique scores (rounded to the
    scores' precision, float32 or float64, and never onto the lower score), plus one value
    below the minimum (everything positive) and one above the maximum (everything negative); the
    outer two sit half a typical gap (or 0.5 when all scores are equal) beyond the extremes.

    Args:
        scores: Scores or probabilities, shape [N].

    Returns:
        Sorted float64 array of candidate thresholds.
    """
    values = np.asarray(scores).reshape(-1)
    dtype = np.float32 if values.dtype == np.float32 else np.float64
    u = np.unique(values.astype(dtype))
    if u.size == 0:
        raise ValueError("scores is empty; expected at least one value")
    gaps = np.diff(u.astype(np.float64))
    pad = 0.5 * float(np.median(gaps)) if gaps.size else 0.5
    mid = ((u[:-1].astype(np.float64) + u[1:]) / 2.0).astype(dtype)
    # Between two adjacent floats the midpoint rounds onto the lower one; the upper one gives the same split.
    mid = np.where(mid > u[:-1], mid, u[1:])
    low = min(dtype(u[0] - pad), np.nextafter(u[0], dtype(-np.inf)))  # at least one step beyond
    high = max(dtype(u[-1] + pad), np.nextafter(u[-1], dtype(np.inf)))
    return np.concatenate([[low], mid, [high]]).astype(np.float64)


def _criterion_values(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int, criterion: str) -> np.ndarray:
    """Evaluates a threshold criterion for arrays of TP/FP counts (one entry per threshold)."""
    fn = n_pos - tp
    tn = n_neg - fp
    tpr = _safe_div(tp, n_pos)
    tnr = _safe_div(tn, n_neg)
    if criterion == "balanced_accuracy":
        if n_pos == 0 or n_neg == 0:  # mean recall over the classes that are present
            return tpr if n_neg == 0 else tnr
        return (tpr + tnr) / 2.0
    if criterion == "youden":
        return tpr + tnr - 1.0
    if criterion == "accuracy":
        return (tp + tn) / float(n_pos + n_neg)
    f1_pos = _safe_div(2 * tp, 2 * tp + fp + fn)
    if criterion == "f1":
        return f1_pos
    if criterion == "f1_macro":
        return (f1_pos + _safe_div(2 * tn, 2 * tn + fn + fp)) / 2.0
    if criterion == "mcc":
        den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return _safe_div(tp * tn - fp * fn, den)
    raise ValueError(f"unknown threshold criterion {criterion!r}; expected one of {THRESHOLD_CRITERIA}")


def _weight_at_or_above(scores: np.ndarray, weights: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Total weight of the scores ``>= t`` for each threshold (sorted cumulative sums)."""
    order = np.argsort(scores, kind="stable")
    below = np.r_[0.0, np.cumsum(weights[order])]
    return below[-1] - below[np.searchsorted(scores[order], thresholds, side="left")]


def threshold_criterion(
    y_true: Sequence[int] | np.ndarray,
    prob: Sequence[float] | np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    criterion: str = "balanced_accuracy",
    sample_weight: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """``criterion`` of the rule ``prob >= t`` at each threshold ``t`` (vectorised, exact).

    Args:
        y_true, prob: As in :func:`choose_threshold`.
        thresholds: Thresholds, shape [T].
        criterion: One of :data:`THRESHOLD_CRITERIA`.
        sample_weight: Optional non-negative weight per sample, shape [N]: counts become weighted
            sums (e.g. ``1 / images of the sample's person`` makes every person weigh the same).

    Returns:
        float64 array [T].
    """
    y, p = _as_binary_arrays(y_true, prob, check_range=False)
    t = np.asarray(thresholds).reshape(-1).astype(p.dtype)
    if sample_weight is None:  # counts: the number of positives / negatives with score >= each threshold
        pos_sorted = np.sort(p[y == 1])
        neg_sorted = np.sort(p[y == 0])
        tp = (pos_sorted.size - np.searchsorted(pos_sorted, t, side="left")).astype(np.float64)
        fp = (neg_sorted.size - np.searchsorted(neg_sorted, t, side="left")).astype(np.float64)
        return _criterion_values(tp, fp, pos_sorted.size, neg_sorted.size, criterion)
    w = np.asarray(sample_weight, np.float64).reshape(-1)
    if w.shape != p.shape or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"sample_weight must hold one finite, non-negative weight per sample ({p.size}), "
                         f"got shape {w.shape}")
    tp = _weight_at_or_above(p[y == 1], w[y == 1], t)
    fp = _weight_at_or_above(p[y == 0], w[y == 0], t)
    return _criterion_values(tp, fp, float(w[y == 1].sum()), float(w[y == 0].sum()), criterion)


def choose_threshold(
    y_true: Sequence[int] | np.ndarray,
    prob: Sequence[float] | np.ndarray,
    criterion: str = "balanced_accuracy",
    prefer: float | None = 0.5,
    sample_weight: Sequence[float] | np.ndarray | None = None,
) -> float:
    """Chooses the decision threshold that maximises ``criterion`` on (validation) data.

    Call it on the validation fold and apply the result unchanged to the reported split.
    Every distinct split of the data is tried (see :func:`threshold_candidates`: midpoints
    between sorted unique scores), in one vectorised pass, so the optimum is exact.

    Tie rule: among candidates within 1e-12 of the best value, the one closest to ``prefer``
    wins (the more conservative, lower one on an exact tie); with ``prefer=None`` the lower median
    of the tied candidates is returned.

    Args:
        y_true: True labels in {0, 1}, shape [N].
        prob: Probability (or any real score, e.g. a cosine similarity) of class 1, shape [N].
        criterion: One of ``"balanced_accuracy"`` (default), ``"youden"`` (TPR - FPR; same
            argmax as balanced accuracy), ``"f1"`` (F1 of class 1), ``"f1_macro"``,
            ``"accuracy"`` or ``"mcc"``.
        prefer: Tie-break target (0.5 suits probabilities).
        sample_weight: Optional weight per sample (see :func:`threshold_criterion`).

    Returns:
        The threshold, as a python float; predict class 1 when ``prob >= threshold``.
    """
    _, p = _as_binary_arrays(y_true, prob, check_range=False)
    candidates = threshold_candidates(p).astype(p.dtype)
    values = threshold_criterion(y_true, prob, candidates, criterion, sample_weight)
    tied = candidates[values >= values.max() - 1e-12]
    if prefer is None:
        return float(tied[(tied.size - 1) // 2])
    return float(tied[np.argmin(np.abs(tied - prefer))])  # argmin returns the first (lowest) on ties


def reliability_curve(
    y_true: Sequence[int] | np.ndarray,
    prob: Sequence[float] | np.ndarray,
    n_bins: int = 10,
) -> pd.DataFrame:
    """Reliability (calibration) curve with equal-width probability bins.

    Binning follows ``sklearn.calibration.calibration_curve(strategy="uniform")``: bin ``i`` covers
    ``(i/n_bins, (i+1)/n_bins]`` (the first bin also includes 0). Empty bins are dropped.

    Args:
        y_true: True labels in {0, 1}, shape [N].
        prob: Probability of class 1, shape [N].
        n_bins: Number of equal-width bins on [0, 1].

    Returns:
        DataFrame with one row per non-empty bin and columns ``bin`` (index), ``bin_lower``,
        ``bin_upper``, ``mean_pred`` (mean probability), ``frac_pos`` (fraction of class 1) and
        ``count``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y, p = _as_binary_arrays(y_true, prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.searchsorted(edges[1:-1], p)  # same rule as sklearn's calibration_curve
    count = np.bincount(bin_ids, minlength=n_bins)
    sum_pred = np.bincount(bin_ids, weights=p, minlength=n_bins)
    sum_pos = np.bincount(bin_ids, weights=y, minlength=n_bins)
    keep = count > 0
    return pd.DataFrame(
        {
            "bin": np.arange(n_bins)[keep],
            "bin_lower": edges[:-1][keep],
            "bin_upper": edges[1:][keep],
            "mean_pred": sum_pred[keep] / count[keep],
            "frac_pos": sum_pos[keep] / count[keep],
            "count": count[keep].astype(np.int64),
        }
    )


def expected_calibration_error(
    y_true: Sequence[int] | np.ndarray,
    prob: Sequence[float] | np.ndarray,
    n_bins: int = 10,
) -> float:
    """Expected calibration error: sum over bins of ``count/N * |frac_pos - mean_pred|``.

    Uses the bins of :func:`reliability_curve`.
    """
    curve = reliability_curve(y_true, prob, n_bins=n_bins)
    weights = curve["count"] / curve["count"].sum()
    return float((weights * (curve["frac_pos"] - curve["mean_pred"]).abs()).sum())


def classification_report_table(
    y_true: Sequence[int | str] | np.ndarray,
    y_pred: Sequence[int | str] | np.ndarray,
    class_names: Sequence[str] = ("male", "female"),
) -> pd.DataFrame:
    """sklearn's classification report as a DataFrame.

    Args:
        y_true: True labels, either class indices (0..C-1) or class names.
        y_pred: Predicted labels, in the same form as ``y_true``.
        class_names: Class names, indexed by class index.

    Returns:
        DataFrame indexed by the class names, then ``"macro avg"`` and ``"weighted avg"``, with
        columns ``precision``, ``recall``, ``f1-score`` and ``support`` (int); the overall
        accuracy is in ``df.attrs["accuracy"]``.
    """
    names = list(class_names)
    y_t = np.asarray(y_true).reshape(-1)
    y_p = np.asarray(y_pred).reshape(-1)
    if y_t.shape != y_p.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {y_t.size} and {y_p.size}")
    if y_t.dtype.kind in "UOS":  # names -> indices
        index = {name: i for i, name in enumerate(names)}
        unknown = (set(y_t.tolist()) | set(y_p.tolist())) - set(index)
        if unknown:
            raise ValueError(f"labels {sorted(unknown)} are not in class_names {names}")
        y_t = np.array([index[v] for v in y_t.tolist()])
        y_p = np.array([index[v] for v in y_p.tolist()])
    report = skm.classification_report(
        y_t, y_p, labels=list(range(len(names))), target_names=names, output_dict=True, zero_division=0
    )
    rows = {k: v for k, v in report.items() if isinstance(v, dict) and k != "micro avg"}
    table = pd.DataFrame.from_dict(rows, orient="index")[["precision", "recall", "f1-score", "support"]]
    table["support"] = table["support"].astype(np.int64)
    table.attrs["accuracy"] = float(np.mean(y_t == y_p))
    return table


def logit(p: Any, eps: float = 1e-12) -> Any:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]``: a float for a scalar, else an array."""
    q = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    out = np.log(q / (1 - q))
    return float(out) if out.ndim == 0 else out
