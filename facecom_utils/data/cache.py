"""Decode every image once: a uint8 image cache, a Dataset over it, and batch augmentation on tensors.

FACECOM is small (about 19k images of 224 px) and the reference pipeline re-reads and re-decodes
every JPEG every epoch, then augments it image by image with PIL. On the machines people use (two
CPU cores beside a GPU) that, not the GPU, sets the pace. This module removes the per-epoch decode:

* :class:`ImageCache` decodes and resizes every image once to uint8 ``[N, 3, S, S]`` at the
  training size, either in memory or in a memory-mapped ``.npy`` file on disk. A disk cache is
  keyed by the file list, every file's size and modification time, the image size and the
  preparation (crop, resize rule), so a changed dataset never reuses a stale cache; it is written
  atomically and shared between runs, notebooks and torchrun processes.
* :class:`CachedImageDataset` serves cached images: uint8 tensors for training (augmented later,
  on the device, a whole batch at a time) or normalised float tensors for evaluation -- those are
  bit-identical to the reference evaluation transform, because the cache is built with the same
  PIL operations.
* The FACECOM distortion augmentation still applies: the clean decode is cached and, for the
  sampled fraction only, a distortion is drawn on the fly at the training resolution (the same
  :class:`~facecom_utils.data.datasets.TorchSeededDistortion` as the reference pipeline, so the
  distribution of distortions is unchanged and unlimited rather than a fixed pre-rendered set).
* :class:`BatchAugment` does random resized crop + flip (one ``affine_grid``/``grid_sample`` call
  for the whole batch, every image with its own box), colour jitter, random greyscale and
  normalisation on a whole batch, on the GPU when there is one. Its randomness comes from torch's
  generator of the batch's device, so :func:`~facecom_utils.train.fit.fit`'s per-epoch seeding
  makes resumed runs repeat it.

Example::

    cache = ImageCache.build(paths, image_size=128, mode="auto")
    train_ds = CachedImageDataset(cache, labels, distortion_p=0.3)       # uint8 [3, S, S]
    augment = BatchAugment(crop_scale=(0.75, 1.0))
    x = augment(x_uint8_batch.to(device))                               # normalised float [B, 3, S, S]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from facecom_utils.common.distributed import distributed_info
from facecom_utils.data.layout import DISTORTION_TYPES, central_crop, load_image
from facecom_utils.data.datasets import IMAGENET_MEAN, IMAGENET_STD, AugmentSpec, TorchSeededDistortion

__all__ = [
    "CACHE_MODES",
    "BatchAugment",
    "CachedImageDataset",
    "ImageCache",
    "apply_speedups",
    "cache_key",
    "cached_dataset",
    "default_cache_dir",
    "prepare_image",
    "resolve_cache_mode",
]

CACHE_MODES = ("auto", "memory", "disk", "off")
RESIZE_RULES = ("shorter", "square")
_CACHE_VERSION = 1


# ----------------------------------------------------------------------------- preparation


def prepare_image(path: str | Path, image_size: int, face_crop: float = 1.0, resize: str = "shorter") -> np.ndarray:
    """Decodes one image and brings it to the cached form: uint8 ``[3, S, S]``.

    The PIL operations are those of the reference evaluation transforms, so converting the result
    to float and normalising gives exactly what they give.

    Args:
        path: Image file.
        image_size: Side S in pixels.
        face_crop: Keep the central ``face_crop`` of each side first (1.0: no crop), as
            Task B's ``face_crop`` does.
        resize: ``"shorter"``: resize the shorter side to S, then centre-crop S x S (Task A's
            evaluation transform); ``"square"``: resize to S x S (Task B's).
    """
    image = central_crop(load_image(path), face_crop)
    if resize == "shorter":
        image = TF.center_crop(TF.resize(image, image_size, antialias=True), image_size)
    elif resize == "square":
        image = TF.resize(image, [image_size, image_size], antialias=True)
    else:
        raise ValueError(f"resize must be one of {RESIZE_RULES}, got {resize!r}")
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def cache_key(paths: Sequence[str | Path], image_size: int, face_crop: float = 1.0, resize: str = "shorter") -> str:
    """A hex digest of everything a cache depends on: files (path, size, mtime) and preparation.

    Raises:
        FileNotFoundError: One of the files is missing (named in the message).
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([_CACHE_VERSION, int(image_size), float(face_crop), resize]).encode())
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: image listed for the cache does not exist") from None
        digest.update(f"\0{p}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def default_cache_dir() -> Path:
    """``$FACECOM_CACHE_DIR``, else ``$XDG_CACHE_HOME/facecom``, else ``~/.cache/facecom``."""
    if os.environ.get("FACECOM_CACHE_DIR"):
        return Path(os.environ["FACECOM_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "facecom"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def resolve_cache_mode(mode: str | bool | None, cache_dir: str | Path | None = None) -> str:
    """The concrete mode for a setting: ``"memory"``, ``"disk"`` or ``"off"``.

    ``"auto"`` (or True) means ``"disk"`` when the cache folder is writable (the decode is then
    paid once across runs, notebooks and torchrun processes), else ``"memory"``. False/None/"off": off.
    """
    key = {True: "auto", False: "off", None: "off"}.get(mode, mode)  # type: ignore[arg-type]
    key = str(key).lower()
    if key not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {mode!r}")
    if key == "auto":
        return "disk" if _writable(Path(cache_dir) if cache_dir else default_cache_dir()) else "memory"
    return key




# ----------------------------------------------------------------------------- the cache


class ImageCache:
    """Decoded images, uint8 ``[N, 3, S, S]``, in memory or memory-mapped from a ``.npy`` file.

    Build with :meth:`build`. A disk cache pickles as its file name (DataLoader workers reopen
    the memory map instead of copying the array).

    Attributes:
        array: The images (``np.ndarray`` or read-only ``np.memmap``).
        paths: The source files, in row order.
        image_size: Side S.
        file: The ``.npy`` file of a disk cache (None in memory).
        built: Whether :meth:`build` decoded the images (False: an existing file was reused).
    """

    def __init__(self, array: np.ndarray, paths: Sequence[str], image_size: int, file: Path | None = None,
                 built: bool = True) -> None:
        if array.ndim != 4 or array.shape[1] != 3 or array.shape[0] != len(paths):
            raise ValueError(f"expected a uint8 array [N={len(paths)}, 3, S, S], got shape {array.shape}")
        self.array = array
        self.paths = [str(p) for p in paths]
        self.image_size = int(image_size)
        self.file = file
        self.built = built

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.file is not None:
            state["array"] = None  # reopened in __setstate__
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.array is None:
            self.array = np.load(self.file, mmap_mode="r")

    def batch(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """uint8 tensor ``[B, 3, S, S]`` of the given rows (a copy)."""
        idx = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(self.array[idx]))

    @classmethod
    def build(
        cls,
        paths: Sequence[str | Path],
        image_size: int,
        face_crop: float = 1.0,
        resize: str = "shorter",
        mode: str = "auto",
        cache_dir: str | Path | None = None,
        num_threads: int | None = None,
        progress: bool = False,
    ) -> ImageCache:
        """Decodes ``paths`` once (or reopens a matching disk cache).

        Args:
            paths: Image files, in the order of the rows.
            image_size: Side S of the cached images.
            face_crop: Central crop fraction applied before resizing (see :func:`prepare_image`).
            resize: ``"shorter"`` or ``"square"`` (see :func:`prepare_image`).
            mode: ``"memory"``, ``"disk"`` or ``"auto"`` (see :func:`resolve_cache_mode`).
            cache_dir: Folder of disk caches (default :func:`default_cache_dir`).
            num_threads: Decoding threads (PIL releases the GIL); default ``min(4, cpu count)``.
            progress: Show a progress bar while decoding.

        Under torch.distributed, local rank 0 writes a disk cache while the other ranks wait, then
        every rank maps the same file (a rank that cannot see it decodes into memory).
        """
        paths = [str(p) for p in paths]
        if resize not in RESIZE_RULES:
            raise ValueError(f"resize must be one of {RESIZE_RULES}, got {resize!r}")

        def fill(i: int) -> np.ndarray:
            return prepare_image(paths[i], image_size, face_crop, resize)

        key = cache_key(paths, image_size, face_crop, resize) if resolve_cache_mode(mode, cache_dir) == "disk" else ""
        meta = {"image_size": image_size, "face_crop": face_crop, "resize": resize, "first_paths": paths[:3]}
        return cls._materialize(paths, image_size, fill, f"images_{image_size}px_{key}", meta, mode, cache_dir,
                                num_threads, progress, f"caching {image_size}px images")

    @classmethod
    def _materialize(
        cls,
        paths: list[str],
        image_size: int,
        fill: Any,
        name: str,
        meta: dict[str, Any],
        mode: str,
        cache_dir: str | Path | None,
        num_threads: int | None,
        progress: bool,
        desc: str,
    ) -> ImageCache:
        """Row ``i`` = ``fill(i)``, in memory or in ``<cache_dir>/<name>.npy`` (reused when valid)."""
        mode = resolve_cache_mode(mode, cache_dir)
        if mode == "off":
            raise ValueError("a cache needs mode 'memory', 'disk' or 'auto'")
        shape = (len(paths), 3, image_size, image_size)
        if mode == "memory":
            out = np.empty(shape, dtype=np.uint8)
            cls._fill(out, fill, num_threads, progress, desc)
            return cls(out, paths, image_size)

        folder = Path(cache_dir) if cache_dir else default_cache_dir()
        file = folder / f"{name}.npy"
        rank, world = distributed_info()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))  # one writer per machine
        built = False
        if local_rank == 0 and not cls._valid(file, shape):
            folder.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
            try:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                cls._fill(out, fill, num_threads, progress, desc)
                out.flush()
                del out
                os.replace(tmp, file)
                file.with_suffix(".json").write_text(json.dumps({**meta, "n": len(paths)}, indent=1))
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            built = True
        if world > 1:
            dist.barrier()
        if not cls._valid(file, shape):  # a rank on another machine, without a shared disk
            return cls._materialize(paths, image_size, fill, name, meta, "memory", None, num_threads, progress, desc)
        return cls(np.load(file, mmap_mode="r"), paths, image_size, file=file, built=built)

    @staticmethod
    def _valid(file: Path, shape: tuple[int, ...]) -> bool:
        if not file.is_file():
            return False
        try:
            arr = np.load(file, mmap_mode="r")
        except (OSError, ValueError):
            return False
        return arr.dtype == np.uint8 and arr.shape == shape

    @staticmethod
    def _fill(out: np.ndarray, fill: Any, num_threads: int | None, progress: bool, desc: str) -> None:
        threads = num_threads or min(4, os.cpu_count() or 1)

        def one(i: int) -> None:
            out[i] = fill(i)

        bar = tqdm(total=len(out), desc=desc, leave=False, disable=not progress)
        if threads <= 1:
            for i in range(len(out)):
                one(i)
                bar.update(1)
        else:
            with ThreadPoolExecutor(threads) as pool:
                for _ in pool.map(one, range(len(out))):
                    bar.update(1)
        bar.close()

    def render_distortions(
        self,
        rows: Sequence[int] | np.ndarray,
        variants: int,
        seed: int = 0,
        severity_range: tuple[float, float] = (0.5, 1.2),
        mode: str = "auto",
        cache_dir: str | Path | None = None,
        num_threads: int | None = None,
        progress: bool = False,
    ) -> ImageCache:
        """Pre-renders ``variants`` seeded FACECOM distortions of each of ``rows`` (a cache of their own).

        Row ``j * variants + k`` holds variant ``k`` of cache row ``rows[j]``: a distortion type
        drawn uniformly and a severity drawn from ``severity_range``, seeded by ``(seed, row, k)``.
        A disk cache is keyed by this cache's key, the rows, the count, the seed and the range.
        """
        from facecom_utils.data.distortions import apply_distortion

        rows = np.asarray(rows, dtype=np.int64)
        paths = [f"{self.paths[r]}#distortion{k}" for r in rows for k in range(variants)]
        low, high = float(severity_range[0]), float(severity_range[1])

        def fill(i: int) -> np.ndarray:
            row, k = int(rows[i // variants]), i % variants
            rng = np.random.default_rng([seed, row, k])
            kind = DISTORTION_TYPES[int(rng.integers(len(DISTORTION_TYPES)))]
            image = Image.fromarray(np.ascontiguousarray(self.array[row].transpose(1, 2, 0)))
            return np.asarray(apply_distortion(image, kind, float(rng.uniform(low, high)), rng), np.uint8).transpose(2, 0, 1)

        if self.file is None:  # a memory cache has no stable key: its variants stay in memory too
            mode = "memory"
        parent = self.file.stem if self.file is not None else "memory"
        digest = hashlib.sha256(json.dumps([parent, rows.tolist(), variants, seed, low, high]).encode()).hexdigest()[:32]
        return ImageCache._materialize(paths, self.image_size, fill, f"distorted_{self.image_size}px_{digest}",
                                       {"parent": parent, "variants": variants, "seed": seed}, mode, cache_dir,
                                       num_threads, progress, "pre-rendering distortions")


# ----------------------------------------------------------------------------- dataset


class CachedImageDataset(Dataset):
    """``dataset[i] -> (image, label)`` from an :class:`ImageCache`.

    Args:
        cache: The decoded images.
        labels: One integer label per cached image, or None (labels are then -1).
        indices: Rows of the cache this dataset serves (default: all), e.g. a fold.
        distortion_p: Probability of an on-the-fly FACECOM distortion (training).
        distort: Which rows may be distorted (bool per served row; default: all), e.g. only
            Task B's clean photos.
        severity_range: Severity range of those distortions.
        normalize: Return normalised float tensors (evaluation; identical to ToTensor +
            Normalize on the same PIL image) instead of uint8 (training, augmented later by
            :class:`BatchAugment`).
        distortion: Apply this one distortion to every image, seeded by index (evaluation under
            distortion, as ``ImageDataset(distortion=...)``).
        distortion_seed: Seed of those distortions.
    """

    def __init__(
        self,
        cache: ImageCache,
        labels: Sequence[int] | np.ndarray | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        distortion_p: float = 0.0,
        distort: Sequence[bool] | np.ndarray | None = None,
        severity_range: tuple[float, float] = (0.5, 1.2),
        normalize: bool = False,
        distortion: str | None = None,
        distortion_seed: int = 0,
        variants: ImageCache | None = None,
        variant_rows: Sequence[int] | np.ndarray | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.cache = cache
        self.variants = variants
        self.variant_of = np.full(len(cache), -1, np.int64)  # cache row -> block of its variants
        self.n_variants = 0
        if variants is not None:
            if variant_rows is None or len(variants) % max(len(variant_rows), 1):
                raise ValueError("variants need the variant_rows they were rendered for")
            self.n_variants = len(variants) // max(len(variant_rows), 1)
            self.variant_of[np.asarray(variant_rows, np.int64)] = np.arange(len(variant_rows))
        self.indices = np.arange(len(cache)) if indices is None else np.asarray(indices, dtype=np.int64)
        if labels is not None and len(labels) != len(self.indices):
            raise ValueError(f"got {len(self.indices)} images but {len(labels)} labels")
        self.labels = np.full(len(self.indices), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        self.distorter = TorchSeededDistortion(p=distortion_p, severity_range=severity_range) if distortion_p > 0 else None
        self.distort = np.ones(len(self.indices), bool) if distort is None else np.asarray(distort, bool)
        if distortion is not None and distortion not in DISTORTION_TYPES:
            raise ValueError(f"unknown distortion {distortion!r}; expected one of {DISTORTION_TYPES}")
        self.distortion = distortion
        self.distortion_seed = distortion_seed
        self.normalize = normalize
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def paths(self) -> list[str]:
        return [self.cache.paths[i] for i in self.indices]

    def _finish(self, image: torch.Tensor, i: int) -> torch.Tensor:
        if self.distortion is not None:
            from facecom_utils.data.distortions import apply_distortion

            rng = np.random.default_rng([self.distortion_seed, DISTORTION_TYPES.index(self.distortion), int(i)])
            pil = apply_distortion(Image.fromarray(image.permute(1, 2, 0).numpy()), self.distortion, 1.0, rng)
            image = torch.from_numpy(np.asarray(pil, np.uint8).transpose(2, 0, 1).copy())
        elif self.distorter is not None and self.distort[i] and self.variants is not None:
            block = self.variant_of[self.indices[i]]
            if torch.rand(()) < self.distorter.p and block >= 0 and self.n_variants:
                k = int(torch.randint(self.n_variants, ()))
                image = torch.from_numpy(np.array(self.variants.array[block * self.n_variants + k]))
        elif self.distorter is not None and self.distort[i]:
            pil = Image.fromarray(image.permute(1, 2, 0).numpy())
            out = self.distorter(pil)
            if out is not pil:
                image = torch.from_numpy(np.asarray(out, np.uint8).transpose(2, 0, 1).copy())
        if self.normalize:
            return (image.float().div_(255) - self.mean) / self.std
        return image

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.cache.array[self.indices[i]]))
        return self._finish(image, i), int(self.labels[i])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """A whole batch with one gather from the cache (the DataLoader calls this)."""
        idx = np.asarray(indices, dtype=np.int64)
        images = self.cache.batch(self.indices[idx])
        return [(self._finish(images[k], int(i)), int(self.labels[i])) for k, i in enumerate(idx)]


# ----------------------------------------------------------------------------- batch augmentation


_GRAY = (0.299, 0.587, 0.114)


class BatchAugment(nn.Module):
    """Training augmentation of a whole uint8 (or 0..1 float) batch, on the batch's device.

    Per image: random resized crop (area in ``crop_scale``, aspect ratio in ``ratio``) and
    horizontal flip in one ``grid_sample``; brightness, contrast, saturation jitter, a hue
    rotation (in YIQ space) and random greyscale folded into one per-image colour matrix (one
    batched matrix product); then normalisation. Outputs float32
    ``[B, 3, S, S]`` (S = ``image_size`` or the input side). With ``train=False`` it only converts
    and normalises.

    Args:
        image_size: Output side (default: the input's).
        crop_scale: Area range of the crop, as a fraction of the image.
        ratio: Aspect-ratio range of the crop.
        flip_p: Probability of a horizontal flip.
        brightness: Brightness factor drawn from ``[1 - b, 1 + b]``.
        contrast: Contrast factor from ``[1 - c, 1 + c]``.
        saturation: Saturation factor from ``[1 - s, 1 + s]``.
        hue: Hue rotation drawn from ``[-hue, hue]`` turns (torchvision's convention, <= 0.5).
        grayscale_p: Probability of converting to greyscale.
        mean: Normalisation mean.
        std: Normalisation std.
        train: Augment (True) or only normalise.
        channels_last: Return the batch in channels-last memory format.
    """

    def __init__(
        self,
        image_size: int | None = None,
        crop_scale: tuple[float, float] = AugmentSpec.crop_scale,
        ratio: tuple[float, float] = AugmentSpec.ratio,
        flip_p: float = AugmentSpec.flip_p,
        brightness: float = AugmentSpec.brightness,
        contrast: float = AugmentSpec.contrast,
        saturation: float = AugmentSpec.saturation,
        hue: float = AugmentSpec.hue,
        grayscale_p: float = AugmentSpec.grayscale_p,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train: bool = True,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.flip_p, self.grayscale_p = float(flip_p), float(grayscale_p)
        self.brightness, self.contrast, self.saturation, self.hue = map(float, (brightness, contrast, saturation, hue))
        self.train_mode = train
        self.channels_last = channels_last
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("gray", torch.tensor(_GRAY, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, crop_scale={self.crop_scale}, flip_p={self.flip_p}, "
                f"jitter=({self.brightness}, {self.contrast}, {self.saturation}, {self.hue}), "
                f"grayscale_p={self.grayscale_p}, train={self.train_mode}")

    def _uniform(self, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
        return torch.rand(n, device=device) * (high - low) + low

    def _crop_flip(self, x: torch.Tensor, size: int) -> torch.Tensor:
        b, dev = x.shape[0], x.device
        area = self._uniform(b, *self.crop_scale, dev)
        r = torch.exp(self._uniform(b, *self.log_ratio, dev))
        w = torch.sqrt(area * r).clamp(max=1.0)  # fraction of the width kept
        h = torch.sqrt(area / r).clamp(max=1.0)
        cx = (torch.rand(b, device=dev) * 2 - 1) * (1 - w)  # centre, in [-1, 1] coordinates
        cy = (torch.rand(b, device=dev) * 2 - 1) * (1 - h)
        flip = torch.where(torch.rand(b, device=dev) < self.flip_p, -1.0, 1.0)
        # The sampling grid of an axis-aligned box is separable: built from two [B, S] rows
        # (what affine_grid computes, at a fraction of its cost).
        base = (torch.arange(size, device=dev, dtype=torch.float32) * 2 + 1) / size - 1
        gx = (w * flip).unsqueeze(1) * base + cx.unsqueeze(1)
        gy = h.unsqueeze(1) * base + cy.unsqueeze(1)
        grid = torch.stack((gx.unsqueeze(1).expand(b, size, size), gy.unsqueeze(2).expand(b, size, size)), dim=-1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _colour_matrix(self, x: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image, the colour jitter + greyscale as one affine map ``A @ rgb + t`` (``[B,3,3]``, ``[B,3,1]``).

        ``x`` holds values in ``[0, 1 / scale]`` (``scale=1/255`` for raw uint8 levels); the map
        works on ``scale * x``.

        Brightness, contrast, saturation, hue rotation (in YIQ space) and greyscale are each
        linear in RGB (contrast's pivot is the image's mean grey level), so their composition is
        one 3x3 matrix and an offset: the whole batch is jittered with one batched matrix product.
        Unlike torchvision, intermediate results are not clipped (only the final one is) and
        the order is fixed.
        """
        b, dev = x.shape[0], x.device
        eye = torch.eye(3, device=dev).expand(b, 3, 3)
        gray = self.gray.view(1, 1, 3).expand(b, 1, 3)
        to_gray = torch.ones(b, 3, 1, device=dev) @ gray  # rgb -> (g, g, g)
        a = eye.clone()
        t = torch.zeros(b, 3, 1, device=dev)

        def factor(strength: float) -> torch.Tensor:
            return self._uniform(b, 1 - strength, 1 + strength, dev).view(b, 1, 1)

        if self.brightness > 0:
            a = factor(self.brightness) * a
        if self.contrast > 0:
            mean_gray = (x.mean((2, 3)).unsqueeze(1) * scale @ gray.transpose(1, 2))  # [B, 1, 1], before jitter
            mean_gray = (gray @ a @ torch.ones(b, 3, 1, device=dev)) * mean_gray  # after brightness
            c = factor(self.contrast)
            a, t = c * a, c * t + (1 - c) * mean_gray
        if self.saturation > 0:
            s = factor(self.saturation)
            m = s * eye + (1 - s) * to_gray
            a, t = m @ a, m @ t
        if self.hue > 0:
            angle = self._uniform(b, -self.hue, self.hue, dev) * 2 * math.pi
            to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=dev)
            rot = torch.zeros(b, 3, 3, device=dev)
            rot[:, 0, 0] = 1
            rot[:, 1, 1], rot[:, 1, 2] = torch.cos(angle), -torch.sin(angle)
            rot[:, 2, 1], rot[:, 2, 2] = torch.sin(angle), torch.cos(angle)
            m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
            a, t = m @ a, m @ t
        if self.grayscale_p > 0:
            pick = (torch.rand(b, device=dev) < self.grayscale_p).view(b, 1, 1)
            a, t = torch.where(pick, to_gray @ a, a), torch.where(pick, to_gray @ t, t)
        return a, t

    @classmethod
    def from_spec(cls, image_size: int | None, spec: AugmentSpec, **kwargs: Any) -> BatchAugment:
        """The batch version of an :class:`~facecom_utils.data.datasets.AugmentSpec` (the per-image recipe)."""
        return cls(image_size, spec.crop_scale, spec.ratio, spec.flip_p, spec.brightness, spec.contrast,
                   spec.saturation, spec.hue, spec.grayscale_p, **kwargs)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Training calls this inside the model's autocast: keep the augmentation in float32 (and
        # its output float32, as documented) rather than in the autocast dtype.
        if x.device.type in ("cpu", "cuda"):
            with torch.autocast(x.device.type, enabled=False):
                return self._forward(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1 / 255 if x.dtype == torch.uint8 else 1.0
        size = self.image_size or x.shape[-1]
        if self.train_mode:
            # Crop/flip interpolate the raw levels (a linear map, so the /255 commutes); the /255,
            # the colour map and the normalisation are then one per-image affine map, and the
            # clamp to [0, 1] becomes a clamp to each channel's normalised bounds: one pass over
            # the batch instead of four.
            x = x.float()
            a, t = self._colour_matrix(x, scale)
            x = self._crop_flip(x, size)
            b = x.shape[0]
            inv_std = 1.0 / self.std.view(1, 3, 1)
            a = a * (scale * inv_std)
            t = (t - self.mean.view(1, 3, 1)) * inv_std
            x = torch.baddbmm(t, a, x.reshape(b, 3, -1))
            for c, (m, sd) in enumerate(zip(self.mean.flatten().tolist(), self.std.flatten().tolist())):
                x[:, c].clamp_((0 - m) / sd, (1 - m) / sd)  # scalar bounds: ~10x faster than tensor ones
            x = x.view(b, 3, size, size)
            return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        x = x.float().div_(255) if scale != 1.0 else x.float()
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


# ----------------------------------------------------------------------------- model speed-ups


def apply_speedups(model: nn.Module, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """Optional model speed-ups that keep the checkpoint format unchanged.

    ``channels_last`` converts the weights' memory format (faster convolutions on recent GPUs
    with AMP). ``compile`` wraps ``model.forward`` with ``torch.compile`` (the module and its
    ``state_dict`` keys stay as they are); on failure it warns and runs uncompiled.
    """
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        try:
            model.forward = torch.compile(model.forward)  # type: ignore[method-assign]
        except Exception as err:  # pragma: no cover - depends on the platform's compiler
            warnings.warn(f"torch.compile failed ({err}); running uncompiled", stacklevel=2)
    return model


# ----------------------------------------------------------------------------- one call for the pipelines


def cached_dataset(
    paths: Sequence[str | Path],
    labels: Sequence[int] | np.ndarray | None,
    image_size: int,
    face_crop: float = 1.0,
    resize: str = "shorter",
    distortion_p: float = 0.0,
    distort: Sequence[bool] | np.ndarray | None = None,
    severity_range: tuple[float, float] = (0.5, 1.2),
    variants: int = 4,
    seed: int = 0,
    normalize: bool = False,
    mode: str = "auto",
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> CachedImageDataset:
    """Cache ``paths`` (and, for training, pre-render their distortions) and wrap them in a dataset.

    Args:
        paths: Image files.
        labels: Their integer labels (None: -1).
        image_size: Cached side S.
        face_crop: Central crop fraction before resizing.
        resize: ``"shorter"`` (Task A) or ``"square"`` (Task B); see :func:`prepare_image`.
        distortion_p: Probability of a FACECOM distortion per eligible training image.
        distort: Which images are eligible (default: all).
        severity_range: Severity range of the distortions.
        variants: Pre-rendered distortions per eligible image (seeded, cached beside the images);
            0 distorts on the fly instead (unbounded variety, about 3x slower data path on CPU).
        seed: Seed of the pre-rendered distortions.
        normalize: Serve normalised float images (evaluation) instead of uint8 (training).
        mode: ``"auto"``, ``"memory"`` or ``"disk"`` (see :func:`resolve_cache_mode`).
        cache_dir: Folder of disk caches.
        progress: Progress bars while decoding / rendering.
    """
    cache = ImageCache.build(paths, image_size, face_crop, resize, mode, cache_dir, progress=progress)
    eligible = np.ones(len(cache), bool) if distort is None else np.asarray(distort, bool)
    rendered, rows = None, None
    if distortion_p > 0 and variants > 0 and eligible.any():
        rows = np.flatnonzero(eligible)
        rendered = cache.render_distortions(rows, variants, seed, severity_range, mode, cache_dir, progress=progress)
    return CachedImageDataset(cache, labels, distortion_p=distortion_p, distort=eligible, severity_range=severity_range,
                              normalize=normalize, variants=rendered, variant_rows=rows)
