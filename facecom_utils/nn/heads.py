"""Margin-based classification heads for face recognition: ArcFace, CosFace and AdaFace.

Each head holds one weight vector per training identity, L2-normalises both the embeddings and the
weights, and returns *scaled logits* ready for ``nn.CrossEntropyLoss`` (with label smoothing if
wanted). The margin is applied to the target class only, and only in training mode when labels are
given; in eval mode, or with ``labels=None``, every head returns the plain scaled cosine ``s * cos``.

All heads share the forward signature ``head(embeddings, labels=None, norms=None)`` so a training
loop can call any of them the same way; only :class:`AdaFace` uses ``norms`` (``needs_norms = True``).

Example::

    head = build_head("arcface", in_features=512, out_features=num_identities, s=30.0, m=0.5)
    logits = head(embeddings, labels)            # [B, num_identities]
    loss = F.cross_entropy(logits, labels, label_smoothing=0.1)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HEADS", "AdaFace", "ArcMarginProduct", "CosFace", "MarginHead", "build_head"]


class MarginHead(nn.Module):
    """Base class: a normalised linear layer producing cosine similarities to class centres.

    Args:
        in_features: Embedding dimension.
        out_features: Number of classes (training identities).
        s: Logit scale.
        m: Margin.
    """

    needs_norms: bool = False

    def __init__(self, in_features: int, out_features: int, s: float, m: float) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.s = float(s)
        self.m = float(m)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine between each (normalised) embedding and each (normalised) class weight, in float32."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.in_features:
            raise ValueError(f"expected embeddings of shape [B, {self.in_features}], got {tuple(embeddings.shape)}")
        return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))

    def _use_margin(self, labels: torch.Tensor | None) -> bool:
        return labels is not None and self.training

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, s={self.s}, m={self.m}"


class ArcMarginProduct(MarginHead):
    """ArcFace (Deng et al., 2019): target logit ``s * cos(theta + m)``.

    Follows the insightface / ``ArcMarginProduct`` reference: ``cos(theta + m)`` is computed as
    ``cos*cos(m) - sin*sin(m)``. When ``theta + m`` would exceed pi (``cos <= cos(pi - m)``) the
    target logit falls back to ``cos - m*sin(m)`` (``mm``), which keeps it monotonic in theta.
    With ``easy_margin`` the margin is only applied where ``cos > 0``.

    Args:
        in_features: Embedding dimension.
        out_features: Number of classes.
        s: Logit scale.
        m: Additive angular margin (radians).
        easy_margin: Apply the margin only to targets with ``cos > 0``.
    """

    def __init__(
        self, in_features: int, out_features: int, s: float = 30.0, m: float = 0.50, easy_margin: bool = False
    ) -> None:
        super().__init__(in_features, out_features, s, m)
        self.easy_margin = easy_margin
        self.cos_m = math.cos(m)
        self.sin_m = math.sin(m)
        self.th = math.cos(math.pi - m)
        self.mm = math.sin(math.pi - m) * m

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scaled logits [B, out_features]; ``norms`` is ignored."""
        cosine = self.cosine(embeddings)
        if not self._use_margin(labels):
            return self.s * cosine
        sine = torch.sqrt((1.0 - cosine.pow(2)).clamp_min(1e-12))
        phi = cosine * self.cos_m - sine * self.sin_m  # cos(theta + m)
        if self.easy_margin:
            phi = torch.where(cosine > 0, phi, cosine)
        else:
            phi = torch.where(cosine > self.th, phi, cosine - self.mm)
        one_hot = F.one_hot(labels.long(), self.out_features).to(cosine.dtype)
        return self.s * (one_hot * phi + (1.0 - one_hot) * cosine)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", easy_margin={self.easy_margin}"


class CosFace(MarginHead):
    """CosFace / large-margin cosine loss (Wang et al., 2018): target logit ``s * (cos - m)``.

    Args:
        in_features: Embedding dimension.
        out_features: Number of classes.
        s: Logit scale.
        m: Additive cosine margin.
    """

    def __init__(self, in_features: int, out_features: int, s: float = 30.0, m: float = 0.35) -> None:
        super().__init__(in_features, out_features, s, m)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scaled logits [B, out_features]; ``norms`` is ignored."""
        cosine = self.cosine(embeddings)
        if not self._use_margin(labels):
            return self.s * cosine
        one_hot = F.one_hot(labels.long(), self.out_features).to(cosine.dtype)
        return self.s * (cosine - self.m * one_hot)


class AdaFace(MarginHead):
    """AdaFace (Kim et al., CVPR 2022): a margin that adapts to image quality via the feature norm.

    Follows the authors' reference implementation (mk-minchul/AdaFace ``head.py``). The feature
    norm ``||f||`` (the norm of the embedding *before* L2 normalisation) is a proxy for image
    quality. It is standardised with an exponential moving average of the batch mean and std
    (``t_alpha``; buffers ``batch_mean``/``batch_std`` start at 20/100 and update in training
    mode only, before use) into ``z = clip(h * (||f|| - mean) / (std + eps), -1, 1)``. For the
    target class::

        theta' = clip(theta - m * z, eps, pi - eps)     # angular margin, larger for easy images
        logit  = s * (cos(theta') - (m + m * z))         # additive margin, larger for good images

    so a low-quality image (z = -1) gets ArcFace's angular margin m, an average one (z = 0) CosFace's
    additive margin m, and a high-quality one (z = 1) angular -m plus additive 2m (which puts the
    emphasis on its hard samples). The norms are detached: no gradient flows through them.

    Args:
        in_features: Embedding dimension.
        out_features: Number of classes.
        s: Logit scale.
        m: Margin.
        h: Concentration of the standardised norm (``z`` is multiplied by ``h`` before clipping).
        t_alpha: EMA momentum of the batch norm statistics.
        eps: Numerical epsilon (cosine clipping and std).
    """

    needs_norms = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        s: float = 64.0,
        m: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
        eps: float = 1e-3,
    ) -> None:
        super().__init__(in_features, out_features, s, m)
        self.h = float(h)
        self.t_alpha = float(t_alpha)
        self.eps = float(eps)
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scaled logits [B, out_features].

        Args:
            embeddings: [B, D] embeddings (normalised here, so raw features work too).
            labels: [B] class indices; ``None`` (or eval mode) returns ``s * cos`` without margin.
            norms: [B] or [B, 1] feature norms *before* L2 normalisation, e.g.
                ``features.norm(dim=1)`` of the neck output. ``None``: the norms of ``embeddings``
                (right only if raw, un-normalised features are passed).
        """
        cosine = self.cosine(embeddings).clamp(-1 + self.eps, 1 - self.eps)
        if not self._use_margin(labels):
            return self.s * cosine
        if norms is None:
            norms = embeddings.detach().float().norm(dim=1)
        safe_norms = norms.detach().float().reshape(-1, 1).clamp(0.001, 100)
        if safe_norms.shape[0] != cosine.shape[0]:
            raise ValueError(f"norms must have one entry per embedding ({cosine.shape[0]}), got {tuple(norms.shape)}")
        with torch.no_grad():
            if safe_norms.shape[0] > 1:  # the std of a single sample is undefined
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * safe_norms.mean())
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * safe_norms.std())
        margin_scaler = ((safe_norms - self.batch_mean) / (self.batch_std + self.eps) * self.h).clamp(-1, 1)
        one_hot = F.one_hot(labels.long(), self.out_features).to(cosine.dtype)
        theta = cosine.acos()
        theta_m = (theta - one_hot * self.m * margin_scaler).clamp(self.eps, math.pi - self.eps)
        cosine_m = theta_m.cos() - one_hot * (self.m + self.m * margin_scaler)
        return self.s * cosine_m

    def extra_repr(self) -> str:
        return super().extra_repr() + f", h={self.h}, t_alpha={self.t_alpha}"


HEADS: dict[str, type[MarginHead]] = {
    "arcface": ArcMarginProduct,
    "arc": ArcMarginProduct,
    "arcmarginproduct": ArcMarginProduct,
    "cosface": CosFace,
    "adaface": AdaFace,
}


def build_head(name: str, in_features: int, out_features: int, **kwargs: Any) -> MarginHead:
    """Creates a margin head by name.

    Args:
        name: ``"arcface"`` (aliases ``"arc"``, ``"arcmarginproduct"``), ``"cosface"`` or
            ``"adaface"``; case-insensitive.
        in_features: Embedding dimension.
        out_features: Number of classes.
        **kwargs: Head hyper-parameters (``s``, ``m``, ``easy_margin``, ``h``, ``t_alpha``).

    Returns:
        The head module.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in HEADS:
        raise ValueError(f"unknown head {name!r}; expected one of 'arcface', 'cosface', 'adaface'")
    return HEADS[key](in_features, out_features, **kwargs)
