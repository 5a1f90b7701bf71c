"""FACECOM Task B pipeline: train a face embedder with a margin head, embed, evaluate, baselines.

This module ties the library together for face recognition under distortion; notebooks 03/04 and
the command line call it. Everything below is built from the modules to its left: ``data`` scans
the folders, ``models.FaceEmbedder`` embeds, ``heads`` supply the margin loss, ``training.fit`` is
the one training loop, ``verification.evaluate_protocol`` is the evaluation protocol.

The recipe (:func:`train_recognition`) and why:

* **Classes** are the training identities of ``<data_root>/Task_B/train`` minus an
  identity-disjoint validation **fold** (:func:`split_identities`, stratified by clean-image count
  so the fold holds identities with two or more clean photos, which the strict protocol needs).
  Clean *and* distorted images are trained on; each identity is one class.
* **Sampling** (:func:`identity_sample_weights`): an identity is drawn in proportion to
  ``min(n_clean, clean_cap)``; ``clean_fraction`` of its draws go to its clean photos, the rest
  to its distorted copies. Identities with several clean photos are the only ones that teach
  "same person, different photo" (what the strict protocol measures), so they are drawn more
  often, while the cap stops a 236-photo identity from dominating and the one-photo identities
  still get a few draws per epoch each (they teach distortion invariance and serve as negatives).
  Drawing clean photos more often than their 1-in-8 share feeds the on-the-fly distortions.
  ``distortion_weights`` draws the hard types more often among the distorted copies (the CPU
  preset draws sunny, whose glare wipes out the face, twice as often as each other type).
* **Augmentation** (:func:`build_recognition_transforms`): an optional central face crop, a
  random resized crop, flip, colour jitter, random greyscale, and FACECOM distortions drawn on
  the fly (``distortion_augment``) for the clean images -- new distorted views of every photo,
  not just the seven stored copies, so a near-duplicate shortcut is harder to learn.
* **Loss**: cross-entropy with label smoothing over margin-head logits (ArcFace, CosFace or AdaFace,
  AdaFace with the neck's pre-normalisation feature norm); AdamW with a smaller learning rate for
  the pretrained backbone (``backbone_lr_scale``); per-step cosine annealing after a linear warm-up.
  :func:`facecom_utils.training.fit` runs the loop (AMP on CUDA, checkpoints, resume, early stop).
* **Model choice** after every epoch on the fold: gallery = the fold's clean images, probes = its
  distorted images. The monitored ``selection_score`` is the mean of the main top-1 and the
  strict top-1 averaged per identity (strict: the probe's own clean source removed from the
  gallery). The main top-1 alone saturates near 1.0 by near-duplicate matching within an epoch or
  two; the strict top-1 measures face identity, which is what carries over to unseen people; the
  per-identity average stops one many-photo identity from deciding it; the mean of the two keeps a
  model from trading one protocol for the other. With ``embedding_source="auto"`` both the neck embedding and the backbone's
  pooled features are scored every epoch and the better one is kept.
* **Embeddings** for the threshold and the report: the ``face_crop`` view averaged with its
  mirror (``flip_tta``), concatenated with the ``tta_crops`` views if any (cosine = the mean of
  the per-view cosines); the per-epoch model choice uses the ``face_crop`` view alone.
* **Threshold** of the match decision: chosen on the fold by k-fold cross-validation
  (main and strict separately), stored in the checkpoint and applied unchanged to the
  reported split: ``<data_root>/Task_B/val``, or, when there is none, an identity-disjoint
  ``holdout_fraction`` of the training identities held out before anything else.

Outputs of a run (``output_dir``)::

    checkpoints/best.pt  checkpoints/last.pt    (training.fit; best.pt gains threshold etc.)
    embeddings/fold.npz  embeddings/fold.csv    (validation fold: embeddings + path/identity/...)
    embeddings/val.npz   embeddings/val.csv     (the reported split, when present)
    history.csv  metrics.json

Baselines for scale, under the same protocol: :func:`imagenet_baseline` (the backbone's pooled
ImageNet features, no face training) and :func:`dlib_embeddings` / :func:`dlib_baseline` (dlib's
128-d ResNet face descriptor with 5-point alignment).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler
from torchvision import transforms as T
from tqdm.auto import tqdm

from .cache import BatchAugment, apply_speedups, cached_dataset, resolve_cache_mode
from .data import DISTORTION_TYPES, OnError, central_crop, drop_unreadable, load_image, scan_task_b
from .datasets import IMAGENET_MEAN, IMAGENET_STD, DistributedWeightedSampler, TorchSeededDistortion, make_loader
from .config import RunConfig
from .rundir import FOLD_ROLE, REPORT_ROLE, RunDir, to_jsonable
from .demo import resolve_data_root
from .distributed import distributed_info
from .heads import build_head
from .models import FaceEmbedder, create_backbone
from .training import (
    FitResult,
    fit,
    load_checkpoint,
    preserved_random_state,
    save_checkpoint,
    seed_everything,
    select_device,
)
from .verification import choose_match_threshold, evaluate_protocol, score_table

__all__ = [
    "EMBEDDING_SOURCES",
    "METRIC_KEYS",
    "RecognitionConfig",
    "RecognitionModel",
    "RecognitionRun",
    "build_recognition_transforms",
    "choose_thresholds",
    "dlib_baseline",
    "dlib_embeddings",
    "embedding_table",
    "evaluate_recognition",
    "extract_embeddings",
    "identity_sample_weights",
    "imagenet_baseline",
    "load_embeddings",
    "load_recognition_model",
    "protocol_inputs",
    "protocol_metrics",
    "split_identities",
    "RecognitionSplits",
    "RecognitionPipeline",
    "recognition_splits",
    "recognition_pipeline",
    "build_recognition_model",
    "fit_recognition",
    "report_recognition",
    "train_recognition",
]

EMBEDDING_SOURCES = ("neck", "pooled", "auto")

# The metrics.json keys the issue asks for (each also exists prefixed "strict_").
METRIC_KEYS = (
    "top1", "top5", "roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "tar_at_far_1e-4",
    "match_accuracy", "match_f1_macro", "threshold", "per_distortion",
)


# ----------------------------------------------------------------------------- configuration


@dataclass
class RecognitionConfig(RunConfig):
    """Everything that defines a Task B training run (saved in every checkpoint): the shared
    :class:`~facecom_utils.config.RunConfig` (with Task B's own defaults for the learning rates,
    weight decay, label smoothing and patience) plus these.

    Attributes:
        face_crop: Fraction of the image side kept by a central crop before resizing (1.0: none).
            FACECOM faces fill the centre; a crop spends the pixels on the face rather than on
            background and clothes.
        head: ``"arcface"``, ``"cosface"`` or ``"adaface"``.
        embedding_dim: Neck output size.
        margin: Head margin ``m``; None: the head's default (ArcFace 0.5, CosFace 0.35, AdaFace 0.4).
        scale: Head scale ``s``; None: the head's default (30, 30, 64).
        crop_scale: Area range of the random resized crop.
        color_jitter: Brightness/contrast/saturation jitter strength (0 turns it off).
        clean_cap: Identity sampling weight = ``min(n_clean, clean_cap)``; 1 = class-balanced,
            None = no sampler (uniform over images).
        clean_fraction: Share of each identity's draws that go to its clean images (which get
            the on-the-fly distortions); None: in proportion to the image counts (1 in 8 on FACECOM).
        distortion_weights: Relative sampling weight of each distortion type among an identity's
            distorted images (see :func:`identity_sample_weights`), e.g. ``{"sunny": 2.0}``; None:
            all types alike. Needs the identity sampler (``clean_cap`` not None).
        samples_per_epoch: Draws per epoch; None: the number of training images.
        max_identities: Keep only this many training identities (seeded, stratified); None: all.
        embedding_source: ``"neck"`` (the L2-normalised embedding), ``"pooled"`` (the backbone's
            pooled features, normalised) or ``"auto"`` (chosen on the fold).
        threshold_method: ``"kfold"``, ``"accuracy"`` or ``"far"`` (see
            :func:`facecom_utils.verification.choose_match_threshold`).
        flip_tta: Average each embedding with that of the mirrored image.
        tta_crops: Extra central-crop views (fractions of the image side, like ``face_crop``) for
            the fold, threshold and reported embeddings: each view is embedded on its own and the
            L2-normalised views are concatenated (scaled by ``1/sqrt(views)``), so the cosine of two
            images is the mean of their per-view cosines. FACECOM's sunny glare washes out the face
            centre: the full frame keeps the hair, clothes and background that still identify a
            sunny probe, while a tighter crop spends the pixels on the face, which carries the
            other types and the strict protocol. ``()``: the ``face_crop`` view only. The per-epoch
            model choice uses the ``face_crop`` view alone (cheaper).

    Without ``Task_B/val`` the held-out identities (``holdout_fraction``) are saved as the ``report``
    embeddings.
    """

    default_output_dir: ClassVar[str] = "reports/03_arcface_recognition"

    lr: float = 2e-3
    backbone_lr_scale: float = 0.3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    patience: int | None = 3
    face_crop: float = 1.0
    head: str = "arcface"
    embedding_dim: int = 512
    margin: float | None = None
    scale: float | None = None
    crop_scale: tuple[float, float] = (0.6, 1.0)
    color_jitter: float = 0.3
    clean_cap: int | None = 8
    clean_fraction: float | None = 0.35
    distortion_weights: dict[str, float] | None = None
    samples_per_epoch: int | None = 256
    max_identities: int | None = 20
    embedding_source: str = "auto"
    threshold_method: str = "kfold"
    flip_tta: bool = False
    tta_crops: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embedding_source not in EMBEDDING_SOURCES:
            raise ValueError(f"embedding_source must be one of {EMBEDDING_SOURCES}, got {self.embedding_source!r}")
        if not 0.0 < self.face_crop <= 1.0:
            raise ValueError(f"face_crop must be in (0, 1], got {self.face_crop}")
        crops = self.tta_crops if isinstance(self.tta_crops, (list, tuple)) else (self.tta_crops or ())
        crops = crops if isinstance(crops, (list, tuple)) else (crops,)  # a single number is one view
        try:
            self.tta_crops = tuple(float(c) for c in crops)
        except (TypeError, ValueError):
            raise ValueError(f"tta_crops must be a list of fractions in (0, 1], got {self.tta_crops!r}") from None
        if any(not 0.0 < c <= 1.0 for c in self.tta_crops):
            raise ValueError(f"tta_crops must be fractions in (0, 1], got {list(self.tta_crops)}")
        if self.distortion_weights is not None:
            weights = self.distortion_weights
            if not isinstance(weights, Mapping) or set(weights) - set(DISTORTION_TYPES) or any(
                    not isinstance(v, (int, float)) or v <= 0 for v in weights.values()):
                raise ValueError(f"distortion_weights must map distortion types {DISTORTION_TYPES} to positive "
                                 f"numbers, got {weights!r}")
            self.distortion_weights = {str(k): float(v) for k, v in weights.items()}
            if self.clean_cap is None and self.distortion_weights:
                raise ValueError("distortion_weights needs the identity sampler; set clean_cap (e.g. 8)")
        self.crop_scale = (float(self.crop_scale[0]), float(self.crop_scale[1]))


# ----------------------------------------------------------------------------- model


class RecognitionModel(nn.Module):
    """A :class:`~facecom_utils.models.FaceEmbedder` with its margin head, for training.

    ``model(images)`` returns embeddings; ``model(images, labels)`` returns the head's scaled
    logits with the margin applied (training mode), which is what the loss needs.

    Args:
        embedder: The face embedder.
        head: A margin head from :func:`facecom_utils.heads.build_head`.
        head_config: Plain description of the head (name, kwargs, number of classes).
    """

    def __init__(self, embedder: FaceEmbedder, head: nn.Module, head_config: Mapping[str, Any]) -> None:
        super().__init__()
        self.embedder = embedder
        self.head = head
        self.model_config: dict[str, Any] = {**embedder.model_config, "head": dict(head_config)}

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            return self.embedder(x)
        emb, norms = self.embedder(x, return_norm=True)
        return self.head(emb, labels, norms)


def _build_model(model_config: Mapping[str, Any], pretrained: str | None) -> RecognitionModel:
    head_cfg = dict(model_config["head"])
    embedder = FaceEmbedder(
        backbone=model_config["backbone"],
        pretrained=pretrained,
        embedding_dim=int(model_config["embedding_dim"]),
        dropout=float(model_config.get("dropout", 0.0)),
        image_size=model_config.get("image_size"),
    )
    head = build_head(head_cfg["name"], int(model_config["embedding_dim"]), int(head_cfg["num_classes"]),
                      **head_cfg.get("kwargs", {}))
    return RecognitionModel(embedder, head, head_cfg)


def load_recognition_model(
    checkpoint_path: str | Path, device: str | torch.device = "cpu"
) -> tuple[RecognitionModel, dict[str, Any]]:
    """Rebuilds the trained model from a checkpoint (no network: weights come from the file).

    Args:
        checkpoint_path: ``best.pt`` / ``last.pt`` written by :func:`train_recognition`.
        device: Where to put the model.

    Returns:
        ``(model in eval mode, checkpoint payload)``.

    Raises:
        ValueError: The checkpoint is not a Task B recognition checkpoint.
    """
    payload = load_checkpoint(checkpoint_path, map_location="cpu")
    if payload.get("task") != "recognition" or "head" not in payload.get("model_config", {}):
        raise ValueError(f"{checkpoint_path}: not a recognition checkpoint (expected task='recognition' "
                         f"and a model_config with a head, written by train_recognition)")
    model = _build_model(payload["model_config"], pretrained=None)
    model.embedder.model_config["pretrained"] = payload["model_config"].get("pretrained")
    model.load_state_dict(payload["model"])
    model.to(select_device(device)).eval()
    return model, payload


# ----------------------------------------------------------------------------- data


def _clean_counts(table: pd.DataFrame) -> pd.Series:
    """Number of clean images per identity (0 for identities with distorted images only)."""
    counts = table[table["distortion"].isna()].groupby("identity").size()
    return counts.reindex(sorted(table["identity"].unique()), fill_value=0)


def _bucket(n_clean: int) -> str:
    return "0-1" if n_clean <= 1 else "2" if n_clean == 2 else "3-5" if n_clean <= 5 else "6+"


def split_identities(table: pd.DataFrame, val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Seeded identity-disjoint split, stratified by clean-image count (1, 2, 3-5, 6+).

    Args:
        table: A :func:`~facecom_utils.data.scan_task_b` table.
        val_fraction: Share of identities in the second list, in (0, 1); at least two identities
            are held out when there are four or more (one with two or three), and at least one
            is kept.
        seed: Seed of the draw.

    Returns:
        ``(kept identities, held-out identities)``, both sorted.
    """
    counts = _clean_counts(table)
    rng = np.random.default_rng(seed)
    held: list[str] = []
    strata: dict[str, list[str]] = {}
    for identity, n in counts.items():
        strata.setdefault(_bucket(int(n)), []).append(str(identity))
    for key in sorted(strata):
        members = sorted(strata[key])
        n_take = int(round(val_fraction * len(members)))
        held += list(rng.permutation(members)[:n_take])
    # Tiny tables: the protocol needs impostors, so hold out at least two identities (one when
    # there are only two or three), preferring identities with two or more photos.
    minimum = 2 if len(counts) >= 4 else 1 if len(counts) >= 2 else 0
    while len(held) < minimum:
        rest = [str(i) for i in counts.index if str(i) not in held]
        multi = sorted(i for i in rest if counts[i] >= 2) or sorted(rest)
        held.append(str(rng.choice(multi)))
    if len(held) == len(counts):
        held = held[:-1]
    held_set = set(held)
    return sorted(i for i in counts.index if i not in held_set), sorted(held_set)


def _subsample_identities(table: pd.DataFrame, max_identities: int | None, seed: int) -> pd.DataFrame:
    n = table["identity"].nunique()
    if max_identities is None or max_identities >= n:
        return table
    _, keep = split_identities(table, max_identities / n, seed=seed + 7919)
    return table[table["identity"].isin(set(keep))].reset_index(drop=True)


def identity_sample_weights(
    table: pd.DataFrame,
    clean_cap: int,
    clean_fraction: float | None = None,
    distortion_weights: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Per-image sampling weights: identity weight ``min(max(n_clean, 1), clean_cap)``, split over its images.

    Args:
        table: The training rows (one per image) with ``identity`` and ``distortion``.
        clean_cap: Cap of the identity weight (1 gives class-balanced sampling).
        clean_fraction: Share of an identity's weight given to its clean images (the rest to its
            distorted ones), when it has both; None: the identity's weight is split over all its
            images in proportion to their ``distortion_weights`` (equally without them).
        distortion_weights: Relative weight of each distortion type within an identity's share
            (types not named, and clean images, weigh 1), e.g. ``{"sunny": 2}`` draws an
            identity's sunny images twice as often as each other type. An identity's total weight
            is unchanged.

    Returns:
        float64 [N] weights; each identity's weights sum to its identity weight.
    """
    extra = dict(distortion_weights or {})
    unknown = sorted(set(extra) - set(DISTORTION_TYPES))
    if unknown or any(float(v) <= 0 for v in extra.values()):
        raise ValueError(f"distortion_weights must map distortion types {DISTORTION_TYPES} to positive weights, "
                         f"got {extra}")
    counts = _clean_counts(table)
    identity_weight = table["identity"].map(counts.clip(lower=1, upper=max(1, int(clean_cap))).astype(float))
    is_clean = table["distortion"].isna()
    raw = table["distortion"].map(lambda d: 1.0 if pd.isna(d) else float(extra.get(d, 1.0))).astype(float)
    by_identity = table["identity"]
    if clean_fraction is None:
        return np.array(identity_weight * raw / raw.groupby(by_identity).transform("sum"), dtype=np.float64)
    n_clean = is_clean.groupby(by_identity).transform("sum")
    n_distorted = table.groupby("identity")["path"].transform("size") - n_clean
    both = (n_clean > 0) & (n_distorted > 0)
    share = np.where(is_clean, float(clean_fraction), 1.0 - float(clean_fraction))
    per_kind = raw.groupby([by_identity, is_clean]).transform("sum")  # within the identity's clean / distorted
    weights = np.where(both, identity_weight * share * raw / per_kind,
                       identity_weight * raw / raw.groupby(by_identity).transform("sum"))
    return np.asarray(weights, dtype=np.float64)


class _CentralCrop:
    """Keeps the central ``fraction`` of each side (no-op at 1.0)."""

    def __init__(self, fraction: float) -> None:
        self.fraction = float(fraction)

    def __call__(self, image: Image.Image) -> Image.Image:
        return central_crop(image, self.fraction)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fraction})"


def build_recognition_transforms(
    image_size: int,
    train: bool,
    face_crop: float = 1.0,
    distortion_p: float = 0.0,
    crop_scale: tuple[float, float] = (0.6, 1.0),
    color_jitter: float = 0.3,
) -> T.Compose:
    """PIL image -> normalised tensor [3, S, S] for the face embedder.

    Eval: central face crop, resize. Train: the same, then (optionally) a FACECOM distortion drawn
    from torch's generator (so resume repeats it), a random resized crop, flip, colour jitter and
    random greyscale. The distortion is applied at the training resolution, which is much cheaper
    than at 224 px (its spatial parameters scale with the image).

    Args:
        image_size: Output side S.
        train: Training augmentation or the deterministic evaluation transform.
        face_crop: Central crop fraction applied first.
        distortion_p: Probability of an on-the-fly FACECOM distortion.
        crop_scale: Area range of the random resized crop.
        color_jitter: Brightness/contrast/saturation jitter (hue gets a tenth of it).
    """
    base: list[Any] = [_CentralCrop(face_crop), T.Resize((image_size, image_size), antialias=True)]
    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if not train:
        return T.Compose([*base, *normalize])
    steps: list[Any] = list(base)
    if distortion_p > 0:
        steps.append(TorchSeededDistortion(p=distortion_p, severity_range=(0.5, 1.3)))
    steps += [
        T.RandomResizedCrop(image_size, scale=crop_scale, ratio=(0.85, 1.18), antialias=True),
        T.RandomHorizontalFlip(),
    ]
    if color_jitter > 0:
        steps.append(T.ColorJitter(color_jitter, color_jitter, color_jitter, min(0.5, color_jitter / 10)))
    steps.append(T.RandomGrayscale(p=0.1))
    return T.Compose([*steps, *normalize])


class _FaceImages(Dataset):
    """``dataset[i] -> (image tensor, label)``; clean and distorted rows may use different transforms."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        transform: Callable[[Image.Image], torch.Tensor],
        clean: Sequence[bool] | None = None,
        clean_transform: Callable[[Image.Image], torch.Tensor] | None = None,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.labels = [int(y) for y in labels]
        self.transform = transform
        self.clean = [False] * len(self.paths) if clean is None else [bool(c) for c in clean]
        self.clean_transform = clean_transform or transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.paths[index])
        transform = self.clean_transform if self.clean[index] else self.transform
        return transform(image), self.labels[index]


# ----------------------------------------------------------------------------- embeddings


def _embed_batch(model: nn.Module, x: torch.Tensor, source: str) -> dict[str, torch.Tensor]:
    """Unnormalised outputs of one batch: ``{"neck": ..., "pooled": ...}`` as asked."""
    embedder = getattr(model, "embedder", model)
    out: dict[str, torch.Tensor] = {}
    if isinstance(embedder, FaceEmbedder):
        pooled = embedder.backbone(x)
        if source in ("pooled", "auto"):
            out["pooled"] = pooled.float()
        if source in ("neck", "auto"):
            out["neck"] = embedder.neck(embedder.dropout(pooled)).float()
    else:  # any module mapping images to features, e.g. a bare backbone
        out["pooled" if source == "auto" else source] = embedder(x).float()
    return out


@torch.no_grad()
def _extract(
    model: nn.Module,
    paths: Sequence[str | Path],
    image_size: int,
    batch_size: int,
    device: str | torch.device,
    flip_tta: bool,
    face_crop: float,
    source: str,
    num_workers: int = 0,
    progress: bool = False,
    dataset: Dataset | None = None,
) -> tuple[dict[str, np.ndarray], float]:
    device = select_device(device) if isinstance(device, str) else device
    if dataset is None:  # else: the same images, already prepared (e.g. a normalising CachedImageDataset)
        dataset = _FaceImages(paths, [0] * len(paths), build_recognition_transforms(image_size, False, face_crop))
    loader = make_loader(dataset, batch_size, train=False, num_workers=num_workers)
    was_training = model.training
    model.to(device).eval()
    chunks: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    for x, _ in tqdm(loader, desc="embedding", leave=False, disable=not progress):
        x = x.to(device)
        outs = _embed_batch(model, x, source)
        if flip_tta:
            flipped = _embed_batch(model, torch.flip(x, dims=[3]), source)
            outs = {k: F.normalize(v, dim=1) + F.normalize(flipped[k], dim=1) for k, v in outs.items()}
        for k, v in outs.items():
            chunks.setdefault(k, []).append(F.normalize(v, dim=1).cpu().numpy().astype(np.float32))
    seconds = time.perf_counter() - t0
    model.train(was_training)
    result = {k: np.concatenate(v) if v else np.zeros((0, 1), np.float32) for k, v in chunks.items()}
    return result, len(paths) / max(seconds, 1e-9)


def extract_embeddings(
    model: nn.Module,
    paths: Sequence[str | Path],
    image_size: int = 112,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    flip_tta: bool = True,
    face_crop: float = 1.0,
    source: str = "neck",
    num_workers: int = 0,
    progress: bool = False,
    return_speed: bool = False,
    tta_crops: Sequence[float] = (),
) -> np.ndarray | tuple[np.ndarray, float]:
    """Embeds images in batches: float32 [N, D], every row L2-normalised.

    Args:
        model: A :class:`RecognitionModel`, a :class:`~facecom_utils.models.FaceEmbedder` or any
            module mapping images [B, 3, S, S] to features [B, D] (e.g. a bare backbone).
        paths: Image files, embedded in this order.
        image_size: Input side (the training one).
        batch_size: Images per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... or a ``torch.device``.
        flip_tta: Mean of the (normalised) embeddings of the image and its mirror, renormalised.
        face_crop: Central crop fraction (the training one).
        source: ``"neck"`` (the embedding) or ``"pooled"`` (the backbone's pooled features).
        num_workers: DataLoader workers.
        progress: Show a progress bar.
        return_speed: Also return the throughput in images per second (loading included, all views).
        tta_crops: Extra central-crop views, concatenated after the ``face_crop`` one (see
            :class:`RecognitionConfig`): float32 [N, D * views], rows still unit-norm, and the cosine
            of two rows is the mean of the per-view cosines.

    Returns:
        The embeddings, or ``(embeddings, images_per_second)``.
    """
    if source not in ("neck", "pooled"):
        raise ValueError(f"source must be 'neck' or 'pooled', got {source!r}")
    views = [float(face_crop), *(float(c) for c in tta_crops)]
    parts, seconds = [], 0.0
    for crop in views:
        out, speed = _extract(model, paths, image_size, batch_size, device, flip_tta, crop, source,
                              num_workers, progress)
        parts.append(out[source])
        seconds += len(paths) / max(speed, 1e-9)
    emb = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1) / np.float32(math.sqrt(len(parts)))
    speed = len(paths) / max(seconds, 1e-9)
    return (emb, speed) if return_speed else emb


EMBEDDING_COLUMNS = ("path", "identity", "distortion", "source")


def embedding_table(table: pd.DataFrame) -> pd.DataFrame:
    """The rows to embed for the protocol: gallery (clean) first, then probes (distorted).

    Identities without a clean image are dropped (they cannot be gallery identities), with a warning.

    Returns:
        DataFrame with ``path``, ``identity``, ``distortion``, ``source`` and ``role``
        (``"gallery"``/``"probe"``), fresh index.
    """
    counts = _clean_counts(table)
    no_gallery = sorted(counts.index[counts == 0])
    if no_gallery:
        warnings.warn(f"{len(no_gallery)} identities have no clean image and are left out of the protocol: "
                      f"{no_gallery[:5]}", stacklevel=2)
        table = table[~table["identity"].isin(set(no_gallery))]
    gallery = table[table["distortion"].isna()]
    probes = table[table["distortion"].notna()]
    out = pd.concat([gallery.assign(role="gallery"), probes.assign(role="probe")], ignore_index=True)
    return out[[*EMBEDDING_COLUMNS, "role"]].reset_index(drop=True)


def protocol_inputs(table: pd.DataFrame, emb: np.ndarray) -> dict[str, Any]:
    """The keyword arguments of :func:`~facecom_utils.verification.evaluate_protocol` for a table.

    Args:
        table: An :func:`embedding_table` (rows aligned with ``emb``).
        emb: [N, D] embeddings of the rows.

    Returns:
        Dict with ``probe_emb``, ``probe_identity``, ``probe_distortion``, ``probe_source_idx``
        (gallery row of the clean source, -1 when unknown), ``gallery_emb``, ``gallery_identity``.
    """
    if len(table) != len(emb):
        raise ValueError(f"table has {len(table)} rows but there are {len(emb)} embeddings")
    is_gallery = table["distortion"].isna().to_numpy()
    gallery, probes = table[is_gallery], table[~is_gallery]
    row_of = {p: i for i, p in enumerate(gallery["path"])}
    source = [row_of.get(s, -1) if isinstance(s, str) else -1 for s in probes["source"]]
    return {
        "probe_emb": emb[~is_gallery],
        "probe_identity": probes["identity"].to_numpy(),
        "probe_distortion": probes["distortion"].to_numpy(),
        "probe_source_idx": np.asarray(source, dtype=np.int64),
        "gallery_emb": emb[is_gallery],
        "gallery_identity": gallery["identity"].to_numpy(),
    }


def load_embeddings(run_dir: str | Path, role: str) -> tuple[pd.DataFrame, np.ndarray]:
    """A Task B run's saved embeddings of one role (:data:`~facecom_utils.rundir.FOLD_ROLE` or
    :data:`~facecom_utils.rundir.REPORT_ROLE`, a run's ``metrics["reported_role"]``); see
    :meth:`facecom_utils.rundir.RunDir.load_embeddings`.

    Returns:
        ``(table, embeddings)``.
    """
    return RunDir(run_dir).load_embeddings(role)


# ----------------------------------------------------------------------------- protocol


def choose_thresholds(table: pd.DataFrame, emb: np.ndarray, method: str = "kfold", seed: int = 0) -> dict[str, Any]:
    """Chooses the main and strict match thresholds on a validation table.

    Args:
        table: :func:`embedding_table` rows of the validation fold.
        emb: Their embeddings.
        method: See :func:`facecom_utils.verification.choose_match_threshold`.
        seed: Seed of the impostor draw and the folds.

    Returns:
        ``{"threshold", "strict_threshold", "details", "strict_details"}``; the strict threshold
        falls back to the main one when the fold has no strict probe.
    """
    args = protocol_inputs(table, emb)
    main = score_table(args["probe_emb"], args["probe_identity"], args["gallery_emb"], args["gallery_identity"])
    details = choose_match_threshold(main, method=method, seed=seed)
    strict = score_table(args["probe_emb"], args["probe_identity"], args["gallery_emb"], args["gallery_identity"],
                         exclude=args["probe_source_idx"])
    strict.true_idx[args["probe_source_idx"] < 0] = -1
    try:
        strict_details = choose_match_threshold(strict, method=method, seed=seed)
    except ValueError:  # no identity with two or more clean images in the fold
        strict_details = {**details, "fallback": "main threshold (no strict probe in the fold)"}
    return {
        "threshold": float(details["threshold"]),
        "strict_threshold": float(strict_details["threshold"]),
        "details": details,
        "strict_details": strict_details,
    }


def protocol_metrics(
    table: pd.DataFrame,
    emb: np.ndarray,
    threshold: float,
    strict_threshold: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The issue's Task B metrics for one embedded split, main and strict.

    Delegates to :func:`facecom_utils.verification.evaluate_protocol` and flattens its output:
    ``per_distortion`` maps each type to its top-1 (the full per-type metrics stay under
    ``per_distortion_metrics``); the same for the ``strict_`` keys. ``strict_top1_identity_macro``
    averages the strict top-1 per identity first (one many-photo identity can otherwise decide
    ``strict_top1``: FACECOM's train split has identities with 236 and 71 photos).

    Args:
        table: :func:`embedding_table` rows.
        emb: Their embeddings.
        threshold: Match threshold (chosen elsewhere, applied unchanged).
        strict_threshold: Threshold of the strict variant (default: ``threshold``).
        seed: Seed of the impostor-pair draw.

    Returns:
        Flat metrics dict (see :data:`METRIC_KEYS`).
    """
    raw = evaluate_protocol(**protocol_inputs(table, emb), threshold=threshold, seed=seed,
                            strict_threshold=strict_threshold)
    out = dict(raw)
    out["strict_top1_identity_macro"] = _quick_scores(table, emb)["strict_top1_macro"]
    for prefix in ("", "strict_"):
        per = raw[f"{prefix}per_distortion"]
        out[f"{prefix}per_distortion_metrics"] = per
        out[f"{prefix}per_distortion"] = {kind: m["top1"] for kind, m in per.items()}
    return out


def _quick_scores(table: pd.DataFrame, emb: np.ndarray) -> dict[str, float]:
    """Model-choice scores of an embedded fold.

    ``top1`` / ``strict_top1``: main and strict top-1 over probes; ``strict_top1_macro``: the strict
    top-1 averaged per identity first (FACECOM has one identity with 236 photos, which would
    otherwise decide the strict score of any fold holding it); ``selection_score``: the mean of
    ``top1`` and ``strict_top1_macro`` (``top1`` alone when the fold has no strict probe).
    """
    args = protocol_inputs(table, emb)
    out: dict[str, float] = {}
    for prefix, exclude in (("", None), ("strict_", args["probe_source_idx"])):
        st = score_table(args["probe_emb"], args["probe_identity"], args["gallery_emb"], args["gallery_identity"],
                         exclude=exclude)
        if exclude is not None:
            st.true_idx[exclude < 0] = -1
        rows = np.flatnonzero(st.valid)
        genuine = st.scores[rows, st.true_idx[rows]]
        hit = (st.scores[rows] >= genuine[:, None]).sum(axis=1) == 1  # ties count against the probe
        out[f"{prefix}top1"] = float(hit.mean()) if rows.size else math.nan
        if prefix:
            per_identity = pd.Series(hit).groupby(np.asarray(args["probe_identity"])[rows]).mean()
            out["strict_top1_macro"] = float(per_identity.mean()) if rows.size else math.nan
    macro = out["strict_top1_macro"]
    out["selection_score"] = out["top1"] if math.isnan(macro) else 0.5 * (out["top1"] + macro)
    return out


# ----------------------------------------------------------------------------- training


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


def _head_config(config: RecognitionConfig, num_classes: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if config.margin is not None:
        kwargs["m"] = float(config.margin)
    if config.scale is not None:
        kwargs["s"] = float(config.scale)
    return {"name": config.head.lower(), "num_classes": int(num_classes), "kwargs": kwargs}


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
    train_all = _subsample_identities(scanned[scanned["split"] == "train"].reset_index(drop=True),
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


def build_recognition_model(config: RecognitionConfig, num_classes: int) -> RecognitionModel:
    """The embedder (backbone + neck) with its margin head over ``num_classes`` training identities."""
    embedder = FaceEmbedder(config.backbone, config.pretrained, config.embedding_dim, image_size=config.image_size)
    head_cfg = _head_config(config, num_classes)
    head = build_head(head_cfg["name"], config.embedding_dim, num_classes, **head_cfg["kwargs"])
    model = RecognitionModel(embedder, head, head_cfg)
    apply_speedups(model, config.channels_last, config.compile)
    return model


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
        jitter = config.color_jitter
        batch_augment = BatchAugment(config.image_size, config.crop_scale, (0.85, 1.18), 0.5, jitter, jitter, jitter,
                                     min(0.5, jitter / 10), 0.1, channels_last=config.channels_last).to(device)
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
        best = max(scores, key=lambda s: (scores[s]["selection_score"], s == "neck"))
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
    device = config.start_run()
    splits = recognition_splits(config)
    model = build_recognition_model(config, len(splits.train_identities))
    pipeline = recognition_pipeline(config, splits, device)
    result = fit_recognition(config, splits, pipeline, model, device)
    if distributed_info()[0] != 0:
        return RecognitionRun(model, config, result.history, splits.train_identities, splits.fold_identities,
                              math.nan, math.nan, "neck", {}, {}, RunDir(config.output_dir).best_checkpoint,
                              Path(config.output_dir), result)
    return report_recognition(config, splits, model, result, device)


def _scalar_view(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics without the bulky nested per-distortion detail (for checkpoints)."""
    return {k: v for k, v in metrics.items() if not k.endswith("per_distortion_metrics")}


# ----------------------------------------------------------------------------- evaluation


def evaluate_recognition(
    checkpoint_path: str | Path,
    data_root: str | Path | None = None,
    split: str = "val",
    batch_size: int = 64,
    device: str = "auto",
    flip_tta: bool | None = None,
    seed: int | None = None,
    on_error: OnError = "raise",
) -> dict[str, Any]:
    """Evaluates a trained checkpoint on a split with the full protocol and its stored threshold.

    The split's images are screened first (:func:`~facecom_utils.data.drop_unreadable`): with
    ``on_error="raise"`` the first unreadable one stops the evaluation; with ``"skip"`` each is left
    out with a warning (a distorted probe whose clean image is unreadable keeps ``source=None``; an
    identity left with no readable clean image drops out of the protocol, see :func:`embedding_table`).

    Args:
        checkpoint_path: ``best.pt`` written by :func:`train_recognition`.
        data_root: FACECOM root (None: see :func:`facecom_utils.demo.resolve_data_root`).
        split: ``"val"`` or ``"train"`` (all of ``Task_B/<split>``), or ``"holdout"``: the training
            identities the run held out and reported on (when ``data_root`` had no ``Task_B/val``).
        batch_size: Embedding batch size.
        device: Compute device.
        flip_tta: Override the training run's flip TTA setting (None: keep it).
        seed: Seed of the impostor draw (None: the training seed).
        on_error: ``"raise"`` or ``"skip"`` unreadable images (see above).

    Returns:
        Metrics dict (see :func:`protocol_metrics`) plus ``embed_images_per_second``, ``split``,
        ``n_images`` (images embedded), ``n_skipped`` and ``skipped`` (``{path: reason}``).

    Raises:
        ValueError: The checkpoint holds no threshold (it did not finish training).
        BadImageError: An unreadable image and ``on_error="raise"``.
    """
    model, payload = load_recognition_model(checkpoint_path, device)
    if "threshold" not in payload:
        raise ValueError(f"{checkpoint_path}: holds no match threshold; use the best.pt of a finished "
                         "train_recognition run")
    cfg = payload["config"]
    root = resolve_data_root(None if data_root is None else str(data_root))
    if split == "holdout":
        held = set(payload.get("holdout_identities", []))
        if not held:
            raise ValueError(f"{checkpoint_path}: the run held no identities out (its data_root had Task_B/val); "
                             "use split='val'")
        scanned = scan_task_b(root, splits=("train",), on_error="keep")
        scanned = scanned[scanned["identity"].isin(held)].reset_index(drop=True)
    else:
        scanned = scan_task_b(root, splits=(split,), on_error="keep")
    scanned, skipped = drop_unreadable(scanned, on_error)
    table = embedding_table(scanned)
    emb, speed = extract_embeddings(
        model, table["path"].tolist(), image_size=int(cfg["image_size"]), batch_size=batch_size, device=device,
        flip_tta=bool(cfg["flip_tta"]) if flip_tta is None else flip_tta, face_crop=float(cfg.get("face_crop", 1.0)),
        source=str(payload.get("embedding_source", "neck")), return_speed=True,
        tta_crops=tuple(cfg.get("tta_crops") or ()),
    )
    metrics = protocol_metrics(table, emb, float(payload["threshold"]),
                               float(payload.get("strict_threshold", payload["threshold"])),
                               seed=int(cfg["seed"]) if seed is None else seed)
    metrics.update(embed_images_per_second=speed, split=split, n_images=len(table), n_skipped=len(skipped),
                   skipped=skipped)
    return metrics


# ----------------------------------------------------------------------------- baselines


def _threshold_table(data_root: Path, split: str, identities: int, seed: int) -> pd.DataFrame:
    """A seeded subsample of a split's identities, for choosing a baseline's threshold elsewhere."""
    table = scan_task_b(data_root, splits=(split,))
    return embedding_table(_subsample_identities(table, identities, seed))


def _baseline_metrics(
    embed: Callable[[list[str]], np.ndarray],
    data_root: str | Path | None,
    split: str,
    threshold_split: str | None,
    threshold_identities: int,
    seed: int,
    max_identities: int | None = None,
) -> dict[str, Any]:
    root = resolve_data_root(None if data_root is None else str(data_root))
    table = scan_task_b(root, splits=(split,))
    table = embedding_table(_subsample_identities(table, max_identities, seed))
    t0 = time.perf_counter()
    emb = embed(table["path"].tolist())
    speed = len(table) / max(time.perf_counter() - t0, 1e-9)
    if threshold_split is not None and threshold_split != split:
        tt = _threshold_table(root, threshold_split, threshold_identities, seed)
        thresholds = choose_thresholds(tt, embed(tt["path"].tolist()), seed=seed)
    else:  # no other split: tune on the reported one (labelled: it is an oracle)
        thresholds = choose_thresholds(table, emb, seed=seed)
        thresholds["details"]["oracle"] = True
    metrics = protocol_metrics(table, emb, thresholds["threshold"], thresholds["strict_threshold"], seed=seed)
    metrics.update(embed_images_per_second=speed, split=split, threshold_split=threshold_split or split,
                   threshold_details=thresholds["details"])
    return metrics


def imagenet_baseline(
    data_root: str | Path | None = None,
    split: str = "val",
    backbone: str = "efficientnet_lite0",
    pretrained: str | None = "offline",
    image_size: int = 112,
    batch_size: int = 64,
    device: str = "auto",
    flip_tta: bool = True,
    face_crop: float = 1.0,
    threshold_split: str | None = "train",
    threshold_identities: int = 100,
    max_identities: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The protocol on ImageNet features with no face training: the backbone's pooled output.

    Args:
        data_root: FACECOM root (None: repository or demo).
        split: The reported split.
        backbone: Backbone name.
        pretrained: Its weights (``"offline"`` for Lite0 without network, ``"imagenet"``).
        image_size: Input side.
        batch_size: Embedding batch size.
        device: Compute device.
        flip_tta: Flip test-time augmentation.
        face_crop: Central crop fraction.
        threshold_split: Split whose identities (a seeded subsample of ``threshold_identities``)
            set the threshold; None or equal to ``split``: tuned on ``split`` itself (oracle, flagged).
        threshold_identities: Identities used to set the threshold.
        max_identities: Subsample the reported split (quick looks); None: all.
        seed: Seed of subsamples and impostor draws.

    Returns:
        The same metrics dict as :func:`evaluate_recognition`.
    """
    net, _ = create_backbone(backbone, pretrained, image_size)
    net.eval()

    def embed(paths: list[str]) -> np.ndarray:
        return extract_embeddings(net, paths, image_size=image_size, batch_size=batch_size, device=device,
                                  flip_tta=flip_tta, face_crop=face_crop, source="pooled")

    return _baseline_metrics(embed, data_root, split, threshold_split, threshold_identities, seed, max_identities)


def _dlib_models() -> tuple[Any, Any, Any]:
    """dlib's HOG face detector, 5-point shape predictor and ResNet face descriptor."""
    import importlib.util

    try:
        import dlib
    except ImportError as err:
        raise ImportError("dlib_embeddings needs dlib: pip install dlib-bin face-recognition-models "
                          "(or the project's [baselines] extra)") from err
    spec = importlib.util.find_spec("face_recognition_models")  # its __init__ needs pkg_resources: locate only
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("dlib_embeddings needs the model files of face-recognition-models: "
                          "pip install face-recognition-models")
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    predictor = models / "shape_predictor_5_face_landmarks.dat"
    descriptor = models / "dlib_face_recognition_resnet_model_v1.dat"
    for f in (predictor, descriptor):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: dlib model file missing; reinstall face-recognition-models")
    return (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor)),
            dlib.face_recognition_model_v1(str(descriptor)))


def dlib_embeddings(
    paths: Sequence[str | Path],
    upsample: int = 1,
    fallback_box: float = 0.6,
    num_jitters: int = 0,
    progress: bool = False,
    return_detected: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """dlib's 128-d ResNet face descriptors, L2-normalised (cosine scoring like ours).

    Each image: dlib's HOG frontal face detector (largest face); when it finds none, a central box
    covering ``fallback_box`` of each side stands in. The 5-point shape predictor then aligns a
    150 px face chip (dlib's standard 0.25 padding) for the descriptor.

    Args:
        paths: Image files.
        upsample: Detector upsampling passes (1 finds smaller faces; 0 is faster).
        fallback_box: Side fraction of the central box used when no face is detected.
        num_jitters: dlib's own test-time jittering (0: none; 10 is ~10x slower, slightly better).
        progress: Show a progress bar.
        return_detected: Also return the boolean [N] mask of images where a face was detected.

    Returns:
        float32 [N, 128] embeddings (and the detection mask).
    """
    detector, predictor, net = _dlib_models()
    import dlib

    out = np.zeros((len(paths), 128), dtype=np.float32)
    detected = np.zeros(len(paths), dtype=bool)
    for i, path in enumerate(tqdm(paths, desc="dlib", leave=False, disable=not progress)):
        image = np.asarray(load_image(path))
        faces = detector(image, upsample)
        if len(faces):
            box = max(faces, key=lambda r: r.area())
            detected[i] = True
        else:
            h, w = image.shape[:2]
            mx, my = w * (1 - fallback_box) / 2, h * (1 - fallback_box) / 2
            box = dlib.rectangle(int(mx), int(my), int(w - mx), int(h - my))
        chip = dlib.get_face_chip(image, predictor(image, box), size=150, padding=0.25)
        out[i] = np.asarray(net.compute_face_descriptor(chip, num_jitters), dtype=np.float32)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return (out, detected) if return_detected else out


def dlib_baseline(
    data_root: str | Path | None = None,
    split: str = "val",
    threshold_split: str | None = "train",
    threshold_identities: int = 40,
    max_identities: int | None = None,
    upsample: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """The protocol on dlib's face descriptors (see :func:`dlib_embeddings`), for comparison.

    dlib runs at a few images per second on a CPU, hence the small ``threshold_identities``.

    Args:
        data_root: FACECOM root.
        split: The reported split.
        threshold_split: Split whose identities set the threshold (None: the reported one, oracle).
        threshold_identities: Identities used for that.
        max_identities: Subsample the reported split.
        upsample: Detector upsampling passes.
        seed: Seed of subsamples and impostor draws.
        progress: Show progress bars.

    Returns:
        The same metrics dict as :func:`evaluate_recognition`.
    """
    def embed(paths: list[str]) -> np.ndarray:
        return dlib_embeddings(paths, upsample=upsample, progress=progress)

    return _baseline_metrics(embed, data_root, split, threshold_split, threshold_identities, seed, max_identities)
