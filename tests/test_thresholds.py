"""facecom_utils.recognition.analysis: threshold analysis of a recognition run (notebook 04)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facecom_utils.recognition import analysis as thresholds


def _toy_embeddings() -> tuple[pd.DataFrame, np.ndarray]:
    """3 identities x 2 clean images; every clean image has a 'blurred' probe = itself + small noise,
    except identity c's probe, which is closest to identity a (a planted false match)."""
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8)
    rows, emb = [], []
    for k, identity in enumerate("abc"):
        for j in range(2):
            v = centres[k] + 0.05 * rng.standard_normal(8)
            rows.append({"path": f"/x/{identity}/{identity}_{j}.jpg", "identity": identity, "distortion": None, "source": None})
            emb.append(v / np.linalg.norm(v))
    for k, identity in enumerate("abc"):
        for j in range(2):
            target = centres[0] if (identity == "c" and j == 0) else centres[k]
            v = target + 0.05 * rng.standard_normal(8)
            rows.append({"path": f"/x/{identity}/distortion/{identity}_{j}_blurred.jpg", "identity": identity,
                         "distortion": "blurred", "source": f"/x/{identity}/{identity}_{j}.jpg"})
            emb.append(v / np.linalg.norm(v))
    return pd.DataFrame(rows), np.asarray(emb, dtype=np.float32)


def test_score_analysis_finds_the_planted_false_match() -> None:
    table, emb = _toy_embeddings()
    analysis = thresholds.score_analysis(table, emb)
    assert len(analysis.probes) == 6 and analysis.identities == ["a", "b", "c"]
    assert analysis.probes["top1_correct"].sum() == 5
    genuine, impostor = analysis.genuine_impostor()
    assert len(genuine) == 6 and len(impostor) == 12
    wrong = thresholds.hardest_errors(analysis, threshold=0.5, kind="false_match", n=3)
    assert len(wrong) == 1 and wrong.iloc[0]["probe"].endswith("c_0_blurred.jpg")
    assert "/a/" in wrong.iloc[0]["gallery"]
    missed = thresholds.hardest_errors(analysis, threshold=0.5, kind="miss", n=3)
    assert missed.iloc[0]["probe"].endswith("c_0_blurred.jpg")
    point = thresholds.operating_point(genuine, impostor, 0.5)
    assert point["false_accepts"] == 1 and point["far"] == pytest.approx(1 / 12)
    assert point["tar"] == pytest.approx(5 / 6)
    per = thresholds.per_distortion_operating_points(analysis, 0.5)
    assert per.loc["all", "top1"] == pytest.approx(5 / 6) and per.loc["blurred", "probes"] == 6


def _tie_table() -> tuple[pd.DataFrame, np.ndarray]:
    """A: a0, a1; B: b0; C: c0 (orthogonal unit vectors). Probes: p_tie (A, from a0) scores exactly 1/sqrt(2)
    for A and for B; p_hit (A, from a1) is a1 itself, so in the strict protocol (a1 removed) A, B and C all
    score 0; p_b (B, from b0) is b0 itself (left out of strict: B has no other photo)."""
    e = np.eye(4, dtype=np.float32)
    rows = [("g/a0", "A", None, None, e[0]), ("g/a1", "A", None, None, e[1]), ("g/b0", "B", None, None, e[2]),
            ("g/c0", "C", None, None, e[3]),
            ("p/tie", "A", "noisy", "g/a0", (e[0] + e[2]) / np.sqrt(np.float32(2))),
            ("p/hit", "A", "noisy", "g/a1", e[1]),
            ("p/b", "B", "sunny", "g/b0", e[2])]
    table = pd.DataFrame([r[:4] for r in rows], columns=["path", "identity", "distortion", "source"])
    return table, np.stack([r[4] for r in rows]).astype(np.float32)


def test_a_tie_for_first_place_is_a_miss_in_every_caller() -> None:
    """The tie rule (metrics.scoring.identity_ranks) reaches every top-1 of Task B: a probe tied with another
    identity is a miss. Counting ties as hits would give main top-1 1 and strict top-1 1/2 here."""
    from facecom_utils.metrics.scoring import identity_macro_top1, score_table, strict_score_table, topk_accuracy
    from facecom_utils.recognition.embedding import protocol_inputs
    from facecom_utils.recognition.errors import identification_failures
    from facecom_utils.recognition.protocol import _quick_scores, protocol_metrics

    table, emb = _tie_table()
    args = protocol_inputs(table, emb)
    tie = args["probe_emb"][0]
    assert tie @ emb[0] == tie @ emb[2]  # an exact tie, not a near one
    main = score_table(args["probe_emb"], args["probe_identity"], args["gallery_emb"], args["gallery_identity"])
    assert topk_accuracy(main.scores, main.true_idx, ks=(1,)) == {1: pytest.approx(2 / 3)}
    assert identity_macro_top1(main, args["probe_identity"]) == pytest.approx((0.5 + 1.0) / 2)
    strict = strict_score_table(args["probe_emb"], args["probe_identity"], args["gallery_emb"],
                                args["gallery_identity"], args["probe_source_idx"])
    assert identity_macro_top1(strict, args["probe_identity"]) == 0.0
    m = protocol_metrics(table, emb, threshold=0.5)
    assert m["top1"] == pytest.approx(2 / 3) and m["per_distortion"] == {"noisy": 0.5, "sunny": 1.0}
    assert m["strict_top1"] == 0.0 and m["strict_n_probes"] == 2 and m["strict_top1_identity_macro"] == 0.0
    quick = _quick_scores(table, emb)
    assert quick["top1"] == pytest.approx(2 / 3) and quick["strict_top1"] == 0.0
    analysis = thresholds.score_analysis(table, emb)
    assert analysis.probes["top1_correct"].tolist() == [False, True, True]
    assert thresholds.per_distortion_operating_points(analysis, 0.5).loc["noisy", "top1"] == 0.5
    assert thresholds.score_analysis(table, emb, strict=True).probes["top1_correct"].tolist() == [False, False]
    failures = identification_failures(table, emb)
    assert failures[["probe", "predicted", "margin"]].values.tolist() == [["p/tie", "B", 0.0]]
    assert failures.loc[0, ["wrong_image", "true_image"]].tolist() == ["g/b0", "g/a0"]
    strict_failures = identification_failures(table, emb, strict=True)
    assert strict_failures["probe"].tolist() == ["p/tie", "p/hit"]
    assert strict_failures.loc[1, ["predicted", "margin"]].tolist() == ["B", 0.0]  # three-way tie at 0: first rival


def test_strict_analysis_removes_the_own_source() -> None:
    table, emb = _toy_embeddings()
    strict = thresholds.score_analysis(table, emb, strict=True)
    assert len(strict.probes) == 6  # every identity keeps one other clean image
    assert (strict.exclude >= 0).all()
    recommendation = thresholds.recommend_threshold(strict, chosen=0.3)
    assert recommendation["threshold"] == 0.3 and "notebook 03" in recommendation["rule"]
    at_far = thresholds.recommend_threshold(strict, chosen=0.3, target_far=0.0)
    g, i = strict.genuine_impostor()
    assert at_far["threshold"] > i.max() and at_far["fold_far"] == 0.0


def test_load_recognition_run_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="notebook 03"):
        thresholds.load_recognition_run(tmp_path)
