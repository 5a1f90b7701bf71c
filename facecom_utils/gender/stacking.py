"""Task A's ``stacked`` track: one small model over both networks and the image's quality signals.

The CNN (FACECOM-only) and the face model's head (dlib's descriptor: outside face data) err on
different images; the stacker is a class-balanced logistic regression over, per image,

* the CNN's logit,
* the face head's logit (on the descriptor after the restoration the selector picks),
* the distortion estimator's probability of each image type (clean and the seven distortions),
* each logit times each type probability (so the weight of each network can depend on the type).

**Every input is out of sample for the persons it is fitted on.** It is fitted on the persons of the
CNN's validation fold (the CNN never trained on them; its early stopping and threshold did look at
them), with their real distorted copies; the face head and the distortion estimator that describe
those rows are refitted on the *other* training persons only (:func:`out_of_sample_inputs`). Its
threshold is chosen on person-grouped out-of-fold stacker probabilities of the fold's clean images.
At prediction the full models (trained on every training person) give the inputs.

Images the selector calls ``sunny`` keep the glare expert's decision (as in ``fused``), moved to the
stacker's threshold: glare wipes out the face, and the real sunny copies are the glare expert's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from facecom_utils.face.quality import KINDS, DistortionEstimator
from facecom_utils.metrics.classification import logit

__all__ = ["LOGIT_CLIP", "Stacker", "fit_stacked", "fit_stacker", "out_of_sample_inputs", "stack_features",
           "stacked_probabilities", "stacker_rows", "type_probabilities"]

LOGIT_CLIP = 12.0
"""Logits are clipped to +-this before stacking (a saturated probability must not dominate)."""


def type_probabilities(estimator: DistortionEstimator, quality: np.ndarray) -> np.ndarray:
    """``[N, len(KINDS)]``: the estimator's probability of each image type, columns in :data:`KINDS` order
    (a type the estimator never saw gets 0)."""
    prob = estimator.probabilities(quality)
    out = np.zeros((len(prob), len(KINDS)), np.float64)
    for j, kind in enumerate(estimator.classes):
        out[:, KINDS.index(kind)] = prob[:, j]
    return out


def stack_features(cnn_logit: np.ndarray, face_logit: np.ndarray, types: np.ndarray) -> np.ndarray:
    """``[N, 2 + 3 * len(KINDS)]``: both logits, the type probabilities, and each logit times each of them."""
    a = np.clip(np.asarray(cnn_logit, np.float64), -LOGIT_CLIP, LOGIT_CLIP)[:, None]
    f = np.clip(np.asarray(face_logit, np.float64), -LOGIT_CLIP, LOGIT_CLIP)[:, None]
    t = np.asarray(types, np.float64)
    if t.shape != (len(a), len(KINDS)):
        raise ValueError(f"expected type probabilities of shape {(len(a), len(KINDS))}, got {t.shape}")
    return np.hstack([a, f, t, a * t, f * t])


@dataclass(frozen=True)
class Stacker:
    """The fitted stacker: a :class:`~facecom_utils.gender.heads.LinearHead` on :func:`stack_features`.

    Attributes:
        head: Its coefficients and out-of-fold threshold on P(female).
        info: How it was fitted (rows, persons, out-of-fold metrics at the threshold).
    """

    head: Any
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return float(self.head.threshold)

    def probabilities(self, cnn_prob: np.ndarray, face_prob: np.ndarray, types: np.ndarray) -> np.ndarray:
        """P(female) ``[N]`` from the CNN's and the face head's P(female) and the type probabilities."""
        return self.head.probabilities(stack_features(_logit(cnn_prob), _logit(face_prob), types))

    def route_glare(self, stacked: np.ndarray, fused: np.ndarray, face_threshold: float,
                    routed: np.ndarray) -> np.ndarray:
        """``stacked`` with the glare-routed images given the glare expert's decision (their ``fused``
        probability, moved from the face head's threshold to the stacker's)."""
        out = np.array(stacked, np.float64, copy=True)
        routed = np.asarray(routed, bool)
        if routed.any():
            margin = _logit(np.asarray(fused)[routed]) - logit(face_threshold) + logit(self.threshold)
            out[routed] = 1.0 / (1.0 + np.exp(-margin))
        return out

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values (``torch.load(..., weights_only=True)`` reads it back)."""
        return {"head": self.head.state_dict(), "kinds": list(KINDS), "logit_clip": LOGIT_CLIP,
                "info": {k: v for k, v in self.info.items() if isinstance(v, (int, float, str, bool))}}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Stacker":
        from facecom_utils.gender.heads import LinearHead

        if list(state.get("kinds", [])) != list(KINDS) or float(state.get("logit_clip", LOGIT_CLIP)) != LOGIT_CLIP:
            raise ValueError(f"this stacker was fitted on image types {state.get('kinds')} with logit clip "
                             f"{state.get('logit_clip')}; this version builds its features from {list(KINDS)}, "
                             f"clip {LOGIT_CLIP}: retrain the run")
        return cls(LinearHead.from_state_dict(state["head"]), dict(state.get("info", {})))


def _logit(prob: np.ndarray) -> np.ndarray:
    return logit(prob, eps=1e-7)


def out_of_sample_inputs(fit_rows: pd.DataFrame, other_rows: pd.DataFrame, recipe: Any) -> dict[str, np.ndarray]:
    """The face head's P(female), the type probabilities and the glare routing of ``fit_rows``, each from
    models fitted on ``other_rows`` only (whose persons must not be in ``fit_rows``).

    The distortion estimator and the face head are refitted on ``other_rows`` as
    :func:`~facecom_utils.gender.tracks.fit_gender_face` fits them (same recipe, copy weights, C, seed).

    Raises:
        ValueError: A person is in both row sets.
    """
    from facecom_utils.gender.heads import copy_weights, female_labels, fit_linear

    shared = set(fit_rows["person"]) & set(other_rows["person"])
    if shared:
        raise ValueError(f"{len(shared)} person(s) in both the stacker's rows and the rows its inputs are fitted "
                         f"on (e.g. {sorted(shared)[0]!r}); the inputs would not be out of sample")
    q_other, q_fit = recipe.quality(other_rows), recipe.quality(fit_rows)
    estimator = DistortionEstimator.fit(q_other, other_rows["kind"].tolist(), seed=recipe.seed)
    X_other = recipe.descriptors(other_rows, estimator, q_other)
    w = copy_weights(other_rows, recipe.distorted_weight)
    keep = w > 0
    head = fit_linear(X_other[keep], female_labels(other_rows)[keep], w[keep], recipe.C, recipe.seed)
    face = head.probabilities(recipe.descriptors(fit_rows, estimator, q_fit))
    return {"face": face, "types": type_probabilities(estimator, q_fit),
            "sunny": estimator.predict(q_fit) == "sunny"}


def fit_stacker(features: np.ndarray, y: np.ndarray, persons: np.ndarray, clean: np.ndarray, k: int = 5,
                C: float = 1.0, seed: int = 0) -> Stacker:
    """Fit the stacker on ``features`` (:func:`stack_features`) and choose its threshold out of fold.

    Every row weighs the same (the distorted copies are the robustness signal), the two classes the same in
    total. The threshold maximises balanced accuracy over person-grouped out-of-fold probabilities of the
    clean rows (:func:`~facecom_utils.gender.heads.threshold_from_oof`).

    Raises:
        ValueError: Fewer than two persons of a label among the clean rows (no out-of-fold threshold).
    """
    from facecom_utils.data.splits import usable_folds
    from facecom_utils.gender.heads import fit_linear, oof_linear, threshold_from_oof

    y, persons, clean = np.asarray(y, np.int64), np.asarray(persons), np.asarray(clean, bool)
    if usable_folds(persons[clean], y[clean], k) < 2:
        raise ValueError("the stacker needs at least two persons of each label among its clean rows "
                         "(its threshold is chosen out of fold)")
    prob = oof_linear(features, y, persons, None, C, k, 1, seed)
    oof = threshold_from_oof(y[clean], prob[:, clean], persons[clean], n_boot=0, seed=seed)
    head = fit_linear(features, y, None, C, seed).with_threshold(oof["threshold"])
    info = {"rows": int(len(y)), "persons": int(len(np.unique(persons))), "clean_rows": int(clean.sum()),
            "oof_balanced_accuracy": float(oof["oof"]["balanced_accuracy"]),
            "oof_recall_female": float(oof["oof"]["recall_female"])}
    return Stacker(head, info)


def fit_stacked(train_rows: pd.DataFrame, fit_persons: set[str], recipe: Any, route_glare: bool,
                cnn_predict: Any) -> Stacker:
    """The ``stacked`` track's stacker, fitted on ``fit_persons``' rows of ``train_rows``.

    Args:
        train_rows: The training persons' rows (clean images and real copies), as the face head gets them.
        fit_persons: Persons the CNN never trained on (its validation fold): the stacker's rows.
        recipe: The face head's :class:`~facecom_utils.gender.tracks.FaceHeadRecipe`.
        route_glare: Leave out the rows the (refitted) selector calls ``sunny``: the glare expert decides those.
        cnn_predict: ``paths -> P(female)`` of the CNN (trained without ``fit_persons``).

    Raises:
        ValueError: Too few fit persons of a label, or none left after the glare routing.
    """
    from facecom_utils.gender.heads import female_labels

    in_fit = train_rows["person"].isin(fit_persons).to_numpy()
    fit_rows, other_rows = train_rows[in_fit], train_rows[~in_fit]
    if fit_rows.empty or other_rows.empty:
        raise ValueError("the stacker needs persons the CNN never trained on and other training persons")
    rows, features, left = stacker_rows(fit_rows, other_rows, recipe, route_glare, cnn_predict)
    stacker = fit_stacker(features, female_labels(rows), rows["person"].to_numpy(), (rows["kind"] == "clean").to_numpy(),
                          k=recipe.k, C=recipe.C, seed=recipe.seed)
    stacker.info["glare_rows_left_to_the_expert"] = left
    return stacker


def stacker_rows(fit_rows: pd.DataFrame, other_rows: pd.DataFrame, recipe: Any, route_glare: bool,
                 cnn_predict: Any) -> tuple[pd.DataFrame, np.ndarray, int]:
    """The stacker's rows among ``fit_rows`` and their :func:`stack_features`, every input out of sample.

    The face head and the distortion estimator are refitted on ``other_rows`` (:func:`out_of_sample_inputs`);
    ``cnn_predict`` (``paths -> P(female)``) must come from a CNN that never trained on ``fit_rows``' persons.

    Returns:
        ``(kept rows, their features, rows left to the glare expert)``: with ``route_glare`` the rows the refitted
        selector calls ``sunny`` are left out (the glare expert decides those).
    """
    inputs = out_of_sample_inputs(fit_rows, other_rows, recipe)
    keep = ~inputs["sunny"] if route_glare else np.ones(len(fit_rows), bool)
    rows = fit_rows[keep]
    cnn = np.asarray(cnn_predict(rows["path"].tolist()), np.float64)
    return rows, stack_features(_logit(cnn), _logit(inputs["face"][keep]), inputs["types"][keep]), int((~keep).sum())


def stacked_probabilities(stacker: Stacker, model: Any, cnn_prob: np.ndarray, scores: dict[str, np.ndarray],
                          quality: np.ndarray) -> np.ndarray:
    """``stacked`` P(female) of rows from the full models' outputs on them.

    Args:
        stacker: The fitted :class:`Stacker`.
        model: The :class:`~facecom_utils.gender.tracks.GenderFaceModel` (its selector gives the type probabilities).
        cnn_prob: The CNN's P(female) of the rows.
        scores: ``model.scores(rows, recipe)`` (``face``, ``fused`` and ``routed_to_glare`` when routing).
        quality: The rows' quality features (:func:`~facecom_utils.face.quality.quality_feature_matrix`).
    """
    prob = stacker.probabilities(cnn_prob, scores["face"], type_probabilities(model.estimator, quality))
    if "routed_to_glare" in scores:
        prob = stacker.route_glare(prob, scores["fused"], model.face.threshold, scores["routed_to_glare"])
    return prob
