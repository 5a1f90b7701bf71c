"""Tests for facecom_utils.gender.glare: the glare CNN fine-tuned on sunny copies (tiny images, tiny backbone, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import KindsEstimator
from facecom_utils.data.splits import person_folds
from facecom_utils.metrics.classification import binary_metrics, choose_threshold
from facecom_utils.gender.glare import (GlareCNN, fit_glare_cnn, held_out_persons, person_balanced_accuracy,
                                 person_balanced_threshold, sampling_weights)


def _glare_images(folder: Path, persons: int, per_person: int, seed: int) -> pd.DataFrame:
    """32 px 'sunny' crops: a saturated white centre (the face is gone) and a periphery whose colour
    carries the label (female: warm hair band at the top, male: cool), with noise and per-person tint."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:32, :32]
    centre = (yy - 16) ** 2 + (xx - 16) ** 2 < 10 ** 2
    rows = []
    for p in range(persons):
        female = p % 2
        tint = rng.integers(-30, 30, 3)
        for i in range(per_person):
            img = rng.integers(60, 140, (32, 32, 3)).astype(np.int64) + tint
            band = np.array([200, 90, 40]) if female else np.array([40, 90, 200])
            img[:7] = band + rng.integers(-25, 25, (7, 32, 3))
            img[centre] = 255
            path = folder / f"s{seed}_p{p}_{i}.png"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
            rows.append({"path": str(path), "label": female, "person": f"s{seed}_p{p}"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[GlareCNN, pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("glare")
    train = _glare_images(root / "train", persons=20, per_person=4, seed=0)
    test = _glare_images(root / "test", persons=10, per_person=4, seed=1)
    torch.set_num_threads(2)
    cnn = fit_glare_cnn(train["path"], train["label"], train["person"], image_size=32, epochs=6, batch_size=16,
                        lr=3e-3, backbone="resnet10t", pretrained=None, seed=0, channels_last=True)
    return cnn, train, test


def test_channels_last_glare_cnn_trains_in_that_format_and_round_trips(fitted) -> None:
    cnn, _, test = fitted
    convs = [m.weight for m in cnn.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    again = GlareCNN.from_state_dict(cnn.state_dict())
    assert again.threshold == cnn.threshold
    np.testing.assert_allclose(again.probabilities(test["path"].tolist()), cnn.probabilities(test["path"].tolist()),
                               atol=1e-5)


def test_glare_cnn_reads_the_periphery_of_unseen_people(fitted) -> None:
    cnn, _, test = fitted
    prob = cnn.probabilities(test["path"].tolist())
    m = binary_metrics(test["label"].to_numpy(), prob, cnn.threshold)
    assert m["balanced_accuracy"] >= 0.9, m["balanced_accuracy"]


def test_glare_cnn_threshold_comes_from_its_held_out_persons_only(fitted) -> None:
    """The held-out fifth of the persons is disjoint from the fitted ones, and the threshold is the
    person-weighted balanced-accuracy optimum of exactly their images."""
    cnn, train, _ = fitted
    fit_idx, held_idx = held_out_persons(train["person"].to_numpy(), train["label"].to_numpy(), 5, 0)
    assert not set(train["person"].iloc[fit_idx]) & set(train["person"].iloc[held_idx])
    assert cnn.info["n_fit"] == len(fit_idx) and cnn.info["n_holdout"] == len(held_idx)
    assert cnn.info["persons_fit"] + cnn.info["persons_holdout"] == train["person"].nunique()
    held = train.iloc[held_idx]
    prob = cnn.probabilities(held["path"].tolist())
    want = person_balanced_threshold(held["label"].to_numpy(), prob, held["person"].to_numpy())
    assert cnn.threshold == pytest.approx(want)
    assert cnn.info["holdout_person_balanced_accuracy_at_own_threshold"] == pytest.approx(
        person_balanced_accuracy(held["label"].to_numpy(), prob, held["person"].to_numpy(), cnn.threshold))


def test_fit_glare_cnn_samples_and_thresholds_by_person(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With one person owning most images, the fit samples with the person weights of its fitted persons and
    chooses the threshold person-weighted on exactly its held-out persons (not image-counted)."""
    import facecom_utils.gender.glare as glare

    rows = pd.concat([_glare_images(tmp_path / "a", persons=10, per_person=1, seed=3),
                      _glare_images(tmp_path / "b", persons=1, per_person=12, seed=4)], ignore_index=True)
    seen: dict = {}

    def spy_weights(y, persons):
        seen["weights"] = (np.asarray(persons), glare_weights(y, persons))
        return seen["weights"][1]

    def spy_threshold(y, prob, persons):
        seen["threshold"] = np.asarray(persons)
        return glare_threshold(y, prob, persons)

    glare_weights, glare_threshold = glare.sampling_weights, glare.person_balanced_threshold
    monkeypatch.setattr(glare, "sampling_weights", spy_weights)
    monkeypatch.setattr(glare, "person_balanced_threshold", spy_threshold)
    torch.manual_seed(0)
    fit_glare_cnn(rows["path"], rows["label"], rows["person"], image_size=32, epochs=1, batch_size=8,
                  backbone="resnet10t", pretrained=None, seed=0)
    persons = rows["person"].to_numpy()
    fit_idx, held_idx = held_out_persons(persons, rows["label"].to_numpy(), 5, 0)
    np.testing.assert_array_equal(seen["weights"][0], persons[fit_idx])
    np.testing.assert_array_equal(seen["threshold"], persons[held_idx])
    w, fitted = seen["weights"][1], persons[fit_idx]
    assert "s4_p0" in set(fitted)  # (seed 0) the 12-image man is fitted, and weighs as much as a one-image man
    assert w[fitted == "s4_p0"].sum() == pytest.approx(w[fitted == "s3_p0"].sum())
    assert (fitted == "s4_p0").sum() == 12 and (fitted == "s3_p0").sum() == 1


def test_glare_networks_train_through_the_project_fit_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each member is one call of train.fit.fit with the expert's recipe (every epoch kept, no early stop, its
    own seed, its share of the time budget), on exactly its persons' images, drawn person-balanced; the
    per-epoch losses of fit's history land in ``info``."""
    import facecom_utils.train.fit as engine

    rows = _glare_images(tmp_path, persons=12, per_person=2, seed=7)
    calls: list = []
    real_fit = engine.fit

    def spy_fit(model, loader, loss_fn, evaluate_fn=None, config=None, *args, **kwargs):
        calls.append({"config": config, "evaluate_fn": evaluate_fn, "n": len(loader.dataset),
                      "weights": loader.sampler.weights.numpy().copy()})
        return real_fit(model, loader, loss_fn, evaluate_fn, config, *args, **kwargs)

    monkeypatch.setattr(engine, "fit", spy_fit)
    cnn = fit_glare_cnn(rows["path"], rows["label"], rows["person"], image_size=32, epochs=2, batch_size=8,
                        backbone="resnet10t", pretrained=None, seed=4, members=3, max_minutes=60.0)
    assert len(calls) == 3
    splits = person_folds(rows["person"].to_numpy(), rows["label"].to_numpy(), 3, 1, 4)
    for i, (call, (fit_idx, _)) in enumerate(zip(calls, splits)):
        cfg = call["config"]
        assert (cfg.epochs, cfg.seed, cfg.patience, cfg.restore_best, cfg.resume) == (2, 4 + i, None, False, False)
        assert cfg.max_train_seconds == pytest.approx(60 * 60.0 / 3) and call["evaluate_fn"] is None
        assert call["n"] == len(fit_idx)
        np.testing.assert_allclose(call["weights"], sampling_weights(rows["label"].to_numpy()[fit_idx],
                                                                     rows["person"].to_numpy()[fit_idx]))
    assert cnn.info["epochs"] == [2, 2, 2]
    assert [len(h) for h in cnn.info["train_loss"]] == [2, 2, 2]
    assert all(np.isfinite(h).all() and min(h) > 0 for h in cnn.info["train_loss"])


def test_glare_time_budget_stops_each_member_before_the_epoch_that_would_exceed_its_share(tmp_path: Path) -> None:
    """fit's budget: a member stops after the epoch when one more would not fit in its share (here after one)."""
    rows = _glare_images(tmp_path, persons=10, per_person=2, seed=8)
    cnn = fit_glare_cnn(rows["path"], rows["label"], rows["person"], image_size=32, epochs=4, batch_size=8,
                        backbone="resnet10t", pretrained=None, seed=0, max_minutes=1e-6)
    assert cnn.info["epochs"] == 1 and len(cnn.info["train_loss"][0]) == 1


def test_held_out_part_is_a_fifth_of_each_labels_persons_whatever_their_image_counts() -> None:
    """One person with 236 images (as FACECOM's training split has) does not make the held-out part a
    handful of persons: each label's persons are split, and every image follows its person."""
    persons = np.array(["giant"] * 236 + [f"m{i}" for i in range(40) for _ in range(2)] + [f"f{i}" for i in range(20)])
    labels = np.array([0] * 236 + [0] * 80 + [1] * 20)
    fit_idx, held_idx = held_out_persons(persons, labels, k=5, seed=0)
    assert sorted(np.concatenate([fit_idx, held_idx]).tolist()) == list(range(len(persons)))
    held = set(persons[held_idx])
    assert not held & set(persons[fit_idx])
    assert len({p for p in held if p.startswith("f")}) == 4  # 20 women / 5
    assert len({p for p in held if not p.startswith("f")}) in (8, 9)  # 41 men / 5


def test_person_balanced_threshold_counts_each_person_once() -> None:
    """A known answer: 100 images of one man at 0.5 outvote four other men at 0.1 for the image-counted
    threshold (0.7: two of five women found); counting persons, catching all five women at the
    cost of one man (0.2) is better: person-weighted balanced accuracy 0.9 against 0.7."""
    prob = np.array([0.3, 0.3, 0.3, 0.9, 0.9] + [0.5] * 100 + [0.1] * 4)
    y = np.array([1] * 5 + [0] * 104)
    persons = np.array([f"f{i}" for i in range(5)] + ["giant"] * 100 + [f"m{i}" for i in range(4)])
    assert choose_threshold(y, prob, "balanced_accuracy") == pytest.approx(0.7)
    assert person_balanced_threshold(y, prob, persons) == pytest.approx(0.2)
    np.testing.assert_allclose(person_balanced_accuracy(y, prob, persons, [0.2, 0.7]), [0.9, 0.7])
    assert person_balanced_accuracy(y, prob, persons, 0.05) == pytest.approx(0.5)  # everyone called female
    # with one image per person both rules agree
    one = np.r_[0:5, 5, 105:109]
    assert person_balanced_threshold(y[one], prob[one], persons[one]) == pytest.approx(
        choose_threshold(y[one], prob[one], "balanced_accuracy"))
    with pytest.raises(ValueError, match="both labels"):
        person_balanced_threshold(y[:5], prob[:5], persons[:5])


def test_sampling_weights_balance_persons_within_a_label_and_the_labels() -> None:
    persons = np.array(["giant"] * 10 + ["m1", "f1", "f1", "f2"])
    y = np.array([0] * 11 + [1] * 3)
    w = sampling_weights(y, persons)
    assert w[y == 0].sum() == pytest.approx(1.0) and w[y == 1].sum() == pytest.approx(1.0)
    assert w[persons == "giant"].sum() == pytest.approx(w[persons == "m1"].sum()) == pytest.approx(0.5)
    assert w[persons == "f1"].sum() == pytest.approx(w[persons == "f2"].sum())


def test_glare_cnn_round_trips_through_a_weights_only_file(fitted, tmp_path: Path) -> None:
    cnn, _, test = fitted
    torch.save(cnn.state_dict(), tmp_path / "glare.pt")
    again = GlareCNN.from_state_dict(torch.load(tmp_path / "glare.pt", weights_only=True))
    paths = test["path"].tolist()[:12]
    np.testing.assert_allclose(again.probabilities(paths), cnn.probabilities(paths), atol=1e-6)
    assert again.threshold == cnn.threshold and again.info == cnn.info
    margin = again.margin(paths)
    np.testing.assert_array_equal(margin >= 0, again.probabilities(paths) >= again.threshold)


def test_fused_track_routes_glare_images_to_the_glare_cnn_with_one_threshold() -> None:
    """Images the selector calls sunny take the glare CNN's margin, shifted onto the face head's threshold;
    the others keep the face head's probability; the frame head is not consulted."""
    from facecom_utils.gender.tracks import FaceHeadRecipe, GenderFaceModel, LinearHead

    rows = pd.DataFrame({"path": [f"/x/{i}.jpg" for i in range(9)]})
    kinds = np.where(np.arange(9) % 3 == 0, "sunny", "clean")
    X = np.random.default_rng(0).normal(size=(9, 4))

    class Recipe(FaceHeadRecipe):
        def quality(self, rows_):
            return np.arange(len(rows_), dtype=float)[:, None]

        def descriptors(self, rows_, estimator, quality=None):
            return X[rows_.index.to_numpy()]

        def frames(self, rows_):
            raise AssertionError("the frame head must not run when the glare CNN is fitted")

    class StubCNN:
        devices: list = []

        def margin(self, paths, device=None):
            self.devices.append(device)
            return np.array([float(Path(p).stem) - 4.0 for p in paths])

    face = LinearHead(np.ones(4), 0.0, threshold=0.7)
    model = GenderFaceModel(KindsEstimator(kinds), face, LinearHead(np.ones(4), 0.0), glare_cnn=StubCNN())
    out = model.scores(rows, Recipe(store=None, device="cpu"))
    assert model.glare_cnn.devices == ["cpu"]  # runs where the recipe says
    sunny = kinds == "sunny"
    np.testing.assert_allclose(out["fused"][~sunny], out["face"][~sunny])
    margin = np.array([0.0, 3.0, 6.0]) - 4.0  # rows 0, 3, 6
    want = 1 / (1 + np.exp(-(margin + np.log(0.7 / 0.3))))
    np.testing.assert_allclose(out["fused"][sunny], want)
    np.testing.assert_array_equal(out["fused"][sunny] >= face.threshold - 1e-12, margin >= 0)


def test_glare_cnn_refuses_too_few_persons_of_a_label_before_training() -> None:
    """Four women cannot give a held-out fifth with both labels: a GlareDataError (a ValueError, which the
    fused track turns into a fall-back to the frame head) names the counts, before any image is read."""
    from facecom_utils.gender.glare import GlareDataError

    persons = [f"p{i}" for i in range(12) for _ in range(2)]
    labels = [int(i < 4) for i in range(12) for _ in range(2)]
    with pytest.raises(GlareDataError, match="8 male and 4 female persons"):
        fit_glare_cnn([f"/missing/{i}.jpg" for i in range(24)], labels, persons, holdout_folds=5)
    assert issubclass(GlareDataError, ValueError)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory):
    """A 3-member cross-fitted glare CNN, with what each member trained on and what the threshold was chosen on."""
    import facecom_utils.gender.glare as glare

    root = tmp_path_factory.mktemp("glare_ensemble")
    train = _glare_images(root / "train", persons=21, per_person=3, seed=5)
    test = _glare_images(root / "test", persons=10, per_person=4, seed=6)
    seen: dict = {"trained_on": []}
    train_network, threshold = glare._train_network, glare.person_balanced_threshold

    def spy_train(X, y, persons, **kw):
        seen["trained_on"].append(set(persons))
        return train_network(X, y, persons, **kw)

    def spy_threshold(y, prob, persons):
        seen["threshold_input"] = (np.asarray(y), np.asarray(prob), np.asarray(persons))
        return threshold(y, prob, persons)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(glare, "_train_network", spy_train)
        mp.setattr(glare, "person_balanced_threshold", spy_threshold)
        torch.set_num_threads(2)
        cnn = fit_glare_cnn(train["path"], train["label"], train["person"], image_size=32, epochs=6, batch_size=16,
                            lr=3e-3, backbone="resnet10t", pretrained=None, seed=0, members=3)
    return cnn, train, test, seen


def test_ensemble_probability_is_the_mean_of_its_members(ensemble) -> None:
    cnn, _, test, _ = ensemble
    assert len(cnn.models) == 3 and cnn.info["members"] == 3
    paths = test["path"].tolist()
    each = np.stack([GlareCNN([m], 0.5, cnn.image_size).probabilities(paths) for m in cnn.models])
    assert np.ptp(each, axis=0).max() > 1e-3  # the members differ, so the mean is not any one of them
    np.testing.assert_allclose(cnn.probabilities(paths), each.mean(axis=0), atol=1e-7)
    m = binary_metrics(test["label"].to_numpy(), cnn.probabilities(paths), cnn.threshold)
    assert m["balanced_accuracy"] >= 0.9, m["balanced_accuracy"]


def test_ensemble_threshold_comes_from_out_of_fold_predictions_of_every_training_person(ensemble) -> None:
    """Member i trains on all person-grouped parts but the i-th; every training image gets exactly one
    probability, from the member that never saw its person, paired with its own label, and the threshold
    is the person-weighted optimum of exactly those (y, probability, person) triples."""
    from facecom_utils.data.splits import person_folds

    cnn, train, _, seen = ensemble
    splits = person_folds(train["person"].to_numpy(), train["label"].to_numpy(), 3, 1, 0)
    persons_all = train["person"].to_numpy()
    assert [set(persons_all[fit]) for fit, _ in splits] == seen["trained_on"]
    held = np.concatenate([h for _, h in splits])
    assert sorted(held.tolist()) == list(range(len(train)))  # every image once
    y, prob, persons = seen["threshold_input"]
    np.testing.assert_array_equal(persons, persons_all[held])
    np.testing.assert_array_equal(y, train["label"].to_numpy()[held])
    start = 0
    for member, (fit, part) in zip(cnn.models, splits):
        assert not set(persons_all[fit]) & set(persons_all[part])
        want = GlareCNN([member], 0.5, cnn.image_size).probabilities(train["path"].iloc[part].tolist())
        np.testing.assert_allclose(prob[start:start + len(part)], want, atol=1e-6)  # row for row
        start += len(part)
    assert cnn.threshold == pytest.approx(person_balanced_threshold(y, prob, persons))  # the one stored is that one
    assert cnn.info["persons_holdout"] == train["person"].nunique() and cnn.info["n_holdout"] == len(train)
    assert cnn.info["n_fit"] == [len(fit) for fit, _ in splits]


def test_ensemble_round_trips_and_old_single_network_files_still_load(ensemble, tmp_path: Path) -> None:
    cnn, _, test, _ = ensemble
    paths = test["path"].tolist()[:8]
    torch.save(cnn.state_dict(), tmp_path / "glare.pt")
    again = GlareCNN.from_state_dict(torch.load(tmp_path / "glare.pt", weights_only=True))
    assert len(again.models) == 3 and again.threshold == cnn.threshold
    np.testing.assert_allclose(again.probabilities(paths), cnn.probabilities(paths), atol=1e-6)
    old = cnn.state_dict()
    old["weights"] = old.pop("members")[1]  # the format of runs saved before ensembles
    single = GlareCNN.from_state_dict(old)
    np.testing.assert_allclose(single.probabilities(paths),
                               GlareCNN([cnn.models[1]], 0.5, cnn.image_size).probabilities(paths), atol=1e-6)


def test_ensemble_refuses_fewer_persons_of_a_label_than_members() -> None:
    from facecom_utils.gender.glare import GlareDataError

    persons = [f"p{i}" for i in range(8) for _ in range(2)]
    labels = [int(i < 2) for i in range(8) for _ in range(2)]
    with pytest.raises(GlareDataError, match="cross-fit 3 members.*6 male and 2 female"):
        fit_glare_cnn([f"/missing/{i}.jpg" for i in range(16)], labels, persons, members=3)
    with pytest.raises(ValueError, match="members must be at least 1"):
        fit_glare_cnn(["/missing/a.jpg"], [0], ["p"], members=0)


@pytest.mark.parametrize("bad", [{"face_glare_cnn_members": 0}, {"face_glare_cnn_epochs": 0}])
def test_config_refuses_a_glare_cnn_without_networks_or_epochs(bad: dict, tmp_path: Path) -> None:
    """Caught when the run is configured, not after every descriptor has been computed."""
    from facecom_utils.gender.pipeline import GenderConfig

    with pytest.raises(ValueError, match="face_glare_cnn_members and face_glare_cnn_epochs must be >= 1"):
        GenderConfig(data_root=str(tmp_path), output_dir=str(tmp_path / "run"), **bad)


def test_logit_matches_its_definition_and_clips():
    from facecom_utils.gender.tracks import female_labels
    from facecom_utils.metrics.classification import logit

    p = np.array([0.5, 0.9, 0.1, 0.0, 1.0])
    out = logit(p, eps=1e-6)
    np.testing.assert_allclose(out[:3], [0.0, np.log(9.0), -np.log(9.0)], atol=1e-12)
    np.testing.assert_allclose(out[3:], [np.log(1e-6 / (1 - 1e-6)), np.log((1 - 1e-6) / 1e-6)], rtol=1e-9)
    assert isinstance(logit(0.9), float) and logit(0.9) == pytest.approx(np.log(9.0))
    rows = pd.DataFrame({"label": ["female", "male", "female"]})
    assert female_labels(rows).tolist() == [1, 0, 1]


def test_glare_members_start_from_the_given_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``init``: every member enters the fit loop holding the given state dict (the head too), not the backbone's
    own initialisation; without ``init`` they do not."""
    import facecom_utils.train.fit as engine
    from facecom_utils.nn.backbones import GenderClassifier

    rows = _glare_images(tmp_path, persons=12, per_person=2, seed=9)
    torch.manual_seed(123)
    start = GenderClassifier("resnet10t", None, image_size=32)
    with torch.no_grad():
        start.classifier.bias.fill_(2.5)
    init = {k: v.clone() for k, v in start.state_dict().items()}
    entered: list = []
    real_fit = engine.fit

    def spy_fit(model, *args, **kwargs):
        entered.append({n: p.detach().cpu().clone().contiguous() for n, p in model.named_parameters()})
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(engine, "fit", spy_fit)
    kw = dict(image_size=32, epochs=1, batch_size=8, lr=1e-2, backbone="resnet10t", pretrained=None, seed=0, members=3)
    cnn = fit_glare_cnn(rows["path"], rows["label"], rows["person"], init=init, **kw)
    assert len(entered) == 3
    for params in entered:
        for name, value in params.items():
            assert torch.equal(value, init[name].contiguous()), name
    assert not torch.equal(cnn.models[0].classifier.bias.detach().cpu(), init["classifier.bias"])  # then it trained
    entered.clear()
    own = fit_glare_cnn(rows["path"], rows["label"], rows["person"], **kw)
    assert not torch.equal(entered[0]["classifier.bias"], init["classifier.bias"])
    assert cnn.info["init"] == "given" and own.info["init"] == "pretrained"
