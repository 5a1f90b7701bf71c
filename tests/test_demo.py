"""Tests for facecom_utils.data.demo: layout, determinism, reuse, data-root resolution, learnability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecom_utils.common import paths
from facecom_utils.data import demo
from facecom_utils.data.layout import DISTORTION_TYPES, person_from_filename, scan_task_a, scan_task_b
from facecom_utils.data.demo import (
    DEMO_MARKER,
    ensure_demo_dataset,
    is_demo_root,
    make_demo_dataset,
    resolve_data_root,
)

TINY = dict(train_identities=3, val_identities=2, clean_per_identity=2, image_size=32)


def test_layout_matches_facecom(demo_root: Path) -> None:
    a = scan_task_a(demo_root)
    b = scan_task_b(demo_root)
    assert set(a["split"]) == {"train", "val"} and set(a["label"]) == {"female", "male"}
    clean = b[b["distortion"].isna()]
    distorted = b[b["distortion"].notna()]
    # Identity-disjoint splits; Task A images are exactly the Task B clean images.
    ids = clean.groupby("split")["identity"].apply(set)
    assert ids["train"].isdisjoint(ids["val"])
    assert len(ids["train"]) == 10 and len(ids["val"]) == 6
    assert sorted(Path(p).name for p in a["path"]) == sorted(Path(p).name for p in clean["path"])
    # Every clean image has all seven distortions, each tied back to its source.
    assert len(distorted) == 7 * len(clean)
    assert distorted["source"].notna().all()
    assert set(distorted["distortion"]) == set(DISTORTION_TYPES)
    # Both FACECOM naming styles, and the file name gives back the identity.
    assert any(i.endswith("_frontal") for i in clean["identity"])
    assert any(i.startswith("Demo_Person_") for i in clean["identity"])
    for path, identity in zip(b["path"], b["identity"]):
        assert person_from_filename(path) == identity
    # Images are the requested size; the data says it is synthetic.
    assert Image.open(clean["path"].iloc[0]).size == (64, 64)
    assert "SYNTHETIC" in (demo_root / "README.md").read_text()
    assert is_demo_root(demo_root) and is_demo_root(demo_root / "Task_B")


def test_gender_imbalance(demo_root: Path) -> None:
    people = scan_task_a(demo_root).assign(person=lambda df: df["path"].map(person_from_filename))
    per_split = people.drop_duplicates("person").groupby(["split", "label"]).size()
    assert per_split["train", "female"] == 2 and per_split["train", "male"] == 8
    assert per_split["val", "female"] == 1 and per_split["val", "male"] == 5


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = _tree(make_demo_dataset(tmp_path / "a", seed=3, **TINY))
    b = _tree(make_demo_dataset(tmp_path / "b", seed=3, **TINY))
    c = _tree(make_demo_dataset(tmp_path / "c", seed=4, **TINY))
    assert a == b
    assert a != c


def test_overwrite_rules(tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path / "demo", **TINY)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_demo_dataset(root, **TINY)
    make_demo_dataset(root, overwrite=True, **{**TINY, "train_identities": 2})
    assert len(scan_task_b(root, splits=("train",))["identity"].unique()) == 2
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("not a demo")
    with pytest.raises(FileExistsError, match="not a synthetic demo"):
        make_demo_dataset(precious, overwrite=True, **TINY)
    assert (precious / "thesis.txt").exists()


def test_ensure_reuses_and_regenerates(tmp_path: Path) -> None:
    root = ensure_demo_dataset(tmp_path / "demo", **TINY)
    marker = root / DEMO_MARKER
    stamp = marker.stat().st_mtime_ns
    assert ensure_demo_dataset(root, **TINY) == root
    assert marker.stat().st_mtime_ns == stamp  # reused, not regenerated
    ensure_demo_dataset(root, **{**TINY, "image_size": 40})
    assert marker.stat().st_mtime_ns != stamp
    clean = scan_task_b(root)
    assert Image.open(clean["path"].iloc[0]).size == (40, 40)


def test_resolve_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACECOM_DATA_ROOT", raising=False)
    assert resolve_data_root(tmp_path) == tmp_path.resolve()
    with pytest.raises(FileNotFoundError):
        resolve_data_root(tmp_path / "missing")
    # No FACECOM images at the repo root: fall back to the demo, with a warning.
    fake_repo = tmp_path / "repo"
    (fake_repo / "Task_A").mkdir(parents=True)
    monkeypatch.setattr(paths, "REPO_ROOT", fake_repo)  # the one repo-root rule: common.paths
    monkeypatch.setattr(demo, "DEFAULT_DEMO_ROOT", tmp_path / "data" / "demo_synthetic")
    calls: list[Path] = []
    monkeypatch.setattr(demo, "ensure_demo_dataset", lambda root: calls.append(root) or root)
    with pytest.warns(UserWarning, match="SYNTHETIC"):
        assert resolve_data_root(None) == tmp_path / "data" / "demo_synthetic"
    assert calls == [tmp_path / "data" / "demo_synthetic"]
    # Real images placed at the repo root win.
    for task, rel in (("Task_A", "train/male/a_0001.jpg"), ("Task_B", "train/a/a_0001.jpg")):
        path = fake_repo / task / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)
    assert resolve_data_root("") == fake_repo
    # FACECOM_DATA_ROOT overrides the repo root; "demo" forces the synthetic demo (make test).
    monkeypatch.setenv("FACECOM_DATA_ROOT", str(tmp_path))
    assert resolve_data_root(None) == tmp_path.resolve()
    monkeypatch.setenv("FACECOM_DATA_ROOT", "demo")
    assert resolve_data_root(None) == tmp_path / "data" / "demo_synthetic"
    assert resolve_data_root(fake_repo) == fake_repo.resolve()  # an explicit root still wins


def test_default_demo_has_facecom_like_imbalance(tmp_path: Path) -> None:
    """The default demo (80 people): about 1 female to 5 male people. (Its generation time is
    measured by ``python -m facecom_utils.bench.speed``, not asserted here.)"""
    root = make_demo_dataset(tmp_path / "demo_synthetic")
    people = scan_task_a(root).assign(person=lambda df: df["path"].map(person_from_filename))
    counts = people.drop_duplicates("person")["label"].value_counts()
    assert 4 <= counts["male"] / counts["female"] <= 6


# ----------------------------------------------------------------------------- learnability


def _load(paths: list[str], size: int) -> np.ndarray:
    """Images as an (N, 3, size, size) float array, each standardised (removes global lighting)."""
    arr = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in paths])
    arr = arr.astype(np.float32)
    arr = (arr - arr.mean(axis=(1, 2, 3), keepdims=True)) / (arr.std(axis=(1, 2, 3), keepdims=True) + 1.0)
    return arr.transpose(0, 3, 1, 2)


def _train_cnn(x: np.ndarray, y: np.ndarray, n_classes: int, steps: int, seed: int = 0):
    """Train a small 4-conv CNN with Adam for ``steps`` batches; return a predict function."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    model = nn.Sequential(
        nn.Conv2d(3, 24, 5, stride=2, padding=2), nn.BatchNorm2d(24), nn.ReLU(),  # 64 -> 32 px
        block(24, 32), block(32, 64), block(64, 96),  # -> 4 px
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(96, n_classes),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y).long()
    weights = torch.bincount(yt, minlength=n_classes).float().clamp(min=1).reciprocal()
    loss_fn = nn.CrossEntropyLoss(weight=weights / weights.mean())
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(xt), (32,), generator=gen)
        batch = xt[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        opt.zero_grad()
        loss_fn(model(batch), yt[idx]).backward()
        opt.step()
    model.eval()

    def predict(inputs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(inputs))).argmax(1).numpy()

    return predict


@pytest.mark.slow
def test_small_cnn_learns_gender_and_identity(tmp_path: Path) -> None:
    """A 4-conv CNN at 64 px, a few CPU epochs, clearly beats chance on both tasks."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared; one thread is the fastest here
    try:
        # Gender: train on 80 people, test on 30 unseen people (balanced accuracy; chance 0.5).
        root = make_demo_dataset(
            tmp_path / "gender", seed=1, train_identities=80, val_identities=30,
            clean_per_identity=1, image_size=64, female_fraction=0.5, frontal_fraction=1.0,
        )
        a = scan_task_a(root)
        train, val = a[a["split"] == "train"], a[a["split"] == "val"]
        predict = _train_cnn(_load(list(train["path"]), 64), (train["label"] == "female").to_numpy().astype(int), 2, steps=150)
        pred, truth = predict(_load(list(val["path"]), 64)), (val["label"] == "female").to_numpy()
        balanced = 0.5 * ((pred[truth] == 1).mean() + (pred[~truth] == 0).mean())
        assert balanced > 0.7, f"gender balanced accuracy {balanced:.2f} (chance 0.5)"

        # Identity (FACECOM Task B style): train on the clean gallery of 12 people,
        # identify their distorted probes (all seven types), never seen in training.
        root = make_demo_dataset(
            tmp_path / "identity", seed=2, train_identities=12, val_identities=1,
            clean_per_identity=3, image_size=64, frontal_fraction=0.0,
        )
        b = scan_task_b(root, splits=("train",))
        ids = sorted(b["identity"].unique())
        label = b["identity"].map({name: i for i, name in enumerate(ids)}).to_numpy()
        clean = b["distortion"].isna().to_numpy()
        predict = _train_cnn(_load(list(b["path"][clean]), 64), label[clean], len(ids), steps=120)
        top1 = (predict(_load(list(b["path"][~clean]), 64)) == label[~clean]).mean()
        assert top1 > 3 / len(ids), f"identity top-1 {top1:.2f} (chance {1 / len(ids):.2f})"
    finally:
        torch.set_num_threads(threads)
