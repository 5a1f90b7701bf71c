"""The training engine: checkpoints, resume after an interruption, schedules, devices, samplers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from facecom_utils.data.datasets import DistributedWeightedSampler, balanced_sample_weights
from facecom_utils.data.splits import person_grouped_split
from facecom_utils.train.fit import (
    TrainConfig,
    build_optimizer,
    build_scheduler,
    fit,
    load_checkpoint,
    save_checkpoint,
    select_device,
    to_plain,
)


class TinyNet(nn.Module):
    """A small MLP with a 'backbone', dropout and batch norm: exercises every random path."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.classifier = nn.Linear(16, 1)
        self.model_config = {"name": "TinyNet"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.backbone(x))).squeeze(-1)


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.binary_cross_entropy_with_logits(model(x), y.float())


def _run(tmp_dir, interrupt_after: int | None = None, epochs: int = 4):
    torch.manual_seed(123)
    model = TinyNet()
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    x_val, y_val = _data(32)

    def evaluate(m: nn.Module) -> dict[str, float]:
        prob = torch.sigmoid(m(x_val))
        return {"loss": F.binary_cross_entropy(prob, y_val.float()).item(),
                "accuracy": ((prob > 0.5).long() == y_val).float().mean().item(),
                "confusion_matrix": [[1, 2], [3, 4]], "np_value": np.float32(0.5)}

    def stop(epoch: int, row: dict) -> None:
        if interrupt_after is not None and epoch == interrupt_after:
            raise KeyboardInterrupt

    cfg = TrainConfig(epochs=epochs, lr=1e-2, monitor="loss", mode="min", patience=None, device="cpu",
                      progress=False, seed=7, backbone_lr_scale=0.5, warmup_epochs=1)
    result = fit(model, loader, _loss, evaluate, cfg, tmp_dir, extra_state={"task": "test"}, on_epoch_end=stop)
    return model, result


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    model_a, result_a = _run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", interrupt_after=2)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    model_b, result_b = _run(tmp_path / "b")  # resumes from last.pt at epoch 3
    assert list(result_b.history["epoch"]) == [1, 2, 3, 4]
    np.testing.assert_allclose(result_a.history["train_loss"], result_b.history["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(result_a.history["val_loss"], result_b.history["val_loss"], rtol=1e-6)
    assert result_a.best_epoch == result_b.best_epoch
    for (k, va), vb in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-6), k
    last_a = load_checkpoint(tmp_path / "a" / "last.pt")
    last_b = load_checkpoint(tmp_path / "b" / "last.pt")
    for k, va in last_a["model"].items():
        assert torch.allclose(va.float(), last_b["model"][k].float(), atol=1e-6), k


def test_fit_writes_weights_only_checkpoints_and_history(tmp_path):
    model, result = _run(tmp_path, epochs=2)
    assert result.best_path == tmp_path / "best.pt" and result.last_path == tmp_path / "last.pt"
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(tmp_path / name, map_location="cpu", weights_only=True)
        assert ckpt["task"] == "test" and ckpt["model_config"] == {"name": "TinyNet"}
        assert isinstance(ckpt["metrics"]["np_value"], float)
        assert {"model", "optimizer", "scheduler", "scaler", "history", "config", "epoch"} <= set(ckpt)
    assert isinstance(result.history, pd.DataFrame)
    assert {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds", "images_per_second"} <= set(
        result.history.columns
    )
    # restore_best: the model holds best.pt's weights
    best = load_checkpoint(tmp_path / "best.pt")["model"]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())


def test_early_stopping_stops_and_resume_does_not_retrain(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    calls = iter([0.5, 0.6, 0.4, 0.4, 0.3, 0.9, 0.9])
    cfg = TrainConfig(epochs=7, monitor="score", mode="max", patience=2, device="cpu", progress=False)
    result = fit(model, loader, _loss, lambda m: {"score": next(calls)}, cfg, tmp_path)
    assert result.stopped_early and len(result.history) == 4 and result.best_epoch == 2
    again = fit(TinyNet(), loader, _loss, lambda m: {"score": 1.0}, cfg, tmp_path)
    assert len(again.history) == 4 and again.best_epoch == 2
    # last.pt of a run with other settings is not resumed: a fresh run replaces it
    other = TrainConfig(epochs=2, monitor="score", mode="max", patience=2, device="cpu", progress=False, lr=5e-3)
    with pytest.warns(UserWarning, match="other settings"):
        fresh = fit(TinyNet(), loader, _loss, lambda m: {"score": 1.0}, other, tmp_path)
    assert len(fresh.history) == 2 and load_checkpoint(tmp_path / "last.pt")["train_config"]["lr"] == 5e-3


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "threshold": np.float64(0.25), "epoch": np.int64(3)})
    loaded = load_checkpoint(path)
    assert loaded["threshold"] == 0.25 and type(loaded["threshold"]) is float and loaded["epoch"] == 3

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temp file left
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))  # old file intact


def test_to_plain_rejects_arbitrary_objects():
    with pytest.raises(TypeError, match="payload\\['bad'\\]"):
        to_plain({"bad": object()})


def test_load_checkpoint_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_schedule_warmup_then_cosine_and_backbone_lr():
    model = TinyNet()
    cfg = TrainConfig(epochs=4, lr=1.0, warmup_epochs=1, min_lr_ratio=0.0, backbone_lr_scale=0.1)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    peak = {id(g): g["initial_lr"] for g in opt.param_groups}
    assert sorted(set(peak.values())) == pytest.approx([0.1, 1.0])
    lrs = []
    for _ in range(40):
        lrs.append(max(g["lr"] for g in opt.param_groups))
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then non-increasing
    assert lrs[-1] < 0.01
    no_decay = [g for g in opt.param_groups if g["weight_decay"] == 0.0]
    assert all(p.ndim == 1 for g in no_decay for p in g["params"])


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            select_device("cuda")


def test_distributed_weighted_sampler_balances_and_shards():
    labels = np.array([1] * 10 + [0] * 90)
    weights = balanced_sample_weights(labels)
    full = DistributedWeightedSampler(weights, seed=3, num_replicas=1, rank=0)
    full.set_epoch(0)
    draw = np.array(list(full))
    assert len(draw) == 100 and 0.35 < labels[draw].mean() < 0.65
    shards = [DistributedWeightedSampler(weights, seed=3, num_replicas=2, rank=r) for r in range(2)]
    for s in shards:
        s.set_epoch(0)
    a, b = (list(s) for s in shards)
    assert len(a) == len(b) == 50
    interleaved = [v for pair in zip(a, b) for v in pair]
    assert interleaved == list(draw)  # same epoch draw, disjoint positions
    full.set_epoch(1)
    assert list(full) != list(draw)  # re-drawn each epoch


def test_person_grouped_split_is_disjoint_and_stratified():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(200):
        label = "female" if i < 40 else "male"
        rows += [(f"p{i}_{k}.jpg", label, f"p{i}") for k in range(int(rng.integers(1, 4)))]
    df = pd.DataFrame(rows, columns=["path", "label", "person"])
    train, val = person_grouped_split(df, val_fraction=0.2, seed=1)
    assert not set(train["person"]) & set(val["person"])
    assert len(train) + len(val) == len(df)
    assert val.groupby("label")["person"].nunique().to_dict() == {"female": 8, "male": 32}
    assert abs((val["label"] == "female").mean() - (df["label"] == "female").mean()) < 0.08
    again = person_grouped_split(df, val_fraction=0.2, seed=1)[1]
    assert again.equals(val)
    other = person_grouped_split(df, val_fraction=0.2, seed=2)[1]
    assert set(other["person"]) != set(val["person"])


class _IndexedData(torch.utils.data.Dataset):
    """(x, y, index): lets each rank record which samples it saw."""

    def __init__(self) -> None:
        self.x, self.y = _data(64)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = TinyNet()
        dataset = _IndexedData()
        loader = DataLoader(dataset, batch_size=8, sampler=DistributedSampler(dataset, shuffle=True, seed=0))
        seen: list[int] = []

        def loss_fn(m, batch):
            x, y, idx = batch
            seen.extend(idx.tolist())
            return F.binary_cross_entropy_with_logits(m(x), y.float())

        evaluated: list[int] = []

        def evaluate(m):
            evaluated.append(rank)
            return {"score": float(len(evaluated))}

        cfg = TrainConfig(epochs=2, monitor="score", mode="max", device="cpu", progress=False, restore_best=False)
        result = fit(model, loader, loss_fn, evaluate, cfg, out_dir)
        torch.save({"seen": seen, "evaluated": evaluated, "state": model.state_dict(),
                    "history_len": len(result.history), "best_epoch": result.best_epoch},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fit_under_ddp_two_processes(tmp_path):
    """Two gloo processes: disjoint samples, synchronised weights, rank 0 alone evaluates and writes."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    per_epoch = len(r0["seen"]) // 2
    for e in range(2):
        a = set(r0["seen"][e * per_epoch:(e + 1) * per_epoch])
        b = set(r1["seen"][e * per_epoch:(e + 1) * per_epoch])
        assert not a & b and len(a | b) == 64
    assert r0["evaluated"] == [0, 0] and r1["evaluated"] == []
    assert r0["history_len"] == r1["history_len"] == 2 and r0["best_epoch"] == r1["best_epoch"] == 2
    for k, v in r0["state"].items():
        assert torch.allclose(v.float(), r1["state"][k].float()), k
    last = load_checkpoint(tmp_path / "last.pt")
    for k, v in last["model"].items():
        assert torch.equal(v, r0["state"][k]), k


def test_time_budget_stops_after_the_epoch_that_exhausts_it():
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    cfg = TrainConfig(epochs=5, device="cpu", progress=False, patience=None, max_train_seconds=1e-6)
    result = fit(TinyNet(), loader, _loss, None, cfg)
    assert len(result.history) == 1 and result.stopped_early and result.best_path is None
