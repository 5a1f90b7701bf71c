"""Fine-tuning dlib's face-trained ResNet on FACECOM's distorted copies (the ``face_finetuned`` network).

Outside face knowledge, adapted: the network starts from dlib's weights (trained on about 3 million
faces, see :mod:`facecom_utils.face.descriptors`) and only its last residual blocks and final layer
move; the first ``frozen_blocks`` of its 14 blocks keep dlib's weights bit for bit. Every result that
uses it is an outside-data track.

Training rows are the front end's aligned chips (:class:`~facecom_utils.face.chips.ChipStore`) of a
training split's clean images and their real distorted copies, each after its restoration. Objectives
(:data:`OBJECTIVES`):

- ``consistency``: ``1 - cos(f(chip), d0(source))``, where ``d0(source)`` is the **original** network's
  descriptor of the row's clean source image (of the row itself for a clean row). A distorted chip is
  pulled to where dlib put its clean photo, so the descriptor space stays dlib's (a gallery described
  before and after fine-tuning still compares) and the network cannot forget what it knew about clean
  faces.
- ``margin``: an additive angular margin (ArcFace) softmax over the training identities, the class
  centres starting at each identity's mean original clean descriptor.
- ``both``: their sum, the margin term weighed by ``margin_weight``.

The frozen trunk is the same for every row in every fold, so :func:`trunk_activations` computes its
output once (float16) and training runs the remaining blocks only: with 10 frozen blocks, about a sixth
of the network's cost per chip. Early stopping keeps the epoch whose descriptors give the best
``select`` score on a validation part of the training identities (the caller's; see
:func:`strict_type_top1`).

Saved weights (:func:`save_finetuned`) are the whole network's state dict (``torch.load(...,
weights_only=True)`` reads them) with their :func:`weights_digest`; descriptor caches of a fine-tuned
network are keyed by that digest (:class:`~facecom_utils.face.descriptors.DescriptorStore`'s ``weights``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facecom_utils.common.checkpoints import load_checkpoint, save_checkpoint
from facecom_utils.face.dlib_network import BLOCKS, CHIP, MODEL_FILE, network_descriptors

__all__ = ["OBJECTIVES", "FinetuneConfig", "FinetuneResult", "config_dict", "finetune", "finetuned_descriptors",
           "load_finetuned", "save_finetuned", "saved_digest", "source_rows", "stock_digest", "stock_network",
           "tail_descriptors", "trunk_activations", "weights_digest"]

OBJECTIVES: tuple[str, ...] = ("consistency", "margin", "both")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of :func:`finetune`.

    Attributes:
        objective: One of :data:`OBJECTIVES`.
        frozen_blocks: Residual blocks (of 14, input side first) that keep dlib's weights.
        epochs: Most passes over the training rows; the best epoch on the validation part is kept.
        patience: Stop after this many epochs without a better validation score.
        lr: AdamW learning rate of the trained blocks (the margin head's centres learn 10x faster).
        weight_decay: AdamW weight decay, towards zero (small: the start is dlib's solution).
        batch_size: Rows per step.
        scale, margin: ArcFace's logit scale and additive angular margin (radians).
        margin_weight: Weight of the margin term in ``both``.
        seed: Seed of the row order.
    """

    objective: str = "consistency"
    frozen_blocks: int = 10
    epochs: int = 6
    patience: int = 2
    lr: float = 3e-4
    weight_decay: float = 1e-4
    batch_size: int = 64
    scale: float = 16.0
    margin: float = 0.2
    margin_weight: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 0 <= self.frozen_blocks < BLOCKS:
            raise ValueError(f"frozen_blocks must be 0-{BLOCKS - 1}, got {self.frozen_blocks}")


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns: the network at its best epoch, and every epoch's record."""

    network: Any
    best_epoch: int
    history: list[dict[str, float]]
    seconds: float
    config: FinetuneConfig


def stock_network() -> Any:
    """dlib's network with its own weights (a fresh copy, safe to train)."""
    from facecom_utils.face.detect import _model_file
    from facecom_utils.face.dlib_network import DlibFaceNet

    return DlibFaceNet.from_dat(_model_file(MODEL_FILE))


def weights_digest(network: Any) -> str:
    """A SHA-256 prefix (16 hex digits) of the network's parameters and buffers, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_finetuned(network: Any, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Saves the network's state dict, its digest and ``meta`` atomically (read back with :func:`load_finetuned`)."""
    return save_checkpoint(path, {"state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
                                  "digest": weights_digest(network), "meta": dict(meta or {})})


def load_finetuned(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """``(network, meta)`` of a :func:`save_finetuned` file, loaded with ``weights_only=True``.

    Raises:
        ValueError: The weights do not match their saved digest (a damaged or edited file).
    """
    payload = _payload(path)
    net = stock_network()
    net.load_state_dict(payload["state_dict"])
    net.eval()
    if weights_digest(net) != payload["digest"]:
        raise ValueError(f"{path}: the weights do not match their saved digest {payload['digest']}")
    return net, dict(payload.get("meta", {}))


def _payload(path: str | Path) -> dict[str, Any]:
    """A :func:`save_finetuned` file's contents (``weights_only=True``), its format checked."""
    payload = load_checkpoint(path)
    if not isinstance(payload, dict) or "digest" not in payload or not isinstance(payload.get("state_dict"), dict):
        raise ValueError(f"{path}: not a fine-tuned face network (expected save_finetuned's file with "
                         "'state_dict' and 'digest')")
    return payload


def saved_digest(path: str | Path) -> str:
    """The digest a :func:`save_finetuned` file records (read with ``weights_only=True``)."""
    return str(_payload(path)["digest"])


@functools.cache
def stock_digest() -> str:
    """:func:`weights_digest` of dlib's own weights."""
    return weights_digest(stock_network())


@functools.lru_cache(maxsize=4)
def _finetuned(path: str, digest: str) -> Any:
    net = load_finetuned(path)[0]  # checks that the weights match the digest the file records
    if weights_digest(net) != digest:
        raise ValueError(f"{path}: expected weights {digest}, the file now holds {weights_digest(net)}")
    return net


def finetuned_descriptors(chips: np.ndarray, path: str | Path, batch: int = 64, digest: str | None = None) -> np.ndarray:
    """Raw descriptors ``float32 [N, 128]`` of uint8 chips ``[N, 150, 150, 3]`` by a saved fine-tuned network.

    Args:
        digest: The weights the caller expects (a store keyed by them); default: what the file records now.

    Raises:
        ValueError: The file holds other weights than ``digest`` (it was replaced after the caller read it).
    """
    return network_descriptors(_finetuned(str(path), digest or saved_digest(path)), chips, batch=batch)


def trunk_activations(network: Any, chips: np.ndarray, blocks: int, batch: int = 64) -> np.ndarray:
    """float16 activations of uint8 chips ``[N, 150, 150, 3]`` after the stem and ``blocks`` blocks."""
    chips = np.ascontiguousarray(chips, dtype=np.uint8)
    if chips.ndim != 4 or chips.shape[1:] != (CHIP, CHIP, 3):
        raise ValueError(f"expected uint8 RGB chips [N, {CHIP}, {CHIP}, 3], got shape {chips.shape}")
    if not 0 <= blocks <= BLOCKS:
        raise ValueError(f"blocks must be 0-{BLOCKS}, got {blocks}")
    out = []
    with torch.inference_mode():
        for i in range(0, len(chips), batch):
            out.append(network.trunk(torch.from_numpy(chips[i:i + batch]), blocks).half().numpy())
    return np.concatenate(out)


def tail_descriptors(network: Any, activations: np.ndarray, blocks: int, batch: int = 256) -> np.ndarray:
    """Raw descriptors ``float32 [N, 128]`` from :func:`trunk_activations` of the same ``blocks``."""
    was_training = network.training
    network.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(activations), batch):
            out.append(network.tail(torch.from_numpy(activations[i:i + batch]).float(), blocks).numpy())
    network.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


def source_rows(paths: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Per row, the row of its clean source (its own row for a clean image: ``source`` NaN/None).

    Raises:
        ValueError: A distorted row whose source is not among ``paths`` (named).
    """
    row_of = {str(p): i for i, p in enumerate(paths)}
    out = np.empty(len(paths), np.int64)
    for i, (p, s) in enumerate(zip(paths, sources)):
        if not isinstance(s, str):
            out[i] = i
        elif s in row_of:
            out[i] = row_of[s]
        else:
            raise ValueError(f"{p}: its clean source {s} is not among the training rows")
    return out


def _unit(x: Any) -> Any:
    return torch.nn.functional.normalize(x, dim=1)


def _margin_loss(emb: Any, centres: Any, y: Any, config: FinetuneConfig) -> Any:
    """ArcFace: softmax over ``scale * cos`` with the angle to the row's own centre widened by ``margin``."""
    cos = emb @ _unit(centres).T
    c_y = cos.gather(1, y[:, None]).clamp(-1 + 1e-6, 1 - 1e-6)
    m = config.margin
    with_margin = c_y * math.cos(m) - torch.sqrt(1 - c_y ** 2) * math.sin(m)
    # past theta = pi - m, cos(theta + m) would rise again as theta grows: continue linearly instead
    with_margin = torch.where(c_y > math.cos(math.pi - m), with_margin, c_y - m * math.sin(math.pi - m))
    return torch.nn.functional.cross_entropy(config.scale * cos.scatter(1, y[:, None], with_margin), y)


def _epoch(net: Any, data: tuple[Any, Any, Any], order: np.ndarray, config: FinetuneConfig, centres: Any,
           opt: Any) -> float:
    """One pass over the rows in ``order``; the mean loss. ``data``: activations, unit targets, labels."""
    x_all, t_all, y_all = data
    k = config.frozen_blocks
    net.train()
    total = 0.0
    for i in range(0, len(order), config.batch_size):
        idx = torch.from_numpy(order[i:i + config.batch_size])
        emb = _unit(net.tail(x_all[idx].float(), k))
        loss = torch.zeros(())
        if config.objective in ("consistency", "both"):
            loss = loss + (1.0 - (emb * t_all[idx]).sum(1)).mean()
        if centres is not None:
            weight = config.margin_weight if config.objective == "both" else 1.0
            loss = loss + weight * _margin_loss(emb, centres, y_all[idx], config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    net.eval()
    return total / max(len(order), 1)


def _score(select: Callable[[Any], float], net: Any, epoch: int) -> float:
    score = float(select(net))
    if math.isnan(score):
        raise ValueError(f"the validation score of epoch {epoch} is NaN: the validation part has no probe to score")
    return score


def finetune(activations: np.ndarray, targets: np.ndarray, labels: np.ndarray, config: FinetuneConfig,
             select: Callable[[Any], float], network: Any | None = None,
             log: Callable[[str], None] | None = print) -> FinetuneResult:
    """Fine-tunes the network's blocks after ``config.frozen_blocks`` on precomputed trunk activations.

    Args:
        activations: :func:`trunk_activations` of the training rows (``config.frozen_blocks`` blocks).
        targets: ``[N, 128]`` the original network's descriptor of each row's clean source (consistency).
        labels: ``[N]`` identity index of each row (0..C-1; the margin head).
        config: The settings.
        select: Scores a network (higher is better; e.g. strict top-1 of a validation part) after
            every epoch and before the first (epoch 0: dlib's own weights).
        network: The start (default: :func:`stock_network`); it is not modified.
        log: Where one line per epoch goes (None: silent).

    Returns:
        :class:`FinetuneResult`; its network is in eval mode at the best epoch (epoch 0 when no epoch
        beat dlib's weights).
    """
    labels = np.asarray(labels, np.int64)
    targets = np.asarray(targets, np.float32)
    if not len(activations) == len(targets) == len(labels) or targets.ndim != 2:
        raise ValueError(f"{len(activations)} activation rows, {len(targets)} targets and {len(labels)} labels "
                         "(expected one target [128] and one label per row)")
    if len(labels) and (labels.min() < 0 or len(np.unique(labels)) != labels.max() + 1):
        raise ValueError("labels must number the identities 0..C-1 without gaps (np.unique(..., return_inverse=True))")
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    net = copy.deepcopy(network if network is not None else stock_network())
    k = config.frozen_blocks
    trained = net.parameters_after(k)
    trained_ids = {id(p) for p in trained}
    for p in net.parameters():
        p.requires_grad_(id(p) in trained_ids)
    n_ids = int(labels.max()) + 1 if len(labels) else 0
    params: list[dict[str, Any]] = [{"params": trained, "lr": config.lr, "weight_decay": config.weight_decay}]
    centres = None
    if config.objective in ("margin", "both"):
        init = np.zeros((n_ids, targets.shape[1]), np.float32)
        np.add.at(init, labels, targets / np.maximum(np.linalg.norm(targets, axis=1, keepdims=True), 1e-12))
        centres = torch.nn.Parameter(torch.from_numpy(init))
        params.append({"params": [centres], "lr": config.lr * 10, "weight_decay": 0.0})
    opt = torch.optim.AdamW(params)
    x_all = torch.from_numpy(np.asarray(activations))
    t_all = _unit(torch.from_numpy(targets))
    y_all = torch.from_numpy(labels)
    rng = np.random.default_rng(config.seed)

    best = _score(select, net, 0)
    best_state, best_epoch = copy.deepcopy(net.state_dict()), 0
    history = [{"epoch": 0, "loss": float("nan"), "select": best, "seconds": time.perf_counter() - t0}]
    if log:
        log(f"epoch 0 (dlib's weights): select {best:.4f}")
    stale = 0
    for epoch in range(1, config.epochs + 1):
        loss = _epoch(net, (x_all, t_all, y_all), rng.permutation(len(labels)), config, centres, opt)
        score = _score(select, net, epoch)
        history.append({"epoch": epoch, "loss": loss, "select": score, "seconds": time.perf_counter() - t0})
        if log:
            log(f"epoch {epoch}: loss {loss:.4f}, select {score:.4f}")
        if score > best:
            best, best_state, best_epoch, stale = score, copy.deepcopy(net.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return FinetuneResult(net, best_epoch, history, time.perf_counter() - t0, config)


def config_dict(config: FinetuneConfig) -> dict[str, Any]:
    """The settings as a plain dict (for a run's metrics and the saved weights' meta)."""
    return asdict(config)
