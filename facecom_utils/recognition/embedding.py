"""Images to embeddings: the evaluation transforms, the training images dataset, embedding extraction with
flip and crop views, and the gallery/probe table of a split."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from tqdm.auto import tqdm

from facecom_utils.common.progress import ProgressLog, steps
from facecom_utils.data.splits import clean_counts
from facecom_utils.data.layout import central_crop, load_image
from facecom_utils.data.datasets import AugmentSpec, IMAGENET_MEAN, IMAGENET_STD, TorchSeededDistortion, make_loader
from facecom_utils.train.rundir import RunDir
from facecom_utils.nn.backbones import FaceEmbedder
from facecom_utils.train.fit import select_device

__all__ = ["build_recognition_transforms", "extract_embeddings", "embed_as_run", "embedding_table", "protocol_inputs",
           "load_embeddings"]


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
    steps += AugmentSpec.recognition(crop_scale, color_jitter).pil_steps(image_size)
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


def _embed_batch(model: nn.Module, x: torch.Tensor, source: str) -> dict[str, torch.Tensor]:
    """Unnormalised outputs of one batch: ``{"neck": ..., "pooled": ...}`` as asked."""
    embedder = getattr(model, "embedder", model)
    if isinstance(embedder, FaceEmbedder):
        wanted = ("pooled", "neck") if source == "auto" else (source,)
        return {k: v.float() for k, v in embedder.features(x, wanted).items()}
    return {"pooled" if source == "auto" else source: embedder(x).float()}  # any images -> features module


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
    log = ProgressLog(steps(loader), "embedding batches")
    for x, _ in tqdm(loader, desc="embedding", leave=False, disable=not progress):
        log.update()
        x = x.to(device)
        outs = _embed_batch(model, x, source)
        if flip_tta:
            flipped = _embed_batch(model, torch.flip(x, dims=[3]), source)
            outs = {k: F.normalize(v, dim=1) + F.normalize(flipped[k], dim=1) for k, v in outs.items()}
        for k, v in outs.items():
            chunks.setdefault(k, []).append(F.normalize(v, dim=1).cpu().numpy().astype(np.float32))
    seconds = time.perf_counter() - t0
    log.close()
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
        model: A :class:`RecognitionModel`, a :class:`~facecom_utils.nn.backbones.FaceEmbedder` or any
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



def embed_as_run(model: nn.Module, payload: dict[str, Any], paths: Sequence[str | Path], batch_size: int = 64,
                 device: str | torch.device = "auto") -> np.ndarray:
    """Embeddings of images by a trained run's model, with the views the run reported with.

    Args:
        model: The model of a Task B checkpoint (:func:`~facecom_utils.recognition.model.load_recognition_model`).
        payload: That checkpoint's contents: its ``config`` (image size, flip, face crop, TTA crops) and
            ``embedding_source``.
        paths: Image files, embedded in this order.
        batch_size: Images per forward pass.
        device: Where the model runs.

    Returns:
        float32 [N, D], every row L2-normalised (:func:`extract_embeddings`).
    """
    cfg = payload.get("config", {})
    return extract_embeddings(
        model, [str(p) for p in paths], image_size=int(cfg.get("image_size", 112)), batch_size=batch_size,
        device=device, flip_tta=bool(cfg.get("flip_tta", True)), face_crop=float(cfg.get("face_crop", 1.0)),
        source=str(payload.get("embedding_source", "neck")), tta_crops=tuple(cfg.get("tta_crops") or ()))


def embedding_table(table: pd.DataFrame) -> pd.DataFrame:
    """The rows to embed for the protocol: gallery (clean) first, then probes (distorted).

    Identities without a clean image are dropped (they cannot be gallery identities), with a warning.

    Returns:
        DataFrame with ``path``, ``identity``, ``distortion``, ``source`` and ``role``
        (``"gallery"``/``"probe"``), fresh index.
    """
    counts = clean_counts(table)
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
    """The keyword arguments of :func:`~facecom_utils.metrics.verification.evaluate_protocol` for a table.

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
    """A Task B run's saved embeddings of one role (:data:`~facecom_utils.train.rundir.FOLD_ROLE` or
    :data:`~facecom_utils.train.rundir.REPORT_ROLE`, a run's ``metrics["reported_role"]``); see
    :meth:`facecom_utils.train.rundir.RunDir.load_embeddings`.

    Returns:
        ``(table, embeddings)``.
    """
    return RunDir(run_dir).load_embeddings(role)
