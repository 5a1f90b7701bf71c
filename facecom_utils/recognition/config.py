"""Task B's settings: :class:`RecognitionConfig` (the shared run settings plus Task B's own)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from facecom_utils.data.layout import DISTORTION_TYPES
from facecom_utils.train.config import RunConfig

__all__ = ["EMBEDDING_SOURCES", "METRIC_KEYS", "RecognitionConfig"]


EMBEDDING_SOURCES = ("neck", "pooled", "auto")

# The metrics.json keys the issue asks for (each also exists prefixed "strict_").
METRIC_KEYS = (
    "top1", "top5", "roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "tar_at_far_1e-4",
    "match_accuracy", "match_f1_macro", "threshold", "per_distortion",
)


@dataclass
class RecognitionConfig(RunConfig):
    """Everything that defines a Task B training run (saved in every checkpoint): the shared
    :class:`~facecom_utils.train.config.RunConfig` (with Task B's own defaults for the learning rates,
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
            :func:`facecom_utils.metrics.verification.choose_match_threshold`).
        flip_tta: Average each embedding with that of the mirrored image.
        tta_crops: Extra central-crop views (fractions of the image side, like ``face_crop``) for
            the fold, threshold and reported embeddings: each view is embedded on its own and the
            L2-normalised views are concatenated (scaled by ``1/sqrt(views)``), so the cosine of two
            images is the mean of their per-view cosines. FACECOM's sunny glare washes out the face
            centre: the full frame keeps the hair, clothes and background that still identify a
            sunny probe, while a tighter crop spends the pixels on the face, which carries the
            other types and the strict protocol. ``()``: the ``face_crop`` view only. The per-epoch
            model choice uses the ``face_crop`` view alone (cheaper).
        face_mirror: As :class:`~facecom_utils.train.config.RunConfig`'s, on by default here (``face_model``,
            ``face_model_restored``, ``fused``; docs/results.md § Task B — the mirrored face descriptor).

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
    face_mirror: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.headline_track == "stacked":
            raise ValueError("Task B has no stacked track (it is Task A's): use auto, facecom_only, face_model, "
                             "face_model_restored or fused")
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
