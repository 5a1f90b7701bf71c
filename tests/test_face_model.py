"""The face-model tracks: distortion estimator (the restoration selector), descriptor store, Task A head and CV.

No network: dlib's model files ship in face-recognition-models; the photo is scikit-image's astronaut.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import KindsEstimator, noise_images
from facecom_utils.data.distortions import DISTORTION_TYPES, apply_distortion
from facecom_utils.face.descriptors import Descriptions
from facecom_utils.data.splits import grouped_folds
from facecom_utils.gender.tracks import (
    FaceHeadRecipe,
    GenderFaceModel,
    cross_validate,
    fit_gender_face,
    fit_linear,
    oof_linear,
    score_rows,
    summarise_folds,
    threshold_from_oof,
    with_distorted_copies,
)
from facecom_utils.face.quality import KINDS, RESTORATION_FOR, DistortionEstimator, quality_feature_matrix, quality_features


def _astronaut_face(size: int = 112) -> Image.Image:
    skimage_data = pytest.importorskip("skimage.data")
    return Image.fromarray(skimage_data.astronaut()[20:220, 120:320]).resize((size, size))


@pytest.fixture(scope="module")
def distorted_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    """Crops of the astronaut, each clean and under every FACECOM distortion (seeded): paths, kinds."""
    folder = tmp_path_factory.mktemp("kinds")
    base = np.asarray(_astronaut_face(160))
    paths, kinds = [], []
    for i in range(10):
        y, x = (i * 7) % 40, (i * 11) % 40
        crop = Image.fromarray(base[y:y + 120, x:x + 120]).resize((112, 112))
        for kind in KINDS:
            image = crop if kind == "clean" else apply_distortion(crop, kind, rng=100 * i + len(kind))
            path = folder / f"img{i:02d}_{kind}.png"
            image.save(path)
            paths.append(str(path))
            kinds.append(kind)
    return paths, kinds


# ----------------------------------------------------------------------------- the estimator


def test_quality_features_fixed_length_and_finite() -> None:
    rng = np.random.default_rng(0)
    a = quality_features(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    b = quality_features(np.zeros((64, 64, 3), np.uint8))
    assert a.shape == b.shape and a.dtype == np.float32 and np.isfinite(a).all() and np.isfinite(b).all()
    with pytest.raises(ValueError, match="RGB"):
        quality_features(np.zeros((8, 8), np.uint8))


def test_estimator_tells_the_restorable_types_apart(distorted_files) -> None:
    paths, kinds = distorted_files
    X = quality_feature_matrix(paths)
    images = np.array([int(Path(p).name[3:5]) for p in paths])
    train, test = images < 7, images >= 7  # unseen crops
    est = DistortionEstimator.fit(X[train], np.asarray(kinds)[train])
    chosen = np.asarray(est.restorations(X[test]))
    wanted = np.array([RESTORATION_FOR.get(k, "identity") for k in np.asarray(kinds)[test]])
    assert (chosen == wanted).mean() >= 0.85
    for kind in ("noisy", "lowlight"):  # the large-gain restorations are never missed here
        rows = np.asarray(kinds)[test] == kind
        assert (chosen[rows] == RESTORATION_FOR[kind]).all()
    probs = est.probabilities(X[test])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_estimator_round_trips_through_weights_only_load(tmp_path, distorted_files) -> None:
    paths, kinds = distorted_files
    X = quality_feature_matrix(paths)
    est = DistortionEstimator.fit(X, kinds)
    torch.save(est.state_dict(), tmp_path / "est.pt")
    back = DistortionEstimator.from_state_dict(torch.load(tmp_path / "est.pt", weights_only=True))
    np.testing.assert_allclose(back.probabilities(X), est.probabilities(X), rtol=1e-6)
    assert back.classes == est.classes


def test_selector_never_reads_file_names(tmp_path, distorted_files) -> None:
    """Permute the probes' distortion suffixes (same pixels, other names): identical choices."""
    paths, kinds = distorted_files
    est = DistortionEstimator.fit(quality_feature_matrix(paths), kinds)
    rng = np.random.default_rng(0)
    renamed = []
    for i, p in enumerate(paths):
        fake = rng.choice(KINDS)
        target = tmp_path / f"probe{i:03d}_{fake}{Path(p).suffix}"
        shutil.copy(p, target)
        renamed.append(str(target))
    assert est.restorations(quality_feature_matrix(renamed)) == est.restorations(quality_feature_matrix(paths))


def test_quality_cache_is_keyed_by_content(tmp_path, distorted_files) -> None:
    paths, _ = distorted_files
    first = quality_feature_matrix(paths[:4], cache_dir=tmp_path)
    copy = tmp_path / "copy.png"
    shutil.copy(paths[0], copy)
    again = quality_feature_matrix([str(copy), *paths[1:4]], cache_dir=tmp_path)
    np.testing.assert_array_equal(first, again)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(copy)  # changed content: new features
    assert not np.array_equal(quality_feature_matrix([str(copy)], cache_dir=tmp_path)[0], first[0])


# ----------------------------------------------------------------------------- the descriptor store


@pytest.fixture(scope="module")
def astronaut_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("dlib")
    path = tmp_path_factory.mktemp("astro") / "astronaut.png"
    _astronaut_face(224).save(path)
    return str(path)


def test_store_describes_once_and_keys_by_content(tmp_path, astronaut_file, monkeypatch) -> None:
    import facecom_utils.face.descriptors as fm

    store = fm.DescriptorStore(tmp_path / "store")
    first = store.describe([astronaut_file], "identity")
    assert first.detected.all() and first.descriptors.shape == (1, 128)
    np.testing.assert_allclose(np.linalg.norm(first.normalised(), axis=1), 1.0, rtol=1e-5)
    calls = []
    monkeypatch.setattr(fm, "_describe_paths", lambda jobs, upsample, **kw: calls.append(jobs) or (_ for _ in ()).throw(
        AssertionError("recomputed")))
    copy = tmp_path / "renamed.png"
    shutil.copy(astronaut_file, copy)
    again = fm.DescriptorStore(tmp_path / "store").describe([str(copy)], "identity")  # a new store reads the disk
    np.testing.assert_array_equal(again.descriptors, first.descriptors)
    assert calls == []
    with pytest.raises(KeyError, match="unknown restoration"):
        store.describe([astronaut_file], "sharpen")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        store.describe([str(tmp_path / "missing.png")])


def test_restored_noisy_face_is_closer_to_its_clean_self(tmp_path, astronaut_file) -> None:
    import facecom_utils.face.descriptors as fm

    noisy = tmp_path / "noisy.png"
    apply_distortion(Image.open(astronaut_file), "noisy", rng=0).save(noisy)
    store = fm.DescriptorStore(tmp_path / "store")
    clean = store.describe([astronaut_file]).normalised()[0]
    raw = store.describe([str(noisy)], "identity").normalised()[0]
    fixed = store.describe([str(noisy)], "denoise").normalised()[0]
    assert fixed @ clean > raw @ clean


# ----------------------------------------------------------------------------- Task A head and CV


class FakeStore:
    """Descriptors from a table (path -> vector); records which paths it was asked for."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.asked: list[list[str]] = []

    def describe(self, paths, restorations="identity") -> Descriptions:
        self.asked.append(list(paths))
        X = np.stack([self.vectors[p] for p in paths]).astype(np.float32)
        n = len(paths)
        return Descriptions(X, np.ones(n, bool), np.ones(n), np.array(["identity"] * n, dtype=object))


def _toy_rows(n_people: int = 40, per: int = 3, seed: int = 0, noise: float = 0.6) -> tuple[pd.DataFrame, FakeStore]:
    """Persons with a gender; descriptor = gender direction + a person offset + noise; one blurred copy each."""
    rng = np.random.default_rng(seed)
    rows, vectors = [], {}
    for p in range(n_people):
        female = p % 4 == 0  # 1 in 4: imbalanced like FACECOM
        offset = rng.normal(0, noise, 8)
        for i in range(per):
            for kind in ("clean", "blurred"):
                path = f"/toy/p{p:03d}_{i}_{kind}.jpg"
                v = offset + rng.normal(0, 0.3, 8)
                v[0] += 1.0 if female else -1.0
                vectors[path] = v
                rows.append({"path": path, "label": "female" if female else "male", "person": f"p{p:03d}",
                             "kind": kind, "image": f"/toy/p{p:03d}_{i}_clean.jpg"})
    return pd.DataFrame(rows), FakeStore(vectors)


def test_grouped_folds_never_put_a_person_on_both_sides() -> None:
    rows, _ = _toy_rows()
    persons, y = rows["person"].to_numpy(), (rows["label"] == "female").to_numpy().astype(int)
    folds = grouped_folds(persons, y, k=4, repeats=3, seed=0)
    assert len(folds) == 12
    for r in range(3):
        seen = np.concatenate([te for _, te in folds[4 * r:4 * r + 4]])
        assert sorted(seen) == list(range(len(rows)))  # each row tested once per repeat
    for tr, te in folds:
        assert not set(persons[tr]) & set(persons[te])
        assert y[te].sum() > 0  # stratified: women in every test part


def _toy_matrix(noise: float = 0.6):
    rows, store = _toy_rows(noise=noise)
    X = np.stack([store.vectors[p] for p in rows["path"]])
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    return rows, store, X, (rows["label"] == "female").to_numpy().astype(int), rows["person"].to_numpy()


def test_every_out_of_fold_prediction_comes_from_a_head_that_never_saw_the_person(monkeypatch) -> None:
    import facecom_utils.gender.heads as gf

    rows, _, X, y, persons = _toy_matrix()
    seen: list[set[str]] = []
    real_fit = gf.fit_linear

    def spy(Xtr, ytr, weight=None, C=1.0, seed=0):
        # identify the training rows by their (unique) feature vectors
        seen.append({persons[int(np.flatnonzero((X == row).all(axis=1))[0])] for row in Xtr})
        return real_fit(Xtr, ytr, weight, C, seed)

    monkeypatch.setattr(gf, "fit_linear", spy)
    prob = oof_linear(X, y, persons, k=4, repeats=2, seed=0)
    assert prob.shape == (2, len(rows)) and not np.isnan(prob).any()
    assert len(seen) == 8
    # each repeat: the 4 heads' training persons are exactly "everyone but the test part"
    everyone = set(persons)
    for r in range(2):
        tested = [everyone - s for s in seen[4 * r:4 * r + 4]]
        assert set().union(*tested) == everyone and sum(len(t) for t in tested) == len(everyone)
    # and the prediction of a person changes when that person is moved into training (it was unseen)
    full = real_fit(X, y)
    assert not np.allclose(full.probabilities(X), prob[0])


def test_threshold_from_oof_on_a_problem_with_a_known_answer() -> None:
    """Separable toy data: the out-of-fold threshold separates perfectly and sits between the classes."""
    rows, _, X, y, persons = _toy_matrix(noise=0.05)
    prob = oof_linear(X, y, persons, C=10.0, k=4)
    out = threshold_from_oof(y, prob, persons, n_boot=200)
    assert out["oof"]["balanced_accuracy"] == 1.0
    assert prob[0, y == 0].max() < out["threshold"] <= prob[0, y == 1].min()
    assert out["recall_female_ci"] == [1.0, 1.0]
    # a known optimum: scores 0.1..0.9 with positives from 0.6 up -> threshold between 0.5 and 0.6
    p = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]])
    t = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    got = threshold_from_oof(t, p, np.arange(9).astype(str), n_boot=0)
    assert 0.5 < got["threshold"] <= 0.6 and np.isnan(got["recall_female_ci"]).all()


def test_heads_are_class_balanced_and_load_weights_only(tmp_path) -> None:
    rows, store, X, y, persons = _toy_matrix()
    model = fit_gender_face(rows, FaceHeadRecipe(store, restore=False, k=4))
    prob = model.face.probabilities(X)
    assert prob[y == 1].mean() > 0.5 > prob[y == 0].mean()  # balanced despite 1:3
    assert 0 < model.face.threshold < 1 and model.oof["oof"]["n"] == int((rows["kind"] == "clean").sum())
    torch.save(model.state_dict(), tmp_path / "head.pt")
    back = GenderFaceModel.from_state_dict(torch.load(tmp_path / "head.pt", weights_only=True))
    np.testing.assert_allclose(back.face.probabilities(X), prob)
    assert back.face.threshold == model.face.threshold
    assert back.mirror is False  # the toy store is plain; a store with mirror=True is recorded as such
    store.mirror = True
    assert GenderFaceModel.from_state_dict(fit_gender_face(rows, FaceHeadRecipe(store, restore=False, k=4)).state_dict()).mirror
    # the margin is >= 0 exactly where the probability clears the threshold
    np.testing.assert_array_equal(model.face.margin(X) >= 0, prob >= model.face.threshold)


def test_cross_validate_scores_each_type() -> None:
    rows, store = _toy_rows(noise=0.3)
    folds = cross_validate(rows, FaceHeadRecipe(store, restore=False, k=3), k=4, repeats=2)
    assert len(folds) == 8 and {"balanced_accuracy", "recall_female", "bal_acc_blurred"} <= set(folds.columns)
    assert folds["balanced_accuracy"].mean() >= 0.85 and folds["threshold"].between(0, 1).all()
    stats = summarise_folds(folds)
    mean, sd = folds["balanced_accuracy"].mean(), folds["balanced_accuracy"].std()
    assert stats.loc[("face", "balanced_accuracy"), "mean_minus_sd"] == pytest.approx(mean - sd)


def test_score_rows_per_type() -> None:
    rows = pd.DataFrame({"label": ["female", "male", "female", "male"], "kind": ["clean", "clean", "noisy", "noisy"]})
    m = score_rows(rows, np.array([0.9, 0.1, 0.2, 0.1]), 0.5)
    assert m["balanced_accuracy"] == 1.0 and m["per_distortion"] == {"noisy": 0.5}
    assert m["worst_distortion"] == "noisy"


def test_with_distorted_copies_matches_task_b_by_file_name(demo_root) -> None:
    from facecom_utils.data.layout import scan_task_a

    a = scan_task_a(demo_root, splits=("train",))
    rows = with_distorted_copies(a, demo_root, "train")
    copies = rows[rows["kind"] != "clean"]
    assert len(copies) > 0 and set(copies["kind"]) <= set(DISTORTION_TYPES)
    by_image = a.set_index("path")
    for _, r in copies.iterrows():
        assert r["label"] == by_image.loc[r["image"], "label"] and r["person"] == by_image.loc[r["image"], "person"]
        assert Path(r["path"]).stem.startswith(Path(r["image"]).stem)
    assert (rows["kind"] == "clean").sum() == len(a)


def test_fused_track_routes_glare_images_to_the_glare_head_with_one_threshold() -> None:
    from facecom_utils.gender.tracks import LinearHead

    rows, store, X, y, persons = _toy_matrix()
    kinds = np.where(np.arange(len(rows)) % 3 == 0, "sunny", "clean")

    class Recipe(FaceHeadRecipe):
        def quality(self, rows_):
            return np.arange(len(rows_), dtype=float)[:, None]

        def frames(self, rows_):
            return -X[rows_.index.to_numpy()]  # another view of the same rows

    recipe = Recipe(store, restore=True)
    face = LinearHead(np.ones(8), 0.0, threshold=0.7)
    glare = LinearHead(np.ones(8) * 2, 0.5, threshold=0.3)
    model = GenderFaceModel(KindsEstimator(kinds), face, glare)  # every third image called sunny
    out = model.scores(rows, recipe)
    sunny = kinds == "sunny"
    np.testing.assert_array_equal(out["routed_to_glare"], sunny)
    np.testing.assert_allclose(out["fused"][~sunny], out["face"][~sunny])
    np.testing.assert_array_equal(out["fused"][sunny] >= face.threshold - 1e-12, glare.margin(-X[sunny]) >= 0)


def test_predict_and_evaluate_gender_run_the_headline_track_of_a_run_directory(tmp_path, astronaut_file,
                                                                                  monkeypatch) -> None:
    """A run directory's face_tracks.pt (weights_only) drives `facecom predict-gender RUN_DIR`."""
    import csv

    from facecom_utils.cli import commands as cli
    from facecom_utils.face.descriptors import DescriptorStore
    from facecom_utils.gender.tracks import LinearHead, load_run_tracks

    monkeypatch.setenv("FACECOM_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    model = GenderFaceModel(None, LinearHead(rng.normal(0, 3, 128), 0.1, threshold=0.45))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"task": "gender", "headline": "face_model_restored", "model": model.state_dict(),
                "cnn_threshold": 0.5}, run_dir / "face_tracks.pt")
    headline, loaded, _ = load_run_tracks(run_dir)
    assert headline == "face_model_restored" and loaded.face.threshold == 0.45
    images = tmp_path / "images"
    images.mkdir()
    flipped = images / "b.png"
    shutil.copy(astronaut_file, images / "a.png")
    Image.open(astronaut_file).transpose(Image.FLIP_LEFT_RIGHT).save(flipped)
    out = tmp_path / "pred.csv"
    assert cli.main(["predict-gender", str(run_dir), str(images), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    paths = [r["path"] for r in rows]
    want = model.face.probabilities(DescriptorStore(tmp_path / "cache" / "face_model").describe(paths).normalised())
    np.testing.assert_allclose([float(r["score"]) for r in rows], want, atol=1e-6)
    assert [r["prediction"] for r in rows] == ["female" if p >= 0.45 else "male" for p in want]
    assert cli.main(["predict-gender", str(images), str(images)]) == 2  # a folder that is not a run directory
    # a head fitted on mirrored descriptors (face_mirror=True) is run on mirrored descriptors
    torch.save({"task": "gender", "headline": "face_model_restored", "cnn_threshold": 0.5,
                "model": GenderFaceModel(None, model.face, mirror=True).state_dict()}, run_dir / "face_tracks.pt")
    assert load_run_tracks(run_dir)[1].mirror is True
    assert cli.main(["predict-gender", str(run_dir), str(images), "--out", str(out)]) == 0
    scores = [float(r["score"]) for r in csv.DictReader(open(out))]
    mirrored = DescriptorStore(tmp_path / "cache" / "face_model", mirror=True).describe(paths).normalised()
    np.testing.assert_allclose(scores, model.face.probabilities(mirrored), atol=1e-6)
    assert not np.allclose(scores, want, atol=1e-4)


# ----------------------------------------------------------------------------- Task B fusion


def test_fused_embeddings_score_the_weighted_cosines() -> None:
    from facecom_utils.recognition.face_tracks import fuse_embeddings

    rng = np.random.default_rng(0)
    f = rng.normal(size=(6, 4))
    c = rng.normal(size=(6, 5))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    gallery = np.array([True, True, True, False, False, False])
    w = np.array([0.9, 0.9, 0.9, 0.0, 0.3, 1.0])  # gallery rows ignore their weight
    e = fuse_embeddings(f, c, w, gallery)
    got = e[~gallery] @ e[gallery].T
    want = w[~gallery, None] * (f[~gallery] @ f[gallery].T) + (1 - w[~gallery, None]) * (c[~gallery] @ c[gallery].T)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_fusion_weights_follow_the_recogniser_that_knows_each_type() -> None:
    """Type A probes: only the face model finds the identity; type B: only the FACECOM model."""
    from facecom_utils.recognition.face_tracks import choose_fusion

    rng = np.random.default_rng(1)
    n_id = 12
    base_f, base_c = rng.normal(size=(n_id, 16)), rng.normal(size=(n_id, 16))
    rows, F, Cm = [], [], []
    for i in range(n_id):
        for g in range(2):
            rows.append({"path": f"/g/{i}_{g}.jpg", "identity": f"id{i}", "distortion": None, "source": None})
            F.append(base_f[i] + 0.1 * rng.normal(size=16))
            Cm.append(base_c[i] + 0.1 * rng.normal(size=16))
        for kind in ("kindA", "kindB"):
            rows.append({"path": f"/p/{i}_{kind}.jpg", "identity": f"id{i}", "distortion": kind,
                         "source": f"/g/{i}_0.jpg"})
            good, bad = (F, Cm) if kind == "kindA" else (Cm, F)
            good.append((base_f if kind == "kindA" else base_c)[i] + 0.1 * rng.normal(size=16))
            bad.append(rng.normal(size=16) * 3)  # this recogniser sees noise for this type
    table = pd.DataFrame(rows)
    table = pd.concat([table[table["distortion"].isna()], table[table["distortion"].notna()]], ignore_index=True)
    order = [int(i) for i in pd.Series(range(len(rows)))[
        [r["distortion"] is None for r in rows]].tolist() + pd.Series(range(len(rows)))[
        [r["distortion"] is not None for r in rows]].tolist()]
    F, Cm = np.asarray(F)[order], np.asarray(Cm)[order]
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    Cm /= np.linalg.norm(Cm, axis=1, keepdims=True)
    kinds = table["distortion"].fillna("clean").to_numpy()
    fusion = choose_fusion(table, F, Cm, kinds)
    assert fusion.weights["kindA"] >= 0.6 and fusion.weights["kindB"] <= 0.4
    assert fusion.gammas == {}

    # copy evidence: kindB probes are exact copies of their source's copy descriptor (so main top-1 needs
    # gamma > 0 there; strict cannot use it), kindA copy descriptors are pure noise (gamma stays 0)
    gallery = table["distortion"].isna().to_numpy()
    copies = rng.normal(size=(len(table), 64))
    source_row = {p: i for i, p in enumerate(table["path"])}
    for i in np.flatnonzero(~gallery & (kinds == "kindB")):
        copies[i] = copies[source_row[table["source"].iloc[i]]]
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    cohort = rng.normal(size=(50, 64))  # other people's photos: nobody's copy
    cohort /= np.linalg.norm(cohort, axis=1, keepdims=True)
    Cm_bad = Cm.copy()
    Cm_bad[kinds == "kindB"] = rng.normal(size=((kinds == "kindB").sum(), 16))  # nobody knows kindB's person
    Cm_bad /= np.linalg.norm(Cm_bad, axis=1, keepdims=True)
    with_copies = choose_fusion(table, F, Cm_bad, kinds, copies, cohort)
    assert with_copies.gammas["kindA"] == 0.0 and with_copies.gammas["kindB"] > 0.0
    from facecom_utils.recognition.face_tracks import Fusion

    saved = Fusion.from_state_dict(with_copies.state_dict())  # what face_tracks.pt keeps
    assert saved == with_copies
    np.testing.assert_allclose(saved.cohort, cohort, atol=1e-3)  # float16
    assert Fusion.from_state_dict({"weights": fusion.weights}).gammas == {}  # a file from before the copy term
    main = face_tracks_quick(table, with_copies.embed(F, Cm_bad, kinds, gallery, copies), kinds, "kindB")
    without = face_tracks_quick(table, choose_fusion(table, F, Cm_bad, kinds).embed(F, Cm_bad, kinds, gallery), kinds,
                                "kindB")
    assert main == 1.0 and without < 0.5


def face_tracks_quick(table: pd.DataFrame, emb: np.ndarray, kinds: np.ndarray, kind: str) -> float:
    """Main top-1 of one type's probes."""
    from facecom_utils.recognition.protocol import _quick_scores

    rows = table["distortion"].isna().to_numpy() | (kinds == kind)
    return _quick_scores(table[rows].reset_index(drop=True), emb[rows])["top1"]


def test_fused_embeddings_add_the_weighted_copy_evidence() -> None:
    """Probe . gallery photo = w cos_face + (1 - w) cos_facecom + gamma * clip((corr - cohort max - 0.1) / 0.1, 0, 1)."""
    from facecom_utils.face.copies import COPY_MARGIN, COPY_RAMP
    from facecom_utils.recognition.face_tracks import fuse_embeddings

    rng = np.random.default_rng(2)
    f, c, k, cohort = (rng.normal(size=(n, d)) for n, d in ((5, 4), (5, 3), (5, 6), (7, 6)))
    k[2] = k[0] + 0.05 * rng.normal(size=6)  # probe 2 is a copy of gallery photo 0
    k[4] = 0.7 * k[1] + 0.7 * rng.normal(size=6)  # probe 4 half a copy of photo 1
    for m in (f, c, k, cohort):
        m /= np.linalg.norm(m, axis=1, keepdims=True)
    gallery = np.array([True, True, False, False, False])
    w, gamma = np.array([0, 0, 0.2, 0.5, 1.0]), np.array([9, 9, 0.5, 0.5, 1.0])
    e = fuse_embeddings(f, c, w, gallery, k, gamma, cohort)
    p, g = ~gallery, gallery
    top = (k[p] @ cohort.T).max(axis=1, keepdims=True)
    evidence = np.clip((k[p] @ k[g].T - top - COPY_MARGIN) / COPY_RAMP, 0, 1)
    want = w[p, None] * (f[p] @ f[g].T) + (1 - w[p, None]) * (c[p] @ c[g].T) + gamma[p, None] * evidence
    np.testing.assert_allclose(e[p] @ e[g].T, want, atol=1e-5)
    assert evidence[0, 0] == 1.0 and evidence[0, 1] == 0.0  # the copy, and not another photo
    # each photo's evidence ignores the rest of the gallery: dropping photo 0 (strict) leaves photo 1's
    e1 = fuse_embeddings(f[1:], c[1:], w[1:], gallery[1:], k[1:], gamma[1:], cohort)
    np.testing.assert_allclose(e1[1:] @ e1[:1].T, (e[p] @ e[g].T)[:, 1:], atol=1e-5)
    with pytest.raises(ValueError, match="cohort"):
        fuse_embeddings(f, c, w, gallery, k, gamma)
    # evidence computed once outside (as choose_fusion does per type) gives the same embeddings;
    # its gallery rows are never read
    pre = np.full((5, 2), np.nan, np.float32)
    pre[p] = evidence
    np.testing.assert_allclose(fuse_embeddings(f, c, w, gallery, k, gamma, cohort, pre), e, atol=1e-6)


def test_copy_evidence_marks_only_the_source_photo() -> None:
    """Real photos (scikit-image, offline): each distorted copy of the astronaut gets evidence for the
    astronaut and none for the other enrolled photos; a photo whose copy is not enrolled gets none."""
    from skimage import data as skdata
    from skimage.transform import resize

    from facecom_utils.face.copies import copy_descriptor, copy_evidence

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera", "moon", "page")
    photos = {n: getattr(skdata, n)() for n in names}
    photos = {n: (resize(v if v.ndim == 3 else np.stack([v] * 3, -1), (224, 224), anti_aliasing=True) * 255)
              .astype(np.uint8) for n, v in photos.items()}
    d = {n: copy_descriptor(v) for n, v in photos.items()}
    gallery = np.stack([d[n] for n in names[:3]])
    cohort = np.stack([d[n] for n in names[3:]])
    for kind in DISTORTION_TYPES:
        probe = copy_descriptor(np.asarray(apply_distortion(Image.fromarray(photos["astronaut"]), kind, rng=1)))
        ev = copy_evidence(probe[None], gallery, cohort)[0]
        assert ev[0] > 0.5 and ev[1:].max() == 0.0, (kind, ev)
    clean_coffee = copy_evidence(d["coffee"][None], gallery[[0, 2]], cohort)[0]  # a photo with no copy enrolled
    assert clean_coffee.max() == 0.0


# ----------------------------------------------------------------------------- the pixel copy detector


def test_copy_detector_finds_each_distorted_copy_of_its_source_photo() -> None:
    """Real photos (scikit-image ships them offline): every distorted copy of the astronaut scores its
    source far above other photos (a shifted crop of the same photo included), and unrelated photos
    are no copies of each other."""
    from skimage import data as skdata
    from skimage.transform import resize

    from facecom_utils.face.copies import copy_descriptor

    photos = {name: getattr(skdata, name)() for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")}
    photos = {k: (resize(v, (224, 224), anti_aliasing=True) * 255).astype(np.uint8) for k, v in photos.items()}
    photos["astronaut_shifted"] = np.roll(photos["astronaut"], 24, axis=1)  # the same person, another framing
    gallery = {k: copy_descriptor(v) for k, v in photos.items()}
    names = list(gallery)
    G = np.stack([gallery[k] for k in names])
    np.testing.assert_allclose(np.linalg.norm(G, axis=1), 1.0, atol=1e-5)
    for kind in DISTORTION_TYPES:  # the project's FACECOM-like distortions, at FACECOM's severity
        img = np.asarray(apply_distortion(Image.fromarray(photos["astronaut"]), kind, rng=1))
        sims = G @ copy_descriptor(img)
        assert names[int(np.argmax(sims))] == "astronaut", (kind, dict(zip(names, sims.round(3))))
        others = np.delete(sims, names.index("astronaut"))
        assert sims[names.index("astronaut")] - others.max() > 0.5, (kind, dict(zip(names, sims.round(3))))
    unrelated = G @ G.T - np.eye(len(G))
    assert np.abs(unrelated[:5, :5]).max() < 0.3


def test_copy_descriptors_are_cached_by_content(tmp_path: Path) -> None:
    from facecom_utils.face import copies

    paths = noise_images(tmp_path, 3, seed=3)
    first = copies.copy_descriptors(paths, cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(first[1], copies.copy_descriptor(paths[1]), atol=1e-6)
    (tmp_path / "renamed.png").write_bytes(paths[0].read_bytes())
    calls = []
    real = copies._describe
    copies._describe = lambda files, size=32: calls.append(list(files)) or real(files, size)
    try:
        again = copies.copy_descriptors([tmp_path / "renamed.png", *paths], cache_dir=tmp_path / "cache")
    finally:
        copies._describe = real
    assert calls == []  # same contents: nothing recomputed
    np.testing.assert_allclose(again[0], first[0])


# ----------------------------------------------------------------------------- the Task B error gallery


def test_error_gallery_names_the_wrong_and_the_true_identity_photos() -> None:
    from facecom_utils.recognition.errors import identification_failures, worst_failures

    e = np.eye(6)
    rows = [("g/a0", "A", None, None, e[0]), ("g/a1", "A", None, None, e[1]), ("g/b0", "B", None, None, e[2]),
            ("g/c0", "C", None, None, e[3]),
            # p1 looks like B: a main (and strict) failure, wrong photo b0, true photo a0/a1 (0.1 each: first wins)
            ("p/1", "A", "noisy", "g/a0", 0.9 * e[2] + 0.1 * e[0] + 0.1 * e[1]),
            # p2 is its source a0 plus a bit of C: right in main; strict (a0 removed) sees a1 at 0 < C at 0.3
            ("p/2", "A", "sunny", "g/a0", e[0] + 0.3 * e[3]),
            # p3 is B's only photo: right in main, left out of strict (no other photo of B)
            ("p/3", "B", "sunny", "g/b0", e[2] + 0.5 * e[3]),
            # p4: a tie between its own identity and C counts against it (as in top-1)
            ("p/4", "C", "noisy", "g/c0", 0.5 * e[3] + 0.5 * e[2])]
    table = pd.DataFrame([r[:4] for r in rows], columns=["path", "identity", "distortion", "source"])
    emb = np.stack([r[4] for r in rows]).astype(np.float32)
    main = identification_failures(table, emb).set_index("probe")
    assert sorted(main.index) == ["p/1", "p/4"]
    assert main.loc["p/1", ["predicted", "wrong_image", "true_image"]].tolist() == ["B", "g/b0", "g/a0"]
    np.testing.assert_allclose(main.loc["p/1", ["score_wrong", "score_true", "margin"]].astype(float), [0.9, 0.1, 0.8],
                               atol=1e-6)
    assert main.loc["p/4", "predicted"] == "B" and main.loc["p/4", "margin"] == 0.0
    strict = identification_failures(table, emb, strict=True).set_index("probe")
    assert sorted(strict.index) == ["p/1", "p/2"]  # p3 left out, p4's source (c0) is C's only photo: left out
    assert strict.loc["p/2", ["predicted", "wrong_image", "true_image"]].tolist() == ["C", "g/c0", "g/a1"]
    assert strict.loc["p/1", "true_image"] == "g/a1"  # a0 is p1's own source: not in the strict gallery
    worst = worst_failures(table, emb, per_type=1)
    assert worst[["protocol", "type", "probe"]].values.tolist() == [
        ["main", "noisy", "p/1"], ["strict", "noisy", "p/1"], ["strict", "sunny", "p/2"]]


def test_descriptor_store_files_follow_the_restoration_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restoration whose output changed gets a new store file (its old descriptors are not reused);
    the others keep theirs."""
    from facecom_utils.face import descriptors as face_model

    store = face_model.DescriptorStore(tmp_path)
    before = {name: store._file(name) for name in ("identity", "denoise", "derain")}
    monkeypatch.setitem(face_model.RESTORATION_VERSIONS, "derain", 7)
    after = {name: store._file(name) for name in ("identity", "denoise", "derain")}
    assert after["identity"] == before["identity"] and after["denoise"] == before["denoise"]
    assert after["derain"] != before["derain"] and after["derain"].name.startswith("dlib_derain_")
    # denoise v2 (the gated median) does not reuse a store of the version-1 denoise
    monkeypatch.setitem(face_model.RESTORATION_VERSIONS, "denoise", 1)
    assert store._file("denoise") != before["denoise"]


def test_face_heads_record_their_restoration_versions_and_warn_on_a_mismatch() -> None:
    """A Task A face model saves the restoration versions its heads were fitted on; loading it under other
    versions (or from a file written before they were recorded: all at version 1) warns, and under the
    same versions it does not."""
    import warnings

    from facecom_utils.gender.tracks import LinearHead
    from facecom_utils.face.restoration import RESTORATION_VERSIONS, check_restoration_versions

    rng = np.random.default_rng(0)
    q = rng.normal(size=(40, 3))
    estimator = DistortionEstimator.fit(q, ["clean", "noisy"] * 20)
    state = GenderFaceModel(estimator, LinearHead(np.ones(4), 0.0, threshold=0.5)).state_dict()
    assert state["restoration_versions"] == RESTORATION_VERSIONS and RESTORATION_VERSIONS["denoise"] >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GenderFaceModel.from_state_dict(state)
        check_restoration_versions(dict(RESTORATION_VERSIONS), "same")
    old = {k: v for k, v in state.items() if k != "restoration_versions"}
    with pytest.warns(UserWarning, match=f"denoise: v1 then, v{RESTORATION_VERSIONS['denoise']} now"):
        GenderFaceModel.from_state_dict(old)


def test_a_run_folder_is_read_with_the_descriptor_it_was_fitted_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """``face_tracks.pt`` records ``face_mirror``; a run folder from before that setting reads plain descriptors."""
    import facecom_utils.face.descriptors as fm
    from facecom_utils.recognition.face_tracks import track_features

    class Store:
        def __init__(self, folder, workers=1, mirror=False, **kw) -> None:
            self.mirror = mirror

        def describe(self, paths, restorations="identity") -> Descriptions:
            d = np.full((len(paths), 128), 2.0 if self.mirror else 1.0, np.float32)
            d[:, 0] = 3.0
            return Descriptions(d, np.ones(len(paths), bool), np.zeros(len(paths)), np.array(["identity"] * len(paths)))

    monkeypatch.setattr(fm, "DescriptorStore", Store)
    for saved, value in (({}, 1.0), ({"face_mirror": False}, 1.0), ({"face_mirror": True}, 2.0)):
        emb = track_features(saved, "face_model", ["a.jpg", "b.jpg"], Path("."), 1, "face_tracks.pt")["emb"]
        raw = np.r_[3.0, np.full(127, value)]  # the mirrored and plain rows differ in direction, not only length
        np.testing.assert_allclose(emb, np.tile(raw / np.linalg.norm(raw), (2, 1)), rtol=1e-6)
