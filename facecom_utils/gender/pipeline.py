"""Task A pipeline: gender classification, trained and evaluated honestly.

Four public stages, which notebook 02 calls one per cell and :func:`train_gender` composes in one
call (the CLI and torchrun):

1. :func:`gender_splits` scans ``<data_root>/Task_A/train`` and carves a validation fold from it,
   stratified by label, grouped by person (nobody on both sides) and seeded. That fold alone
   drives early stopping, the choice of checkpoint and the decision threshold;
2. :func:`gender_pipeline` builds the data as the model gets it: decoded-image cache with
   on-device batch augmentation, or per-image files; class-balanced sampling (or ``pos_weight``)
   and FACECOM distortion augmentation;
3. :func:`fit_gender` fine-tunes a :class:`~facecom_utils.nn.backbones.GenderClassifier` with the shared
   engine (:func:`~facecom_utils.train.fit.fit`): cosine schedule with warm-up, AMP on CUDA,
   best/last checkpoints, the threshold chosen on the fold after every epoch;
4. :func:`report_gender` takes the best epoch's fold threshold (balanced accuracy by default),
   stores it in ``best.pt`` and applies it unchanged to the reported split (``Task_A/val``; when
   the data root has none, e.g. FACECOM's training split alone, an identity-disjoint part of ``train`` is
   held out for it and the metrics say so). Metrics at 0.5 are reported beside; so are
   calibration (Brier score, reliability curve) and robustness (balanced accuracy after each of
   the seven FACECOM distortions, applied seeded to the reported images).

Positive class = ``"female"`` (the minority): ``class_to_idx = {"male": 0, "female": 1}``, written once in
:mod:`facecom_utils.gender.labels`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, Subset

from facecom_utils.data.cache import BatchAugment, CachedImageDataset, apply_speedups, cached_dataset, resolve_cache_mode
from facecom_utils.data.layout import DISTORTION_TYPES, BadImageError, OnError, drop_unreadable, find_task_dir, scan_task_a
from facecom_utils.data.datasets import (
    AugmentSpec,
    ImageDataset,
    balanced_sample_weights,
    build_sampler,
    build_transforms,
    make_loader,
)
from facecom_utils.common.checkpoints import load_checkpoint, save_checkpoint, to_plain
from facecom_utils.train.config import RunConfig
from facecom_utils.data.splits import person_grouped_split
from facecom_utils.train.rundir import RunDir, provenance
from facecom_utils.data.demo import resolve_data_root
from facecom_utils.common.distributed import distributed_info
from facecom_utils.gender.labels import CLASS_TO_IDX, IDX_TO_CLASS, label_indices, predicted_labels
from facecom_utils.metrics.classification import binary_metrics, choose_threshold, expected_calibration_error, reliability_curve
from facecom_utils.nn.backbones import GenderClassifier, recalibrate_batchnorm
from facecom_utils.train.fit import (
    FitResult,
    fit,
    preserved_random_state,
    seed_everything,
    select_device,
)

__all__ = [
    "train_gender_stages",
    "GenderConfig",
    "GenderFit",
    "GenderPipeline",
    "GenderRun",
    "GenderSplits",
    "evaluate_gender",
    "evaluate_gender_model",
    "fit_gender",
    "fold_threshold",
    "gender_pipeline",
    "gender_splits",
    "load_gender_model",
    "predict_gender",
    "predict_proba",
    "report_gender",
    "train_gender",
]

HOLDOUT_SPLIT = "heldout_from_train"
_AT_HALF_KEYS = ("accuracy", "balanced_accuracy", "f1_macro", "precision_female", "recall_female", "f1_female",
                 "recall_male", "mcc", "confusion_matrix")


@dataclass
class GenderConfig(RunConfig):
    """Parameters of one Task A run: the shared :class:`~facecom_utils.train.config.RunConfig` plus these.

    Attributes:
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"``.
        dropout: Dropout before the classifier.
        balance: ``"sampler"`` (class-balanced sampling), ``"pos_weight"`` (loss weight
            n_male/n_female) or ``"none"``.
        monitor: Fold metric for early stopping and checkpoint choice (``"roc_auc"`` is
            threshold-free and steadier on a small fold than ``"balanced_accuracy"``).
        threshold_criterion: Criterion of ``evaluation.choose_threshold`` on the fold.
        bn_recalibrate: Recompute batch-norm statistics before every evaluation (``"auto"``:
            when training from scratch, where running statistics lag the weights).
        tta: Average the logits of the image and its mirror image at prediction time.
        report_split: The split that is reported (never used for any choice).
        evaluate_distortions: Also report balanced accuracy under each of the 7 distortions.
        eval_batch_size: Batch size for prediction.
        max_train_images: Subsample the training split (by person) for quick runs; None: all.
        face_copies: Real distorted copies per training image (from ``Task_B``), besides its sunny
            copy (always kept: it trains the glare head), that train the face head and measure
            robustness in CV; None: all seven.
        face_cv_folds: Person-grouped folds of the face tracks' CV and out-of-fold thresholds.
        face_cv_repeats: Repeats of that CV (0: no CV estimate).
        face_glare_cnn: The fused track's glare expert is a CNN fine-tuned on the training persons'
            real sunny copies (:mod:`facecom_utils.gender.glare`) instead of a head on frozen features.
        face_glare_cnn_size, face_glare_cnn_epochs: Its input side and epochs.
        face_glare_cnn_members: Its networks: ``k >= 2`` cross-fits ``k`` of them on person-grouped
            parts of the training persons (P(female) their mean, the threshold from their out-of-fold
            predictions over every training person); 1: one network, threshold on a held-out fifth.

    ``label_smoothing`` moves the targets to ``y * (1 - ls) + ls / 2`` (FACECOM has noisy labels).
    """

    default_output_dir: ClassVar[str] = "reports/02_gender_classification"

    optimizer: str = "adamw"
    dropout: float = 0.2
    balance: str = "sampler"
    monitor: str = "roc_auc"
    threshold_criterion: str = "balanced_accuracy"
    bn_recalibrate: bool | str = "auto"
    tta: bool = True
    report_split: str = "val"
    evaluate_distortions: bool = True
    eval_batch_size: int = 64
    max_train_images: int | None = None
    face_copies: int | None = 2
    face_cv_folds: int = 5
    face_cv_repeats: int = 1
    face_glare_cnn: bool = False
    face_glare_cnn_size: int = 128
    face_glare_cnn_epochs: int = 6
    face_glare_cnn_members: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.face_cv_folds < 2 or self.face_cv_repeats < 0:
            raise ValueError(f"face_cv_folds must be >= 2 and face_cv_repeats >= 0, got "
                             f"{self.face_cv_folds}, {self.face_cv_repeats}")
        if self.face_glare_cnn_members < 1 or self.face_glare_cnn_epochs < 1:
            raise ValueError(f"face_glare_cnn_members and face_glare_cnn_epochs must be >= 1, got "
                             f"{self.face_glare_cnn_members}, {self.face_glare_cnn_epochs}")
        if self.headline_track == "face_model":
            raise ValueError("Task A has no face_model track (its face head always runs behind the restoration "
                             "selector): use face_model_restored")
        if self.balance not in ("sampler", "pos_weight", "none"):
            raise ValueError(f"balance must be 'sampler', 'pos_weight' or 'none', got {self.balance!r}")


@dataclass
class GenderRun:
    """The outcome of :func:`train_gender`.

    Attributes:
        model: The trained classifier (best epoch), in eval mode.
        config: The run's configuration.
        history: One row per epoch (``training.fit``'s history).
        threshold: Decision threshold chosen on the validation fold.
        val_metrics: Metrics on the validation fold at that threshold (optimistic: the fold chose it).
        test_metrics: Metrics on the reported split (None on non-zero ranks).
        probabilities: Per-image table of the reported split: ``path``, ``label``, ``person``,
            ``prob`` (of female), ``pred``, ``correct`` and ``prob_<distortion>`` columns.
        fold_probabilities: The same table for the validation fold.
        checkpoint_path: ``best.pt`` (holds the threshold).
        train_seconds: Training time, excluding evaluation.
        train_images_per_second: Training throughput.
        metrics: The flat dict written to ``<output_dir>/metrics.json``.
    """

    model: nn.Module
    config: GenderConfig
    history: pd.DataFrame
    threshold: float
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None
    probabilities: pd.DataFrame | None
    fold_probabilities: pd.DataFrame
    checkpoint_path: Path | None
    train_seconds: float
    train_images_per_second: float
    best_epoch: int
    stopped_early: bool
    report_split: str
    metrics: dict[str, Any] = field(default_factory=dict)
    metrics_path: Path | None = None


# ----------------------------------------------------------------------------- prediction


@torch.no_grad()
def _predict_loader(models: Sequence[nn.Module], loader: Any, device: torch.device, tta: bool) -> np.ndarray:
    """Mean probability of class 1 over ``models`` for every image of an (ordered) loader (each batch read once)."""
    out: list[torch.Tensor] = []
    for model in models:
        model.eval()
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        probs = []
        for model in models:
            with torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext():
                logits = model(x).float()
                if tta:
                    logits = 0.5 * (logits + model(torch.flip(x, dims=[3])).float())
            probs.append(torch.sigmoid(logits).cpu().double())
        out.append(torch.stack(probs).mean(dim=0))
    return torch.cat(out).numpy() if out else np.zeros(0)


def predict_proba(
    model: nn.Module | Sequence[nn.Module],
    paths: Sequence[str | Path],
    image_size: int,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    tta: bool = True,
    distortion: str | None = None,
    distortion_seed: int = 0,
    num_workers: int = 0,
) -> np.ndarray:
    """Probability of "female" for each image.

    Args:
        model: A :class:`~facecom_utils.nn.backbones.GenderClassifier` (or any images -> logit model), or a
            sequence of them: then the mean of their probabilities, each image decoded once.
        paths: Image files.
        image_size: Model input side.
        batch_size: Prediction batch size.
        device: Where to run (default: the (first) model's device).
        tta: Average the logits of the image and its mirror image.
        distortion: Apply this FACECOM distortion (seeded per image) first.
        distortion_seed: Seed of the distortions.
        num_workers: DataLoader workers.

    Returns:
        float64 array [N].
    """
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    device = torch.device(device) if device is not None else next(models[0].parameters()).device
    for m in models:
        m.to(device)
    dataset = ImageDataset(paths, None, build_transforms(image_size, train=False),
                           distortion=distortion, distortion_seed=distortion_seed)
    loader = make_loader(dataset, batch_size, train=False, num_workers=num_workers, pin_memory=device.type == "cuda")
    return _predict_loader(models, loader, device, tta)


def load_gender_model(checkpoint_path: str | Path, device: str | torch.device = "cpu") -> tuple[GenderClassifier, dict[str, Any]]:
    """Rebuilds the classifier stored in a Task A checkpoint.

    Returns:
        ``(model in eval mode on device, checkpoint payload)``; the payload holds
        ``threshold``, ``config``, ``metrics``, ``class_to_idx``.

    Raises:
        ValueError: The checkpoint is not a Task A checkpoint.
    """
    payload = load_checkpoint(checkpoint_path, map_location="cpu")
    model_config = payload.get("model_config") or {}
    if payload.get("task") != "gender" or model_config.get("name") != "GenderClassifier":
        raise ValueError(f"{checkpoint_path}: not a Task A (gender) checkpoint; expected task='gender' "
                         f"and a GenderClassifier model_config, got task={payload.get('task')!r}")
    model = GenderClassifier(model_config["backbone"], pretrained=None, dropout=model_config.get("dropout", 0.0),
                             image_size=model_config.get("image_size"))
    model.load_state_dict(payload["model"])
    model.model_config = dict(model_config)
    return model.to(device).eval(), payload


def predict_gender(
    checkpoint_or_model: str | Path | nn.Module,
    paths: Sequence[str | Path],
    threshold: float | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    tta: bool = True,
) -> pd.DataFrame:
    """Predicts gender for images with a checkpoint (its stored threshold) or a model.

    Args:
        checkpoint_or_model: A ``best.pt`` path or a model.
        paths: Image files.
        threshold: Decision threshold (default: the checkpoint's, else 0.5).
        image_size: Input side (default: the checkpoint's config, else 224).
        batch_size: Prediction batch size.
        device: Where to run.
        tta: Mirror-image test-time augmentation.

    Returns:
        DataFrame with ``path``, ``prob`` (of female), ``pred`` ("female"/"male").
    """
    device = select_device(device)
    if isinstance(checkpoint_or_model, nn.Module):
        model, payload = checkpoint_or_model, {}
    else:
        model, payload = load_gender_model(checkpoint_or_model, device)
    if threshold is None:
        threshold = float(payload.get("threshold", 0.5))
    if image_size is None:
        image_size = int(payload.get("config", {}).get("image_size") or getattr(model, "model_config", {}).get("image_size") or 224)
    prob = predict_proba(model, paths, image_size, batch_size, device, tta)
    return pd.DataFrame({"path": [str(p) for p in paths], "prob": prob,
                         "pred": predicted_labels(prob, threshold)})


# ----------------------------------------------------------------------------- evaluation


def evaluate_gender_model(
    model: nn.Module,
    df: pd.DataFrame,
    threshold: float,
    image_size: int,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    distortions: bool = True,
    seed: int = 0,
    tta: bool = True,
    num_workers: int = 0,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """All Task A metrics of a model on a table of images, at a threshold chosen elsewhere.

    Args:
        model: The classifier.
        df: ``scan_task_a`` rows (``path``, ``label``, ``person``) of the reported split.
        threshold: The threshold chosen on the validation fold (applied unchanged).
        image_size: Model input side.
        batch_size: Prediction batch size.
        device: Where to run.
        distortions: Also evaluate after each of the seven FACECOM distortions (seeded).
        seed: Seed of those distortions.
        tta: Mirror-image test-time augmentation.
        num_workers: DataLoader workers.

    Returns:
        ``(metrics, table)``. ``metrics`` holds every key of ``evaluation.binary_metrics`` at
        ``threshold`` (``accuracy``, ``balanced_accuracy``, ``f1_macro``, ``precision_female``,
        ``recall_female``, ``f1_female``, ``roc_auc``, ``brier``, ``confusion_matrix``, ...), the
        same at 0.5 suffixed ``_at_0.5``, ``ece``, ``reliability`` (dict of lists),
        ``per_distortion`` (type -> balanced accuracy) and ``per_distortion_metrics`` (type ->
        dict). ``table`` has one row per image: ``path``, ``label``, ``person``, ``prob``,
        ``pred``, ``correct`` and ``prob_<type>`` per distortion.
    """
    y = label_indices(df["label"])
    kw = dict(image_size=image_size, batch_size=batch_size, device=device, tta=tta, num_workers=num_workers)
    prob = predict_proba(model, df["path"].tolist(), **kw)
    metrics = binary_metrics(y, prob, threshold)
    at_half = binary_metrics(y, prob, 0.5)
    metrics.update({f"{k}_at_0.5": at_half[k] for k in _AT_HALF_KEYS})
    metrics["ece"] = expected_calibration_error(y, prob)
    metrics["reliability"] = reliability_curve(y, prob).to_dict(orient="list")
    table = df[[c for c in ("path", "label", "person") if c in df.columns]].copy()
    table["prob"] = prob
    table["pred"] = predicted_labels(prob, threshold)
    table["correct"] = table["pred"] == table["label"]
    if distortions:
        metrics["per_distortion"] = {}
        metrics["per_distortion_metrics"] = {}
        for kind in DISTORTION_TYPES:
            p_kind = predict_proba(model, df["path"].tolist(), distortion=kind, distortion_seed=seed, **kw)
            m = binary_metrics(y, p_kind, threshold)
            metrics["per_distortion"][kind] = m["balanced_accuracy"]
            metrics["per_distortion_metrics"][kind] = {
                k: m[k] for k in ("accuracy", "balanced_accuracy", "recall_female", "recall_male", "f1_macro", "roc_auc")
            }
            table[f"prob_{kind}"] = p_kind
    return metrics, table


def evaluate_gender(
    checkpoint_path: str | Path,
    data_root: str | Path,
    split: str = "val",
    distortions: bool = True,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    seed: int = 0,
    on_error: OnError = "raise",
) -> dict[str, Any]:
    """Evaluates a Task A checkpoint on ``<data_root>/Task_A/<split>`` with its stored threshold.

    Every image of the split is screened first (:func:`~facecom_utils.data.layout.drop_unreadable`):
    with ``on_error="raise"`` the first unreadable one stops the evaluation (:class:`BadImageError`);
    with ``"skip"`` each is left out with a warning and the metrics cover the readable ones.

    Returns:
        The metrics dict of :func:`evaluate_gender_model`, plus ``split``, ``n_images`` (images
        evaluated), ``n_skipped``, ``skipped`` (``{path: reason}`` of the unreadable images) and
        ``checkpoint``.

    Raises:
        BadImageError: An unreadable image and ``on_error="raise"``, or no readable image at all.
    """
    device = select_device(device)
    model, payload = load_gender_model(checkpoint_path, device)
    config = payload.get("config", {})
    df, skipped = drop_unreadable(scan_task_a(data_root, splits=(split,), on_error="keep"), on_error)
    if df.empty:
        raise BadImageError(f"{data_root}: no readable image in Task_A/{split} ({len(skipped)} unreadable)",
                            list(skipped))
    metrics, _ = evaluate_gender_model(
        model, df, float(payload.get("threshold", 0.5)), int(config.get("image_size", 224)), batch_size, device,
        distortions, seed, bool(config.get("tta", True)),
    )
    metrics.update(split=split, n_images=len(df), n_skipped=len(skipped), skipped=skipped,
                   checkpoint=str(checkpoint_path))
    return metrics


# ----------------------------------------------------------------------------- training: the stages
#
# train_gender = gender_splits -> gender_pipeline -> fit_gender -> report_gender. Notebook 02 calls
# the four stages one per cell (and shows what each produced); the CLI and torchrun call train_gender.


def _subsample_people(df: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """At most ``max_images`` rows, keeping whole persons and each label's share (quick runs)."""
    if len(df) <= max_images:
        return df
    keep, _ = person_grouped_split(df, val_fraction=1 - max_images / len(df), seed=seed)
    return keep


@dataclass
class GenderSplits:
    """Stage 1: who is trained on, who chooses, who is reported (persons never on two sides).

    Attributes:
        train: ``scan_task_a`` rows of the training part.
        fold: Rows of the validation fold (early stopping, checkpoint, threshold).
        report: Rows of the reported split (never used for any choice).
        report_split: Its name: ``config.report_split`` or ``"heldout_from_train"``.
        data_root: The resolved data root.
    """

    train: pd.DataFrame
    fold: pd.DataFrame
    report: pd.DataFrame
    report_split: str
    data_root: Path

    def parts(self) -> dict[str, pd.DataFrame]:
        """``{"train": ..., "val_fold": ..., "report": ...}``, in that order."""
        return {"train": self.train, "val_fold": self.fold, "report": self.report}

    def table(self) -> pd.DataFrame:
        """Images, persons, female and male images per part (index: train, val_fold, report)."""
        rows = {name: {"images": len(df), "persons": df["person"].nunique(),
                       "female": int((df["label"] == "female").sum()), "male": int((df["label"] == "male").sum())}
                for name, df in self.parts().items()}
        table = pd.DataFrame.from_dict(rows, orient="index")
        table.index.name = "part"
        return table.rename(index={"report": f"report ({self.report_split})"})

    def counts(self) -> dict[str, int]:
        """``n_<part>_images`` and ``n_<part>_persons`` (as in ``metrics.json``; report = the reported split)."""
        parts = self.parts()
        return {**{f"n_{name}_images": len(df) for name, df in parts.items()},
                **{f"n_{name}_persons": int(df["person"].nunique()) for name, df in parts.items()}}


def gender_splits(config: GenderConfig) -> GenderSplits:
    """Stage 1: scans ``Task_A`` and carves the validation fold (and, without a report split, a held-out part).

    The fold is person-grouped, stratified by label and seeded (``config.seed``); when
    ``<data_root>/Task_A/<report_split>`` is missing, an identity-disjoint ``holdout_fraction`` of
    ``train`` is held out for reporting (seed + 1) and a warning says so. ``max_train_images``
    subsamples the training persons before the fold is carved.

    Raises:
        ValueError: The training part or the fold lacks one of the classes.
    """
    cfg = config
    root = resolve_data_root(cfg.data_root)
    train_df = scan_task_a(root, splits=("train",))
    if (find_task_dir(root, "Task_A") / cfg.report_split).is_dir():
        report_df, report_name = scan_task_a(root, splits=(cfg.report_split,)), cfg.report_split
    else:
        warnings.warn(f"{root}: no Task_A/{cfg.report_split}; reporting on an identity-disjoint "
                      f"{cfg.holdout_fraction:.0%} of Task_A/train held out from training ({HOLDOUT_SPLIT!r})",
                      stacklevel=2)
        train_df, report_df = person_grouped_split(train_df, cfg.holdout_fraction, seed=cfg.seed + 1)
        report_name = HOLDOUT_SPLIT
    if cfg.max_train_images is not None:
        train_df = _subsample_people(train_df, cfg.max_train_images, cfg.seed)
    fit_df, fold_df = person_grouped_split(train_df, cfg.val_fraction, seed=cfg.seed)
    y_fit, y_fold = label_indices(fit_df["label"]), label_indices(fold_df["label"])
    if len(np.unique(y_fit)) < 2 or len(np.unique(y_fold)) < 2:
        raise ValueError(f"{root}: the training part and the validation fold each need both classes "
                         f"(train: {np.bincount(y_fit, minlength=2).tolist()}, fold: {np.bincount(y_fold, minlength=2).tolist()} "
                         "male/female images); add images or lower val_fraction")
    return GenderSplits(fit_df, fold_df, report_df, report_name, root)


@dataclass
class GenderPipeline:
    """Stage 2: the data as the model gets it.

    Attributes:
        splits: The splits it was built from.
        device: Where training runs.
        cache_mode: ``"off"`` (PIL decoding and augmentation per image in the loader) or the cache's
            mode (decoded once; the batch is augmented on the device by ``augment``).
        train_loader: Augmented, class-balanced (``balance="sampler"``) training stream.
        fold_loader: Ordered, clean validation fold.
        recal_loader: Clean training images for batch-norm recalibration (up to 8 eval batches).
        augment: The on-device :class:`~facecom_utils.data.cache.BatchAugment` with the cache, else None.
        sampler: The training sampler (None: plain shuffling).
        sample_weights: Per-image draw weight of the training part (1 each without the sampler).
        y_train: Labels of the training part (0 male, 1 female).
        y_fold: Labels of the fold.
        recalibrate: Whether batch-norm statistics are recomputed before every evaluation.
    """

    splits: GenderSplits
    device: torch.device
    cache_mode: str
    train_loader: DataLoader
    fold_loader: DataLoader
    recal_loader: DataLoader
    augment: nn.Module | None
    sampler: Sampler[int] | None
    sample_weights: np.ndarray
    y_train: np.ndarray
    y_fold: np.ndarray
    recalibrate: bool

    def augmented_batch(self, n: int = 16, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
        """``n`` training images as the model sees them (drawn, distorted, augmented, normalised).

        The images are the first ``n`` draws of the sampler's first epoch; the augmentation is drawn
        from torch's generator under ``seed`` inside :func:`~facecom_utils.train.fit.preserved_random_state`,
        so calling this changes no generator state and no later training number.

        Returns:
            ``(images float32 [n, 3, S, S] on the CPU, label names)``.
        """
        dataset: Any = self.train_loader.dataset
        with preserved_random_state():
            torch.manual_seed(seed)
            if self.sampler is not None:
                epoch = getattr(self.sampler, "epoch", 0)
                self.sampler.set_epoch(0)  # type: ignore[attr-defined]
                order = list(self.sampler)
                self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            else:
                order = torch.randperm(len(dataset)).tolist()
            items = [dataset[i] for i in order[:n]]
            x = torch.stack([image for image, _ in items]).to(self.device)
            if self.augment is not None:
                x = self.augment(x)
        return x.float().contiguous().cpu(), [IDX_TO_CLASS[int(label)] for _, label in items]

    def sampler_table(self, batch_size: int | None = None) -> pd.DataFrame:
        """Per class: images, draw weight per image, expected share of draws and draws per batch."""
        batch_size = batch_size or int(self.train_loader.batch_size or 1)
        w = np.asarray(self.sample_weights, dtype=np.float64)
        rows = {}
        for name in ("female", "male"):
            mask = self.y_train == CLASS_TO_IDX[name]
            share = float(w[mask].sum() / w.sum())
            rows[name] = {"images": int(mask.sum()), "weight_per_image": float(w[mask].mean()),
                          "expected_share_of_draws": share, "expected_per_batch": share * batch_size}
        table = pd.DataFrame.from_dict(rows, orient="index")
        table.index.name = "class"
        return table


def gender_pipeline(config: GenderConfig, splits: GenderSplits, device: str | torch.device | None = None) -> GenderPipeline:
    """Stage 2: datasets, sampler and loaders; the one place that chooses between cache and files.

    With the cache (``config.cache`` not resolving to ``"off"``), images are decoded once, the
    FACECOM distortions are pre-rendered (``distortion_variants``) and the training batch is
    augmented on the device; without it, every image is decoded, distorted and augmented in the
    loader. Builds no model and draws from no global generator.
    """
    cfg = config
    device = select_device(cfg.device if device is None else device)
    fit_df, fold_df = splits.train, splits.fold
    y_fit, y_fold = label_indices(fit_df["label"]), label_indices(fold_df["label"])
    pin = device.type == "cuda"
    augment = None
    recal_idx = np.random.default_rng(cfg.seed).permutation(len(fit_df))[: 8 * cfg.eval_batch_size]
    cache_mode = resolve_cache_mode(cfg.cache, cfg.cache_dir)
    if cache_mode != "off":
        cache_kw = dict(mode=cfg.cache, cache_dir=cfg.cache_dir, progress=cfg.progress and distributed_info()[0] == 0)
        train_ds = cached_dataset(fit_df["path"], y_fit, cfg.image_size, distortion_p=cfg.distortion_augment,
                                  variants=cfg.distortion_variants, seed=cfg.seed, **cache_kw)
        fold_ds = cached_dataset(fold_df["path"], y_fold, cfg.image_size, normalize=True, **cache_kw)
        recal_ds = CachedImageDataset(train_ds.cache, y_fit, normalize=True)  # == the eval transform
        augment = BatchAugment.from_spec(cfg.image_size, AugmentSpec(), channels_last=cfg.channels_last).to(device)
    else:
        load_size = None if cfg.image_size >= 224 else int(round(cfg.image_size * 1.25))
        train_ds = ImageDataset(fit_df["path"], y_fit, build_transforms(cfg.image_size, True, cfg.distortion_augment),
                                load_size=load_size)
        eval_tf = build_transforms(cfg.image_size, train=False)
        fold_ds = ImageDataset(fold_df["path"], y_fold, eval_tf)
        recal_ds = ImageDataset(fit_df["path"], y_fit, eval_tf)
    sampler = build_sampler(y_fit, cfg.balance, seed=cfg.seed)
    weights = balanced_sample_weights(y_fit).numpy() if cfg.balance == "sampler" else np.ones(len(y_fit))
    return GenderPipeline(
        splits=splits, device=device, cache_mode=cache_mode,
        train_loader=make_loader(train_ds, cfg.batch_size, True, sampler, cfg.num_workers, pin),
        fold_loader=make_loader(fold_ds, cfg.eval_batch_size, False, num_workers=cfg.num_workers, pin_memory=pin),
        recal_loader=make_loader(Subset(recal_ds, recal_idx.tolist()), cfg.eval_batch_size, False,
                                 num_workers=cfg.num_workers, pin_memory=pin),
        augment=augment, sampler=sampler, sample_weights=weights, y_train=y_fit, y_fold=y_fold,
        recalibrate=cfg.bn_recalibrate if isinstance(cfg.bn_recalibrate, bool) else cfg.pretrained is None,
    )


@dataclass
class GenderFit:
    """Stage 3's outcome: the model (best epoch, eval mode) and ``training.fit``'s result."""

    model: nn.Module
    result: FitResult

    @property
    def history(self) -> pd.DataFrame:
        """One row per epoch (``train_loss``, ``val_<metric>`` of the fold, ``lr``, ...)."""
        return self.result.history


def fit_gender(config: GenderConfig, pipeline: GenderPipeline) -> GenderFit:
    """Stage 3: seeds, builds the classifier and trains it with :func:`~facecom_utils.train.fit.fit`.

    Loss: binary cross-entropy on (label-smoothed) targets, ``pos_weight`` = n_male/n_female with
    ``balance="pos_weight"``; the cached path augments each batch on the device first. After every
    epoch the fold is predicted (batch norm recalibrated first when ``pipeline.recalibrate``), the
    threshold chosen on it (``threshold_criterion``) and its metrics at that threshold returned, so
    ``best_metrics["threshold"]`` is the best epoch's. Checkpoints go to ``<output_dir>/checkpoints``.
    """
    cfg, p = config, pipeline
    seed_everything(cfg.seed)
    model = apply_speedups(GenderClassifier(cfg.backbone, cfg.pretrained, cfg.dropout, cfg.image_size),
                           cfg.channels_last, cfg.compile)
    n_pos = int(p.y_train.sum())
    pos_weight = (torch.tensor((len(p.y_train) - n_pos) / max(n_pos, 1), device=p.device)
                  if cfg.balance == "pos_weight" else None)
    smooth = cfg.label_smoothing

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        if p.augment is not None:
            x = p.augment(x)
        target = y.float() * (1 - smooth) + 0.5 * smooth
        return F.binary_cross_entropy_with_logits(m(x).float(), target, pos_weight=pos_weight)

    def evaluate_fn(m: nn.Module) -> dict[str, Any]:
        if p.recalibrate:
            recalibrate_batchnorm(m, p.recal_loader, p.device)
            m.eval()
        prob = _predict_loader([m], p.fold_loader, p.device, cfg.tta)
        threshold = choose_threshold(p.y_fold, prob, cfg.threshold_criterion)
        metrics = binary_metrics(p.y_fold, prob, threshold)
        metrics["loss"] = float(F.binary_cross_entropy(torch.as_tensor(prob), torch.tensor(p.y_fold, dtype=torch.float64)))
        return metrics

    train_config = cfg.train_config(optimizer=cfg.optimizer, monitor=cfg.monitor, device=str(p.device),
                                    mode="min" if cfg.monitor in ("loss", "brier", "train_loss") else "max")
    extra_state = {"task": "gender", "config": dataclasses.asdict(cfg), "class_to_idx": CLASS_TO_IDX,
                   "report_split": p.splits.report_split}
    result = fit(model, p.train_loader, loss_fn, evaluate_fn, train_config, Path(cfg.output_dir) / "checkpoints",
                 extra_state)
    model.eval()
    return GenderFit(model, result)


def _flat_metrics(run: GenderRun, n: dict[str, int]) -> dict[str, Any]:
    """The dict for ``metrics.json``: reported metrics at top level, everything traceable."""
    out: dict[str, Any] = dict(run.test_metrics or {})
    out.update(
        threshold=run.threshold,
        threshold_criterion=run.config.threshold_criterion,
        report_split=run.report_split,
        val_fold={k: v for k, v in run.val_metrics.items() if k != "reliability"},
        best_epoch=run.best_epoch,
        epochs_run=len(run.history),
        stopped_early=run.stopped_early,
        train_seconds=run.train_seconds,
        train_images_per_second=run.train_images_per_second,
        **n,
    )
    return to_plain(out)


def fold_threshold(fitted: GenderFit) -> float:
    """Stage 4a: the threshold chosen on the fold at the best epoch, stored in ``best.pt`` (rank 0).

    ``best.pt`` then carries ``threshold`` and ``val_metrics`` beside the weights, so
    :func:`evaluate_gender` and :func:`predict_gender` apply it unchanged.
    """
    result = fitted.result
    threshold = float(result.best_metrics.get("threshold", 0.5))
    if distributed_info()[0] == 0 and result.best_path is not None:
        payload = load_checkpoint(result.best_path)
        payload.update(threshold=threshold, val_metrics=result.best_metrics)
        save_checkpoint(result.best_path, payload)
    return threshold


def report_gender(config: GenderConfig, pipeline: GenderPipeline, fitted: GenderFit) -> GenderRun:
    """Stage 4: fold threshold (:func:`fold_threshold`), evaluation on the reported split, ``metrics.json``.

    The reported split is predicted once clean and (``evaluate_distortions``) once per FACECOM
    distortion, at the fold's threshold; rank 0 alone evaluates and writes
    ``<output_dir>/metrics.json`` through :class:`~facecom_utils.train.rundir.RunDir`.
    """
    cfg, splits, result, model = config, pipeline.splits, fitted.result, fitted.model
    rank = distributed_info()[0]
    threshold = fold_threshold(fitted)
    fold_prob = _predict_loader([model], pipeline.fold_loader, pipeline.device, cfg.tta)
    fold_table = splits.fold[["path", "label", "person"]].assign(
        prob=fold_prob, pred=predicted_labels(fold_prob, threshold))
    test_metrics, table = None, None
    if rank == 0:
        test_metrics, table = evaluate_gender_model(
            model, splits.report, threshold, cfg.image_size, cfg.eval_batch_size, pipeline.device,
            cfg.evaluate_distortions, cfg.seed, cfg.tta, cfg.num_workers,
        )
    run = GenderRun(
        model=model, config=cfg, history=result.history, threshold=threshold,
        val_metrics=dict(result.best_metrics), test_metrics=test_metrics, probabilities=table,
        fold_probabilities=fold_table, checkpoint_path=result.best_path, train_seconds=result.train_seconds,
        train_images_per_second=result.images_per_second, best_epoch=result.best_epoch,
        stopped_early=result.stopped_early, report_split=splits.report_split,
    )
    run.metrics = _flat_metrics(run, splits.counts())
    if rank == 0:
        run.metrics_path = RunDir(cfg.output_dir).write_metrics(run.metrics, cfg, splits.data_root)
    run.metrics.update(provenance(cfg, splits.data_root))  # what metrics.json holds beside the numbers
    return run


def train_gender(config: GenderConfig) -> GenderRun:
    """Trains and evaluates a gender classifier: the four stages in one call (the CLI, torchrun).

    :func:`gender_splits` -> :func:`gender_pipeline` -> :func:`fit_gender` -> :func:`report_gender`
    (see the module docstring for the protocol). Writes ``<output_dir>/checkpoints/{best,last}.pt``
    (best.pt carries the fold-chosen ``threshold``) and ``<output_dir>/metrics.json``. Re-running
    with the same output folder resumes an interrupted run (``resume=True``).

    Args:
        config: The run's parameters.

    Returns:
        A :class:`GenderRun`.
    """
    return train_gender_stages(config)[1]


def train_gender_stages(config: GenderConfig) -> tuple[GenderSplits, GenderRun]:
    """:func:`train_gender`, also returning the splits (what the face-model tracks stage reads next).

    Args:
        config: The run's parameters.

    Returns:
        ``(splits, run)``.
    """
    splits = gender_splits(config)
    pipeline = gender_pipeline(config, splits)
    fitted = fit_gender(config, pipeline)
    return splits, report_gender(config, pipeline, fitted)
