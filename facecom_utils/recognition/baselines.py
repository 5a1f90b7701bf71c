"""Reference points on the same protocol: untrained ImageNet features and dlib's face descriptor."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facecom_utils.data.splits import subsample_identities
from facecom_utils.data.layout import scan_task_b
from facecom_utils.data.demo import resolve_data_root
from facecom_utils.nn.backbones import create_backbone
from facecom_utils.recognition.embedding import embedding_table, extract_embeddings
from facecom_utils.recognition.protocol import _threshold_table, choose_thresholds, protocol_metrics

__all__ = ["imagenet_baseline", "dlib_embeddings", "dlib_baseline"]


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
    table = embedding_table(subsample_identities(table, max_identities, seed))
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


def dlib_embeddings(
    paths: Sequence[str | Path],
    upsample: int = 1,
    progress: bool = False,
    return_detected: bool = False,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    mirror: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """dlib's 128-d ResNet face descriptors, L2-normalised (cosine scoring like ours).

    The face model's own path (:class:`~facecom_utils.face.descriptors.DescriptorStore`, no
    restoration): the face front end (dlib's HOG detector, the best-scoring face, the measured
    fallback box and landmarks when it finds none), alignment to dlib's 150 px chip and dlib's
    network in PyTorch. So these are the embeddings of notebook 03's ``face_model`` track (with
    ``mirror=True`` as it reads them by default, ``face_mirror``), and they share its descriptor cache.

    Args:
        paths: Image files.
        upsample: Detector upsampling passes (1 finds smaller faces; 0 is faster).
        progress: Show a progress bar.
        return_detected: Also return the boolean [N] mask of images where a face was detected.
        cache_dir: The cache root (None: :func:`~facecom_utils.data.cache.default_cache_dir`); the
            descriptors live in its ``face_model`` folder, keyed by file content.
        workers: Worker processes for descriptors not cached yet.
        mirror: The mirrored descriptor (:func:`~facecom_utils.face.descriptors.mirrored_mean`), as notebook 03
            reads it with ``face_mirror=True``.

    Returns:
        float32 [N, 128] embeddings (and the detection mask).
    """
    from facecom_utils.face.descriptors import DescriptorStore, face_model_cache

    store = DescriptorStore(face_model_cache(cache_dir), upsample=upsample, workers=workers, progress=progress,
                            mirror=mirror)
    described = store.describe(paths)
    out = described.normalised().astype(np.float32)
    return (out, described.detected) if return_detected else out


def dlib_baseline(
    data_root: str | Path | None = None,
    split: str = "val",
    threshold_split: str | None = "train",
    threshold_identities: int = 40,
    max_identities: int | None = None,
    upsample: int = 1,
    seed: int = 0,
    progress: bool = False,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    mirror: bool = False,
) -> dict[str, Any]:
    """The protocol on dlib's face descriptors (see :func:`dlib_embeddings`), for comparison.

    The face front end costs ~50 ms an image on a CPU core, hence the small ``threshold_identities``.

    Args:
        data_root: FACECOM root.
        split: The reported split.
        threshold_split: Split whose identities set the threshold (None: the reported one, oracle).
        threshold_identities: Identities used for that.
        max_identities: Subsample the reported split.
        upsample: Detector upsampling passes.
        seed: Seed of subsamples and impostor draws.
        progress: Show progress bars.
        cache_dir: The descriptor cache root (see :func:`dlib_embeddings`).
        workers: Worker processes for descriptors not cached yet.
        mirror: The mirrored descriptor (:func:`dlib_embeddings`), as notebook 03's ``face_model`` track reads it.

    Returns:
        The same metrics dict as :func:`evaluate_recognition`.
    """
    def embed(paths: list[str]) -> np.ndarray:
        return dlib_embeddings(paths, upsample=upsample, progress=progress, cache_dir=cache_dir, workers=workers,
                               mirror=mirror)

    return _baseline_metrics(embed, data_root, split, threshold_split, threshold_identities, seed, max_identities)
