"""The Task B model: the face embedder with its margin head, built for training and rebuilt from a checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from facecom_utils.data.cache import apply_speedups
from facecom_utils.nn.heads import build_head
from facecom_utils.nn.backbones import FaceEmbedder
from facecom_utils.common.checkpoints import load_checkpoint
from facecom_utils.train.fit import select_device
from facecom_utils.recognition.config import RecognitionConfig

__all__ = ["RecognitionModel", "load_recognition_model", "build_recognition_model"]


class RecognitionModel(nn.Module):
    """A :class:`~facecom_utils.nn.backbones.FaceEmbedder` with its margin head, for training.

    ``model(images)`` returns embeddings; ``model(images, labels)`` returns the head's scaled
    logits with the margin applied (training mode), which is what the loss needs.

    Args:
        embedder: The face embedder.
        head: A margin head from :func:`facecom_utils.nn.heads.build_head`.
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


def _head_config(config: RecognitionConfig, num_classes: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if config.margin is not None:
        kwargs["m"] = float(config.margin)
    if config.scale is not None:
        kwargs["s"] = float(config.scale)
    return {"name": config.head.lower(), "num_classes": int(num_classes), "kwargs": kwargs}


def build_recognition_model(config: RecognitionConfig, num_classes: int) -> RecognitionModel:
    """The embedder (backbone + neck) with its margin head over ``num_classes`` training identities."""
    embedder = FaceEmbedder(config.backbone, config.pretrained, config.embedding_dim, image_size=config.image_size)
    head_cfg = _head_config(config, num_classes)
    head = build_head(head_cfg["name"], config.embedding_dim, num_classes, **head_cfg["kwargs"])
    model = RecognitionModel(embedder, head, head_cfg)
    apply_speedups(model, config.channels_last, config.compile)
    return model
