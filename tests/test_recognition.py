"""Task B pipeline: training with each head, embeddings, evaluation from the checkpoint, resume.

Everything runs on the tiny 64 px demo at 32 px for one or two epochs on the CPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from facecom_utils import recognition as rec
from facecom_utils.data.layout import DISTORTION_TYPES, scan_task_b
from facecom_utils.nn.backbones import FaceEmbedder
from facecom_utils.recognition import (
    METRIC_KEYS,
    RecognitionConfig,
    embedding_table,
    evaluate_recognition,
    extract_embeddings,
    identity_sample_weights,
    load_embeddings,
    load_recognition_model,
    split_identities,
    train_recognition,
)
from facecom_utils.recognition.analysis import load_recognition_run

TINY = dict(image_size=32, batch_size=8, samples_per_epoch=32, val_fraction=0.2, device="cpu",
            progress=False, patience=None, embedding_dim=32)


def _config(demo_root: Path, out: Path, **overrides: object) -> RecognitionConfig:
    return RecognitionConfig(**{**TINY, "data_root": str(demo_root), "output_dir": str(out), "epochs": 1, **overrides})


TAR_KEYS = tuple(key for key in METRIC_KEYS if key.startswith("tar_at_far_"))


def _check_metrics(metrics: dict, n_kinds: int = len(DISTORTION_TYPES)) -> None:
    for key in METRIC_KEYS:
        assert key in metrics and f"strict_{key}" in metrics, key
    for prefix in ("", "strict_"):
        # The demo always has probes, and identities with two clean photos (strict probes).
        assert metrics[prefix + "n_probes"] > 0 and metrics[prefix + "n_impostor"] > 0, prefix
        for key in ("top1", "top5", "roc_auc", "eer", "match_accuracy", "match_f1_macro"):
            value = metrics[prefix + key]
            assert math.isfinite(value) and 0.0 <= value <= 1.0, (prefix + key, value)
        # The only NaN the protocol defines: TAR at a FAR below 1 / n_impostor (unreachable).
        for key in TAR_KEYS:
            value, far = metrics[prefix + key], float(key.removeprefix("tar_at_far_"))
            if far * metrics[prefix + "n_impostor"] >= 1 - 1e-9:  # verification.tar_at_far's rule
                assert math.isfinite(value) and 0.0 <= value <= 1.0, (prefix + key, value)
            else:
                assert math.isnan(value), (prefix + key, value, "unreachable FAR must be NaN")
        assert metrics[prefix + "top1"] <= metrics[prefix + "top5"]
        assert set(metrics[prefix + "per_distortion"]) <= set(DISTORTION_TYPES)
        assert all(0.0 <= v <= 1.0 for v in metrics[prefix + "per_distortion"].values())
    assert len(metrics["per_distortion"]) == n_kinds
    assert -1.0 <= metrics["threshold"] <= 1.0
    assert metrics["embed_images_per_second"] > 0


@pytest.fixture(scope="module")
def arcface_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> rec.RecognitionRun:
    out = tmp_path_factory.mktemp("arcface")
    return train_recognition(_config(demo_root, out, epochs=2, head="arcface"))


def test_split_identities_is_disjoint_and_keeps_multi_photo_identities() -> None:
    rows = []
    for i in range(20):
        n_clean = 1 if i < 12 else 3
        for k in range(n_clean):
            rows.append({"path": f"/x/id{i}/{k}.jpg", "identity": f"id{i}", "distortion": None, "source": None})
    table = pd.DataFrame(rows)
    kept, held = split_identities(table, 0.25, seed=0)
    assert set(kept).isdisjoint(held) and len(kept) + len(held) == 20
    assert any(int(h[2:]) >= 12 for h in held)  # the stratum of multi-photo identities is represented
    assert split_identities(table, 0.25, seed=0) == (kept, held)


def test_identity_sample_weights() -> None:
    table = pd.DataFrame({
        "identity": ["a"] * 2 + ["b"] * 8,
        "distortion": [None, "sunny"] + [None] * 4 + ["sunny"] * 4,
        "path": [str(i) for i in range(10)],
    })
    w = identity_sample_weights(table, clean_cap=3)
    assert w[:2].sum() == pytest.approx(1.0) and w[2:].sum() == pytest.approx(3.0)
    w = identity_sample_weights(table, clean_cap=3, clean_fraction=0.25)
    assert w[2:6].sum() == pytest.approx(0.75) and w[6:].sum() == pytest.approx(2.25)
    np.testing.assert_allclose(w[2:6], 0.75 / 4)
    np.testing.assert_allclose(w[6:], 2.25 / 4)


def test_identity_sample_weights_per_distortion_type() -> None:
    table = pd.DataFrame({
        "identity": ["a"] * 4 + ["b"] * 3,
        "distortion": [None, "sunny", "noisy", "blurred", None, "sunny", "foggy"],
        "path": [str(i) for i in range(7)],
    })
    w = identity_sample_weights(table, clean_cap=8, clean_fraction=0.4, distortion_weights={"sunny": 2.0})
    # a: clean 0.4; distorted 0.6 split 2:1:1 -> 0.3, 0.15, 0.15.  b: clean 0.4; 0.6 split 2:1 -> 0.4, 0.2
    np.testing.assert_allclose(w, [0.4, 0.3, 0.15, 0.15, 0.4, 0.4, 0.2])
    w = identity_sample_weights(table, clean_cap=8, distortion_weights={"sunny": 3.0})
    np.testing.assert_allclose(w, [1 / 6, 3 / 6, 1 / 6, 1 / 6, 1 / 5, 3 / 5, 1 / 5])
    plain = identity_sample_weights(table, clean_cap=8, clean_fraction=0.4)
    np.testing.assert_allclose(plain, identity_sample_weights(table, 8, 0.4, {}))
    with pytest.raises(ValueError, match="distortion_weights"):
        identity_sample_weights(table, 8, 0.4, {"snowy": 2.0})


def test_train_recognition_arcface_writes_checkpoint_embeddings_metrics(arcface_run: rec.RecognitionRun) -> None:
    run = arcface_run
    out = run.output_dir
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "checkpoints" / "last.pt").is_file()
    assert len(run.history) == 2
    _check_metrics(run.metrics)
    for key in ("train_seconds", "embed_images_per_second", "best_epoch"):
        assert key in run.metrics
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["top1"] == pytest.approx(run.metrics["top1"]) and saved["parameters"]["head"] == "arcface"
    assert set(run.identities).isdisjoint(run.fold_identities)

    assert run.metrics["reported_split"] == "val" and run.metrics["reported_role"] == "report"
    for name in ("fold", "report"):
        table, emb = load_embeddings(out, name)
        assert len(table) == len(emb) and emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
        assert {"path", "identity", "distortion", "source", "role"} <= set(table.columns)
        assert table["distortion"].isna().sum() == (table["role"] == "gallery").sum()
    val_table, _ = load_embeddings(out, run.metrics["reported_role"])
    assert set(val_table["identity"]).isdisjoint(run.identities)

    payload = torch.load(run.checkpoint_path, map_location="cpu", weights_only=True)
    assert payload["task"] == "recognition" and payload["threshold"] == pytest.approx(run.threshold)
    assert payload["identities"] == run.identities


def test_evaluate_recognition_reproduces_training_metrics(arcface_run: rec.RecognitionRun, demo_root: Path) -> None:
    metrics = evaluate_recognition(arcface_run.checkpoint_path, demo_root, split="val", batch_size=8, device="cpu")
    _check_metrics(metrics)
    for key in ("top1", "top5", "roc_auc", "eer", "match_accuracy", "match_f1_macro", "threshold",
                "strict_top1", "strict_roc_auc"):
        a, b = metrics[key], arcface_run.metrics[key]
        assert math.isfinite(a) and a == pytest.approx(b, abs=1e-6), (key, a, b)
    assert metrics["per_distortion"] == pytest.approx(arcface_run.metrics["per_distortion"])


@pytest.mark.parametrize("head", ["cosface", "adaface"])
def test_train_recognition_other_heads(head: str, demo_root: Path, tmp_path: Path) -> None:
    run = train_recognition(_config(demo_root, tmp_path, head=head, embedding_source="neck", flip_tta=False))
    _check_metrics(run.metrics)
    assert run.embedding_source == "neck"
    model, payload = load_recognition_model(run.checkpoint_path)
    assert payload["model_config"]["head"]["name"] == head
    assert type(model.head).__name__ == {"cosface": "CosFace", "adaface": "AdaFace"}[head]


def test_extract_embeddings_flip_tta_unit_norm_and_deterministic(
    arcface_run: rec.RecognitionRun, demo_root: Path
) -> None:
    paths = scan_task_b(demo_root, splits=("val",))["path"].tolist()[:10]
    kw = dict(image_size=32, batch_size=4, device="cpu")
    a = extract_embeddings(arcface_run.model, paths, flip_tta=True, **kw)
    b = extract_embeddings(arcface_run.model, paths, flip_tta=True, **kw)
    plain = extract_embeddings(arcface_run.model, paths, flip_tta=False, **kw)
    assert a.shape == (10, 32) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, plain)  # the mirrored view contributes
    fresh = FaceEmbedder("efficientnet_lite0", "offline", embedding_dim=16).eval()  # ImageNet features
    # (at 32 px Lite0's 1x1 final map is often all zero after ReLU6: use the demo's 64 px here)
    pooled, speed = extract_embeddings(fresh, paths, image_size=64, batch_size=4, device="cpu", flip_tta=True,
                                       source="pooled", return_speed=True)
    assert pooled.shape == (10, fresh.backbone.num_features)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)
    assert speed > 0


def test_tta_crops_concatenate_views_so_cosine_is_their_mean(
    arcface_run: rec.RecognitionRun, demo_root: Path
) -> None:
    paths = scan_task_b(demo_root, splits=("val",))["path"].tolist()[:8]
    kw = dict(image_size=32, batch_size=4, device="cpu", flip_tta=False)
    full = extract_embeddings(arcface_run.model, paths, face_crop=1.0, **kw)
    tight = extract_embeddings(arcface_run.model, paths, face_crop=0.7, **kw)
    both, speed = extract_embeddings(arcface_run.model, paths, face_crop=1.0, tta_crops=(0.7,), return_speed=True,
                                     **kw)
    assert both.shape == (8, 64) and speed > 0
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(both @ both.T, 0.5 * (full @ full.T + tight @ tight.T), atol=1e-5)
    assert not np.allclose(full @ full.T, tight @ tight.T)  # the views differ
    with pytest.raises(ValueError, match="tta_crops"):
        RecognitionConfig(tta_crops=(1.2,))
    assert RecognitionConfig(tta_crops=0.85).tta_crops == (0.85,)  # `-p tta_crops 0.85`
    assert RecognitionConfig(tta_crops=[0.85, 0.7]).tta_crops == (0.85, 0.7)
    assert RecognitionConfig(distortion_weights={"sunny": 2}).distortion_weights == {"sunny": 2.0}
    for bad in ({"snowy": 2.0}, {"sunny": 0}, [2.0], "sunny"):
        with pytest.raises(ValueError, match="distortion_weights"):
            RecognitionConfig(distortion_weights=bad)
    with pytest.raises(ValueError, match="clean_cap"):
        RecognitionConfig(distortion_weights={"sunny": 2.0}, clean_cap=None)


def test_resume_continues_an_interrupted_run(
    arcface_run: rec.RecognitionRun, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupt after epoch 1, train again: the engine resumes and matches the uninterrupted run."""

    class Interrupt(Exception):
        pass

    real_fit = rec.pipeline.fit

    def interrupted_fit(*args: object, **kwargs: object) -> object:
        def stop(epoch: int, row: dict) -> None:
            raise Interrupt

        return real_fit(*args, **{**kwargs, "on_epoch_end": stop})

    config = _config(demo_root, tmp_path, epochs=2, head="arcface")  # the fixture's settings
    monkeypatch.setattr(rec.pipeline, "fit", interrupted_fit)
    with pytest.raises(Interrupt):
        train_recognition(config)
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    monkeypatch.setattr(rec.pipeline, "fit", real_fit)
    resumed = train_recognition(config)
    assert len(resumed.history) == 2
    np.testing.assert_allclose(resumed.history["train_loss"], arcface_run.history["train_loss"], rtol=1e-5)
    assert resumed.metrics["top1"] == pytest.approx(arcface_run.metrics["top1"])
    assert resumed.threshold == pytest.approx(arcface_run.threshold)


def test_embedding_table_gallery_first(demo_root: Path) -> None:
    table = embedding_table(scan_task_b(demo_root, splits=("val",)))
    roles = table["role"].tolist()
    assert roles == sorted(roles)  # "gallery" < "probe": all gallery rows first
    assert (table["role"] == "probe").sum() == table["distortion"].notna().sum()


@pytest.mark.skipif(importlib.util.find_spec("dlib") is None, reason="dlib not installed")
def test_dlib_embeddings_are_the_face_models_descriptors(demo_root: Path, tmp_path: Path) -> None:
    """The dlib baseline goes through the face model's one path (face front end, alignment, the network in
    PyTorch) and its content-keyed cache, so it is notebook 03's face_model track."""
    from facecom_utils.data.layout import load_image
    from facecom_utils.face.descriptors import describe_image

    paths = scan_task_b(demo_root, splits=("val",))["path"].tolist()[:3]
    emb, detected = rec.dlib_embeddings(paths, upsample=0, return_detected=True, cache_dir=tmp_path)
    assert emb.shape == (3, 128) and emb.dtype == np.float32 and detected.shape == (3,)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    for k, path in enumerate(paths):
        descriptor, found, _ = describe_image(np.asarray(load_image(path)), upsample=0)
        np.testing.assert_allclose(emb[k], descriptor / np.linalg.norm(descriptor), atol=1e-5)
        assert detected[k] == found
    assert len(list((tmp_path / "face_model").glob("dlib_identity_*.npz"))) == 1  # the face model's store


def test_imagenet_baseline_runs_on_demo(demo_root: Path) -> None:
    metrics = rec.imagenet_baseline(demo_root, split="val", image_size=32, batch_size=16, device="cpu",
                                    pretrained="offline", threshold_identities=4)
    _check_metrics(metrics)
    assert metrics["threshold_split"] == "train"


def test_holdout_is_reported_when_there_is_no_val_split(demo_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "train_only"
    (root / "Task_B").mkdir(parents=True)
    (root / "Task_B" / "train").symlink_to(demo_root / "Task_B" / "train", target_is_directory=True)
    with pytest.warns(UserWarning, match="no Task_B/val"):
        run = train_recognition(_config(root, tmp_path / "out", holdout_fraction=0.3, flip_tta=False,
                                        tta_crops=[0.8]))
    assert run.metrics["reported_split"].startswith("holdout")
    # the split's label is text for people; its role is the file key (notebook 03 loads by role)
    assert run.metrics["reported_role"] == "report" and not (run.output_dir / "embeddings" / "val.npz").exists()
    held, held_emb = load_embeddings(run.output_dir, run.metrics["reported_role"])
    files = load_recognition_run(run.output_dir)  # what notebook 04 reads
    assert files.reported_split == run.metrics["reported_split"] and len(files.report[0]) == len(held)
    assert held_emb.shape[1] == 2 * 32  # the face_crop view, then the 0.8 crop
    fold, _ = load_embeddings(run.output_dir, "fold")
    train_ids = set(run.identities)
    assert train_ids.isdisjoint(held["identity"]) and train_ids.isdisjoint(fold["identity"])
    assert set(held["identity"]).isdisjoint(fold["identity"])
    _check_metrics(run.metrics)
    again = evaluate_recognition(run.checkpoint_path, root, split="holdout", batch_size=8, device="cpu")
    assert again["top1"] == pytest.approx(run.metrics["top1"])
    assert math.isfinite(again["strict_top1"]) and math.isfinite(again["roc_auc"])
    assert again["strict_top1"] == pytest.approx(run.metrics["strict_top1"])
    assert again["roc_auc"] == pytest.approx(run.metrics["roc_auc"])  # the same two views


def test_the_stages_as_notebook_03_runs_them_give_the_cli_run(arcface_run: rec.RecognitionRun, demo_root: Path,
                                                              tmp_path: Path) -> None:
    """Splits, model, pipeline (with a batch drawn to look at), fit, report: the same numbers as train_recognition."""
    config = _config(demo_root, tmp_path / "stages", epochs=2, head="arcface")
    device = config.start_run()
    splits = rec.recognition_splits(config)
    table = splits.table()
    assert table["identities"].sum() == len(set(splits.train["identity"]) | set(splits.fold["identity"])
                                              | set(splits.report["identity"]))
    assert set(splits.train_identities).isdisjoint(splits.fold_identities)
    assert set(splits.report["identity"]).isdisjoint(set(splits.train_identities) | set(splits.fold_identities))
    model = rec.build_recognition_model(config, len(splits.train_identities))
    pipeline = rec.recognition_pipeline(config, splits, device)
    shares = pipeline.draw_shares(splits.train)
    assert shares["share of draws"].sum() == pytest.approx(1.0) and shares.loc["clean", "share of draws"] == pytest.approx(
        config.clean_fraction)
    images, labels = pipeline.augmented_batch(4)
    assert images.shape == (4, 3, config.image_size, config.image_size) and labels.shape == (4,)
    result = rec.fit_recognition(config, splits, pipeline, model, device)
    run = rec.report_recognition(config, splits, model, result, device)
    for key in ("top1", "strict_top1", "threshold", "roc_auc", "fold_top1"):
        assert run.metrics[key] == pytest.approx(arcface_run.metrics[key], abs=1e-6), key


def test_preserved_random_state_leaves_every_generator_where_it_was() -> None:
    import random

    from facecom_utils.train.fit import preserved_random_state, seed_everything

    seed_everything(3)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    seed_everything(3)
    with preserved_random_state():
        random.random(), np.random.rand(5), torch.rand(7)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_face_model_cache_and_workers_are_one_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Where the face model keeps its descriptors and how many workers it starts, for the tracks and the baseline."""
    import os

    from facecom_utils.face.descriptors import face_model_cache, face_workers

    monkeypatch.setenv("FACECOM_CACHE_DIR", str(tmp_path / "root"))
    assert face_model_cache() == tmp_path / "root" / "face_model"
    assert face_model_cache(tmp_path / "other") == tmp_path / "other" / "face_model"
    assert face_workers(3) == 3 and face_workers(None) == max(1, min(4, os.cpu_count() or 1))


def test_top1_by_type_main_and_strict_per_type() -> None:
    from facecom_utils.recognition.protocol import top1_by_type

    table = pd.DataFrame({
        "path": ["a1", "a2", "b1", "b2", "a1_noisy", "a1_sunny", "b1_noisy"],
        "identity": ["a", "a", "b", "b", "a", "a", "b"],
        "distortion": [None, None, None, None, "noisy", "sunny", "noisy"],
        "source": [None, None, None, None, "a1", "a1", "b1"],
    })
    e = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 1, 0], [0, 0.6, 0.8],
                  [1, 0, 0],        # a1_noisy: its own source (main hit); strict: a2 (0.8) beats b (0.6): hit
                  [0.6, 0.8, 0],    # a1_sunny: main a1 0.6 / a2 0.96 -> hit; strict a2 0.96 vs b1 0.8: hit
                  [0.6, 0, 0.8]], np.float32)  # b1_noisy: main a1 0.6 vs b2 0.64 -> hit; strict b2 0.64 vs a 0.6: hit
    out = top1_by_type(table, e)
    assert out["per_type"] == {"noisy": 1.0, "sunny": 1.0} and out["strict_six"] == 1.0
    e[6] = [0.8, 0, 0.6]  # b1_noisy now nearer a1 (0.8) than b2 (0.48): a miss both ways
    out = top1_by_type(table, e)
    assert out["per_type"] == {"noisy": 0.5, "sunny": 1.0} and out["strict_per_type"]["noisy"] == 0.5
    assert out["strict_six"] == 0.5 and out["top1"] == pytest.approx(2 / 3)
