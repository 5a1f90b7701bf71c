"""Binary metrics, threshold choice and calibration against scikit-learn and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from facecom_utils.metrics.classification import (
    THRESHOLD_CRITERIA,
    binary_metrics,
    choose_threshold,
    classification_report_table,
    expected_calibration_error,
    reliability_curve,
    threshold_candidates,
)

# Hand-made set: 4 male (0), 4 female (1).
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
P = np.array([0.1, 0.4, 0.55, 0.3, 0.8, 0.45, 0.9, 0.6])


def test_binary_metrics_hand_computed() -> None:
    m = binary_metrics(Y, P, threshold=0.5)
    # predicted female: 0.55 (male -> FP), 0.8, 0.9, 0.6 (TP = 3); 0.45 is a missed female (FN = 1).
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["precision_female"] == pytest.approx(3 / 4)
    assert m["recall_female"] == pytest.approx(3 / 4)
    assert m["recall_male"] == pytest.approx(3 / 4)
    assert m["f1_macro"] == pytest.approx(0.75)
    assert m["mcc"] == pytest.approx((3 * 3 - 1 * 1) / 16)
    # AUC: of 16 (female, male) pairs only (0.45 female, 0.55 male) is misordered.
    assert m["roc_auc"] == pytest.approx(15 / 16)
    assert m["brier"] == pytest.approx(np.mean((P - Y) ** 2))
    assert (m["threshold"], m["n"], m["n_positive"]) == (0.5, 8, 4)
    assert all(isinstance(v, (float, int, list)) for v in m.values())


@pytest.mark.parametrize("threshold", [0.05, 0.35, 0.5, 0.7, 0.95])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_match_sklearn(threshold: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(97) < 0.25).astype(int)
    prob = np.clip(0.3 * y + rng.random(97) * 0.7, 0, 1)
    pred = (prob >= threshold).astype(int)
    m = binary_metrics(y, prob, threshold=threshold)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    for label, name in enumerate(("male", "female")):
        assert m[f"precision_{name}"] == pytest.approx(skm.precision_score(y, pred, pos_label=label, zero_division=0))
        assert m[f"recall_{name}"] == pytest.approx(skm.recall_score(y, pred, pos_label=label, zero_division=0))
        assert m[f"f1_{name}"] == pytest.approx(skm.f1_score(y, pred, pos_label=label, zero_division=0))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, prob))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, prob))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()


def test_binary_metrics_single_class_gives_nan_not_crash() -> None:
    m = binary_metrics([1, 1, 1], [0.2, 0.7, 0.9], threshold=0.5)
    assert math.isnan(m["roc_auc"]) and math.isnan(m["average_precision"])
    assert m["recall_female"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)  # mean recall over the classes present
    assert m["confusion_matrix"] == [[0, 0], [1, 2]]


def test_binary_metrics_custom_class_names_and_bad_input() -> None:
    m = binary_metrics(Y, P, class_names=("neg", "pos"))
    assert "recall_pos" in m and "recall_female" not in m
    with pytest.raises(ValueError, match="0/1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        binary_metrics([0, 1], [0.1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binary_metrics([0, 1], [0.1, 1.2])


def test_threshold_candidates_cover_every_split() -> None:
    c = threshold_candidates([0.2, 0.6, 0.2, 0.4])
    np.testing.assert_allclose(c, [0.1, 0.3, 0.5, 0.7])


def test_choose_threshold_known_fold() -> None:
    # negatives 0.1, 0.2, 0.6; positives 0.3, 0.7, 0.9.
    y = [0, 0, 0, 1, 1, 1]
    p = [0.1, 0.2, 0.6, 0.3, 0.7, 0.9]
    # Balanced accuracy 5/6 at both 0.25 (TPR 1, TNR 2/3) and 0.65 (TPR 2/3, TNR 1): tie -> closest to 0.5.
    assert choose_threshold(y, p, "balanced_accuracy") == pytest.approx(0.65)
    assert choose_threshold(y, p, "youden") == pytest.approx(0.65)
    assert choose_threshold(y, p, "balanced_accuracy", prefer=0.0) == pytest.approx(0.25)
    # F1(positive): 6/7 at 0.25 beats 4/5 at 0.65.
    assert choose_threshold(y, p, "f1") == pytest.approx(0.25)
    # Perfectly separable data: the midpoint between the classes.
    assert choose_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8]) == pytest.approx(0.45)


def test_choose_threshold_balanced_accuracy_differs_from_accuracy_on_imbalance() -> None:
    # 8 negatives, 2 positives; one positive scores 0.35 among negatives.
    y = [0] * 8 + [1, 1]
    p = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.45, 0.35, 0.9]
    assert choose_threshold(y, p, "accuracy") == pytest.approx(0.675)  # 9/10 correct
    assert choose_threshold(y, p, "balanced_accuracy") == pytest.approx(0.325)  # TPR 1, TNR 6/8


@pytest.mark.parametrize("criterion", THRESHOLD_CRITERIA)
def test_choose_threshold_is_optimal_against_brute_force(criterion: str) -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(60) < 0.3).astype(int)
    p = np.round(np.clip(0.25 * y + rng.random(60) * 0.75, 0, 1), 2)  # rounding creates ties
    scorers = {
        "balanced_accuracy": skm.balanced_accuracy_score,
        "youden": skm.balanced_accuracy_score,
        "f1": lambda a, b: skm.f1_score(a, b, zero_division=0),
        "f1_macro": lambda a, b: skm.f1_score(a, b, average="macro", zero_division=0),
        "accuracy": skm.accuracy_score,
        "mcc": skm.matthews_corrcoef,
    }
    score = scorers[criterion]
    t = choose_threshold(y, p, criterion)
    # Thresholds at every observed score (and above the maximum) realise every possible split.
    best = max(score(y, (p >= c).astype(int)) for c in np.r_[np.unique(p), 2.0])
    assert score(y, (p >= t).astype(int)) == pytest.approx(best)


@pytest.mark.parametrize("criterion", THRESHOLD_CRITERIA)
def test_sample_weights_count_like_repeated_samples(criterion: str) -> None:
    """Integer weights give the criterion of the data with each sample repeated that often (checked
    against scikit-learn's weighted scorers too); unit weights give the unweighted answer."""
    from facecom_utils.metrics.classification import threshold_criterion

    rng = np.random.default_rng(5)
    y = (rng.random(50) < 0.35).astype(int)
    p = np.round(np.clip(0.2 * y + rng.random(50) * 0.8, 0, 1), 2)
    w = rng.integers(1, 5, 50)
    t = np.r_[np.unique(p), 2.0]
    repeated = threshold_criterion(np.repeat(y, w), np.repeat(p, w), t, criterion)
    np.testing.assert_allclose(threshold_criterion(y, p, t, criterion, w), repeated, atol=1e-12)
    np.testing.assert_allclose(threshold_criterion(y, p, t, criterion, np.ones(50)), threshold_criterion(y, p, t, criterion))
    assert choose_threshold(y, p, criterion, sample_weight=w) == choose_threshold(np.repeat(y, w), np.repeat(p, w), criterion)
    if criterion == "balanced_accuracy":
        want = [skm.balanced_accuracy_score(y, (p >= c).astype(int), sample_weight=w) for c in t]
        np.testing.assert_allclose(threshold_criterion(y, p, t, criterion, w), want, atol=1e-12)
    with pytest.raises(ValueError, match="sample_weight"):
        threshold_criterion(y, p, t, criterion, w[:-1])


def test_choose_threshold_unknown_criterion() -> None:
    with pytest.raises(ValueError, match="criterion"):
        choose_threshold([0, 1], [0.2, 0.8], criterion="auc")


def test_reliability_curve_matches_sklearn_and_ece_by_hand() -> None:
    rng = np.random.default_rng(0)
    prob = rng.random(200)
    prob[:5] = [0.0, 0.1, 0.2, 0.5, 1.0]  # values on bin edges
    y = (rng.random(200) < prob).astype(int)
    curve = reliability_curve(y, prob, n_bins=10)
    frac, mean = calibration_curve(y, prob, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(curve["frac_pos"], frac)
    np.testing.assert_allclose(curve["mean_pred"], mean)
    assert curve["count"].sum() == 200
    assert list(curve.columns) == ["bin", "bin_lower", "bin_upper", "mean_pred", "frac_pos", "count"]

    # Hand-computed ECE with 2 bins: bin [0, .5]: p = .2, .4 (mean .3), one positive (.5) -> |.5-.3| = .2;
    # bin (.5, 1]: p = .6, .8, 1.0 (mean .8), all positive -> .2. ECE = 2/5 * .2 + 3/5 * .2 = .2
    ece = expected_calibration_error([0, 1, 1, 1, 1], [0.2, 0.4, 0.6, 0.8, 1.0], n_bins=2)
    assert ece == pytest.approx(0.2)


def test_classification_report_table_matches_sklearn() -> None:
    pred = (P >= 0.5).astype(int)
    table = classification_report_table(Y, pred, ("male", "female"))
    ref = skm.classification_report(Y, pred, target_names=["male", "female"], output_dict=True)
    assert list(table.index) == ["male", "female", "macro avg", "weighted avg"]
    assert table.loc["female", "recall"] == pytest.approx(ref["female"]["recall"])
    assert table.loc["macro avg", "f1-score"] == pytest.approx(ref["macro avg"]["f1-score"])
    assert table.loc["male", "support"] == 4
    assert table.attrs["accuracy"] == pytest.approx(0.75)
    names = np.array(["male", "female"])
    by_name = classification_report_table(names[Y], names[pred], ("male", "female"))
    np.testing.assert_allclose(by_name.to_numpy(dtype=float), table.to_numpy(dtype=float))


def test_choose_threshold_float32_adjacent_scores_split_exactly() -> None:
    # Two float32 scores one ulp apart: the float64 midpoint would round onto the lower one in float32.
    low = np.float32(0.9999)
    high = np.nextafter(low, np.float32(2))
    prob = np.array([low, high], dtype=np.float32)
    t = choose_threshold([0, 1], prob)
    assert (prob >= t).tolist() == [False, True]  # compared in float32, as callers do
    assert binary_metrics([0, 1], prob, threshold=t)["accuracy"] == 1.0
