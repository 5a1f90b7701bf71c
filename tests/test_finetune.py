"""Fine-tuning dlib's face network: it starts at dlib's descriptors, trains only what is not frozen,
lowers its loss, saves and reloads safely, and its descriptors are cached apart from dlib's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("face_recognition_models")  # the .dat file; the torch network needs no dlib

from facecom_utils.face import descriptors as fm  # noqa: E402
from facecom_utils.face import finetune as ft  # noqa: E402
from facecom_utils.face.dlib_network import BLOCKS, MODEL_FILE, torch_descriptors  # noqa: E402
from facecom_utils.face.detect import _model_file  # noqa: E402


@pytest.fixture(scope="module")
def net():
    return ft.stock_network()


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """Six 150 px chips: a smooth face-like gradient image under different noises (no file, no dlib)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:150, 0:150] / 150.0
    base = np.stack([200 * x, 150 * y, 100 * (1 - x) + 50], axis=2)
    return np.stack([np.clip(base + rng.normal(0, s, base.shape), 0, 255).astype(np.uint8)
                     for s in (0, 5, 10, 20, 40, 80)])


def test_starts_at_dlibs_descriptors_and_splits_exactly(net, chips) -> None:
    want = torch_descriptors(chips, _model_file(MODEL_FILE))
    with torch.no_grad():
        got = net(torch.from_numpy(chips)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    for k in (0, 7, 10, BLOCKS - 1):
        act = ft.trunk_activations(net, chips, k)
        assert act.dtype == np.float16
        # float16 activations: the split network stays within float16 rounding of the whole one
        np.testing.assert_allclose(ft.tail_descriptors(net, act, k), want, atol=5e-3)
    assert np.abs(want[0] - want[-1]).max() > 1e-2  # the chips differ, so the match above is not trivial


def _select_calls():
    calls = []

    def select(network) -> float:
        calls.append(ft.weights_digest(network))
        return float(len(calls))  # every epoch "better": the last epoch is kept

    return select, calls


def test_training_lowers_the_loss_and_leaves_frozen_blocks_bit_identical(net, chips) -> None:
    k = 10
    act = ft.trunk_activations(net, np.concatenate([chips] * 4), k)
    with torch.no_grad():
        clean = net(torch.from_numpy(chips[:1])).numpy()
    targets = np.repeat(clean, len(act), axis=0)  # every noisy chip pulled towards the clean one
    labels = np.tile(np.arange(len(chips)) % 2, 4)
    select, calls = _select_calls()
    before = {n: p.detach().clone() for n, p in net.state_dict().items()}
    result = ft.finetune(act, targets, labels, ft.FinetuneConfig(objective="both", frozen_blocks=k, epochs=3,
                                                                  batch_size=8, lr=1e-3, patience=5),
                         select, network=net, log=None)
    losses = [h["loss"] for h in result.history[1:]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert result.best_epoch == 3 and len(calls) == 4  # epoch 0 (dlib's weights) is scored too
    after = result.network.state_dict()
    frozen = {f"convs.{i}.{w}" for i in range(2 * k + 1) for w in ("weight", "bias")} | {"mean"}
    for name in frozen:
        assert torch.equal(after[name], before[name]), name
    moved = [n for n in after if n not in frozen and not torch.equal(after[n], before[n])]
    assert "fc.weight" in moved and f"convs.{2 * k + 1}.weight" in moved
    for name, tensor in net.state_dict().items():  # the start network itself is untouched
        assert torch.equal(tensor, before[name])
    # the consistency part moved the noisy chips towards the clean one
    d0 = ft.tail_descriptors(net, act, k)
    d1 = ft.tail_descriptors(result.network, act, k)
    cos = lambda d: (d / np.linalg.norm(d, axis=1, keepdims=True)) @ (clean[0] / np.linalg.norm(clean[0]))  # noqa: E731
    assert cos(d1).mean() > cos(d0).mean()


def test_no_better_epoch_keeps_dlibs_weights(net, chips) -> None:
    act = ft.trunk_activations(net, chips, 12)
    scores = iter([1.0, 0.5, 0.4, 0.3])
    result = ft.finetune(act, np.ones((len(act), 128), np.float32), np.zeros(len(act), int),
                         ft.FinetuneConfig(frozen_blocks=12, epochs=3, patience=2, lr=1e-2),
                         lambda _: next(scores), network=net, log=None)
    assert result.best_epoch == 0 and len(result.history) == 3  # stopped after 2 epochs without gain
    assert ft.weights_digest(result.network) == ft.weights_digest(net)


def test_save_load_weights_only_and_digest(tmp_path, net, chips) -> None:
    act = ft.trunk_activations(net, chips, 12)
    select, _ = _select_calls()
    result = ft.finetune(act, np.ones((len(act), 128), np.float32), np.zeros(len(act), int),
                         ft.FinetuneConfig(frozen_blocks=12, epochs=1, lr=1e-2), select, network=net, log=None)
    path = ft.save_finetuned(result.network, tmp_path / "ft.pt", {"objective": "consistency"})
    loaded, meta = ft.load_finetuned(path)
    assert meta == {"objective": "consistency"}
    assert ft.weights_digest(loaded) == ft.weights_digest(result.network) != ft.stock_digest()
    np.testing.assert_array_equal(ft.finetuned_descriptors(chips, path),
                                  ft.finetuned_descriptors(chips, ft.save_finetuned(loaded, tmp_path / "again.pt")))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["fc.weight"] += 1.0
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="do not match their saved digest"):
        ft.load_finetuned(tmp_path / "edited.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a fine-tuned face network"):
        ft.saved_digest(tmp_path / "other.pt")


def test_descriptor_cache_is_keyed_by_the_weights(tmp_path, net, chips, monkeypatch) -> None:
    """A fine-tuned network never reads the descriptors dlib's weights cached, and vice versa."""
    files = []
    for i, c in enumerate(chips[:3]):
        files.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(c).save(files[-1])
    monkeypatch.setattr(fm, "_front_end", lambda image, restoration, upsample: (np.asarray(image, np.uint8), True, 1.0))
    stock = fm.DescriptorStore(tmp_path / "cache").describe(files).descriptors
    np.testing.assert_allclose(stock, torch_descriptors(chips[:3], _model_file(MODEL_FILE)), atol=1e-5)

    moved = ft.stock_network()
    with torch.no_grad():
        moved.fc.weight.mul_(-1.0)  # a different network: every descriptor is negated
    tuned = ft.save_finetuned(moved, tmp_path / "tuned.pt")
    store = fm.DescriptorStore(tmp_path / "cache", weights=tuned)
    assert store._file("identity") != fm.DescriptorStore(tmp_path / "cache")._file("identity")
    np.testing.assert_allclose(store.describe(files).descriptors, -stock, atol=1e-5)
    # a second store of each kind reads its own file: neither recomputes
    monkeypatch.setattr(fm, "_describe_paths", lambda *a, **k: pytest.fail("recomputed"))
    np.testing.assert_allclose(fm.DescriptorStore(tmp_path / "cache", weights=tuned).describe(files).descriptors,
                               -stock, atol=1e-5)
    np.testing.assert_array_equal(fm.DescriptorStore(tmp_path / "cache").describe(files).descriptors, stock)
    # weights equal to dlib's share dlib's files
    same = ft.save_finetuned(net, tmp_path / "same.pt")
    assert fm.DescriptorStore(tmp_path / "cache", weights=same)._file("identity") == \
        fm.DescriptorStore(tmp_path / "cache")._file("identity")
    with pytest.raises(ValueError, match="torch backend"):
        fm.DescriptorStore(tmp_path / "cache", backend="dlib", weights=tuned)


def test_source_rows() -> None:
    paths = np.array(["a.jpg", "b.jpg", "a_noisy.jpg", "b_foggy.jpg"])
    sources = np.array([None, np.nan, "a.jpg", "b.jpg"], dtype=object)
    np.testing.assert_array_equal(ft.source_rows(paths, sources), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="c_noisy.jpg: its clean source c.jpg"):
        ft.source_rows(np.array(["a.jpg", "c_noisy.jpg"]), np.array([None, "c.jpg"], dtype=object))


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="objective"):
        ft.FinetuneConfig(objective="triplet")
    with pytest.raises(ValueError, match="frozen_blocks"):
        ft.FinetuneConfig(frozen_blocks=BLOCKS)


def test_chip_store_caches_in_shards_and_resumes(tmp_path, chips, monkeypatch) -> None:
    from facecom_utils.face import chips as cs

    files = []
    for i, c in enumerate(chips):
        files.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(c).save(files[-1])
    seen = []

    def front(image, restoration, upsample):
        seen.append(restoration)
        return np.asarray(image, np.uint8) // (2 if restoration == "denoise" else 1), restoration == "identity", 1.5

    monkeypatch.setattr(fm, "_front_end", front)
    store = cs.ChipStore(tmp_path / "cache", save_every=2)
    got = store.chips(files[:4], ["identity", "denoise", "identity", "denoise"])
    np.testing.assert_array_equal(got.chips[0], chips[0])
    np.testing.assert_array_equal(got.chips[1], chips[1] // 2)
    assert got.detected.tolist() == [True, False, True, False] and len(seen) == 4
    shards = sorted((tmp_path / "cache").rglob("part-*.npz"))
    assert len(shards) >= 2  # written as it went, not once at the end
    # a new store reads the shards, computes only what is missing, and never rewrites old shards
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    again = cs.ChipStore(tmp_path / "cache").chips(files, "identity")
    assert len(seen) == 4 + 4  # files 1 and 3 were only cached after denoise; 4 and 5 are new
    np.testing.assert_array_equal(again.chips, chips)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    with pytest.raises(KeyError, match="unknown restoration"):
        store.chips(files[:1], "sharpen")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        store.chips([str(tmp_path / "missing.png")])


def test_the_best_middle_epoch_is_kept(net, chips) -> None:
    act = ft.trunk_activations(net, chips, 12)
    scores, digests = iter([0.0, 2.0, 1.0, 0.5]), []

    def select(network) -> float:
        digests.append(ft.weights_digest(network))
        return next(scores)

    result = ft.finetune(act, np.ones((len(act), 128), np.float32), np.zeros(len(act), int),
                         ft.FinetuneConfig(frozen_blocks=12, epochs=3, patience=5, lr=1e-2), select, network=net, log=None)
    assert result.best_epoch == 1 and len(set(digests)) == 4
    assert ft.weights_digest(result.network) == digests[1]  # epoch 1's weights, not the last epoch's


def test_margin_loss_is_arcface() -> None:
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0], [-1.0, 0.1]]), dim=1)
    centres = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1, 0])
    cos = emb @ torch.nn.functional.normalize(centres, dim=1).T
    plain = torch.nn.functional.cross_entropy(16.0 * cos, y)
    assert float(ft._margin_loss(emb, centres, y, ft.FinetuneConfig(objective="margin", margin=0.0))) == pytest.approx(float(plain), rel=1e-5)
    m = 0.3
    theta = torch.acos(cos[[0, 1], y[:2]])
    want = cos.clone()
    want[[0, 1], y[:2]] = torch.cos(theta + m)
    want[2, 0] = cos[2, 0] - m * np.sin(np.pi - m)  # theta near pi: past pi - m, the linear continuation
    got = ft._margin_loss(emb, centres, y, ft.FinetuneConfig(objective="margin", margin=m))
    assert float(got) == pytest.approx(float(torch.nn.functional.cross_entropy(16.0 * want, y)), rel=1e-5)


def test_bad_inputs_are_refused(net, chips) -> None:
    act = ft.trunk_activations(net, chips, 12)
    cfg = ft.FinetuneConfig(frozen_blocks=12, epochs=1)
    with pytest.raises(ValueError, match="one target"):
        ft.finetune(act, np.ones((len(act) - 1, 128), np.float32), np.zeros(len(act), int), cfg, lambda _: 1.0, network=net)
    with pytest.raises(ValueError, match="without gaps"):
        ft.finetune(act, np.ones((len(act), 128), np.float32), np.array([0, 2] * 3), cfg, lambda _: 1.0, network=net)
    with pytest.raises(ValueError, match="NaN"):
        ft.finetune(act, np.ones((len(act), 128), np.float32), np.zeros(len(act), int), cfg, lambda _: float("nan"),
                    network=net, log=None)
    with pytest.raises(ValueError, match="blocks must be"):
        ft.trunk_activations(net, chips, BLOCKS + 1)


def test_a_replaced_weights_file_is_refused(tmp_path, net, chips) -> None:
    path = ft.save_finetuned(net, tmp_path / "w.pt")
    first = ft.saved_digest(path)
    moved = ft.stock_network()
    with torch.no_grad():
        moved.fc.weight.mul_(2.0)
    ft.save_finetuned(moved, path)  # replaced after a store read its digest
    with pytest.raises(ValueError, match="expected weights"):
        ft.finetuned_descriptors(chips, path, digest=first)
    np.testing.assert_allclose(ft.finetuned_descriptors(chips, path), 2 * torch_descriptors(chips, _model_file(MODEL_FILE)),
                               rtol=1e-4, atol=1e-5)


def test_a_damaged_chip_shard_is_computed_again(tmp_path, chips, monkeypatch) -> None:
    from facecom_utils.face import chips as cs

    file = str(tmp_path / "img.png")
    Image.fromarray(chips[0]).save(file)
    calls = []
    monkeypatch.setattr(fm, "_front_end", lambda image, restoration, upsample: calls.append(1) or (np.asarray(image, np.uint8), True, 1.0))
    cs.ChipStore(tmp_path / "cache").chips([file])
    (shard,) = (tmp_path / "cache").rglob("part-*.npz")
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    np.testing.assert_array_equal(cs.ChipStore(tmp_path / "cache").chips([file]).chips[0], chips[0])
    assert len(calls) == 2
