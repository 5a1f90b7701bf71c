"""From tables of image paths to tensors: datasets, transforms, person-grouped folds, samplers.

Randomness here is drawn from torch's generator (transforms, :class:`TorchSeededDistortion`,
samplers seeded per epoch), so a training run is reproducible under ``torch.manual_seed`` and
DataLoader workers never repeat each other's draws.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import transforms as T

from facecom_utils.common.distributed import distributed_info
from facecom_utils.data.layout import DISTORTION_TYPES, load_image
from facecom_utils.data.distortions import apply_distortion

__all__ = [
    "AugmentSpec",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DistributedWeightedSampler",
    "ImageDataset",
    "TorchSeededDistortion",
    "balanced_sample_weights",
    "build_sampler",
    "build_transforms",
    "make_loader",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- transforms


class TorchSeededDistortion:
    """With probability ``p``, one random FACECOM distortion, its randomness drawn from torch.

    Unlike a transform with its own numpy generator, every draw here starts from torch's
    generator, so it follows ``torch.manual_seed`` in the main process and the per-worker seeds
    of a DataLoader: a resumed run repeats the uninterrupted run's augmentations exactly.

    Args:
        p: Probability of distorting an image.
        severity_range: ``(low, high)``: severity drawn uniformly (1.0 = FACECOM's own strength).
        kinds: Distortion types to draw from (default: all seven).
    """

    def __init__(
        self,
        p: float = 0.3,
        severity_range: tuple[float, float] = (0.5, 1.2),
        kinds: Sequence[str] = DISTORTION_TYPES,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)
        self.severity_range = (float(severity_range[0]), float(severity_range[1]))
        self.kinds = tuple(kinds)

    def __call__(self, image: Image.Image) -> Image.Image:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        if rng.random() >= self.p:
            return image
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        return apply_distortion(image, kind, float(rng.uniform(*self.severity_range)), rng)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, severity_range={self.severity_range}, kinds={self.kinds})"


@dataclass(frozen=True)
class AugmentSpec:
    """One augmentation recipe for training images, applied either per image on PIL images
    (:meth:`pil_steps`, the file data path) or per batch on the device
    (:meth:`facecom_utils.data.cache.BatchAugment.from_spec`, the cached data path).

    Attributes:
        crop_scale: Area range of the random resized crop.
        ratio: Aspect-ratio range of the crop.
        flip_p: Probability of a horizontal flip.
        brightness: Colour-jitter strength of brightness (0: none).
        contrast: Colour-jitter strength of contrast.
        saturation: Colour-jitter strength of saturation.
        hue: Colour-jitter strength of hue.
        grayscale_p: Probability of converting to greyscale.

    The defaults are Task A's mild recipe (faces are already aligned crops); :meth:`recognition` is
    Task B's.
    """

    crop_scale: tuple[float, float] = (0.75, 1.0)
    ratio: tuple[float, float] = (0.9, 1.1)
    flip_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02
    grayscale_p: float = 0.05

    @classmethod
    def recognition(cls, crop_scale: tuple[float, float] = (0.6, 1.0), color_jitter: float = 0.3) -> AugmentSpec:
        """Task B's recipe: wider crops, one jitter strength for brightness, contrast and saturation
        (hue gets a tenth of it), more greyscale."""
        jitter = float(color_jitter)
        return cls(tuple(crop_scale), (0.85, 1.18), 0.5, jitter, jitter, jitter, min(0.5, jitter / 10), 0.1)

    def pil_steps(self, image_size: int) -> list[object]:
        """The recipe as torchvision transforms on a PIL image (before ``ToTensor``)."""
        steps: list[object] = [
            T.RandomResizedCrop(image_size, scale=self.crop_scale, ratio=self.ratio, antialias=True),
            T.RandomHorizontalFlip(self.flip_p),
        ]
        if max(self.brightness, self.contrast, self.saturation, self.hue) > 0:
            steps.append(T.ColorJitter(self.brightness, self.contrast, self.saturation, self.hue))
        steps.append(T.RandomGrayscale(p=self.grayscale_p))
        return steps


def build_transforms(
    image_size: int,
    train: bool,
    distortion_p: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_scale: tuple[float, float] = (0.75, 1.0),
) -> T.Compose:
    """PIL image -> normalised tensor [3, S, S].

    Train: optional FACECOM distortion (:class:`TorchSeededDistortion`), a mild random resized
    crop (faces are already aligned crops), horizontal flip, light colour jitter. Eval: resize
    and centre crop only.

    Args:
        image_size: Output side S in pixels.
        train: Training augmentation or deterministic evaluation transform.
        distortion_p: Probability of a FACECOM distortion per training image.
        mean: Normalisation mean (ImageNet by default).
        std: Normalisation std.
        crop_scale: Area range of the random resized crop.
    """
    normalize = [T.ToTensor(), T.Normalize(mean, std)]
    if not train:
        return T.Compose([T.Resize(image_size), T.CenterCrop(image_size), *normalize])
    steps: list[object] = []
    if distortion_p > 0:
        steps.append(TorchSeededDistortion(p=distortion_p))
    steps += AugmentSpec(crop_scale=tuple(crop_scale)).pil_steps(image_size)
    return T.Compose([*steps, *normalize])


# ----------------------------------------------------------------------------- dataset


class ImageDataset(Dataset):
    """Images from paths, with optional labels: ``dataset[i] -> (image_tensor, label)``.

    Args:
        paths: Image files.
        labels: One integer label per path, or None (the label is then -1).
        transform: PIL -> tensor transform (see :func:`build_transforms`).
        load_size: Resize to this side on load (cheaper augmentation); None keeps the file's size.
        distortion: Apply this FACECOM distortion to every image (evaluation under distortion),
            deterministically per index, before ``transform``.
        distortion_seed: Seed of those distortions.
        distortion_severity: Their severity (1.0 = FACECOM's own).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int] | None = None,
        transform: T.Compose | None = None,
        load_size: int | None = None,
        distortion: str | None = None,
        distortion_seed: int = 0,
        distortion_severity: float = 1.0,
    ) -> None:
        self.paths = [str(p) for p in paths]
        if labels is not None and len(labels) != len(self.paths):
            raise ValueError(f"got {len(self.paths)} paths but {len(labels)} labels")
        self.labels = None if labels is None else [int(y) for y in labels]
        self.transform = transform
        self.load_size = load_size
        if distortion is not None and distortion not in DISTORTION_TYPES:
            raise ValueError(f"unknown distortion {distortion!r}; expected one of {DISTORTION_TYPES}")
        self.distortion = distortion
        self.distortion_seed = distortion_seed
        self.distortion_severity = distortion_severity

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.paths[index], self.load_size)
        if self.distortion is not None:
            kind_id = DISTORTION_TYPES.index(self.distortion)
            rng = np.random.default_rng([self.distortion_seed, kind_id, index])
            image = apply_distortion(image, self.distortion, self.distortion_severity, rng)
        x = self.transform(image) if self.transform is not None else T.functional.to_tensor(image)
        return x, (-1 if self.labels is None else self.labels[index])


# ----------------------------------------------------------------------------- folds


# ----------------------------------------------------------------------------- samplers


def balanced_sample_weights(labels: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Per-sample weights 1 / count(label), so each class is drawn equally often."""
    y = np.asarray(labels)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return torch.as_tensor(1.0 / counts[inverse], dtype=torch.double)


class DistributedWeightedSampler(Sampler[int]):
    """Weighted sampling with replacement, sharded across processes, re-drawn each epoch.

    Every process draws the same ``total_size`` indices from a generator seeded with
    ``seed + epoch`` and keeps positions ``rank, rank + world_size, ...``, so the ranks share
    one epoch's draw without overlapping positions. With one process it is a seeded
    ``WeightedRandomSampler``. Call :meth:`set_epoch` every epoch (``training.fit`` does).

    Args:
        weights: Per-sample weights (need not sum to 1).
        num_samples: Samples per epoch over all processes (default: the dataset size).
        seed: Base seed.
        num_replicas: Number of processes (default: the torch.distributed world size, or 1).
        rank: This process's rank (default: from torch.distributed, or 0).
    """

    def __init__(
        self,
        weights: Sequence[float] | torch.Tensor,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        default_rank, default_world = distributed_info()
        self.num_replicas = default_world if num_replicas is None else num_replicas
        self.rank = default_rank if rank is None else rank
        total = len(self.weights) if num_samples is None else num_samples
        self.num_samples = math.ceil(total / self.num_replicas)  # per process
        self.total_size = self.num_samples * self.num_replicas
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator)
        return iter(indices[self.rank : self.total_size : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def build_sampler(labels: Sequence[int] | np.ndarray, balance: str = "sampler", seed: int = 0) -> Sampler[int] | None:
    """The training sampler for a class-balance strategy, aware of torch.distributed.

    Args:
        labels: Training labels.
        balance: ``"sampler"``: class-balanced :class:`DistributedWeightedSampler`; anything
            else (``"pos_weight"``, ``"none"``): plain shuffling.
        seed: Base seed (re-drawn each epoch via ``set_epoch``).

    Returns:
        A sampler, or None meaning "``shuffle=True``" (single process, plain shuffling).
    """
    if balance == "sampler":
        return DistributedWeightedSampler(balanced_sample_weights(labels), seed=seed)
    if distributed_info()[1] > 1:
        return DistributedSampler(range(len(labels)), shuffle=True, seed=seed)  # type: ignore[arg-type]
    return None


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    sampler: Sampler[int] | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader with the project's defaults.

    Training loaders shuffle (unless a sampler is given) and drop the last incomplete batch
    when there is more than one batch (a batch of one breaks batch norm in train mode).
    Evaluation loaders keep order. Workers persist across epochs.
    """
    drop_last = train and len(dataset) > batch_size  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )
