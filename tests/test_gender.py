"""Task A pipeline end to end on the tiny demo dataset, and the person-grouped fold on FACECOM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facecom_utils.data import DISTORTION_TYPES, scan_task_a
from facecom_utils.datasets import person_grouped_split
from facecom_utils.gender import GenderConfig, evaluate_gender, predict_gender, train_gender

from conftest import FACECOM_ROOT, requires_facecom

REPORT_KEYS = {"accuracy", "balanced_accuracy", "f1_macro", "precision_female", "recall_female", "f1_female",
               "roc_auc", "threshold", "confusion_matrix", "per_distortion", "brier", "reliability",
               "balanced_accuracy_at_0.5", "recall_female_at_0.5", "train_seconds", "train_images_per_second"}



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
