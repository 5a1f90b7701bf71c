"""dlib's face-recognition ResNet in PyTorch gives dlib's own descriptors; the store batches it in order."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from facecom_utils.face import descriptors as fm
from facecom_utils.face.dlib_network import MODEL_FILE, read_dlib_face_net, torch_descriptors
from facecom_utils.data.distortions import apply_distortion

pytest.importorskip("face_recognition_models")  # the .dat file; the parser and the torch network need no dlib
from facecom_utils.face.detect import _model_file  # noqa: E402

MODEL = _model_file(MODEL_FILE)
needs_dlib = pytest.mark.skipif(not fm.face_model_available(), reason="dlib not installed")


def _astronaut(size: int) -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return np.asarray(Image.fromarray(skimage_data.astronaut()[20:220, 120:320]).resize((size, size)))


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    pytest.importorskip("dlib")
    """Aligned chips of a real face (clean, noisy, foggy, sunny), a flat grey chip and a noise chip."""
    face = Image.fromarray(_astronaut(224))
    images = [np.asarray(face)] + [np.asarray(apply_distortion(face, k, rng=3)) for k in ("noisy", "foggy", "sunny")]
    out = [fm._front_end(im, "identity", 1)[0] for im in images]
    rng = np.random.default_rng(0)
    out += [np.full((150, 150, 3), 128, np.uint8), rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)]
    return np.stack(out)


@needs_dlib
def test_torch_network_gives_dlibs_descriptors(chips) -> None:
    ours = fm.chip_descriptors(chips, "torch")
    theirs = fm.chip_descriptors(chips, "dlib")
    assert ours.shape == theirs.shape == (len(chips), 128)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # not trivially equal: the chips have different descriptors, and the face is far from the noise
    assert np.linalg.norm(theirs[0] - theirs[-1]) > 0.3
    np.testing.assert_allclose(torch_descriptors(chips[:1], MODEL, batch=1), theirs[:1], atol=1e-5)
    with pytest.raises(ValueError, match="150, 150, 3"):
        fm.chip_descriptors(chips.transpose(0, 3, 1, 2).copy())  # channels first: refused, not reshaped


def test_weights_are_read_in_forward_order() -> None:
    w = read_dlib_face_net(MODEL)
    np.testing.assert_allclose(w["mean"], [122.782, 117.001, 104.298], atol=1e-3)  # dlib's input_rgb_image means
    shapes = [(c[0].shape, c[2], c[3]) for c in w["convs"]]
    assert len(shapes) == 29 and shapes[0] == ((32, 3, 7, 7), 2, 0) and shapes[-1] == ((256, 256, 3, 3), 1, 1)
    assert [s for s in shapes if s[1] == 2] == [((32, 3, 7, 7), 2, 0), ((64, 32, 3, 3), 2, 0), ((128, 64, 3, 3), 2, 0),
                                                 ((256, 128, 3, 3), 2, 0), ((256, 256, 3, 3), 2, 0)]
    assert [a[0].shape for a in w["affines"]] == [(c[0].shape[0],) for c in w["convs"]]
    assert w["fc"].shape == (128, 256)


def test_other_files_are_refused_with_their_name(tmp_path) -> None:
    data = MODEL.read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.dat"):
        read_dlib_face_net(truncated)
    # the first convolution's stride (2 -> 1): the architecture check catches it
    at = data.index(b"\x01\x05con_4") + 7
    tensor_end = at + 2 + 3 + 2 + 2 + 2 + 4 * 4736
    fields = bytearray(data[tensor_end:tensor_end + 16])
    assert fields[:10] == b"\x01 \x01\x07\x01\x07\x01\x02\x01\x02"
    fields[7] = 1
    changed = tmp_path / "changed.dat"
    changed.write_bytes(data[:tensor_end] + bytes(fields) + data[tensor_end + 16:])
    with pytest.raises(ValueError, match="changed.dat.*convolution 1"):
        read_dlib_face_net(changed)
    # a layer renamed (the fifth relu): the layer sequence check catches it
    at = -1
    for _ in range(5):
        at = data.index(b"\x01\x05relu_", at + 1)
    renamed = tmp_path / "renamed.dat"
    renamed.write_bytes(data[:at] + b"\x01\x05RELU_" + data[at + 7:])
    with pytest.raises(ValueError, match="renamed.dat.*'RELU_', expected 'relu_'"):
        read_dlib_face_net(renamed)
    with pytest.raises(ValueError, match="backend"):
        fm.DescriptorStore(tmp_path, backend="onnx")


@needs_dlib
def test_store_batches_in_order_and_backends_share_a_store(tmp_path) -> None:
    face = Image.fromarray(_astronaut(224))
    paths = []
    for i, kind in enumerate(["clean", "noisy", "foggy", "rainy", "lowlight"]):
        image = face if kind == "clean" else apply_distortion(face, kind, rng=i)
        paths.append(str(tmp_path / f"{i}_{kind}.png"))
        image.save(paths[-1])
    names = ["identity", "denoise", "dehaze", "derain", "lowlight"]
    batched = fm.DescriptorStore(tmp_path / "a", chunk=2).describe(paths, names)
    one_by_one = np.stack([fm.describe_image(np.asarray(Image.open(p).convert("RGB")), n)[0] for p, n in zip(paths, names)])
    np.testing.assert_allclose(batched.descriptors, one_by_one, atol=1e-6)
    assert len({tuple(np.round(d, 3)) for d in batched.descriptors}) == len(paths)
    reference = fm.DescriptorStore(tmp_path / "b", backend="dlib").describe(paths, names)
    np.testing.assert_allclose(batched.descriptors, reference.descriptors, atol=1e-5)
    np.testing.assert_array_equal(batched.detected, reference.detected)
    # the backend is not part of the key: a store filled by dlib serves the torch backend as is
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    served = fm.DescriptorStore(tmp_path / "c", backend="torch").describe(paths, names)
    np.testing.assert_array_equal(served.descriptors, reference.descriptors)


@needs_dlib
def test_mirrored_descriptor_is_the_mean_of_the_chip_and_its_mirror(chips) -> None:
    plain = fm.chip_descriptors(chips)
    mirrors = fm.chip_descriptors(chips[:, :, ::-1])
    mirrored = fm.chip_descriptors(chips, mirror=True)
    unit = lambda d: d / np.linalg.norm(d, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(mirrored, (unit(plain) + unit(mirrors)) / 2, atol=1e-6)
    # a face and its mirror image get the same mirrored descriptor (and a chip is no longer its own mirror's)
    np.testing.assert_allclose(fm.chip_descriptors(chips[:, :, ::-1], mirror=True), mirrored, atol=1e-6)
    cos = np.sum(unit(plain) * unit(mirrors), axis=1)
    assert cos[0] < 0.999  # the real face is not symmetric to the network: mirroring changes its descriptor
    assert 0.9 < np.sum(unit(plain[:1]) * unit(mirrored[:1])) < 0.9999
    with pytest.raises(ValueError, match="differ in shape"):
        fm.mirrored_mean(plain, plain[:2])


@needs_dlib
def test_store_keys_the_mirrored_descriptor_apart(tmp_path, monkeypatch) -> None:
    path = tmp_path / "face.png"
    Image.fromarray(_astronaut(224)).save(path)
    chip = fm._front_end(np.asarray(Image.open(path).convert("RGB")), "denoise", 1)[0]
    mirrored = fm.DescriptorStore(tmp_path / "s", mirror=True).describe([str(path)], "denoise")
    np.testing.assert_allclose(mirrored.descriptors[0], fm.chip_descriptors(chip, mirror=True)[0], atol=1e-6)
    files = sorted(f.name for f in (tmp_path / "s").glob("*.npz"))
    assert len(files) == 2 and sum("_mirror_" in f for f in files) == 1  # its own file, and the plain one's
    # the plain descriptors came free with the mirrored ones: a plain store reads them, computing nothing
    monkeypatch.setattr(fm, "_describe_paths", lambda *a, **k: pytest.fail("recomputed"))
    plain = fm.DescriptorStore(tmp_path / "s").describe([str(path)], "denoise")
    np.testing.assert_allclose(plain.descriptors[0], fm.chip_descriptors(chip)[0], atol=1e-6)
    assert not np.allclose(plain.normalised(), mirrored.normalised(), atol=1e-3)
    again = fm.DescriptorStore(tmp_path / "s", mirror=True).describe([str(path)], "denoise")
    np.testing.assert_array_equal(again.descriptors, mirrored.descriptors)
    # a plain store never answers for the mirrored one
    only_plain = tmp_path / "p"
    only_plain.mkdir()
    shutil.copy(tmp_path / "s" / next(f for f in files if "_mirror_" not in f), only_plain)
    with pytest.raises(pytest.fail.Exception, match="recomputed"):
        fm.DescriptorStore(only_plain, mirror=True).describe([str(path)], "denoise")


@needs_dlib
def test_worker_processes_give_the_same_descriptors_in_order(tmp_path, monkeypatch) -> None:
    face = Image.fromarray(_astronaut(160))
    paths = []
    for i, kind in enumerate(["clean", "noisy", "foggy", "lowlight", "blurred", "rainy"]):
        path = tmp_path / f"{i}.png"
        (face if kind == "clean" else apply_distortion(face, kind, rng=i)).save(path)
        paths.append(str(path))
    pooled = fm.DescriptorStore(tmp_path / "pool", workers=2, chunk=2).describe(paths)
    alone = np.stack([fm.describe_image(np.asarray(Image.open(p).convert("RGB")))[0] for p in paths])
    np.testing.assert_allclose(pooled.descriptors, alone, atol=1e-6)
    gaps = np.linalg.norm(alone[:, None] - alone[None], axis=2)[np.triu_indices(len(paths), 1)]
    assert gaps.min() > 1e-3  # every image has its own descriptor: a shuffled order could not pass
    # the mirrored store's workers return the plain rows too, each to its own image
    mirrored = fm.DescriptorStore(tmp_path / "pool_m", workers=2, chunk=2, mirror=True).describe(paths)
    in_process = fm.DescriptorStore(tmp_path / "alone_m", mirror=True).describe(paths)
    np.testing.assert_allclose(mirrored.descriptors, in_process.descriptors, atol=1e-6)
    monkeypatch.setattr(fm, "_describe_paths", lambda *a, **k: pytest.fail("the plain rows were not written"))
    np.testing.assert_allclose(fm.DescriptorStore(tmp_path / "pool_m").describe(paths).descriptors, alone, atol=1e-6)


def test_device_key_names_each_device_once():
    import torch

    from facecom_utils.face.dlib_network import _device_key

    assert _device_key("cpu") == "cpu"
    assert _device_key(torch.device("cpu")) == "cpu"
    if torch.cuda.is_available():
        assert _device_key("cuda") == _device_key(f"cuda:{torch.cuda.current_device()}")
