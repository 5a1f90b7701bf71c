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
