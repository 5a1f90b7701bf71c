"""Task B as stages: splits -> model -> data pipeline -> fit -> thresholds and report (``train_recognition``)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from facecom_utils.data.cache import BatchAugment, cached_dataset, resolve_cache_mode
from facecom_utils.data.layout import scan_task_b
from facecom_utils.data.datasets import AugmentSpec, DistributedWeightedSampler, make_loader
from facecom_utils.train.rundir import FOLD_ROLE, REPORT_ROLE, RunDir, to_jsonable
from facecom_utils.data.demo import resolve_data_root
from facecom_utils.common.distributed import distributed_info
from facecom_utils.data.splits import split_identities, subsample_identities
from facecom_utils.common.checkpoints import load_checkpoint, save_checkpoint
from facecom_utils.train.fit import FitResult, fit, preserved_random_state
from facecom_utils.recognition.config import RecognitionConfig
from facecom_utils.recognition.model import RecognitionModel, build_recognition_model
from facecom_utils.recognition.sampling import identity_sample_weights
from facecom_utils.recognition.embedding import _FaceImages, _extract, build_recognition_transforms, embedding_table, extract_embeddings
from facecom_utils.recognition.protocol import _quick_scores, _scalar_view, choose_thresholds, protocol_metrics

__all__ = ["RecognitionRun", "RecognitionSplits", "recognition_splits", "RecognitionPipeline", "recognition_pipeline", "fit_recognition", "report_recognition", "train_recognition",
           "train_recognition_stages"]


@dataclass
class RecognitionRun:
    """What :func:`train_recognition` returns.

    Attributes:
        model: The trained model (best epoch), eval mode.
        config: The run's configuration.
        history: One row per epoch (``training.fit``'s history).
        identities: The training identities (class order of the head).
        fold_identities: The held-out validation fold's identities.
        threshold: Match threshold chosen on the fold.
        strict_threshold: Strict-variant threshold chosen on the fold.
        embedding_source: ``"neck"`` or ``"pooled"`` (chosen on the fold under ``"auto"``).
        fold_metrics: Protocol metrics on the fold (thresholds tuned there: optimistic).
        metrics: Protocol metrics on the reported split (``Task_B/val``), or on the fold when
            there is none; plus ``train_seconds``, ``embed_images_per_second``, ``best_epoch``...
        checkpoint_path: ``best.pt`` (with the threshold).
        output_dir: The run folder.
        fit_result: The engine's full result.
    """

    model: RecognitionModel
    config: RecognitionConfig
    history: pd.DataFrame
    identities: list[str]
    fold_identities: list[str]
    threshold: float
    strict_threshold: float
    embedding_source: str
    fold_metrics: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint_path: Path
    output_dir: Path
    fit_result: FitResult | None = field(default=None, repr=False)


@dataclass
class RecognitionSplits:
    """Stage 1: who is trained on, who chooses the checkpoint and threshold, who is reported.

    Attributes:
        data_root: The resolved data root.
        train: Rows (scan table) of the training identities.
        fold: :func:`embedding_table` of the validation fold's identities (disjoint from training).
        report: :func:`embedding_table` of the reported split, or None (then the fold is reported).
        train_identities: The training identities, in the head's class order.
        fold_identities: The validation fold's identities.
        holdout_identities: Identities held out of ``Task_B/train`` and reported (no ``val`` split).
        reported_split: The reported split's label, for people ("val", "holdout (0.2 of ...)", "fold").
        reported_role: Its role, the key its embeddings are saved under (``report`` or ``fold``).
    """

    data_root: Path
    train: pd.DataFrame
    fold: pd.DataFrame
    report: pd.DataFrame | None
    train_identities: list[str]
    fold_identities: list[str]
    holdout_identities: list[str]
    reported_split: str
    reported_role: str

    def table(self) -> pd.DataFrame:
        """Identities, clean and distorted images per part: what notebook 03 shows first."""
        parts = {"training": self.train, "validation fold": self.fold, f"reported: {self.reported_split}": self.report}
        rows = []
        for name, part in parts.items():
            if part is None:
                continue
            clean = part["distortion"].isna()
            rows.append({"part": name, "identities": part["identity"].nunique(), "clean images": int(clean.sum()),
                         "distorted images": int((~clean).sum())})
        return pd.DataFrame(rows).set_index("part")


def recognition_splits(config: RecognitionConfig) -> RecognitionSplits:
    """Scan ``Task_B`` and split it by identity: training, validation fold, reported split.

    The reported split is ``Task_B/val``; without one, ``holdout_fraction`` of the training identities
    (seeded, disjoint) is held out and reported, and with ``holdout_fraction=0`` the fold is reported
    (optimistic, with a warning).
    """
    data_root = resolve_data_root(config.data_root)
    scanned = scan_task_b(data_root)
    train_all = subsample_identities(scanned[scanned["split"] == "train"].reset_index(drop=True),
                                      config.max_identities, config.seed)
    if train_all.empty:
        raise ValueError(f"{data_root}: Task_B/train holds no image")
    val_rows = scanned[scanned["split"] == "val"]
    reported_split, held = "val", []
    if val_rows.empty and config.holdout_fraction:
        kept, held = split_identities(train_all, config.holdout_fraction, seed=config.seed + 1)
        val_rows = train_all[train_all["identity"].isin(set(held))]
        train_all = train_all[train_all["identity"].isin(set(kept))].reset_index(drop=True)
        reported_split = f"holdout ({config.holdout_fraction:g} of Task_B/train identities)"
        warnings.warn(f"{data_root}: no Task_B/val split; reporting on an identity-disjoint "
                      f"{config.holdout_fraction:g} of Task_B/train held out from training", stacklevel=2)
    train_ids, fold_ids = split_identities(train_all, config.val_fraction, seed=config.seed)
    report = embedding_table(val_rows) if not val_rows.empty else None
    if report is None:
        reported_split = "fold"
        warnings.warn(f"{data_root}: no Task_B/val split and holdout_fraction=0; metrics are reported on the "
                      "validation fold, whose threshold was tuned on itself (optimistic)", stacklevel=2)
    return RecognitionSplits(
        data_root=Path(data_root), train=train_all[train_all["identity"].isin(set(train_ids))].reset_index(drop=True),
        fold=embedding_table(train_all[train_all["identity"].isin(set(fold_ids))]), report=report,
        train_identities=list(train_ids), fold_identities=list(fold_ids), holdout_identities=list(held),
        reported_split=reported_split, reported_role=REPORT_ROLE if report is not None else FOLD_ROLE,
    )


@dataclass
class RecognitionPipeline:
    """Stage 2: the data pipeline, chosen in one place (decoded-image cache or image files).

    Attributes:
        loader: The training loader (sampler included).
        weights: Per-image sampling weights of the identity sampler (None: no sampler).
        batch_augment: Crop/flip/jitter on the device for cached batches (None: done per image).
        fold_dataset: The fold's cached images (None: read from files).
        labels: Class index per training image.
        device: Where the batches are augmented and trained on.
    """

    loader: Any
    weights: torch.Tensor | None
    batch_augment: nn.Module | None
    fold_dataset: Any
    labels: list[int]
    device: torch.device

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """The on-device part of the augmentation (identity for the file path, augmented per image)."""
        return self.batch_augment(x) if self.batch_augment is not None else x

    def augmented_batch(self, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """One training batch as the model sees it (for display); the random states are left untouched,
        so showing it changes nothing in the run."""
        with preserved_random_state():
            x, y = next(iter(self.loader))
            x = self.augment(x.to(self.device))
        return x[:n].cpu(), y[:n].cpu()

    def draw_shares(self, train: pd.DataFrame) -> pd.DataFrame:
        """Expected share of the draws per image kind (clean or distortion type) under the sampler."""
        kind = train["distortion"].fillna("clean")
        weights = self.weights.numpy() if self.weights is not None else np.ones(len(train))
        shares = pd.Series(weights, index=kind.to_numpy()).groupby(level=0).sum() / float(weights.sum())
        images = kind.value_counts()
        return pd.DataFrame({"images": images, "share of images": images / len(train),
                             "share of draws": shares}).fillna(0.0).sort_values("share of draws", ascending=False)


def recognition_pipeline(config: RecognitionConfig, splits: RecognitionSplits, device: torch.device) -> RecognitionPipeline:
    """Stage 2: the training loader, its sampler and the augmentation, from one augmentation spec."""
    class_of = {identity: i for i, identity in enumerate(splits.train_identities)}
    rows = splits.train
    labels = [class_of[i] for i in rows["identity"]]
    clean = rows["distortion"].isna().to_numpy()
    batch_augment, fold_dataset = None, None
    if resolve_cache_mode(config.cache, config.cache_dir) != "off":
        # Decoded once; the clean photos' distortions pre-rendered; crop/flip/jitter on the device.
        cache_kw = dict(mode=config.cache, cache_dir=config.cache_dir,
                        progress=config.progress and distributed_info()[0] == 0)
        dataset = cached_dataset(rows["path"], labels, config.image_size, config.face_crop, "square",
                                 distortion_p=config.distortion_augment, distort=clean, severity_range=(0.5, 1.3),
                                 variants=config.distortion_variants, seed=config.seed, **cache_kw)
        fold_dataset = cached_dataset(splits.fold["path"], None, config.image_size, config.face_crop, "square",
                                      normalize=True, **cache_kw)
        spec = AugmentSpec.recognition(config.crop_scale, config.color_jitter)
        batch_augment = BatchAugment.from_spec(config.image_size, spec, channels_last=config.channels_last).to(device)
    else:
        augment = dict(face_crop=config.face_crop, crop_scale=config.crop_scale, color_jitter=config.color_jitter)
        dataset = _FaceImages(
            rows["path"], labels, transform=build_recognition_transforms(config.image_size, True, **augment),
            clean=clean.tolist(),
            clean_transform=build_recognition_transforms(config.image_size, True,
                                                         distortion_p=config.distortion_augment, **augment),
        )
    sampler, weights = None, None
    if config.clean_cap is not None:
        weights = identity_sample_weights(rows, config.clean_cap, config.clean_fraction, config.distortion_weights)
        sampler = DistributedWeightedSampler(weights, num_samples=config.samples_per_epoch or len(dataset),
                                             seed=config.seed)
    elif distributed_info()[1] > 1:  # plain shuffling, sharded across torchrun processes
        sampler = DistributedSampler(dataset, shuffle=True, seed=config.seed)
    loader = make_loader(dataset, config.batch_size, train=True, sampler=sampler, num_workers=config.num_workers,
                         pin_memory=device.type == "cuda")
    return RecognitionPipeline(loader, None if weights is None else torch.as_tensor(weights), batch_augment,
                               fold_dataset, labels, device)


def _embed_kw(config: RecognitionConfig, device: torch.device) -> dict[str, Any]:
    return dict(image_size=config.image_size, batch_size=config.batch_size, device=device,
                flip_tta=config.flip_tta, face_crop=config.face_crop, num_workers=config.num_workers)


def fit_recognition(config: RecognitionConfig, splits: RecognitionSplits, pipeline: RecognitionPipeline,
                    model: RecognitionModel, device: torch.device) -> FitResult:
    """Stage 3: train with the margin head; each epoch the fold's main and strict top-1 choose the model."""

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(net(pipeline.augment(x), y), y, label_smoothing=config.label_smoothing)

    def evaluate_fn(net: nn.Module) -> dict[str, Any]:
        outs, _ = _extract(net, splits.fold["path"].tolist(), source=config.embedding_source,
                           dataset=pipeline.fold_dataset, **_embed_kw(config, device))
        scores = {source: _quick_scores(splits.fold, emb) for source, emb in outs.items()}
        # A source that gives some image an all-zero vector (every pooled activation dead: seen on tiny, barely
        # trained models) has no direction to compare by cosine; it is chosen only when every source is so.
        usable = [s for s, emb in outs.items() if (np.linalg.norm(emb, axis=1) > 0.5).all()] or list(scores)
        best = max(usable, key=lambda s: (scores[s]["selection_score"], s == "neck"))
        metrics: dict[str, Any] = {**scores[best], "embedding_source": best}
        for source, s in scores.items():
            metrics.update({f"{source}_{k}": v for k, v in s.items()})
        return metrics

    extra_state = {"task": "recognition", "config": dataclasses.asdict(config),
                   "identities": list(splits.train_identities), "fold_identities": list(splits.fold_identities),
                   "holdout_identities": list(splits.holdout_identities), "data_root": str(splits.data_root)}
    train_config = config.train_config(optimizer="adamw", monitor="selection_score", mode="max", grad_clip=5.0,
                                       restore_best=True)
    result = fit(model, pipeline.loader, loss_fn, evaluate_fn, train_config, RunDir(config.output_dir).checkpoints,
                 extra_state=extra_state)
    model.eval()
    return result


def report_recognition(config: RecognitionConfig, splits: RecognitionSplits, model: RecognitionModel,
                       result: FitResult, device: torch.device) -> RecognitionRun:
    """Stages 4 and 5: thresholds chosen on the fold, then the protocol on the reported split, unchanged.

    Embeds the fold and the reported split with the reported views (``tta_crops``), chooses the match
    thresholds on the fold, computes the protocol metrics, and writes the run directory: both
    embeddings by role, the threshold into ``best.pt``, ``history.csv`` and ``metrics.json``.
    """
    out = RunDir(config.output_dir)
    source = str(result.best_metrics.get("embedding_source", "neck" if config.embedding_source == "auto"
                                         else config.embedding_source))
    views = dict(_embed_kw(config, device), tta_crops=config.tta_crops)  # the epochs chose on face_crop alone
    fold_emb, _ = extract_embeddings(model, splits.fold["path"].tolist(), source=source, return_speed=True, **views)
    thresholds = choose_thresholds(splits.fold, fold_emb, method=config.threshold_method, seed=config.seed)
    cut = (thresholds["threshold"], thresholds["strict_threshold"])
    fold_metrics = protocol_metrics(splits.fold, fold_emb, *cut, seed=config.seed)
    out.save_embeddings(FOLD_ROLE, splits.fold, fold_emb)
    if splits.report is not None:
        report_emb, speed = extract_embeddings(model, splits.report["path"].tolist(), source=source,
                                               return_speed=True, **views)
        out.save_embeddings(REPORT_ROLE, splits.report, report_emb)
        metrics = protocol_metrics(splits.report, report_emb, *cut, seed=config.seed)
    else:
        _, speed = extract_embeddings(model, splits.fold["path"].tolist()[: 4 * config.batch_size], source=source,
                                      return_speed=True, **views)
        metrics = dict(fold_metrics)
    metrics.update(
        reported_split=splits.reported_split, reported_role=splits.reported_role,
        train_seconds=result.train_seconds, train_images_per_second=result.images_per_second,
        embed_images_per_second=speed, best_epoch=result.best_epoch, epochs_run=int(len(result.history)),
        embedding_source=source, n_train_identities=len(splits.train_identities), n_train_images=len(splits.train),
        n_fold_identities=len(splits.fold_identities), threshold_details=thresholds["details"],
        fold_top1=fold_metrics["top1"], fold_strict_top1=fold_metrics["strict_top1"], device=str(device),
    )
    payload = load_checkpoint(out.best_checkpoint)  # the best checkpoint gains what evaluation needs
    payload.update(threshold=cut[0], strict_threshold=cut[1], embedding_source=source,
                   fold_metrics=to_jsonable(_scalar_view(fold_metrics)), metrics=to_jsonable(_scalar_view(metrics)))
    save_checkpoint(out.best_checkpoint, payload)
    out.write_history(result.history)
    out.write_metrics({**metrics, "fold_metrics": _scalar_view(fold_metrics)}, config, splits.data_root)
    return RecognitionRun(
        model=model, config=config, history=result.history, identities=list(splits.train_identities),
        fold_identities=list(splits.fold_identities), threshold=cut[0], strict_threshold=cut[1],
        embedding_source=source, fold_metrics=fold_metrics, metrics=metrics, checkpoint_path=out.best_checkpoint,
        output_dir=Path(config.output_dir), fit_result=result,
    )


def train_recognition(config: RecognitionConfig) -> RecognitionRun:
    """Trains the face embedder on ``Task_B/train`` and evaluates it: the five stages in order.

    Notebook 03 runs the same stages as cells; this composition serves the command line and torchrun
    (under torchrun every process trains, only rank 0 evaluates and writes).

    Args:
        config: The run's settings.

    Returns:
        A :class:`RecognitionRun`; everything is also written under ``config.output_dir``.
    """
    return train_recognition_stages(config)[1]


def train_recognition_stages(config: RecognitionConfig) -> tuple[RecognitionSplits, RecognitionRun]:
    """:func:`train_recognition`, also returning the splits (what the face-model tracks stage reads next).

    Args:
        config: The run's parameters.

    Returns:
        ``(splits, run)``; on a rank other than 0 of a distributed run, ``run`` holds the history only.
    """
    device = config.start_run()
    splits = recognition_splits(config)
    model = build_recognition_model(config, len(splits.train_identities))
    pipeline = recognition_pipeline(config, splits, device)
    result = fit_recognition(config, splits, pipeline, model, device)
    if distributed_info()[0] != 0:
        return splits, RecognitionRun(model, config, result.history, splits.train_identities, splits.fold_identities,
                                      math.nan, math.nan, "neck", {}, {}, RunDir(config.output_dir).best_checkpoint,
                                      Path(config.output_dir), result)
    return splits, report_recognition(config, splits, model, result, device)
