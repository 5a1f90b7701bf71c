"""The settings every training run shares: one base config, each task adds its own fields.

:class:`RunConfig` holds what Task A (:class:`~facecom_utils.gender.pipeline.GenderConfig`) and Task B
(:class:`~facecom_utils.recognition.RecognitionConfig`) have in common -- data and outputs, the
backbone, the optimisation schedule, the machine -- with its validation and the conversion to the
training loop's :class:`~facecom_utils.train.fit.TrainConfig`. A task config subclasses it, adds its
own fields and may give a shared field another default (as insightface's ``configs/base.py`` and its
short overrides). The defaults are the notebooks' defaults (the synthetic demo's quick settings):
each notebook's ``parameters`` cell declares the same names, types and defaults (a test holds them
together), and a preset (``params/<notebook>/<preset>.yml``) lists only what differs.

A setting shared by both tasks is added here once: a field with its default and one line in
:meth:`RunConfig.train_config` (or wherever it is used), plus its line in the two notebooks'
parameters cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from facecom_utils.data.cache import CACHE_MODES
from facecom_utils.train.fit import TrainConfig, seed_everything, select_device

__all__ = ["RunConfig", "AMP_MODES"]

AMP_MODES = ("auto", "fp16", "bf16", "none")
#: Tracks a run can put at the top of metrics.json (Task A has no ``face_model`` track).
HEADLINE_TRACKS = ("auto", "facecom_only", "face_model", "face_model_restored", "fused", "stacked")


@dataclass
class RunConfig:
    """Settings shared by the Task A and Task B training runs.

    Attributes:
        data_root: Folder holding ``Task_A``/``Task_B`` (None: FACECOM in the repository's
            ``Task_A/``/``Task_B/`` when they hold images, else the synthetic demo).
        output_dir: Where checkpoints, embeddings and ``metrics.json`` go (None: the task's
            ``default_output_dir``).
        holdout_fraction: When the data root has no reported split (``val``, as in the FACECOM
            training split alone), this share of the training persons/identities is held out
            (disjoint) and reported instead; 0: report on the validation fold (optimistic).
        val_fraction: Share of the training persons/identities carved out as the validation fold
            that chooses the checkpoint and the threshold.
        backbone: timm name, or ``"efficientnet-b0".."b7"`` (efficientnet_pytorch).
        pretrained: None, ``"imagenet"`` (download), ``"offline"`` (bundled ImageNet Lite0
            weights) or a checkpoint path.
        image_size: Input side in pixels.
        epochs: Maximum number of epochs.
        batch_size: Training batch size.
        lr: Peak learning rate (of the head; the backbone gets ``lr * backbone_lr_scale``).
        backbone_lr_scale: Learning-rate multiplier of the pretrained backbone.
        weight_decay: Weight decay.
        warmup_epochs: Linear warm-up length in epochs (fractions allowed).
        min_lr_ratio: Final learning rate of the cosine schedule, as a fraction of the peak.
        label_smoothing: Label smoothing of the loss.
        distortion_augment: Probability of an on-the-fly FACECOM distortion per (clean) training image.
        patience: Early-stopping patience in epochs (None: never stop early).
        max_train_minutes: Time budget: no epoch starts that would end past it (None: no budget).
        seed: Seed of the splits, the sampler, the augmentation and the initialisation.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
        amp: Mixed precision: ``"auto"`` (float16 on CUDA only), ``"fp16"``, ``"bf16"``, ``"none"``.
        num_workers: DataLoader worker processes.
        cache: Decoded-image cache: ``"auto"`` (disk when writable, else memory), ``"memory"``,
            ``"disk"`` or ``"off"`` (the reference path: PIL decode + transforms per image per epoch).
        cache_dir: Folder of disk caches (None: ``$FACECOM_CACHE_DIR`` or ``~/.cache/facecom``).
        distortion_variants: With the cache, pre-rendered seeded distortions per image that
            ``distortion_augment`` draws from; 0: distort on the fly.
        channels_last: Channels-last memory format for the model and the training batches.
        compile: ``torch.compile`` the model's forward.
        resume: Continue from ``<output_dir>/checkpoints/last.pt`` when it exists.
        progress: tqdm progress bars.
        face_model: Add the face-model tracks (dlib's descriptor, trained on outside face data,
            reported apart): True, False or ``"auto"`` (when dlib is installed).
        face_workers: Processes that compute face descriptors (None: up to 4, one per core).
        face_mirror: The face-model tracks read dlib's mirrored descriptor: the mean of a chip's and its
            left-right mirror's unit descriptors (:func:`~facecom_utils.face.descriptors.mirrored_mean`; cache
            files of its own). Recorded with the fitted tracks (``face_tracks.pt``), so a run folder is always
            read with the descriptor it was fitted on. Task B's default is True (it helped its strict protocol
            on the CV), Task A's False (no gain on its face head's CV).
        headline_track: The track written at the top of ``metrics.json``: ``"auto"`` (``fused``
            when the face tracks ran, else ``facecom_only``) or a track name (``stacked``: Task A only).
    """

    default_output_dir: ClassVar[str] = "reports/run"

    data_root: str | None = None
    output_dir: str | None = None
    holdout_fraction: float = 0.2
    val_fraction: float = 0.15
    backbone: str = "efficientnet_lite0"
    pretrained: str | None = "offline"
    image_size: int = 64
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_scale: float = 0.5
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.0
    distortion_augment: float = 0.3
    patience: int | None = 4
    max_train_minutes: float | None = None
    seed: int = 0
    device: str = "auto"
    amp: str | bool = "auto"
    num_workers: int = 0
    cache: str = "auto"
    cache_dir: str | None = None
    distortion_variants: int = 4
    channels_last: bool = False
    compile: bool = False
    resume: bool = False
    progress: bool = False
    face_model: bool | str = "auto"
    face_workers: int | None = None
    face_mirror: bool = False
    headline_track: str = "auto"

    def __post_init__(self) -> None:
        if self.face_model not in (True, False, "auto"):
            raise ValueError(f"face_model must be True, False or 'auto', got {self.face_model!r}")
        if self.headline_track not in HEADLINE_TRACKS:
            raise ValueError(f"headline_track must be one of {HEADLINE_TRACKS}, got {self.headline_track!r}")
        if str(self.cache).lower() not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {self.cache!r}")
        if self.pretrained in ("", "none", "None"):
            self.pretrained = None
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if not 0.0 <= self.distortion_augment <= 1.0:
            raise ValueError(f"distortion_augment must be in [0, 1], got {self.distortion_augment}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not isinstance(self.amp, bool) and str(self.amp) not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        for name in ("epochs", "batch_size", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.data_root is not None:
            self.data_root = str(self.data_root)
        self.output_dir = str(self.output_dir) if self.output_dir not in (None, "") else self.default_output_dir

    def start_run(self) -> torch.device:
        """What every run does first: seed everything, create ``output_dir``, pick the device."""
        seed_everything(self.seed)
        Path(self.output_dir).mkdir(parents=True, exist_ok=True)
        return select_device(self.device)

    def train_config(self, **task: Any) -> TrainConfig:
        """The training loop's settings from the shared fields; ``task`` adds or overrides the rest
        (e.g. ``monitor``, ``mode``, ``optimizer``, ``grad_clip``)."""
        budget = None if self.max_train_minutes is None else 60.0 * float(self.max_train_minutes)
        shared = dict(
            epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay, backbone_lr_scale=self.backbone_lr_scale,
            warmup_epochs=self.warmup_epochs, min_lr_ratio=self.min_lr_ratio, patience=self.patience, amp=self.amp,
            seed=self.seed, device=self.device, resume=self.resume, progress=self.progress, max_train_seconds=budget,
        )
        return TrainConfig(**{**shared, **task})
