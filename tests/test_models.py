"""Backbones, offline ImageNet weights, the missing-weights error and the batch-norm trap."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from facecom_utils.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from facecom_utils.nn.backbones import (
    BN_MOMENTUM,
    FaceEmbedder,
    GenderClassifier,
    WeightsUnavailableError,
    create_backbone,
    offline_efficientnet_lite0,
    recalibrate_batchnorm,
)
from facecom_utils.common.checkpoints import save_checkpoint
from facecom_utils.train.fit import TrainConfig, fit



def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_offline_lite0_weights_classify_a_cat():
    """The position-mapped checkpoint is real ImageNet weights: a cat photo lands in 281-285."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the 'chelsea' cat photo")
    from PIL import Image
    from torchvision import transforms as T

    image = Image.fromarray(skimage_data.chelsea())  # a tabby cat, 451x300
    x = T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(image)
    model = offline_efficientnet_lite0().eval()
    with torch.no_grad():
        prob = model(x[None]).softmax(-1)[0]
    top5 = prob.topk(5).indices.tolist()
    assert 281 <= top5[0] <= 285, top5  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert prob[281:286].sum() > 0.5

    # The backbone made by create_backbone holds the same features as the classifier's input.
    backbone, num_features = create_backbone("efficientnet_lite0", "offline")
    backbone.eval()
    with torch.no_grad():
        features = backbone(x[None])
        expected = model.forward_head(model.forward_features(x[None]), pre_logits=True)
    assert num_features == 1280 and torch.allclose(features, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "pretrained"),
    [
        ("resnet18", "imagenet"),  # timm hub download, refused by HF_HUB_OFFLINE=1
        ("efficientnet-b0", "imagenet"),  # efficientnet_pytorch download, not cached, offline
        ("resnet18", "offline"),  # offline weights exist for efficientnet_lite0 only
        ("efficientnet_lite0", "/no/such/checkpoint.pt"),
    ],
)
def test_missing_weights_raise_and_name_alternatives(name, pretrained):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(WeightsUnavailableError) as info:
        create_backbone(name, pretrained)
    message = str(info.value)
    assert 'pretrained="offline"' in message and "efficientnet_lite0" in message
    assert "pretrained=None" in message and "checkpoint file" in message


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("no_such_net_xyz", None)


def test_backbone_from_our_checkpoint_file(tmp_path):
    source = GenderClassifier("efficientnet_lite0", pretrained=None)
    with torch.no_grad():
        source.backbone.conv_stem.weight.fill_(0.123)
    path = save_checkpoint(tmp_path / "best.pt", {"task": "gender", "model": source.state_dict()})
    loaded = GenderClassifier("efficientnet_lite0", pretrained=str(path))
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(v, loaded.backbone.state_dict()[k]), k
    # a checkpoint of a different architecture is refused, naming the file
    with pytest.raises(WeightsUnavailableError, match="best.pt"):
        create_backbone("resnet18", str(path))


def test_task_models_shapes_and_unit_norm():
    x = torch.randn(4, 3, 64, 64)
    clf = GenderClassifier("efficientnet_lite0", pretrained=None).eval()
    assert clf(x).shape == (4,)
    emb = FaceEmbedder("efficientnet_lite0", pretrained=None, embedding_dim=32).eval()
    z, norm = emb(x, return_norm=True)
    assert z.shape == (4, 32) and norm.shape == (4,)
    assert torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(emb(x), z)


def test_efficientnet_pytorch_bn_momentum_is_fixed():
    """efficientnet_pytorch ships TF's momentum (0.01 in PyTorch terms); we set 0.1."""
    from efficientnet_pytorch import EfficientNet

    assert all(abs(bn.momentum - 0.01) < 1e-9 for bn in _bn_layers(EfficientNet.from_name("efficientnet-b0")))
    backbone, _ = create_backbone("efficientnet-b0", None, image_size=32)
    assert {bn.momentum for bn in _bn_layers(backbone)} == {BN_MOMENTUM}


def _separable_images(n: int = 48, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    x[y == 1, 0] += 1.5  # class 1: strong red channel
    x[y == 0, 2] += 1.5  # class 0: strong blue channel
    return x, y


def test_batchnorm_trap_eval_predictions_are_trustworthy(one_thread):
    """Issue 3's trap: a from-scratch efficientnet-b0 after a short run must predict sensibly in eval mode."""
    x, y = _separable_images()
    torch.manual_seed(0)
    model = GenderClassifier("efficientnet-b0", pretrained=None, dropout=0.0, image_size=32)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(m(batch[0]), batch[1].float())

    cfg = TrainConfig(epochs=4, lr=3e-3, warmup_epochs=0, device="cpu", progress=False, patience=None)
    fit(model, loader, loss_fn, None, cfg)

    # Reference: batch statistics of the whole set (BN in train mode, everything else in eval mode).
    model.eval()
    for bn in _bn_layers(model):
        bn.train()
    with torch.no_grad():
        reference = (model(x) > 0).long()
    assert 0 < reference.sum() < len(y) and (reference == y).float().mean() > 0.8  # it did learn

    recalibrate_batchnorm(model, DataLoader(TensorDataset(x, y), batch_size=16))
    assert not model.training and all(bn.momentum == BN_MOMENTUM for bn in _bn_layers(model))
    with torch.no_grad():
        pred = (model(x) > 0).long()
    assert 0 < pred.sum() < len(y), "eval mode predicts a single class: the batch-norm trap"
    assert (pred == reference).float().mean() >= 0.9
    assert (pred == y).float().mean() >= 0.8


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "lcnet_050", "resnet10t", "efficientnet_lite0"])
def test_backbone_reports_the_width_it_returns(name: str) -> None:
    """timm models with a conv head (mobilenetv3, lcnet) return head_hidden_size, not num_features."""
    backbone, width = create_backbone(name, None)
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, width)


def test_face_embedder_features_are_what_forward_normalises(one_thread) -> None:
    """One forward rule: forward() is the L2-normalised "neck" of features(); "pooled" is the backbone's."""
    from facecom_utils.nn.backbones import FaceEmbedder

    torch.manual_seed(0)
    model = FaceEmbedder("resnet10t", None, 16, image_size=32).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        feats = model.features(x, ("pooled", "neck"))
        emb = model(x)
        assert torch.allclose(emb, torch.nn.functional.normalize(feats["neck"], dim=1), atol=1e-6)
        assert torch.allclose(feats["pooled"], model.backbone(x))


def test_channels_last_weights_compute_the_same_step_and_checkpoint(tmp_path) -> None:
    """apply_speedups(channels_last=True): the same loss and gradients as contiguous weights (float rounding), and
    a checkpoint that a plain model loads with weights_only=True."""
    import copy

    import torch.nn.functional as F

    from facecom_utils.data.cache import apply_speedups
    from facecom_utils.nn.backbones import GenderClassifier

    torch.manual_seed(0)
    # no dropout (its mask is drawn in memory order) and 64 px x 8 images: batch-norm statistics over a
    # 1 x 1 last map of 4 images would blow float rounding up to 1e-3
    plain = GenderClassifier("efficientnet_lite0", None, dropout=0.0, image_size=64)
    fast = apply_speedups(copy.deepcopy(plain), channels_last=True)
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in fast.parameters())
    x, y = torch.rand(8, 3, 64, 64), (torch.arange(8) % 2).float()
    losses = []
    for model in (plain, fast):
        model.train()
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    g_plain = torch.cat([p.grad.flatten() for p in plain.parameters()])
    g_fast = torch.cat([p.grad.flatten() for p in fast.parameters()])
    # 0.6 % measured: an untrained network with batch statistics magnifies rounding; a wrong layout gives O(1)
    assert (g_plain - g_fast).norm() / g_plain.norm() < 2e-2
    torch.save(fast.state_dict(), tmp_path / "w.pt")
    again = GenderClassifier("efficientnet_lite0", None, dropout=0.0, image_size=64)
    again.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    fast.eval(), again.eval()
    torch.testing.assert_close(again(x), fast(x), atol=1e-5, rtol=1e-4)
