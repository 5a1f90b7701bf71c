"""Task A's stacked track (facecom_utils.gender.stacking): out-of-sample inputs, out-of-fold threshold, what it
learns, weights_only round trip, glare routing, and `facecom evaluate-gender` on a stacked run of the demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import facecom_utils.gender.heads as gf
from facecom_utils.face.quality import KINDS, DistortionEstimator
from facecom_utils.gender.stacking import (
    Stacker,
    fit_stacked,
    fit_stacker,
    out_of_sample_inputs,
    stack_features,
    type_probabilities,
)
from facecom_utils.gender.tracks import FaceHeadRecipe, LinearHead, oof_linear, threshold_from_oof
from facecom_utils.metrics.classification import binary_metrics
from test_face_model import _toy_rows


class QualityRecipe(FaceHeadRecipe):
    """Quality features that tell clean from blurred (with noise) and carry the row's person number."""

    def quality(self, rows: pd.DataFrame) -> np.ndarray:
        person = rows["person"].str[1:].astype(float).to_numpy()
        blurred = (rows["kind"] == "blurred").to_numpy(float)
        jitter = np.array([hash(p) % 1000 / 1000.0 for p in rows["path"]]) * 0.3
        return np.stack([blurred + jitter, person], axis=1)


def _persons_of(X_seen: np.ndarray, X_all: np.ndarray, persons: np.ndarray) -> set[str]:
    return {persons[int(np.flatnonzero((np.abs(X_all - row) < 1e-6).all(axis=1))[0])] for row in X_seen}


def test_every_stacker_input_comes_from_models_that_never_saw_the_person(monkeypatch: pytest.MonkeyPatch) -> None:
    rows, store = _toy_rows(noise=0.4)
    recipe = QualityRecipe(store, restore=True, k=3)
    fit_persons = {p for p in rows["person"].unique() if int(p[1:]) % 3 == 0}
    X_all = np.stack([store.vectors[p] for p in rows["path"]])
    X_all = X_all / np.linalg.norm(X_all, axis=1, keepdims=True)
    persons = rows["person"].to_numpy()
    heads_saw, estimators_saw, cnn_asked = [], [], []
    real_fit, real_estimator_fit = gf.fit_linear, DistortionEstimator.fit.__func__

    def spy_fit(X, y, weight=None, C=1.0, seed=0):
        if X.shape[1] == X_all.shape[1]:  # a face head (the stacker's own heads have other features)
            heads_saw.append(_persons_of(X, X_all, persons))
        return real_fit(X, y, weight, C, seed)

    def spy_estimator(cls, features, kinds, C=10.0, seed=0):
        estimators_saw.append({f"p{int(n):03d}" for n in np.asarray(features)[:, 1]})
        return real_estimator_fit(cls, features, kinds, C, seed)

    def cnn(paths):
        cnn_asked.extend(paths)
        return np.full(len(paths), 0.5)

    monkeypatch.setattr(gf, "fit_linear", spy_fit)
    monkeypatch.setattr(DistortionEstimator, "fit", classmethod(spy_estimator))
    stacker = fit_stacked(rows, fit_persons, recipe, route_glare=True, cnn_predict=cnn)
    assert heads_saw and estimators_saw  # both refitted ...
    for seen in heads_saw + estimators_saw:
        assert not seen & fit_persons  # ... on other persons only
    assert set(rows.set_index("path").loc[cnn_asked, "person"]) <= fit_persons  # the CNN is asked about them only
    assert stacker.info["persons"] == len(fit_persons)
    with pytest.raises(ValueError, match="in both"):
        out_of_sample_inputs(rows[rows["person"] == "p000"], rows, recipe)


def test_the_threshold_is_chosen_out_of_fold() -> None:
    rng = np.random.default_rng(1)
    n = 240
    persons = np.repeat(np.arange(n // 2).astype(str), 2)
    y = np.repeat((np.arange(n // 2) % 4 == 0).astype(int), 2)
    types = np.zeros((n, len(KINDS)))
    types[:, 0] = 1.0
    features = stack_features(rng.normal(0, 1, n) + 1.5 * y, rng.normal(0, 1, n) + 1.0 * y, types)
    clean = np.ones(n, bool)
    stacker = fit_stacker(features, y, persons, clean, k=4, C=1.0, seed=0)
    oof = oof_linear(features, y, persons, None, 1.0, 4, 1, 0)
    want = threshold_from_oof(y, oof, persons, n_boot=0)["threshold"]
    assert stacker.threshold == pytest.approx(want)
    in_sample = gf.fit_linear(features, y).probabilities(features)
    assert not np.allclose(in_sample, oof[0])  # out-of-fold is not the in-sample fit
    assert stacker.info["oof_balanced_accuracy"] == pytest.approx(
        binary_metrics(y, oof[0], want, ("male", "female"))["balanced_accuracy"])


def _two_experts(n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The CNN knows blurred images, the face model clean ones; each is confident noise on the other type."""
    y = (rng.random(n) < 0.3).astype(int)
    blurred = rng.random(n) < 0.5
    signal = np.where(y == 1, 2.5, -2.5)
    cnn = np.where(blurred, signal + rng.normal(0, 1, n), rng.normal(0, 4, n))
    face = np.where(blurred, rng.normal(0, 4, n), signal + rng.normal(0, 1, n))
    types = np.zeros((n, len(KINDS)))
    types[np.arange(n), np.where(blurred, KINDS.index("blurred"), 0)] = 1.0
    return y, cnn, face, types


def test_the_stacker_weighs_each_network_by_the_image_type() -> None:
    rng = np.random.default_rng(0)
    y, cnn, face, types = _two_experts(600, rng)
    persons = np.arange(600).astype(str)
    stacker = fit_stacker(stack_features(cnn, face, types), y, persons, np.ones(600, bool), k=5)
    y2, cnn2, face2, types2 = _two_experts(2000, rng)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    stacked = stacker.probabilities(sig(cnn2), sig(face2), types2)

    def bal(prob: np.ndarray, t: float) -> float:
        return binary_metrics(y2, prob, t, ("male", "female"))["balanced_accuracy"]

    alone = max(bal(sig(cnn2), 0.5), bal(sig(face2), 0.5), bal(sig((cnn2 + face2) / 2), 0.5))
    assert bal(stacked, stacker.threshold) >= 0.95 and bal(stacked, stacker.threshold) > alone + 0.05


def test_stacker_round_trips_through_weights_only_and_refuses_other_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    head = LinearHead(rng.normal(0, 1, 2 + 3 * len(KINDS)), 0.2, threshold=0.37)
    stacker = Stacker(head, {"rows": 10, "note": "x", "dropped": [1, 2]})
    torch.save(stacker.state_dict(), tmp_path / "s.pt")
    back = Stacker.from_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    cnn, face = rng.random(50), rng.random(50)
    types = rng.dirichlet(np.ones(len(KINDS)), 50)
    np.testing.assert_array_equal(back.probabilities(cnn, face, types), stacker.probabilities(cnn, face, types))
    assert back.threshold == 0.37 and back.info == {"rows": 10, "note": "x"}
    state = stacker.state_dict()
    state["kinds"] = list(KINDS[:-1])
    with pytest.raises(ValueError, match="retrain"):
        Stacker.from_state_dict(state)


def test_type_probabilities_follow_kinds_whatever_the_estimator_order() -> None:
    rng = np.random.default_rng(3)
    q = rng.normal(0, 1, (80, 3))
    kinds = np.where(q[:, 0] > 0, "sunny", "clean")
    estimator = DistortionEstimator.fit(q, kinds.tolist())
    t = type_probabilities(estimator, q)
    assert t.shape == (80, len(KINDS)) and np.allclose(t.sum(axis=1), 1.0)
    assert (t[:, [KINDS.index(k) for k in KINDS if k not in ("clean", "sunny")]] == 0).all()
    assert ((t[:, KINDS.index("sunny")] > 0.5) == (q[:, 0] > 0)).mean() > 0.9


def test_glare_routed_images_keep_the_glare_experts_decision() -> None:
    stacker = Stacker(LinearHead(np.zeros(2 + 3 * len(KINDS)), 0.0, threshold=0.3))
    fused = np.array([0.1, 0.55, 0.6, 0.9])
    routed = np.array([True, True, False, True])
    out = stacker.route_glare(np.full(4, 0.2), fused, face_threshold=0.58, routed=routed)
    np.testing.assert_array_equal(out[routed] >= stacker.threshold, fused[routed] >= 0.58)
    assert out[2] == 0.2


@pytest.mark.slow
def test_evaluate_gender_on_a_stacked_run_reproduces_the_notebooks_figures(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """On the full-size demo (the session's tiny one has too few persons in the CNN's fold to fit a stacker)."""
    from facecom_utils.cli import commands as cli
    from facecom_utils.data.demo import make_demo_dataset
    from facecom_utils.gender.pipeline import GenderConfig
    from facecom_utils.gender.tracks import train_gender_with_tracks

    monkeypatch.setenv("FACECOM_CACHE_DIR", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    demo_root = make_demo_dataset(tmp_path / "demo", seed=0)
    train_gender_with_tracks(GenderConfig(
        data_root=str(demo_root), output_dir=str(run_dir), backbone="resnet10t", pretrained=None, image_size=32,
        epochs=1, batch_size=16, device="cpu", progress=False, evaluate_distortions=False, face_model=True,
        face_cv_repeats=0, headline_track="stacked", cache_dir=str(tmp_path / "cache")))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["headline_track"] == "stacked" and metrics["tracks"]["stacked"]["stacker"]["rows"] > 0
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate-gender", str(run_dir), str(demo_root), "--json", "-o", str(out)]) == 0
    got, want = json.loads(out.read_text()), metrics["tracks"]["stacked"]
    assert got["track"] == "stacked"
    for key in ("balanced_accuracy", "recall_female", "roc_auc"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert got["per_distortion"] == pytest.approx(want["per_distortion"], abs=1e-6)
