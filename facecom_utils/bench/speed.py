"""Speed benchmarks, measured side by side in one run on the same files: ratios, not absolutes.

::

    python -m facecom_utils.bench --data-root ROOT --out reports/bench.json [--quick | --max-images N]

Four measurements (every key of the JSON is listed in :func:`run_benchmarks`):

a. **data**: loading + augmentation throughput of the Task A training stream, the reference path
   (PIL decode + torchvision transforms per image per epoch, as the reference notebooks do) against
   the cached path (:mod:`facecom_utils.data.cache`: decoded uint8 cache, pre-rendered seeded
   distortions, batch augmentation on tensors); the on-the-fly-distortion variant of the cached
   path is measured too. Building the cache is timed separately: it is paid once (and, on disk,
   once across runs).
b. **epochs**: one training epoch of Task A and of Task B at the CPU presets
   (``params/02_gender_classification/facecom_cpu.yml``, ``params/03_arcface_recognition/facecom_cpu.yml``) through the shared engine
   (:func:`facecom_utils.train.fit.fit`), reference vs cached data path, same model initialisation
   (contiguous weights in both);
   and (part ``channels_last``) one Task A epoch on the reference data path with contiguous against
   channels-last weights (the CPU presets' ``channels_last``).
c. **embedding extraction**: images/s of :func:`facecom_utils.recognition.extract_embeddings`
   (decode included) and the same model fed from the cache.
d. **scoring**: 3,000 probes x 500 gallery images, :func:`facecom_utils.metrics.scoring.identity_scores`
   (vectorised, chunked) against :func:`~facecom_utils.metrics.scoring.per_pair_loop_scores` (one python
   step per pair), and against a bare float32 ``probes @ gallery.T`` of the same shape, timed
   alternately with it (``scoring_matmul_ms``, ``scoring_matmul_ratio``: how close the scoring runs
   to the machine's limit). The loop is timed on a subset of the probes and extrapolated linearly
   (the JSON says so: ``scoring_loop_extrapolated``, ``scoring_loop_probes_timed``).

e. **face descriptors**: the face-model tracks' per-image cost with dlib's descriptor network in
   dlib itself (``dlib-bin``: no BLAS) against the same network in PyTorch
   (:mod:`facecom_utils.face.dlib_network`, chunks of 16 as :class:`~facecom_utils.face.descriptors.DescriptorStore`
   runs it), on the same aligned chips, alternately; the front end (detector, landmarks, alignment)
   is timed once and added to both (``descriptor_image_speedup``), and the largest difference between
   the two backends' descriptors is reported. Skipped (the JSON says so) without dlib.

Use ``--quick`` (or ``--max-images``) to bound every part for a fast run; the figures are then
noisier but the ratios keep their meaning.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from facecom_utils.common.machine import cpu_model
from facecom_utils.data.cache import BatchAugment, CachedImageDataset, ImageCache, apply_speedups, cached_dataset
from facecom_utils.data.layout import scan_task_a, scan_task_b
from facecom_utils.data.datasets import (
    AugmentSpec,
    DistributedWeightedSampler,
    ImageDataset,
    build_sampler,
    build_transforms,
    make_loader,
)
from facecom_utils.nn.heads import build_head
from facecom_utils.nn.backbones import FaceEmbedder, GenderClassifier
from facecom_utils.recognition import RecognitionModel, build_recognition_transforms, extract_embeddings, identity_sample_weights
from facecom_utils.recognition.embedding import _FaceImages
from facecom_utils.data.splits import person_grouped_split
from facecom_utils.train.fit import TrainConfig, fit, seed_everything, select_device
from facecom_utils.metrics.scoring import identity_scores, per_pair_loop_scores
from facecom_utils.common.paths import REPO_ROOT

__all__ = ["main", "run_benchmarks"]

PRESET_A = REPO_ROOT / "params" / "02_gender_classification" / "facecom_cpu.yml"
PRESET_B = REPO_ROOT / "params" / "03_arcface_recognition" / "facecom_cpu.yml"
QUICK_MAX_IMAGES = 256
DESCRIPTOR_MAX_IMAGES = 128  # dlib's own network costs ~160 ms an image: the descriptor part times at most this many


def _preset(path: Path) -> dict[str, Any]:
    """A preset's full parameters: its notebook's defaults with the file's differences over them."""
    import yaml

    from facecom_utils.reporting.runner import NOTEBOOK_DIR, notebook_defaults, preset_notebook

    data = (yaml.safe_load(path.read_text()) if path.is_file() else {}) or {}
    stem = preset_notebook(path)
    base = notebook_defaults(NOTEBOOK_DIR / f"{stem}.ipynb") if stem else {}
    return {**base, **data}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _drain(loader: Any, augment: nn.Module | None, device: torch.device) -> tuple[int, float]:
    """Images served (and augmented) by one pass over a loader, and the seconds it took."""
    n = 0
    t0 = time.perf_counter()
    for x, _ in loader:
        x = x.to(device)
        if augment is not None:
            x = augment(x)
        n += int(x.shape[0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n, time.perf_counter() - t0


def _machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "processor": cpu_model(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
    }
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        pass
    return info


# ----------------------------------------------------------------------------- (a) data path


def _task_a_rows(data_root: Path, max_images: int | None, seed: int) -> pd.DataFrame:
    df = scan_task_a(data_root, splits=("train",))
    if max_images is not None and len(df) > max_images:
        df = df.sample(n=max_images, random_state=seed).sort_values("path").reset_index(drop=True)
    return df


def bench_data(rows: pd.DataFrame, cfg: dict[str, Any], device: torch.device, cache_dir: str | None,
               cache_mode: str, repeats: int = 1) -> dict[str, Any]:
    """Task A training stream: reference path vs cached path, images/s over one pass.

    With ``repeats`` > 1 the passes are interleaved (reference, cached, on-the-fly, ...) and the
    fastest of each kind is kept: a busy machine only ever slows a pass down.
    """
    size = int(cfg.get("image_size", 128))
    p = float(cfg.get("distortion_augment", 0.3))
    batch = int(cfg.get("batch_size", 32))
    labels = (rows["label"] == "female").astype(int).tolist()
    load_size = None if size >= 224 else int(round(size * 1.25))
    naive = ImageDataset(rows["path"], labels, build_transforms(size, True, p), load_size=load_size)
    cache, s_build = _timed(lambda: ImageCache.build(rows["path"], size, mode=cache_mode, cache_dir=cache_dir))
    rows_all = np.arange(len(cache))
    variants, s_render = _timed(lambda: cache.render_distortions(rows_all, 4, 0, mode=cache_mode, cache_dir=cache_dir))
    cached = CachedImageDataset(cache, labels, distortion_p=p, variants=variants, variant_rows=rows_all)
    onthefly = CachedImageDataset(cache, labels, distortion_p=p)
    augment = BatchAugment(size).to(device)
    naive_ips = cached_ips = fly_ips = 0.0
    for _ in range(max(1, repeats)):
        for dataset, aug, kind in ((naive, None, "naive"), (cached, augment, "cached"), (onthefly, augment, "fly")):
            seed_everything(0)
            n, s = _drain(make_loader(dataset, batch, True), aug, device)
            if kind == "naive":
                naive_ips = max(naive_ips, n / s)
            elif kind == "cached":
                cached_ips = max(cached_ips, n / s)
            else:
                fly_ips = max(fly_ips, n / s)
    return {
        "data_images": len(rows),
        "data_image_size": size,
        "data_distortion_p": p,
        "data_naive_images_per_second": naive_ips,
        "data_cached_images_per_second": cached_ips,
        "data_speedup": cached_ips / naive_ips,
        "data_cached_onthefly_distortion_images_per_second": fly_ips,
        "data_onthefly_speedup": fly_ips / naive_ips,
        "data_passes": max(1, repeats),
        "data_cache_build_seconds": s_build,
        "data_cache_prerender_seconds": s_render,
        "data_cached_path": "uint8 cache + 4 pre-rendered seeded distortions per image + BatchAugment",
    }


# ----------------------------------------------------------------------------- (b) epochs


def _warm_up(model: nn.Module, batch: Any, loss_fn: Callable[[nn.Module, Any], torch.Tensor],
             device: torch.device) -> None:
    """One untimed forward/backward (kernel selection, allocator), weights and statistics restored."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.to(device).train()
    loss_fn(model, [t.to(device) for t in batch]).backward()
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)


def _epoch_seconds(model: nn.Module, loader: Any, loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                   cfg: dict[str, Any], device: torch.device) -> tuple[float, int]:
    _warm_up(model, next(iter(loader)), loss_fn, device)
    train_cfg = TrainConfig(epochs=1, lr=float(cfg.get("lr", 1e-3)), weight_decay=float(cfg.get("weight_decay", 0.0)),
                            backbone_lr_scale=float(cfg.get("backbone_lr_scale", 1.0)), warmup_epochs=0.0,
                            patience=None, amp=cfg.get("amp", "auto"), device=str(device), progress=False,
                            restore_best=False)
    result = fit(model, loader, loss_fn, None, train_cfg, None)
    row = result.history.iloc[0]
    return float(row["seconds"]), int(round(row["images_per_second"] * row["seconds"]))


def bench_epoch_a(rows: pd.DataFrame, cfg: dict[str, Any], device: torch.device, cache_dir: str | None,
                  cache_mode: str, repeats: int = 1, channels_last_only: bool = False) -> dict[str, Any]:
    """One Task A epoch at the preset: reference vs cached data path, same initial weights.

    With ``channels_last_only``: the reference data path (the CPU preset's) with contiguous weights
    against channels-last weights (:func:`~facecom_utils.data.cache.apply_speedups`), same initial weights
    and batches, interleaved.
    """
    size, batch = int(cfg.get("image_size", 128)), int(cfg.get("batch_size", 32))
    p = float(cfg.get("distortion_augment", 0.3))
    fit_df, _ = person_grouped_split(rows, float(cfg.get("val_fraction", 0.15)), seed=0)
    y = (fit_df["label"] == "female").astype(int).to_numpy()
    load_size = None if size >= 224 else int(round(size * 1.25))
    smooth = float(cfg.get("label_smoothing", 0.0))

    def make_model() -> nn.Module:
        seed_everything(0)
        return GenderClassifier(cfg.get("backbone", "efficientnet_lite0"), cfg.get("pretrained", "offline"),
                                float(cfg.get("dropout", 0.2)), size)

    def loss_with(augment: nn.Module | None) -> Callable[[nn.Module, Any], torch.Tensor]:
        def loss_fn(m: nn.Module, b: Any) -> torch.Tensor:
            x, t = b
            if augment is not None:
                x = augment(x)
            return F.binary_cross_entropy_with_logits(m(x).float(), t.float() * (1 - smooth) + 0.5 * smooth)
        return loss_fn

    naive = ImageDataset(fit_df["path"], y, build_transforms(size, True, p), load_size=load_size)
    naive_loader = make_loader(naive, batch, True, build_sampler(y, cfg.get("balance", "sampler"), seed=0))
    if channels_last_only:
        s_plain = s_last = float("inf")
        for _ in range(repeats):
            s, n = _epoch_seconds(make_model(), naive_loader, loss_with(None), cfg, device)
            s_plain = min(s_plain, s)
            s_last = min(s_last, _epoch_seconds(apply_speedups(make_model(), channels_last=True), naive_loader,
                                                loss_with(None), cfg, device)[0])
        return {"channels_last_images": n, "channels_last_contiguous_seconds": s_plain,
                "channels_last_seconds": s_last, "channels_last_speedup": s_plain / s_last}
    cached = cached_dataset(fit_df["path"], y, size, distortion_p=p, mode=cache_mode, cache_dir=cache_dir)
    cached_loader = make_loader(cached, batch, True, build_sampler(y, cfg.get("balance", "sampler"), seed=0))
    augment = BatchAugment(size).to(device)
    s_naive = s_cached = float("inf")
    for _ in range(repeats):  # interleaved; the fastest of each (a busy machine only ever slows down)
        s, n = _epoch_seconds(make_model(), naive_loader, loss_with(None), cfg, device)
        s_naive = min(s_naive, s)
        s_cached = min(s_cached, _epoch_seconds(make_model(), cached_loader, loss_with(augment), cfg, device)[0])
    return {"epoch_task_a_images": n, "epoch_task_a_naive_seconds": s_naive, "epoch_task_a_cached_seconds": s_cached,
            "epoch_task_a_speedup": s_naive / s_cached}


def _task_b_rows(data_root: Path, max_images: int | None, seed: int) -> pd.DataFrame:
    df = scan_task_b(data_root, splits=("train",))
    if max_images is not None and len(df) > max_images:  # whole identities, until the budget is met
        ids = pd.Series(df["identity"].unique()).sample(frac=1.0, random_state=seed).tolist()
        counts = df.groupby("identity").size()
        keep, total = [], 0
        for identity in ids:
            if total >= max_images:
                break
            keep.append(identity)
            total += int(counts[identity])
        df = df[df["identity"].isin(set(keep))].reset_index(drop=True)
    return df


def _recognition_model(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    seed_everything(0)
    size = int(cfg.get("image_size", 112))
    dim = int(cfg.get("embedding_dim", 512))
    embedder = FaceEmbedder(cfg.get("backbone", "efficientnet_lite0"), cfg.get("pretrained", "offline"), dim,
                            image_size=size)
    kwargs = {k: float(cfg[v]) for k, v in (("m", "margin"), ("s", "scale")) if cfg.get(v) is not None}
    head_cfg = {"name": str(cfg.get("head", "arcface")).lower(), "num_classes": num_classes, "kwargs": kwargs}
    return RecognitionModel(embedder, build_head(head_cfg["name"], dim, num_classes, **kwargs), head_cfg)


def bench_epoch_b(rows: pd.DataFrame, cfg: dict[str, Any], device: torch.device, cache_dir: str | None,
                  cache_mode: str, samples: int | None, repeats: int = 1) -> dict[str, Any]:
    """One Task B epoch at the preset (``samples_per_epoch`` draws, bounded): reference vs cached."""
    size, batch = int(cfg.get("image_size", 112)), int(cfg.get("batch_size", 64))
    face_crop = float(cfg.get("face_crop", 1.0))
    p = float(cfg.get("distortion_augment", 0.3))
    crop_scale = tuple(cfg.get("crop_scale", (0.6, 1.0)))
    jitter = float(cfg.get("color_jitter", 0.3))
    ids = sorted(rows["identity"].unique())
    class_of = {identity: i for i, identity in enumerate(ids)}
    y = [class_of[i] for i in rows["identity"]]
    clean = rows["distortion"].isna().to_numpy()
    n_samples = int(cfg.get("samples_per_epoch") or len(rows))
    if samples is not None:
        n_samples = min(n_samples, samples)
    weights = identity_sample_weights(rows, int(cfg.get("clean_cap", 8)), cfg.get("clean_fraction"),
                                      cfg.get("distortion_weights"))
    smooth = float(cfg.get("label_smoothing", 0.1))

    def loader_for(dataset: Any) -> Any:
        return make_loader(dataset, batch, True, DistributedWeightedSampler(weights, num_samples=n_samples, seed=0))

    def loss_with(augment: nn.Module | None) -> Callable[[nn.Module, Any], torch.Tensor]:
        def loss_fn(m: nn.Module, b: Any) -> torch.Tensor:
            x, t = b
            if augment is not None:
                x = augment(x)
            return F.cross_entropy(m(x, t), t, label_smoothing=smooth)
        return loss_fn

    augment_kw = dict(face_crop=face_crop, crop_scale=crop_scale, color_jitter=jitter)
    naive = _FaceImages(rows["path"], y, build_recognition_transforms(size, True, **augment_kw), clean=clean.tolist(),
                        clean_transform=build_recognition_transforms(size, True, distortion_p=p, **augment_kw))
    cached = cached_dataset(rows["path"], y, size, face_crop, "square", distortion_p=p, distort=clean,
                            severity_range=(0.5, 1.3), mode=cache_mode, cache_dir=cache_dir)
    augment = BatchAugment.from_spec(size, AugmentSpec.recognition(crop_scale, jitter))
    augment = augment.to(device)
    s_naive = s_cached = float("inf")
    for _ in range(repeats):  # interleaved; the fastest of each
        s, n = _epoch_seconds(_recognition_model(cfg, len(ids)), loader_for(naive), loss_with(None), cfg, device)
        s_naive = min(s_naive, s)
        s_cached = min(s_cached, _epoch_seconds(_recognition_model(cfg, len(ids)), loader_for(cached),
                                                loss_with(augment), cfg, device)[0])
    return {"epoch_task_b_images": n, "epoch_task_b_naive_seconds": s_naive, "epoch_task_b_cached_seconds": s_cached,
            "epoch_task_b_speedup": s_naive / s_cached}


# ----------------------------------------------------------------------------- (c) embeddings


@torch.no_grad()
def bench_embed(rows: pd.DataFrame, cfg: dict[str, Any], device: torch.device, cache_dir: str | None,
                cache_mode: str) -> dict[str, Any]:
    """Embedding extraction images/s (flip TTA as configured), from files and from the cache."""
    size, batch = int(cfg.get("image_size", 112)), int(cfg.get("batch_size", 64))
    face_crop, tta = float(cfg.get("face_crop", 1.0)), bool(cfg.get("flip_tta", True))
    model = _recognition_model(cfg, 2).embedder.to(device).eval()
    paths = rows["path"].tolist()
    _, ips = extract_embeddings(model, paths, size, batch, device, tta, face_crop, "neck", return_speed=True)
    dataset, s_build = _timed(lambda: cached_dataset(paths, None, size, face_crop, "square", normalize=True,
                                                     mode=cache_mode, cache_dir=cache_dir))
    t0 = time.perf_counter()
    for x, _ in make_loader(dataset, batch, False):
        x = x.to(device)
        emb = F.normalize(model(x), dim=1)
        if tta:
            emb = F.normalize(emb + F.normalize(model(torch.flip(x, dims=[3])), dim=1), dim=1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cached_ips = len(paths) / (time.perf_counter() - t0)
    return {"embed_images": len(paths), "embed_images_per_second": ips, "embed_cached_images_per_second": cached_ips,
            "embed_cache_build_seconds": s_build, "embed_flip_tta": tta,
            "embed_views_timed": 1, "embed_views_in_preset": 1 + len(cfg.get("tta_crops") or ())}


# ----------------------------------------------------------------------------- (d) scoring


def bench_scoring(n_probes: int = 3000, n_gallery: int = 500, n_identities: int = 100, dim: int = 512,
                  loop_probes: int = 100, repeats: int = 10, loop_repeats: int = 3) -> dict[str, Any]:
    """Identity scores of ``n_probes`` x ``n_gallery`` images: vectorised vs per-pair loop (extrapolated),
    and vs a bare float32 matrix product of the same shape (the machine's limit for this problem).

    The vectorised scoring and the bare ``probes @ gallery.T`` alternate ``repeats`` times and the
    fastest of each is kept (``scoring_matmul_ratio`` = scoring / bare product); the loop runs
    ``loop_repeats`` times on ``loop_probes`` probes.
    """
    rng = np.random.default_rng(0)
    probes = rng.standard_normal((n_probes, dim)).astype(np.float32)
    gallery = rng.standard_normal((n_gallery, dim)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    labels = np.arange(n_gallery) % n_identities
    best = best_matmul = float("inf")
    for _ in range(repeats):  # interleaved: both see the same machine load
        best = min(best, _timed(lambda: identity_scores(probes, gallery, labels))[1])
        best_matmul = min(best_matmul, _timed(lambda: probes @ gallery.T)[1])
    loop_probes = min(loop_probes, n_probes)
    loop_runs = [_timed(lambda: per_pair_loop_scores(probes[:loop_probes], gallery, labels))
                 for _ in range(loop_repeats)]
    (loop_scores, _), loop_s = min(loop_runs, key=lambda run: run[1])
    fast, _ = identity_scores(probes[:loop_probes], gallery, labels)
    loop_ms = loop_s * 1e3 * n_probes / loop_probes
    return {
        "scoring_probes": n_probes, "scoring_gallery": n_gallery, "scoring_identities": n_identities,
        "scoring_dim": dim, "scoring_ms": best * 1e3, "scoring_matmul_ms": best_matmul * 1e3,
        "scoring_matmul_ratio": best / best_matmul, "scoring_repeats": repeats,
        "scoring_loop_ms": loop_ms, "scoring_speedup": loop_ms / (best * 1e3),
        "scoring_loop_extrapolated": loop_probes < n_probes, "scoring_loop_probes_timed": loop_probes,
        "scoring_max_abs_difference": float(np.max(np.abs(loop_scores - fast))),
    }


# ----------------------------------------------------------------------------- (e) face descriptors


def bench_descriptors(paths: Sequence[str], repeats: int = 1) -> dict[str, Any]:
    """ms per image of dlib's descriptor network in dlib vs in PyTorch, on the same chips (see module docstring)."""
    from facecom_utils.face.descriptors import CHUNK, _front_end, chip_descriptors, face_model_available

    if not face_model_available():
        return {"descriptors_skipped": "dlib / face-recognition-models not installed"}
    from facecom_utils.data.layout import load_image

    images = [np.asarray(load_image(p), dtype=np.uint8) for p in paths]
    fronts, s_front = _timed(lambda: [_front_end(im, "identity", 1) for im in images])
    chips = np.stack([f[0] for f in fronts])
    chip_descriptors(chips[:2], "torch")  # load both networks before timing
    chip_descriptors(chips[:1], "dlib")
    best_dlib = best_torch = float("inf")
    ours = theirs = None
    for _ in range(max(1, repeats)):  # interleaved: both see the same machine load
        theirs, s = _timed(lambda: chip_descriptors(chips, "dlib"))
        best_dlib = min(best_dlib, s)
        s = 0.0
        parts = []
        for i in range(0, len(chips), CHUNK):
            out, t = _timed(lambda i=i: chip_descriptors(chips[i:i + CHUNK], "torch"))
            parts.append(out)
            s += t
        ours = np.concatenate(parts)
        best_torch = min(best_torch, s)
    n = len(chips)
    front_ms, dlib_ms, torch_ms = 1e3 * s_front / n, 1e3 * best_dlib / n, 1e3 * best_torch / n
    return {"descriptor_images": n, "descriptor_front_end_ms": front_ms, "descriptor_dlib_network_ms": dlib_ms,
            "descriptor_torch_network_ms": torch_ms, "descriptor_network_speedup": dlib_ms / torch_ms,
            "descriptor_image_speedup": (front_ms + dlib_ms) / (front_ms + torch_ms),
            "descriptor_torch_threads": torch.get_num_threads(),
            "descriptor_max_abs_difference": float(np.max(np.abs(ours - theirs)))}


# ----------------------------------------------------------------------------- driver


def run_benchmarks(
    data_root: str | Path,
    max_images: int | None = None,
    device: str = "cpu",
    cache_dir: str | None = None,
    cache_mode: str = "memory",
    parts: Sequence[str] = ("data", "epoch_a", "channels_last", "epoch_b", "embed", "scoring", "descriptors"),
    preset_a: str | Path = PRESET_A,
    preset_b: str | Path = PRESET_B,
    repeats: int = 1,
) -> dict[str, Any]:
    """Runs the benchmarks; returns one flat dict (machine info, settings, every figure).

    Keys include ``data_naive_images_per_second``, ``data_cached_images_per_second``,
    ``data_speedup``, ``epoch_task_a_naive_seconds``, ``epoch_task_a_cached_seconds``,
    ``epoch_task_a_speedup``, the same for ``task_b``, ``embed_images_per_second``,
    ``scoring_ms``, ``scoring_matmul_ms`` (bare float32 product of the same shape, timed alternately),
    ``scoring_matmul_ratio``, ``scoring_loop_ms``, ``scoring_speedup``, ``descriptor_dlib_network_ms``,
    ``descriptor_torch_network_ms``, ``descriptor_network_speedup``, ``descriptor_image_speedup``,
    ``descriptor_max_abs_difference``, and the machine's ``cpu_count``,
    ``torch_version``, ``device``.

    Args:
        data_root: Folder holding ``Task_A/train`` and ``Task_B/train``.
        max_images: Bound on the images of each part (None: all of Task A's training split, and
            Task B's preset epoch of ``samples_per_epoch`` draws).
        device: Where models and batch augmentation run (``"cpu"`` like the presets, or ``"auto"``).
        cache_dir: Disk cache folder (``cache_mode="disk"``).
        cache_mode: ``"memory"`` (default: every run decodes afresh, so builds are timed fairly)
            or ``"disk"``.
        parts: Which parts to run.
        preset_a: Task A preset (flat YAML).
        preset_b: Task B preset (section ``"03"``).
        repeats: Data passes and epochs of each kind (interleaved, the fastest kept): steadier on a
            busy machine.
    """
    root = Path(data_root)
    dev = select_device(device)
    cfg_a, cfg_b = _preset(Path(preset_a)), _preset(Path(preset_b))
    if dev.type != "cpu":
        cfg_a["amp"] = cfg_b["amp"] = "auto"
    out: dict[str, Any] = {**_machine(dev), "data_root": str(root), "max_images": max_images,
                           "preset_task_a": str(preset_a), "preset_task_b": str(preset_b), "epoch_repeats": repeats}
    t0 = time.perf_counter()
    rows_a = _task_a_rows(root, max_images, 0) if {"data", "epoch_a", "channels_last", "descriptors"} & set(parts) else None
    rows_b = _task_b_rows(root, max_images, 0) if {"epoch_b", "embed"} & set(parts) else None
    if "data" in parts:
        out.update(bench_data(rows_a, cfg_a, dev, cache_dir, cache_mode, repeats))
    if "epoch_a" in parts:
        out.update(bench_epoch_a(rows_a, cfg_a, dev, cache_dir, cache_mode, repeats))
    if "channels_last" in parts:
        out.update(bench_epoch_a(rows_a, cfg_a, dev, cache_dir, cache_mode, repeats, channels_last_only=True))
    if "epoch_b" in parts:
        out.update(bench_epoch_b(rows_b, cfg_b, dev, cache_dir, cache_mode, max_images, repeats))
    if "embed" in parts:
        out.update(bench_embed(rows_b, cfg_b, dev, cache_dir, cache_mode))
    if "scoring" in parts:
        out.update(bench_scoring())
    if "descriptors" in parts:
        out.update(bench_descriptors(rows_a["path"].tolist()[:DESCRIPTOR_MAX_IMAGES], repeats))
    out["bench_seconds"] = time.perf_counter() - t0
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facecom_utils.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="folder holding Task_A/train and Task_B/train")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--max-images", type=int, default=None, help="bound the images of each part")
    parser.add_argument("--quick", action="store_true", help=f"fast run: --max-images {QUICK_MAX_IMAGES}")
    parser.add_argument("--device", default="cpu", help="cpu (the CPU presets) or auto/cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--cache-mode", default="memory", choices=("memory", "disk"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--preset-a", default=str(PRESET_A), help="Task A preset (flat YAML)")
    parser.add_argument("--preset-b", default=str(PRESET_B), help="Task B preset (YAML, section '03')")
    parser.add_argument("--repeats", type=int, default=1,
                        help="passes/epochs of each kind, interleaved; the fastest is kept (steadier on a busy machine)")
    parser.add_argument("--parts", default="data,epoch_a,channels_last,epoch_b,embed,scoring,descriptors",
                        help="comma-separated subset of data,epoch_a,channels_last,epoch_b,embed,scoring,descriptors")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    max_images = args.max_images if args.max_images is not None else (QUICK_MAX_IMAGES if args.quick else None)
    result = run_benchmarks(args.data_root, max_images, args.device, args.cache_dir, args.cache_mode,
                            [p.strip() for p in args.parts.split(",") if p.strip()], args.preset_a, args.preset_b,
                            max(1, args.repeats))
    result["quick"] = bool(args.quick)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
