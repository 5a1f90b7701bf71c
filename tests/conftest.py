"""Shared fixtures: the real FACECOM location and a tiny synthetic demo dataset."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never touch the network: pretrained="imagenet" must fail loudly, not download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")

import tempfile  # noqa: E402

import pytest  # noqa: E402

# Decoded-image caches of test runs go to a throwaway folder, never to ~/.cache/facecom.
os.environ.setdefault("FACECOM_CACHE_DIR", tempfile.mkdtemp(prefix="facecom-cache-"))

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real-data tests read the FACECOM training split from ONE place: $FACECOM_TEST_ROOT, by default the
# folder beside the checkout (../shared/facecom); they skip where it is absent (users' machines).
FACECOM_ROOT = Path(os.environ.get("FACECOM_TEST_ROOT") or REPO_ROOT.parent / "shared" / "facecom").expanduser()

def noise_images(folder: Path, n: int, size: tuple[int, int] = (40, 40), seed: int = 0,
                 prefix: str = "im") -> list[Path]:
    """``n`` seeded random RGB PNGs ``folder/<prefix><k>.png`` of ``size`` (height, width)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = folder / f"{prefix}{k}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


class KindsEstimator:
    """A stand-in distortion estimator: row ``i``'s "quality" is ``[i]`` and its type is ``kinds[i]``;
    it never restores (pair it with a recipe whose ``quality`` returns the row numbers)."""

    def __init__(self, kinds):
        self.kinds = kinds

    def predict(self, q):
        return self.kinds[q[:, 0].astype(int)]

    def restorations(self, q):
        return ["identity"] * len(q)


requires_facecom = pytest.mark.skipif(
    not (FACECOM_ROOT / "Task_B" / "train").is_dir(),
    reason=f"real FACECOM training split not found at {FACECOM_ROOT} (set FACECOM_TEST_ROOT)",
)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic FACECOM-layout dataset (64 px), generated once per test session."""
    from facecom_utils.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "demo_synthetic"
    return make_demo_dataset(
        root,
        seed=0,
        train_identities=10,
        val_identities=6,
        clean_per_identity=2,
        image_size=64,
    )


@pytest.fixture
def one_thread():
    """One intra-op torch thread: tiny models run faster and steadier on 2 shared cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_script(name: str):
    """Imports ``experiments/<name>.py`` or ``tools/<name>.py`` as a module (neither folder is a package).

    The script's folder is on ``sys.path`` while it loads, as when it runs as ``python experiments/<name>.py``,
    so it can import its sibling helpers (``experiments/_common.py``).
    """
    import importlib.util
    import sys

    (path,) = [p for p in (REPO_ROOT / "experiments" / f"{name}.py", REPO_ROOT / "tools" / f"{name}.py") if p.is_file()]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module
