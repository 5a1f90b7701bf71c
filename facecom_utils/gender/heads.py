"""Task A's linear heads: class-balanced logistic regressions, their out-of-fold probabilities by person,
and the threshold chosen on them (with a person-bootstrap interval).

Used by the face-model tracks (:mod:`facecom_utils.gender.tracks`) and the stacker
(:mod:`facecom_utils.gender.stacking`); every out-of-fold probability comes from a head that never saw
the row's person.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from facecom_utils.data.splits import person_folds, usable_folds
from facecom_utils.gender.labels import CLASS_NAMES, label_indices
from facecom_utils.metrics.classification import binary_metrics, choose_threshold, logit

__all__ = ["LinearHead", "copy_weights", "female_labels", "fit_linear", "oof_linear", "threshold_from_oof"]


@dataclass(frozen=True)
class LinearHead:
    """A logistic-regression head and its decision threshold on P(female).

    Attributes:
        coef: ``[F]``; intercept: float; threshold: predict female when the probability >= it.
    """

    coef: np.ndarray
    intercept: float
    threshold: float = 0.5

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """P(female) ``[N]``."""
        return 1.0 / (1.0 + np.exp(-(np.asarray(X, np.float64) @ self.coef + self.intercept)))

    def margin(self, X: np.ndarray) -> np.ndarray:
        """The logit minus the threshold's logit: >= 0 is female (comparable across heads)."""
        return np.asarray(X, np.float64) @ self.coef + self.intercept - logit(self.threshold)

    def with_threshold(self, threshold: float) -> "LinearHead":
        return LinearHead(self.coef, self.intercept, float(threshold))

    def state_dict(self) -> dict[str, Any]:
        import torch

        return {"coef": torch.from_numpy(np.asarray(self.coef, np.float64)), "intercept": float(self.intercept),
                "threshold": float(self.threshold)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "LinearHead":
        return cls(np.asarray(state["coef"], np.float64), float(state["intercept"]), float(state["threshold"]))


def fit_linear(X: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None, C: float = 1.0,
               seed: int = 0) -> LinearHead:
    """Class-balanced L2 logistic regression (the classes weigh the same in total, after ``weight``)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError("a head needs female and male training images")
    w = np.ones(len(y)) if weight is None else np.asarray(weight, np.float64)
    totals = np.array([w[y == c].sum() for c in (0, 1)])
    w = w * (totals.sum() / (2 * totals))[y]
    model = LogisticRegression(C=C, max_iter=3000, random_state=seed)
    model.fit(X, y, sample_weight=w)
    return LinearHead(model.coef_[0].astype(np.float64), float(model.intercept_[0]))


def oof_linear(X: np.ndarray, y: np.ndarray, persons: np.ndarray, weight: np.ndarray | None = None,
               C: float = 1.0, k: int = 5, repeats: int = 1, seed: int = 0) -> np.ndarray:
    """Out-of-fold P(female) of every row ``[repeats, N]``: each from a head that never saw its person."""
    persons = np.asarray(persons)
    people = pd.Series(np.asarray(y)).groupby(persons).agg(lambda v: int(v.mean() >= 0.5))
    prob = np.full((repeats, len(y)), np.nan)
    k = usable_folds(people.index.to_numpy(), people.to_numpy(), k)
    for i, (train, test) in enumerate(person_folds(persons, y, k, repeats, seed)):
        head = fit_linear(X[train], y[train], None if weight is None else weight[train], C, seed)
        prob[i // k, test] = head.probabilities(X[test])
    return prob


def threshold_from_oof(y: np.ndarray, prob: np.ndarray, persons: np.ndarray, criterion: str = "balanced_accuracy",
                       n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The threshold chosen on out-of-fold probabilities ``[repeats, N]``, with its uncertainty.

    Returns:
        ``threshold``, ``oof`` (metrics at it, pooled over repeats) and 2.5-97.5% person-bootstrap
        intervals ``recall_female_ci`` / ``balanced_accuracy_ci`` (NaN with ``n_boot=0``).
    """
    prob = np.atleast_2d(prob)
    repeats = len(prob)
    yy, p, pp = np.tile(y, repeats), prob.reshape(-1), np.tile(np.asarray(persons), repeats)
    threshold = choose_threshold(yy, p, criterion=criterion)
    rng = np.random.default_rng(seed)
    people, inverse = np.unique(pp, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(people))]
    rec, bal = [], []
    for _ in range(n_boot):
        idx = np.concatenate([members[j] for j in rng.integers(0, len(people), len(people))])
        pred, t = p[idx] >= threshold, yy[idx]
        tpr = pred[t == 1].mean() if (t == 1).any() else np.nan
        tnr = (~pred[t == 0]).mean() if (t == 0).any() else np.nan
        rec.append(tpr)
        bal.append((tpr + tnr) / 2)

    def interval(values: list[float]) -> list[float]:
        return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))] if values else [np.nan] * 2

    return {"threshold": float(threshold), "oof": binary_metrics(yy, p, threshold, CLASS_NAMES),
            "recall_female_ci": interval(rec), "balanced_accuracy_ci": interval(bal), "repeats": repeats}


def female_labels(rows: pd.DataFrame) -> np.ndarray:
    """The rows' ``label`` column as 0/1 (int64, 1 = female): :func:`~facecom_utils.gender.labels.label_indices`."""
    return label_indices(rows["label"])


def copy_weights(rows: pd.DataFrame, distorted_weight: float) -> np.ndarray:
    """Row weights: 1 for a clean image; its distorted copies share ``distorted_weight`` between them."""
    clean = (rows["kind"] == "clean").to_numpy()
    copies = rows.groupby("image")["kind"].transform(lambda k: max(int((k != "clean").sum()), 1)).to_numpy()
    return np.where(clean, 1.0, distorted_weight / copies)
