"""Task A pipeline end to end on the tiny demo dataset, and the person-grouped fold on FACECOM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facecom_utils.data.layout import DISTORTION_TYPES, scan_task_a
from facecom_utils.data.splits import person_grouped_split
from facecom_utils.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from facecom_utils.gender.pipeline import (
    GenderConfig,
    evaluate_gender,
    gender_pipeline,
    gender_splits,
    predict_gender,
    train_gender,
)

from conftest import FACECOM_ROOT, requires_facecom

REPORT_KEYS = {"accuracy", "balanced_accuracy", "f1_macro", "precision_female", "recall_female", "f1_female",
               "roc_auc", "threshold", "confusion_matrix", "per_distortion", "brier", "reliability",
               "balanced_accuracy_at_0.5", "recall_female_at_0.5", "train_seconds", "train_images_per_second"}


def _stage_config(demo_root, tmp_path, **kw) -> GenderConfig:
    base = dict(data_root=str(demo_root), output_dir=str(tmp_path / "run"), image_size=32, batch_size=8,
                eval_batch_size=16, val_fraction=0.3, device="cpu", progress=False, pretrained=None)
    return GenderConfig(**{**base, **kw})


def test_gender_splits_table_adds_up_and_nobody_is_on_two_sides(demo_root, tmp_path):
    splits = gender_splits(_stage_config(demo_root, tmp_path))
    table = splits.table()
    assert list(table.index) == ["train", "val_fold", "report (val)"] and splits.report_split == "val"
    assert (table["female"] + table["male"] == table["images"]).all()
    assert table.loc[["train", "val_fold"], "images"].sum() == len(scan_task_a(demo_root, splits=("train",)))
    assert table.loc["report (val)", "images"] == len(scan_task_a(demo_root, splits=("val",)))
    people = [set(df["person"]) for df in splits.parts().values()]
    assert all(people) and not (people[0] & people[1] or people[0] & people[2] or people[1] & people[2])
    assert list(table["persons"]) == [len(p) for p in people]
    counts = splits.counts()
    assert counts["n_train_images"] == table.loc["train", "images"] and counts["n_report_persons"] == len(people[2])


@pytest.mark.parametrize("cache", ["memory", "off"])
def test_gender_pipeline_augmented_batch_is_normalised_and_leaves_rng_alone(demo_root, tmp_path, cache):
    cfg = _stage_config(demo_root, tmp_path, cache=cache)
    pipeline = gender_pipeline(cfg, gender_splits(cfg))
    assert (pipeline.augment is None) == (cache == "off") and (pipeline.cache_mode == "off") == (cache == "off")
    state = torch.get_rng_state()
    images, labels = pipeline.augmented_batch(6, seed=1)
    assert torch.equal(state, torch.get_rng_state()), "the display batch must not move torch's generator"
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.float32 and labels
    assert set(labels) <= {"female", "male"} and len(labels) == 6
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    raw = images * std + mean  # undone normalisation: back in [0, 1]
    assert raw.min() >= -1e-3 and raw.max() <= 1 + 1e-3 and images.min() < 0
    again, labels_again = pipeline.augmented_batch(6, seed=1)
    assert torch.allclose(images, again) and labels == labels_again


@pytest.mark.parametrize("balance", ["sampler", "none"])
def test_gender_pipeline_sampler_weights_halve_the_draws(demo_root, tmp_path, balance):
    cfg = _stage_config(demo_root, tmp_path, balance=balance, cache="off")
    pipeline = gender_pipeline(cfg, gender_splits(cfg))
    table = pipeline.sampler_table()
    y = pipeline.y_train
    assert table.loc["female", "images"] == y.sum() and table.loc["male", "images"] == len(y) - y.sum()
    assert table["expected_share_of_draws"].sum() == pytest.approx(1.0)
    assert table["expected_per_batch"].sum() == pytest.approx(cfg.batch_size)
    if balance == "sampler":
        assert table["expected_share_of_draws"].tolist() == pytest.approx([0.5, 0.5])
        weights = table["weight_per_image"] * table["images"]
        assert weights["female"] == pytest.approx(weights["male"])
        drawn = []
        for epoch in range(50):  # what the sampler actually draws, epoch after epoch
            pipeline.sampler.set_epoch(epoch)
            drawn.extend(y[list(pipeline.sampler)])
        assert abs(np.mean(drawn) - 0.5) < 0.06, np.mean(drawn)
    else:
        assert pipeline.sampler is None
        assert table.loc["female", "expected_share_of_draws"] == pytest.approx(y.mean())


def test_train_gender_end_to_end_on_demo(demo_root, tmp_path, one_thread):
    cfg = GenderConfig(data_root=str(demo_root), output_dir=str(tmp_path / "run"), image_size=64, epochs=2,
                       batch_size=8, eval_batch_size=16, val_fraction=0.3, device="cpu", progress=False)
    run = train_gender(cfg)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert (ckpt_dir / "best.pt").is_file() and (ckpt_dir / "last.pt").is_file()
    best = torch.load(ckpt_dir / "best.pt", map_location="cpu", weights_only=True)
    assert best["task"] == "gender" and best["class_to_idx"] == {"male": 0, "female": 1}
    assert best["threshold"] == pytest.approx(run.threshold) and best["config"]["image_size"] == 64

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert REPORT_KEYS <= set(metrics)
    assert set(metrics["per_distortion"]) == set(DISTORTION_TYPES)
    assert metrics["report_split"] == "val" and metrics["parameters"]["epochs"] == 2
    assert len(run.history) == 2 and {"train_loss", "val_roc_auc", "val_balanced_accuracy"} <= set(run.history.columns)
    n_val = len(scan_task_a(demo_root, splits=("val",)))
    assert len(run.probabilities) == n_val and {"path", "label", "prob", "pred"} <= set(run.probabilities.columns)
    assert metrics["n_report_images"] == n_val
    # nobody of the fold is in the training part
    fold_people = set(run.fold_probabilities["person"])
    train_people = set(scan_task_a(demo_root, splits=("train",))["person"]) - fold_people
    assert fold_people and not fold_people & train_people

    # The stored checkpoint reproduces the reported numbers and predicts with its threshold.
    again = evaluate_gender(ckpt_dir / "best.pt", demo_root, split="val", distortions=False, device="cpu")
    assert again["balanced_accuracy"] == pytest.approx(metrics["balanced_accuracy"])
    assert again["threshold"] == pytest.approx(run.threshold)
    table = predict_gender(ckpt_dir / "best.pt", run.probabilities["path"].tolist(), device="cpu")
    np.testing.assert_allclose(table["prob"], run.probabilities["prob"], atol=1e-5)


def test_heldout_split_when_no_val_folder(demo_root, tmp_path, one_thread):
    """A root with Task_A/train only (like ../shared/facecom): report on an identity-disjoint held-out part."""
    root = tmp_path / "trainonly"
    for row in scan_task_a(demo_root).itertuples():  # the demo's train + val people, all in train/
        link = root / "Task_A" / "train" / row.label / f"{row.split}_{row.path.rsplit('/', 1)[-1]}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(row.path)
    cfg = GenderConfig(data_root=str(root), output_dir=str(tmp_path / "run"), image_size=48, epochs=1, batch_size=8,
                       val_fraction=0.3, holdout_fraction=0.3, device="cpu", progress=False,
                       evaluate_distortions=False, pretrained=None)
    with pytest.warns(UserWarning, match="identity-disjoint"):
        run = train_gender(cfg)
    assert run.report_split == "heldout_from_train"
    report_people = set(run.probabilities["person"])
    assert report_people and not report_people & set(run.fold_probabilities["person"])
    assert run.metrics["n_train_images"] + run.metrics["n_val_fold_images"] + run.metrics["n_report_images"] == len(
        scan_task_a(root)
    )


@requires_facecom
def test_person_grouped_fold_on_facecom():
    df = scan_task_a(FACECOM_ROOT, splits=("train",))
    train, val = person_grouped_split(df, val_fraction=0.15, seed=0)
    assert not set(train["person"]) & set(val["person"])
    share = (df["label"] == "female").mean()
    assert abs((val["label"] == "female").mean() - share) < 0.05
    assert 0.12 < len(val) / len(df) < 0.18


def test_the_stages_as_notebook_02_calls_them_give_train_gender_s_numbers(demo_root, tmp_path, one_thread):
    """Splits, pipeline, a display batch, fit, report: the same run as one train_gender call."""
    from facecom_utils.gender.pipeline import fit_gender, report_gender

    cfg = _stage_config(demo_root, tmp_path, epochs=1, evaluate_distortions=False, output_dir=str(tmp_path / "a"))
    whole = train_gender(cfg)
    cfg = _stage_config(demo_root, tmp_path, epochs=1, evaluate_distortions=False, output_dir=str(tmp_path / "b"))
    splits = gender_splits(cfg)
    pipeline = gender_pipeline(cfg, splits)
    pipeline.augmented_batch(8)
    pipeline.sampler_table()
    staged = report_gender(cfg, pipeline, fit_gender(cfg, pipeline))
    assert staged.threshold == pytest.approx(whole.threshold)
    np.testing.assert_allclose(staged.probabilities["prob"], whole.probabilities["prob"], atol=1e-6)
    for key in ("balanced_accuracy", "roc_auc", "n_train_images", "n_val_fold_images", "n_report_persons"):
        assert staged.metrics[key] == pytest.approx(whole.metrics[key]), key
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["threshold"] == pytest.approx(whole.threshold)


class _ConstantLogit(torch.nn.Module):
    """An images -> logit model that says the same for every image."""

    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = torch.nn.Parameter(torch.tensor(float(logit)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit.expand(len(x))


def test_the_cnn_and_the_face_tracks_call_the_same_label_positive(demo_root, tmp_path):
    """The CNN trains on the 0/1 the face tracks fit and score on (image for image), 1 is "female" for both,
    a confident CNN decision names the class the tracks count as 1, and the tracks' female recall is label 1's."""
    import pandas as pd

    from facecom_utils.gender.labels import CLASS_TO_IDX, POSITIVE
    from facecom_utils.gender.tracks import female_labels, score_rows

    cfg = _stage_config(demo_root, tmp_path, cache="off")
    splits = gender_splits(cfg)
    pipeline = gender_pipeline(cfg, splits)
    np.testing.assert_array_equal(pipeline.y_train, female_labels(splits.train))
    np.testing.assert_array_equal(pipeline.y_fold, female_labels(splits.fold))
    assert 0 < pipeline.y_train.sum() < len(pipeline.y_train)
    assert set(splits.train.loc[pipeline.y_train == 1, "label"]) == {POSITIVE} == {"female"}
    assert CLASS_TO_IDX[POSITIVE] == 1

    paths = splits.fold["path"].tolist()[:4]
    for logit, want in ((4.0, 1), (-4.0, 0)):
        pred = predict_gender(_ConstantLogit(logit), paths, threshold=0.5, image_size=32, device="cpu")["pred"]
        assert female_labels(pd.DataFrame({"label": pred})).tolist() == [want] * len(paths)

    rows = splits.train.assign(kind="clean")
    only_label_1 = score_rows(rows, pipeline.y_train.astype(float), 0.5)
    assert only_label_1["recall_female"] == 1.0 and only_label_1["balanced_accuracy"] == 1.0


def test_label_indices_refuse_names_that_are_not_task_a_classes():
    from facecom_utils.gender.labels import CLASS_NAMES, label_indices, predicted_labels

    assert label_indices(["female", "male", "female"]).tolist() == [1, 0, 1]
    assert label_indices(np.array(CLASS_NAMES)).tolist() == [0, 1]
    with pytest.raises(ValueError, match="'Female'"):
        label_indices(["male", "Female"])
    assert predicted_labels([0.7, 0.2, 0.5], 0.5).tolist() == ["female", "male", "female"]
