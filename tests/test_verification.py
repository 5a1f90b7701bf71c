"""Scoring, identification/verification metrics and the Task B protocol on hand-built embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from facecom_utils.metrics.scoring import cosine_scores, identity_scores, per_pair_loop_scores, score_table, topk_accuracy
from facecom_utils.metrics.verification import (
    choose_match_threshold,
    eer,
    eer_threshold,
    evaluate_protocol,
    far_key,
    genuine_impostor_scores,
    kfold_threshold,
    match_metrics,
    match_pairs,
    roc_auc,
    roc_points,
    tar_at_far,
    threshold_at_far,
    verification_metrics,
)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _random_set(n_probes: int, n_gallery: int, n_ids: int, dim: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    gallery = _normalise(rng.normal(size=(n_gallery, dim)))
    labels = np.array([f"id{k % n_ids:03d}" for k in range(n_gallery)])
    src = rng.integers(0, n_gallery, n_probes)
    probes = _normalise(gallery[src] + 0.8 * rng.normal(size=(n_probes, dim)) / np.sqrt(dim))
    return probes, gallery, labels, src


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def test_cosine_scores_match_numpy() -> None:
    probes, gallery, _, _ = _random_set(20, 9, 3)
    np.testing.assert_allclose(cosine_scores(probes, gallery), probes @ gallery.T, atol=1e-6)


def _brute_identity_max(full: np.ndarray, labels: np.ndarray, ids: list) -> np.ndarray:
    """Identity max of a full [P, G] score matrix, one identity at a time (the test's own reference)."""
    out = np.full((full.shape[0], len(ids)), -np.inf)
    for j, identity in enumerate(ids):
        cols = np.flatnonzero(labels == identity)
        if cols.size:
            out[:, j] = full[:, cols].max(axis=1)
    return out


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 300, 1000, None])
def test_chunked_scoring_matches_one_full_matmul(chunk_size: int | None) -> None:
    """301 probes (a ragged last chunk for 7, 64 and 300) against one full float64 product of the
    whole problem, computed here, not from the same chunks."""
    probes, gallery, labels, src = _random_set(301, 57, 13, dim=128)
    full = probes.astype(np.float64) @ gallery.astype(np.float64).T  # [301, 57], once
    cos = cosine_scores(probes, gallery, chunk_size)
    assert cos.dtype == np.float32 and cos.shape == full.shape
    np.testing.assert_allclose(cos, full, rtol=0, atol=1e-6)
    scores, ids = identity_scores(probes, gallery, labels, chunk_size=chunk_size)
    assert ids == sorted(set(labels.tolist())) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, _brute_identity_max(full, labels, ids), rtol=0, atol=1e-6)
    excluded = full.copy()
    excluded[np.arange(301), src] = -np.inf
    scores_x, _ = identity_scores(probes, gallery, labels, chunk_size=chunk_size, exclude=src)
    np.testing.assert_allclose(scores_x, _brute_identity_max(excluded, labels, ids), rtol=0, atol=1e-6)


def _tied_set(n_probes: int, n_gallery: int, n_ids: int, seed: int):
    """Small-integer embeddings: every dot product is an integer, exact in float32 whatever the
    summation order, so scores tie often and chunked results must equal the reference exactly.
    Identity sizes are uneven (many with one image, a few with dozens), with duplicated gallery rows
    within and across identities."""
    rng = np.random.default_rng(seed)
    probes = rng.integers(-2, 3, (n_probes, 16)).astype(np.float32)
    gallery = rng.integers(-2, 3, (n_gallery, 16)).astype(np.float32)
    gallery[1::5] = gallery[::5][: gallery[1::5].shape[0]]  # exact duplicate rows
    weights = rng.pareto(1.0, n_ids) + 0.05
    labels = np.array([f"id{k:03d}" for k in rng.choice(n_ids, n_gallery, p=weights / weights.sum())])
    return probes, gallery, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_size", [1, 5, 64, None])
def test_identity_max_equals_brute_force_with_ties_and_uneven_identities(seed: int, chunk_size: int | None) -> None:
    probes, gallery, labels = _tied_set(101, 240, 40, seed)
    full = probes.astype(np.float64) @ gallery.astype(np.float64).T
    counts = np.unique(labels, return_counts=True)[1]
    assert counts.max() >= 10 and (counts == 1).any()  # both the rank-major part and the tail are used
    scores, ids = identity_scores(probes, gallery, labels, chunk_size=chunk_size)
    assert np.array_equal(scores, _brute_identity_max(full, labels, ids))
    # A column order of one's own, with identities that have no image (-inf), and exclusions.
    rng = np.random.default_rng(seed)
    order = [f"id{k:03d}" for k in rng.permutation(45)]  # ids 40..44 never drawn as labels
    order = [i for i in order if i in set(labels.tolist()) or i >= "id040"]
    exclude = rng.integers(-1, gallery.shape[0], probes.shape[0])
    excluded = full.copy()
    rows = np.flatnonzero(exclude >= 0)
    excluded[rows, exclude[rows]] = -np.inf
    scores, ids = identity_scores(probes, gallery, labels, chunk_size=chunk_size, exclude=exclude, identities=order)
    assert ids == order
    assert np.array_equal(scores, _brute_identity_max(excluded, labels, order))
    assert np.isneginf(scores[:, [j for j, i in enumerate(order) if i >= "id040"]]).all()


def test_identity_scores_of_no_probes_and_of_one_identity() -> None:
    _, gallery, labels, _ = _random_set(1, 9, 3)
    scores, ids = identity_scores(np.zeros((0, 64), np.float32), gallery, labels)
    assert scores.shape == (0, 3) and scores.dtype == np.float32 and len(ids) == 3
    probes, gallery, _, _ = _random_set(5, 9, 3)
    scores, ids = identity_scores(probes, gallery, ["x"] * 9, chunk_size=2)
    np.testing.assert_allclose(scores[:, 0], (probes @ gallery.T).max(axis=1), atol=1e-6)


def test_identity_scores_equal_per_pair_loop_and_accept_torch() -> None:
    torch = pytest.importorskip("torch")
    probes, gallery, labels, _ = _random_set(40, 23, 5)
    fast, ids = identity_scores(torch.from_numpy(probes), torch.from_numpy(gallery), labels, chunk_size=16)
    slow, ids_slow = per_pair_loop_scores(probes, gallery, labels)
    assert ids == ids_slow == sorted(set(labels))
    np.testing.assert_allclose(fast, slow, atol=1e-6)


def test_identity_scores_hand_example_with_exclusion() -> None:
    e = np.eye(3, dtype=np.float32)
    gallery = np.stack([e[0], e[1], e[2]])  # a, a, b
    labels = ["a", "a", "b"]
    probe = _normalise(np.array([[3.0, 4.0, 0.0]]))  # cos 0.6 with g0, 0.8 with g1, 0 with g2
    scores, ids = identity_scores(probe, gallery, labels)
    assert ids == ["a", "b"]
    np.testing.assert_allclose(scores, [[0.8, 0.0]], atol=1e-6)
    scores, _ = identity_scores(probe, gallery, labels, exclude=[1])  # drop the best "a" image
    np.testing.assert_allclose(scores, [[0.6, 0.0]], atol=1e-6)
    scores, _ = identity_scores(probe, gallery, labels, exclude=[2])  # "b" has no image left
    assert scores[0, 0] == pytest.approx(0.8) and scores[0, 1] == -np.inf
    scores, ids = identity_scores(probe, gallery, labels, identities=["b", "z", "a"])
    np.testing.assert_allclose(scores, [[0.0, -np.inf, 0.8]], atol=1e-6)


def test_scoring_3000_by_500_matches_the_per_pair_loop() -> None:
    """The benchmark's problem size (3,000 probes x 500 gallery images, 250 identities, 512-d):
    the vectorised path agrees with the per-pair reference. Speed is measured by
    ``python -m facecom_utils.bench.speed``, not here."""
    probes, gallery, labels, _ = _random_set(3000, 500, 250, dim=512)
    scores, ids = identity_scores(probes, gallery, labels, chunk_size=1024)
    assert scores.shape == (3000, 250)
    ref, ref_ids = per_pair_loop_scores(probes[:40], gallery, labels)
    assert list(ref_ids) == list(ids)
    np.testing.assert_allclose(scores[:40], ref, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def test_topk_accuracy_ties_count_against_the_probe() -> None:
    scores = np.array(
        [
            [0.9, 0.1, 0.2],  # true 0: rank 0
            [0.5, 0.4, 0.3],  # true 1: rank 1
            [0.5, 0.5, 0.1],  # true 0: tied for first -> not top-1
            [0.1, 0.2, 0.3],  # true 0: rank 2
        ]
    )
    acc = topk_accuracy(scores, [0, 1, 0, 0], ks=(1, 2, 3))
    assert acc == {1: 0.25, 2: 0.75, 3: 1.0}
    with pytest.raises(ValueError, match="true_idx"):
        topk_accuracy(scores, [0, 1, 0, -1])


def test_identity_ranks_and_best_rival_on_ties() -> None:
    """The one rank rule: equal scores count against the probe; the rival is the first best other column."""
    from facecom_utils.metrics.scoring import best_rival, identity_ranks

    scores = np.array([[0.9, 0.1, 0.2],  # true 0: clear hit
                       [0.5, 0.5, 0.1],  # true 0: tied with 1 -> rank 1
                       [0.3, 0.3, 0.3],  # true 2: three-way tie -> rank 2
                       [0.1, -np.inf, 0.4]], np.float32)  # true 2: an identity with no image left never ranks
    ranks = identity_ranks(scores, [0, 0, 2, 2])
    assert ranks.tolist() == [0, 1, 2, 0] and ranks.dtype == np.int64
    column, score = best_rival(scores, [0, 0, 2, 2])
    assert column.tolist() == [2, 1, 0, 0] and score.tolist() == pytest.approx([0.2, 0.5, 0.3, 0.1])
    column, score = best_rival(scores[:, :1], [0, 0, 0, 0])  # a one-identity gallery: no rival
    assert column.tolist() == [0] * 4 and np.isneginf(score).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_topk_accuracy_equals_brute_force_sort_with_ties(seed: int) -> None:
    """Against a per-probe sort that breaks ties against the probe: identities ordered by
    (score descending, true identity last among equals); a hit at k = the true identity in the first k."""
    probes, gallery, labels = _tied_set(150, 240, 40, seed)
    scores, ids = identity_scores(probes, gallery, labels, chunk_size=32)
    rng = np.random.default_rng(seed)
    true_idx = rng.integers(0, len(ids), probes.shape[0])
    ks = (1, 2, 5, 10)
    hits = {k: 0 for k in ks}
    n_tied = 0
    for i, t in enumerate(true_idx):
        row = scores[i].tolist()
        ranked = sorted(range(len(row)), key=lambda j: (-row[j], j == t))
        position = ranked.index(t)
        n_tied += sum(v == row[t] for v in row) > 1
        for k in ks:
            hits[k] += position < k
    assert n_tied > 20  # the data really has ties at the true identity's score
    assert topk_accuracy(scores, true_idx, ks=ks) == {k: hits[k] / probes.shape[0] for k in ks}


def test_genuine_impostor_split() -> None:
    scores = np.array([[0.9, 0.1, -np.inf], [0.2, 0.7, 0.3], [0.5, 0.5, 0.5]])
    genuine, impostor = genuine_impostor_scores(scores, [0, 1, -1])
    np.testing.assert_allclose(genuine, [0.9, 0.7])
    np.testing.assert_allclose(np.sort(impostor), [0.1, 0.2, 0.3])  # -inf and the invalid probe left out


def test_roc_auc_and_eer_against_sklearn_and_by_hand() -> None:
    genuine = [0.9, 0.8, 0.3]
    impostor = [0.7, 0.2, 0.1]
    # 8 of the 9 (genuine, impostor) pairs are ordered correctly (0.3 < 0.7).
    assert roc_auc(genuine, impostor) == pytest.approx(8 / 9)
    # Threshold 0.5: FAR = 1/3 (0.7), FRR = 1/3 (0.3) -> EER exactly 1/3.
    assert eer(genuine, impostor) == pytest.approx(1 / 3)
    assert 0.3 < eer_threshold(genuine, impostor) <= 0.7
    rng = np.random.default_rng(0)
    g, i = rng.normal(1.0, 1.0, 500), rng.normal(0.0, 1.0, 2000)
    y = np.r_[np.ones(g.size), np.zeros(i.size)]
    assert roc_auc(g, i) == pytest.approx(skm.roc_auc_score(y, np.r_[g, i]))
    fpr, tpr, _ = skm.roc_curve(y, np.r_[g, i])
    brute = np.min(np.maximum(fpr, 1 - tpr))  # EER lies between the bracketing ROC points
    assert abs(eer(g, i) - brute) < 2e-3
    # Interpolated case. ROC points (FAR, FRR): (0, 1/2) at t=.9, (1/4, 1/2) at t=.7, (1/4, 0) at t=.6:
    # on the last segment FAR stays 1/4 while FRR falls from 1/2 to 0, so they meet at 1/4.
    assert eer([0.9, 0.6], [0.7, 0.1, 0.2, 0.3]) == pytest.approx(0.25)
    assert 0.6 <= eer_threshold([0.9, 0.6], [0.7, 0.1, 0.2, 0.3]) <= 0.7
    assert math.isnan(eer([], [0.1])) and math.isnan(roc_auc([0.2], [])) and math.isnan(eer_threshold([0.2], []))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roc_points_match_sklearn(dtype: type) -> None:
    rng = np.random.default_rng(7)
    g = np.round(rng.normal(0.6, 0.2, 200), 2).astype(dtype)  # rounding creates ties
    i = np.round(rng.normal(0.2, 0.2, 900), 2).astype(dtype)
    far, tar, thr = roc_points(g, i)
    y = np.r_[np.ones(g.size), np.zeros(i.size)]
    fpr_ref, tpr_ref, thr_ref = skm.roc_curve(y, np.r_[g, i], drop_intermediate=False)
    np.testing.assert_allclose(far, fpr_ref)
    np.testing.assert_allclose(tar, tpr_ref)
    np.testing.assert_allclose(thr[1:], thr_ref[1:])
    assert roc_auc(g, i) == pytest.approx(skm.roc_auc_score(y, np.r_[g, i]))


def test_tar_at_far_by_hand_and_reachability() -> None:
    genuine = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.3, 0.2])
    impostor = np.arange(100) / 100.0  # 0.00 ... 0.99
    res = tar_at_far(genuine, impostor, fars=(0.1, 0.05, 0.01, 1e-3))
    # FAR 0.1 allows 10 false accepts: accept scores > 0.89 -> genuine 0.95, 0.9 -> TAR 0.2.
    assert res[0.1]["tar"] == pytest.approx(0.2)
    assert res[0.1]["far_achieved"] == pytest.approx(0.1)
    assert res[0.05]["tar"] == pytest.approx(0.1)  # accept > 0.94
    assert res[0.01]["tar"] == pytest.approx(0.0)  # accept > 0.98
    assert res[0.01]["reachable"] and not res[1e-3]["reachable"]
    assert math.isnan(res[1e-3]["tar"]) and res[1e-3]["tar_at_zero_far"] == 0.0
    assert res[0.1]["n_impostor"] == 100 and res[0.1]["n_genuine"] == 10
    # The threshold really gives FAR <= target, and is the lowest such.
    t = threshold_at_far(impostor, 0.1)
    assert np.mean(impostor >= t) <= 0.1 and np.mean(impostor >= 0.89) > 0.1
    flat = verification_metrics(genuine, impostor, fars=(0.1, 1e-3))
    assert flat[far_key(0.1)] == pytest.approx(0.2) and math.isnan(flat["tar_at_far_1e-3"])
    assert far_key(1e-4) == "tar_at_far_1e-4"


def test_accept_rates_and_tar_at_far_agree_by_hand_at_the_threshold() -> None:
    """FAR/TAR at a threshold is counted once (verification.accept_rates): a score equal to the threshold is
    accepted (>=, not >), whether the threshold is given (notebook 04's operating_point) or chosen at a
    target FAR (tar_at_far)."""
    from facecom_utils.recognition.analysis import operating_point
    from facecom_utils.metrics.verification import accept_rates

    genuine = np.array([0.2, 0.5, 0.5, 0.9], np.float32)
    impostor = np.array([0.1, 0.3, 0.5, 0.5, 0.7], np.float32)
    at = accept_rates(genuine, impostor, 0.5)  # 0.5 itself is accepted: 3 of 4 genuine, 3 of 5 impostor
    assert (at["tar"], at["far"], at["false_accepts"], at["n_genuine"], at["n_impostor"]) == (0.75, 0.6, 3, 4, 5)
    above = accept_rates(genuine, impostor, float(np.nextafter(np.float32(0.5), np.float32(1))))
    assert (above["tar"], above["far"], above["false_accepts"]) == (0.25, 0.2, 1)  # what > 0.5 would give
    assert operating_point(genuine, impostor, 0.5) == {**at, "min_resolvable_far": 0.2}
    # FAR -> threshold -> TAR: 1 false accept allowed (0.2 x 5) -> just above the second-highest impostor (0.5)
    res = tar_at_far(genuine, impostor, fars=(0.2, 0.6))
    assert res[0.2]["threshold"] == above["threshold"]
    assert (res[0.2]["tar"], res[0.2]["far_achieved"]) == (0.25, 0.2)
    # 3 allowed -> just above 0.3: the tied 0.5 genuines are accepted with the tied 0.5 impostors
    assert res[0.6]["threshold"] == float(np.nextafter(np.float32(0.3), np.float32(1)))
    assert (res[0.6]["tar"], res[0.6]["far_achieved"]) == (0.75, 0.6)
    point = operating_point(genuine, impostor, res[0.6]["threshold"])
    assert (point["tar"], point["far"]) == (res[0.6]["tar"], res[0.6]["far_achieved"])
    empty = accept_rates([], impostor, 0.5)
    assert math.isnan(empty["tar"]) and empty["far"] == 0.6 and math.isnan(accept_rates(genuine, [], 0.5)["far"])


def test_tar_at_far_against_sklearn_roc_curve() -> None:
    rng = np.random.default_rng(1)
    g, i = rng.normal(2.0, 1.0, 300), rng.normal(0.0, 1.0, 5000)
    fpr, tpr, _ = skm.roc_curve(np.r_[np.ones(g.size), np.zeros(i.size)], np.r_[g, i])
    for far in (1e-1, 1e-2, 1e-3):
        expected = tpr[np.searchsorted(fpr, far, side="right") - 1]  # best TPR with FPR <= far
        assert tar_at_far(g, i, (far,))[far]["tar"] == pytest.approx(expected)


# --------------------------------------------------------------------------------------------------
# Match decision and thresholds
# --------------------------------------------------------------------------------------------------


def test_match_pairs_balanced_seeded_and_honest() -> None:
    probes, gallery, labels, src = _random_set(200, 60, 20)
    table = score_table(probes, labels[src], gallery, labels)
    pairs = match_pairs(table.scores, table.true_idx, seed=3)
    n = pairs["label"].size // 2
    assert n == 200 and pairs["label"][:n].all() and not pairs["label"][n:].any()
    assert (pairs["claimed"][n:] != table.true_idx).all()
    np.testing.assert_array_equal(pairs["score"], table.scores[pairs["probe"], pairs["claimed"]])
    again = match_pairs(table.scores, table.true_idx, seed=3)
    other = match_pairs(table.scores, table.true_idx, seed=4)
    assert np.array_equal(pairs["claimed"], again["claimed"])
    assert not np.array_equal(pairs["claimed"], other["claimed"])
    # The claimed impostor identity is spread over all other identities.
    assert len(np.unique(pairs["claimed"][n:])) > 10
    hardest = match_pairs(table.scores, table.true_idx, impostor="hardest")
    masked = table.scores.copy()
    masked[np.arange(200), table.true_idx] = -np.inf
    np.testing.assert_allclose(hardest["score"][n:], masked.max(axis=1))


def test_match_metrics_against_sklearn() -> None:
    scores = np.array([0.9, 0.4, 0.7, 0.3, 0.65, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0])
    m = match_metrics(scores, labels, threshold=0.5)
    pred = (scores >= 0.5).astype(int)
    assert m["match_accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["match_precision"] == pytest.approx(2 / 3)
    assert m["match_recall"] == pytest.approx(2 / 3)
    assert m["match_f1_macro"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    assert m["match_confusion_matrix"] == [[2, 1], [1, 2]]


def test_kfold_threshold_on_separable_pairs() -> None:
    rng = np.random.default_rng(0)
    genuine = rng.uniform(0.6, 0.9, 100)
    impostor = rng.uniform(0.0, 0.4, 100)
    res = kfold_threshold(np.r_[genuine, impostor], np.r_[np.ones(100), np.zeros(100)], n_folds=10, seed=0)
    assert len(res["fold_thresholds"]) == 10
    assert all(impostor.max() < t <= genuine.min() for t in res["fold_thresholds"])
    assert res["accuracy_mean"] == 1.0 and res["accuracy_std"] == 0.0
    assert impostor.max() < res["threshold"] <= genuine.min()


def test_kfold_threshold_keeps_groups_together() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4])
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    res = kfold_threshold(scores, labels, n_folds=10, groups=groups)
    assert len(res["fold_thresholds"]) == 4  # folds capped at the number of groups
    assert res["accuracy_mean"] == 1.0


def test_choose_match_threshold_methods() -> None:
    probes, gallery, labels, src = _random_set(300, 80, 40, seed=2)
    table = score_table(probes, labels[src], gallery, labels)
    t_acc = choose_match_threshold(table, method="accuracy")["threshold"]
    t_kf = choose_match_threshold(table, method="kfold", n_folds=5)
    t_far = choose_match_threshold(table, method="far", far=1e-2)["threshold"]
    pairs = match_pairs(table.scores, table.true_idx)
    acc = match_metrics(pairs["score"], pairs["label"], t_acc)["match_accuracy"]
    grid = np.r_[np.unique(pairs["score"]), 2.0]  # every possible split
    best = max(np.mean((pairs["score"] >= t) == pairs["label"]) for t in grid)
    assert acc == pytest.approx(best)
    assert len(t_kf["fold_thresholds"]) == 5 and t_kf["method"] == "kfold"
    _, imp = genuine_impostor_scores(table.scores, table.true_idx)
    assert np.mean(imp >= t_far) <= 1e-2
    with pytest.raises(ValueError, match="method"):
        choose_match_threshold(table, method="median")


# --------------------------------------------------------------------------------------------------
# The whole protocol on a hand-built embedding set
# --------------------------------------------------------------------------------------------------

S = math.sqrt(0.42)  # p1's score for identities B and C
R = math.sqrt(0.19)  # p3's score for identity A


def _known_set() -> dict[str, np.ndarray]:
    """Six probes, five gallery images on orthogonal axes e0..e5; all scores known in closed form.

    Gallery: A = {g0: e0, g1: e1}, B = {g2: e2, g3: e3}, C = {g4: e4} (C has one clean image).
    Main identity scores [A, B, C]:
        p0 (A, blurred, source g0) = .8 e0 + .6 e1          -> [.8, 0, 0]   hit
        p1 (A, noisy,   source g1) = .4 e1 + S e2 + S e4    -> [.4, S, S]   miss (S ~ .648)
        p2 (B, blurred, source g2) = .8 e2 + .6 e3          -> [0, .8, 0]   hit
        p3 (B, noisy,   source g3) = .9 e3 + R e0           -> [R, .9, 0]   hit (R ~ .436)
        p4 (C, blurred, source g4) = .6 e4 + .8 e5          -> [0, 0, .6]   hit
        p5 (C, noisy,   source g4) = e4                     -> [0, 0, 1]    hit
    Strict (own source removed): p0 [.6, 0, 0] hit, p1 [0, S, S] miss, p2 [0, .6, 0] hit,
    p3 [R, 0, 0] miss; p4, p5 excluded (C has no image left).
    """
    e = np.eye(6)
    probes = np.stack(
        [
            0.8 * e[0] + 0.6 * e[1],
            0.4 * e[1] + S * e[2] + S * e[4],
            0.8 * e[2] + 0.6 * e[3],
            0.9 * e[3] + R * e[0],
            0.6 * e[4] + 0.8 * e[5],
            e[4],
        ]
    ).astype(np.float32)
    return {
        "probe_emb": probes,
        "probe_identity": np.array(["A", "A", "B", "B", "C", "C"]),
        "probe_distortion": np.array(["blurred", "noisy"] * 3),
        "probe_source_idx": np.array([0, 1, 2, 3, 4, 4]),
        "gallery_emb": e[:5].astype(np.float32),
        "gallery_identity": np.array(["A", "A", "B", "B", "C"]),
    }


def test_evaluate_protocol_known_answer() -> None:
    data = _known_set()
    out = evaluate_protocol(**data, threshold=0.62, seed=0, fars=(0.25, 0.1, 0.01), chunk_size=4)

    # Identification.
    assert out["top1"] == pytest.approx(5 / 6) and out["top5"] == 1.0
    assert out["n_probes"] == 6 and out["n_gallery"] == 5 and out["n_identities"] == 3
    # Verification: genuine [.8, .4, .8, .9, .6, 1]; impostor [S, S, R] + nine zeros.
    assert out["n_genuine"] == 6 and out["n_impostor"] == 12
    assert out["roc_auc"] == pytest.approx(67 / 72)
    assert out["eer"] == pytest.approx(1 / 6)  # threshold .6: FAR 2/12, FRR 1/6
    assert out["tar_at_far_0.25"] == pytest.approx(1.0)  # accept > 0
    assert out["tar_at_far_1e-1"] == pytest.approx(4 / 6)  # one false accept allowed -> accept > S
    assert math.isnan(out["tar_at_far_1e-2"])  # 0.01 * 12 < 1: unreachable
    # Match decision at .62: genuine TP 4 (.4 and .6 missed); p1's impostor (B or C, score S) is a
    # false match whichever is drawn; every other impostor scores < .62.
    assert out["match_confusion_matrix"] == [[5, 1], [2, 4]]
    assert out["match_accuracy"] == pytest.approx(9 / 12)
    assert out["match_precision"] == pytest.approx(4 / 5)
    assert out["match_recall"] == pytest.approx(4 / 6)
    assert out["match_f1"] == pytest.approx(8 / 11)
    assert out["match_f1_macro"] == pytest.approx((8 / 11 + 10 / 13) / 2)
    assert out["threshold"] == 0.62
    assert out["oracle_match_accuracy"] >= out["match_accuracy"]

    blurred, noisy = out["per_distortion"]["blurred"], out["per_distortion"]["noisy"]
    assert set(out["per_distortion"]) == {"blurred", "noisy"}
    assert blurred["top1"] == 1.0 and noisy["top1"] == pytest.approx(2 / 3)
    assert blurred["roc_auc"] == 1.0 and blurred["eer"] == 0.0
    assert noisy["roc_auc"] == pytest.approx(15 / 18)
    assert blurred["match_accuracy"] == pytest.approx(5 / 6)
    assert noisy["match_accuracy"] == pytest.approx(4 / 6)

    # Strict variant.
    assert out["strict_n_excluded"] == 2 and out["strict_n_probes"] == 4
    assert out["strict_top1"] == pytest.approx(0.5)
    assert out["strict_n_genuine"] == 4 and out["strict_n_impostor"] == 8
    # genuine [.6, 0, .6, 0] vs impostor [S, S, R, 0 x 5]: 12 wins + 2 * 5 ties / 2 = 17 of 32.
    assert out["strict_roc_auc"] == pytest.approx(17 / 32)
    # FAR - FRR crosses between (3/8, 1/2) and (1, 0): 1/9 of the way -> EER 4/9.
    assert out["strict_eer"] == pytest.approx(4 / 9)
    assert out["strict_match_confusion_matrix"] == [[3, 1], [4, 0]]
    assert out["strict_match_accuracy"] == pytest.approx(3 / 8)
    assert out["strict_per_distortion"]["blurred"]["top1"] == 1.0
    assert out["strict_per_distortion"]["noisy"]["top1"] == 0.0
    assert out["strict_per_distortion"]["blurred"]["n_probes"] == 2


def test_evaluate_protocol_keys_and_determinism() -> None:
    probes, gallery, labels, src = _random_set(150, 60, 20, seed=5)
    kinds = np.array(["blurred", "foggy", "sunny"])[np.arange(150) % 3]
    args = dict(
        probe_emb=probes,
        probe_identity=labels[src],
        probe_distortion=kinds,
        probe_source_idx=src,
        gallery_emb=gallery,
        gallery_identity=labels,
        threshold=0.5,
    )
    out = evaluate_protocol(**args, seed=1)
    required = [
        "top1", "top5", "roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "tar_at_far_1e-4",
        "n_genuine", "n_impostor", "match_accuracy", "match_precision", "match_recall", "match_f1",
        "match_f1_macro", "threshold", "per_distortion",
    ]
    for key in required:
        assert key in out and f"strict_{key}" in out, key
    assert "strict_n_excluded" in out
    assert set(out["per_distortion"]) == {"blurred", "foggy", "sunny"}
    assert out["n_impostor"] == 150 * 19 and out["strict_n_excluded"] == 0
    assert _equal_with_nan(out, evaluate_protocol(**args, seed=1))
    # NaN only where the protocol defines it: TAR at FAR 1e-4 < 1 / 2850 impostor scores.
    nan_keys = {k for k, v in out.items() if isinstance(v, float) and math.isnan(v)}
    assert nan_keys == {"tar_at_far_1e-4", "strict_tar_at_far_1e-4"}, nan_keys
    # Unknown sources are left out of the strict variant.
    unknown = dict(args, probe_source_idx=np.where(np.arange(150) < 10, -1, src))
    assert evaluate_protocol(**unknown)["strict_n_excluded"] == 10


def _equal_with_nan(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal_with_nan(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_evaluate_protocol_rejects_probe_identity_missing_from_gallery() -> None:
    data = _known_set()
    data["probe_identity"] = np.array(["A", "A", "B", "B", "C", "D"])
    with pytest.raises(ValueError, match="no image in the gallery"):
        evaluate_protocol(**data, threshold=0.5)


def test_strict_table_and_identity_macro_top1_against_a_hand_count() -> None:
    """Identity a: 3 probes, b: 1 probe; the strict table drops each probe's source, unknown sources leave."""
    from facecom_utils.metrics.scoring import identity_macro_top1, strict_score_table

    gallery = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)  # a, a, b
    probes = np.array([[1, 0], [0.6, 0.8], [1, 0], [0, 1]], dtype=np.float32)
    probe_ids, gallery_ids = ["a", "a", "a", "b"], ["a", "a", "b"]
    strict = strict_score_table(probes, probe_ids, gallery, gallery_ids, np.array([0, 1, -1, 2]))
    # probe 0 keeps a's image 1 (hit); probe 1 keeps image 0 (0.6 < b's 0.8: miss); probe 2 unknown source;
    # probe 3's identity b has no other image
    assert strict.true_idx.tolist() == [0, 0, -1, -1]
    assert identity_macro_top1(strict, probe_ids) == pytest.approx(0.5)
    main = score_table(probes, probe_ids, gallery, gallery_ids)
    # main: a's probes 1/1, 0/1 (0.6 vs b 0.8), 1/1 -> 2/3; b 1/1 -> macro (2/3 + 1) / 2
    assert identity_macro_top1(main, probe_ids) == pytest.approx((2 / 3 + 1) / 2)
    empty = strict.subset(np.zeros(4, dtype=bool))
    assert np.isnan(identity_macro_top1(empty, []))
