"""dlib's face-recognition ResNet, read from its ``.dat`` file and run in PyTorch.

``dlib-bin`` is built without BLAS: its descriptor network costs 105-160 ms per 150 px chip on one
core of this project's 2-core machine, most of an image's cost in the face front end. The same
network in PyTorch computes the same 128 numbers (to ~5e-6, checked against dlib in
``tests/test_dlib_resnet.py`` and by ``python -m facecom_utils.bench.speed --parts descriptors``) about
20x faster on one core in chunks of 16.

The weights come from the file ``face-recognition-models`` installs
(``dlib_face_recognition_resnet_model_v1.dat``), parsed with dlib's serialisation rules:

- an integer is a control byte (low 4 bits: how many little-endian bytes follow; bit 7: negative)
  then its bytes; a string is its length (an integer) then its bytes; a float outside a tensor is a
  mantissa and an exponent (two integers);
- a tensor is a version (2), its four dimensions, then raw little-endian float32 values;
- a network is serialised from its input layer outwards, each layer as its name then its fields.

The architecture is dlib's ``anet_type`` (``dnn_face_recognition_ex.cpp``): a 7x7/2 convolution and
3x3/2 max pool, then residual blocks of 32 (x3), 64 (x4), 128 (x3), 256 (x3) and 256 (x1) filters,
the first of each stage after the first halving the resolution (the shortcut is a 2x2/2 average
pool), a global average pool and a 128-unit linear layer without bias. Convolutions with stride 2
have no padding (dlib's default), so a block's two branches can differ in size: dlib adds them
into a tensor of the larger size, zero where one is missing (channels and rows/columns at the
end). Every layer's name, filter count, kernel, stride and padding read from the file are checked
against this architecture, so a different file fails with a message instead of giving wrong
numbers.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BLOCKS", "DlibFaceNet", "network_descriptors", "read_dlib_face_net", "torch_descriptors"]

CHIP = 150
# (filters, halves the resolution) of every residual block, input side first
_BLOCKS = ([(32, False)] * 3 + [(64, True)] + [(64, False)] * 3 + [(128, True)] + [(128, False)] * 2
           + [(256, True)] + [(256, False)] * 2 + [(256, True)])
#: Residual blocks of the network (a trunk of ``k`` blocks leaves ``BLOCKS - k`` to fine-tune).
BLOCKS = len(_BLOCKS)
_NAME = re.compile(rb"[A-Za-z_][A-Za-z0-9_]{2,31}")  # any identifier-like string: unknown layers are refused
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"


def _layer_sequence() -> list[bytes]:
    """The layer names of ``anet_type`` in the file's (forward) order, after the input layer."""
    names = [b"con_4", b"affine_", b"relu_", b"max_pool_2"]
    for _, down in _BLOCKS:
        names += [b"con_4", b"affine_", b"relu_", b"con_4", b"affine_"] + ([b"avg_pool_2"] if down else [])
        names += [b"add_prev_", b"relu_"]
    return names + [b"avg_pool_2", b"fc_2"]


class _Reader:
    """A cursor over dlib's serialised bytes."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.source}: not dlib's face-recognition ResNet ({what} at byte {self.pos})")

    def int(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of file")
        control = self.data[self.pos]
        size = control & 0x0F
        if size > 8 or self.pos + 1 + size > len(self.data):
            raise self.fail(f"integer of {size} bytes")
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0 ** exponent

    def skip_to(self, name: bytes) -> None:
        """Moves past the next serialised string ``name`` (a length byte then the name)."""
        marker = bytes([0x01, len(name)]) + name
        at = self.data.find(marker, self.pos)
        if at < 0:
            raise self.fail(f"no layer {name.decode()!r} after")
        self.pos = at + len(marker)

    def name(self) -> bytes:
        """The next layer name: the next serialised identifier-like string, skipping the plain fields
        (integers, flags, empty tensors) of the layer before it and of tags / skips, which have no name."""
        while self.pos + 1 < len(self.data):
            if self.data[self.pos] == 0x01:
                size = self.data[self.pos + 1]
                word = self.data[self.pos + 2:self.pos + 2 + size]
                if len(word) == size and _NAME.fullmatch(word):
                    self.pos += 2 + size
                    return word
            self.pos += 1
        raise self.fail("unexpected end of file")

    def tensor(self) -> np.ndarray:
        if self.int() != 2:
            raise self.fail("tensor version other than 2")
        dims = [self.int() for _ in range(4)]
        count = int(np.prod(dims))
        end = self.pos + 4 * count
        if count <= 0 or end > len(self.data):
            raise self.fail(f"tensor of {dims}")
        values = np.frombuffer(self.data, "<f4", count, self.pos).astype(np.float32)
        self.pos = end
        return values


def read_dlib_face_net(path: str | Path) -> dict[str, Any]:
    """The weights of dlib's ``dlib_face_recognition_resnet_model_v1.dat`` as numpy arrays.

    Returns:
        ``{"mean": [3] (R, G, B), "convs": [(weight [O, I, k, k], bias [O], stride, padding)],
        "affines": [(gamma [C], beta [C])], "fc": [128, 256]}``; convolutions and affines in forward order.

    Raises:
        ValueError: The file is not this network (names, sizes or layer settings differ).
    """
    r = _Reader(Path(path).read_bytes(), str(path))
    r.skip_to(b"input_rgb_image_sized")
    mean = np.array([r.float() for _ in range(3)], np.float32)
    if (r.int(), r.int()) != (CHIP, CHIP):
        raise r.fail(f"input other than {CHIP} x {CHIP}")
    expected = [(32, 3, 7, 2)]  # (filters, inputs, kernel, stride) of every convolution in order
    channels = 32
    for filters, down in _BLOCKS:
        expected += [(filters, channels, 3, 2 if down else 1), (filters, filters, 3, 1)]
        channels = filters
    convs, affines = [], []
    pools = 0
    for i, want in enumerate(_layer_sequence()):
        name = r.name()
        if name != want:
            raise r.fail(f"layer {i + 1} after the input is {name.decode(errors='replace')!r}, expected {want.decode()!r}")
        if name == b"con_4":
            filters, inputs, k, stride = expected[len(convs)]
            params = r.tensor()
            fields = [r.int() for _ in range(7)]  # filters, rows, cols, stride y, stride x, padding y, padding x
            padding = 0 if stride != 1 else k // 2
            if fields != [filters, k, k, stride, stride, padding, padding] or params.size != filters * (inputs * k * k + 1):
                raise r.fail(f"convolution {len(convs) + 1}: {fields}, {params.size} parameters")
            n = filters * inputs * k * k
            convs.append((params[:n].reshape(filters, inputs, k, k), params[n:], stride, padding))
        elif name == b"affine_":
            params = r.tensor()
            if params.size != 2 * expected[len(affines)][0]:
                raise r.fail(f"affine layer {len(affines) + 1} of {params.size} parameters")
            c = params.size // 2
            affines.append((params[:c], params[c:]))
        elif name in (b"max_pool_2", b"avg_pool_2"):
            fields = [r.int() for _ in range(6)]  # rows, cols, stride y, stride x, padding y, padding x
            want_fields = [3, 3, 2, 2, 0, 0] if name == b"max_pool_2" else ([2, 2, 2, 2, 0, 0] if pools < 4 else [0, 0, 1, 1, 0, 0])
            if fields != want_fields:
                raise r.fail(f"{name.decode()} {fields}")
            pools += name == b"avg_pool_2"
        elif name == b"fc_2":
            if (r.int(), r.int()) != (128, 256):  # outputs, inputs
                raise r.fail("final layer other than 256 -> 128")
            params = r.tensor()
            if params.size != 256 * 128:
                raise r.fail(f"final layer of {params.size} parameters")
    # dlib's fc stores [inputs, outputs] and computes x @ W
    return {"mean": mean, "convs": convs, "affines": affines, "fc": params.reshape(256, 128).T.copy()}


@functools.cache
def _net_module() -> Any:
    import torch
    from torch import nn
    import torch.nn.functional as F

    def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """dlib's add_prev: the sum in a tensor of the larger size, missing entries taken as 0."""
        shape = [max(x, y) for x, y in zip(a.shape, b.shape)]

        def grow(t: torch.Tensor) -> torch.Tensor:
            pad = [0, shape[3] - t.shape[3], 0, shape[2] - t.shape[2], 0, shape[1] - t.shape[1]]
            return F.pad(t, pad) if any(pad) else t

        return grow(a) + grow(b)

    class DlibFaceNet(nn.Module):
        """dlib's face-recognition ResNet (128-d descriptor) as a PyTorch module; see the module docstring.

        Call :meth:`from_dat` to load the weights; ``forward`` takes uint8 RGB chips
        ``[N, 150, 150, 3]`` (dlib's aligned chips) and returns the raw descriptors ``[N, 128]``.
        """

        def __init__(self, weights: dict[str, Any]) -> None:
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(weights["mean"]).view(1, 3, 1, 1))
            self.convs = nn.ModuleList()
            for (w, b, stride, padding), (gamma, beta) in zip(weights["convs"], weights["affines"]):
                conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], stride, padding)
                # fold the affine (y = gamma * conv(x) + beta) into the convolution
                conv.weight.data = torch.as_tensor(w * gamma[:, None, None, None])
                conv.bias.data = torch.as_tensor(b * gamma + beta)
                self.convs.append(conv)
            self.fc = nn.Linear(256, 128, bias=False)
            self.fc.weight.data = torch.as_tensor(weights["fc"])
            self.eval()

        @classmethod
        def from_dat(cls, path: str | Path) -> "DlibFaceNet":
            return cls(read_dlib_face_net(path))

        def trunk(self, chips: torch.Tensor, blocks: int = len(_BLOCKS)) -> torch.Tensor:
            """The activations after the stem and the first ``blocks`` residual blocks (0-14)."""
            if chips.dim() != 4 or tuple(chips.shape[1:]) != (CHIP, CHIP, 3):
                raise ValueError(f"expected uint8 RGB chips [N, {CHIP}, {CHIP}, 3], got {tuple(chips.shape)}")
            x = (chips.permute(0, 3, 1, 2).float() - self.mean) / 256.0
            x = F.max_pool2d(F.relu(self.convs[0](x)), 3, 2)
            return self._blocks(x, 0, blocks)

        def _blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            for b in range(start, stop):
                y = self.convs[2 * b + 2](F.relu(self.convs[2 * b + 1](x)))
                x = F.relu(add_padded(y, F.avg_pool2d(x, 2, 2) if _BLOCKS[b][1] else x))
            return x

        def tail(self, x: torch.Tensor, blocks: int) -> torch.Tensor:
            """The descriptors from the activations :meth:`trunk` returned after ``blocks`` blocks."""
            return self.fc(self._blocks(x, blocks, len(_BLOCKS)).mean(dim=(2, 3)))

        def forward(self, chips: torch.Tensor) -> torch.Tensor:
            return self.tail(self.trunk(chips, 0), 0)

        def parameters_after(self, blocks: int) -> list[torch.nn.Parameter]:
            """The parameters of the residual blocks after the first ``blocks`` and of the final layer."""
            return [p for c in self.convs[2 * blocks + 1:] for p in c.parameters()] + list(self.fc.parameters())

    return DlibFaceNet


def __getattr__(name: str) -> Any:  # DlibFaceNet imports torch only when asked for
    if name == "DlibFaceNet":
        return _net_module()
    raise AttributeError(name)


@functools.lru_cache(maxsize=4)
def _loaded(path: str, device: str) -> Any:
    return _net_module().from_dat(path).to(device)


def _device_key(device: Any) -> str:
    """One name per device, so that ``"cuda"`` and ``"cuda:0"`` share one loaded network."""
    import torch

    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return str(d)


def network_descriptors(net: Any, chips: np.ndarray, device: str = "cpu", batch: int = 64) -> np.ndarray:
    """Raw 128-d descriptors ``float32 [N, 128]`` of uint8 RGB chips ``[N, 150, 150, 3]`` by a loaded network
    (dlib's or a fine-tuned copy), ``batch`` chips at a time."""
    import torch

    chips = np.ascontiguousarray(chips, dtype=np.uint8)
    if chips.ndim == 3:
        chips = chips[None]
    out = []
    with torch.inference_mode():
        for i in range(0, len(chips), batch):
            out.append(net(torch.from_numpy(chips[i:i + batch]).to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


def torch_descriptors(chips: np.ndarray, path: str | Path, device: str = "cpu", batch: int = 64) -> np.ndarray:
    """Raw 128-d descriptors ``float32 [N, 128]`` of uint8 RGB chips ``[N, 150, 150, 3]`` (dlib's weights at ``path``)."""
    device = _device_key(device)
    return network_descriptors(_loaded(str(path), device), chips, device, batch)
