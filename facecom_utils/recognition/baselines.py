"""Reference points on the same protocol: untrained ImageNet features and dlib's face descriptor."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from facecom_utils.data.splits import subsample_identities
from facecom_utils.data.layout import load_image, scan_task_b
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


def _dlib_models() -> tuple[Any, Any, Any]:
    """dlib's HOG face detector, 5-point shape predictor and ResNet face descriptor."""
    import importlib.util

    try:
        import dlib
    except ImportError as err:
        raise ImportError("dlib_embeddings needs dlib: pip install dlib-bin face-recognition-models") from err
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
