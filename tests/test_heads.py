"""Margin heads: logits against the published formulas, computed by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facecom_utils.nn.heads import AdaFace, ArcMarginProduct, CosFace, MarginHead, build_head

B, D, C = 5, 4, 3


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g) * 3.0, torch.tensor([0, 2, 1, 1, 0])


def _cosines(head: MarginHead, x: torch.Tensor) -> list[list[float]]:
    """Cosine of each embedding to each class weight, element by element in python floats."""
    w = head.weight.detach().double()
    out = []
    for i in range(x.shape[0]):
        xi = x[i].double()
        out.append([float(xi @ w[j] / (xi.norm() * w[j].norm())) for j in range(w.shape[0])])
    return out


def test_arcface_logits_match_formula_including_fallback() -> None:
    s, m = 30.0, 0.5
    head = ArcMarginProduct(D, C, s=s, m=m).train()
    x, y = _inputs()
    with torch.no_grad():  # sample 1's class weight opposite to it: theta ~ pi, theta + m > pi -> fallback
        head.weight[2] = -x[1]
    logits = head(x, y)
    cos = _cosines(head, x)
    expected = torch.empty(B, C, dtype=torch.float64)
    for i in range(B):
        for j in range(C):
            c = cos[i][j]
            if j == int(y[i]):
                theta = math.acos(max(-1.0, min(1.0, c)))
                c = math.cos(theta + m) if theta + m <= math.pi else c - math.sin(math.pi - m) * m
            expected[i, j] = s * c
    assert cos[1][2] < math.cos(math.pi - m)  # the fallback branch is exercised
    torch.testing.assert_close(logits.double(), expected, atol=1e-3, rtol=1e-5)


def test_arcface_easy_margin_and_eval_mode() -> None:
    s, m = 10.0, 0.3
    head = ArcMarginProduct(D, C, s=s, m=m, easy_margin=True).train()
    x, y = _inputs(1)
    with torch.no_grad():
        head.weight[0] = -x[0] + 0.1  # negative target cosine: easy margin leaves it unchanged
    cos = torch.tensor(_cosines(head, x), dtype=torch.float64)
    logits = head(x, y).double()
    for i in range(B):
        t = int(y[i])
        c = float(cos[i, t])
        want = s * (math.cos(math.acos(c) + m) if c > 0 else c)
        assert logits[i, t].item() == pytest.approx(want, abs=1e-4)
    assert cos[0, 0] < 0
    # Without labels, or in eval mode: plain scaled cosine.
    torch.testing.assert_close(head(x).double(), s * cos, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(head.eval()(x, y).double(), s * cos, atol=1e-4, rtol=1e-5)


def test_cosface_logits_match_formula() -> None:
    s, m = 30.0, 0.35
    head = CosFace(D, C, s=s, m=m).train()
    x, y = _inputs(2)
    cos = torch.tensor(_cosines(head, x), dtype=torch.float64)
    expected = s * (cos - m * F.one_hot(y, C).double())
    torch.testing.assert_close(head(x, y).double(), expected, atol=1e-4, rtol=1e-5)


def test_adaface_logits_match_reference_formula_and_ema() -> None:
    s, m, h, t_alpha, eps = 64.0, 0.4, 0.333, 0.01, 1e-3
    head = AdaFace(D, C, s=s, m=m, h=h, t_alpha=t_alpha).train()
    x, y = _inputs(3)
    norms = torch.tensor([5.0, 20.0, 40.0, 80.0, 0.5])
    logits = head(F.normalize(x), y, norms=norms).double()

    # Batch statistics: EMA from (20, 100) with the batch mean / unbiased std, updated before use.
    values = [float(v) for v in norms]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    ema_mean = (1 - t_alpha) * 20.0 + t_alpha * mean
    ema_std = (1 - t_alpha) * 100.0 + t_alpha * std
    assert head.batch_mean.item() == pytest.approx(ema_mean, rel=1e-6)
    assert head.batch_std.item() == pytest.approx(ema_std, rel=1e-6)

    cos = _cosines(head, x)
    for i in range(B):
        z = max(-1.0, min(1.0, (values[i] - ema_mean) / (ema_std + eps) * h))
        for j in range(C):
            c = max(-1 + eps, min(1 - eps, cos[i][j]))
            if j == int(y[i]):
                theta = min(math.pi - eps, max(eps, math.acos(c) - m * z))  # g_angle = -m z
                c = math.cos(theta) - (m + m * z)  # g_add = m + m z
            assert logits[i, j].item() == pytest.approx(s * c, abs=2e-3), (i, j)

    # Eval mode: scaled (clipped) cosine and no statistics update.
    head.eval()
    out = head(x, y, norms=norms).double()
    want = torch.tensor(cos, dtype=torch.float64).clamp(-1 + eps, 1 - eps) * s
    torch.testing.assert_close(out, want, atol=1e-3, rtol=1e-5)
    assert head.batch_mean.item() == pytest.approx(ema_mean, rel=1e-6)


def test_adaface_margin_depends_on_norm() -> None:
    head = AdaFace(D, C).train()
    head.batch_mean.fill_(10.0)
    head.batch_std.fill_(5.0)
    head.t_alpha = 0.0  # freeze the statistics to isolate the effect of the norm
    x = F.normalize(torch.ones(2, D))
    with torch.no_grad():
        head.weight.copy_(torch.eye(C, D) + 0.5)
    y = torch.tensor([0, 0])
    logits = head(x, y, norms=torch.tensor([2.0, 30.0]))  # low vs high quality
    assert logits[0, 0] != logits[1, 0]
    torch.testing.assert_close(logits[0, 1:], logits[1, 1:])  # non-target logits are unaffected
    assert AdaFace.needs_norms and not ArcMarginProduct.needs_norms


@pytest.mark.parametrize("name", ["arcface", "cosface", "adaface"])
def test_gradients_flow_and_are_finite(name: str) -> None:
    head = build_head(name, D, C).train()
    x, y = _inputs(4)
    x.requires_grad_(True)
    with torch.no_grad():  # include exact cos = +1 and cos = -1 targets (sqrt/acos edge cases)
        head.weight[0] = x[0]
        head.weight[1] = -x[2]
    loss = F.cross_entropy(head(x, y, norms=x.norm(dim=1)), y, label_smoothing=0.1)
    loss.backward()
    assert torch.isfinite(loss)
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    assert head.weight.grad.abs().sum() > 0
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("head_cls", [ArcMarginProduct, CosFace, AdaFace])
def test_weights_are_normalised(head_cls: type[MarginHead]) -> None:
    head = head_cls(D, C).eval()
    x, _ = _inputs(5)
    before = head(x)
    with torch.no_grad():
        head.weight.mul_(7.0)
    torch.testing.assert_close(head(x), before)
    torch.testing.assert_close(head(x * 0.1), before)  # embeddings are normalised too


def test_build_head_names_and_kwargs() -> None:
    head = build_head("ArcFace", 8, 5, s=16.0, m=0.2, easy_margin=True)
    assert isinstance(head, ArcMarginProduct) and head.s == 16.0 and head.m == 0.2 and head.easy_margin
    assert isinstance(build_head("cos_face", 8, 5), CosFace)
    ada = build_head("adaface", 8, 5)
    assert isinstance(ada, AdaFace) and (ada.s, ada.m, ada.h, ada.t_alpha) == (64.0, 0.4, 0.333, 0.01)
    assert tuple(build_head("arc", 8, 5).weight.shape) == (5, 8)
    with pytest.raises(ValueError, match="unknown head"):
        build_head("sphereface", 8, 5)
    with pytest.raises(ValueError, match="embeddings of shape"):
        build_head("cosface", 8, 5)(torch.randn(2, 7))
