"""Multi-process training as torchrun runs it: 2 CPU processes, gloo, the demo data, the real entry point.

Each process gets torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT on
127.0.0.1) and runs ``facecom_utils.cli.launch.main(["train-...", ...])``, the function behind
``facecom train-gender`` / ``facecom train-recognition``. The samplers are wrapped to record the
indices each rank drew.
"""

from __future__ import annotations

import importlib
import os
import socket
from pathlib import Path

import pytest
import torch
import yaml

from facecom_utils.common.checkpoints import load_checkpoint

TINY = {"backbone": "efficientnet_lite0", "pretrained": None, "image_size": 32, "batch_size": 4, "epochs": 1,
        "device": "cpu", "amp": "none", "progress": False, "seed": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, jobs: list[tuple[str, str, str, int]], cache_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", FACECOM_CACHE_DIR=cache_dir)
    torch.set_num_threads(1)
    from torch.utils.data import DistributedSampler

    from facecom_utils.cli import launch
    from facecom_utils.data.datasets import DistributedWeightedSampler

    seen: list[dict] = []
    for cls in (DistributedSampler, DistributedWeightedSampler):
        original = cls.__iter__

        def recording(self, _original=original):
            indices = list(_original(self))
            entry = {"kind": type(self).__name__, "epoch": self.epoch, "indices": indices}
            if isinstance(self, DistributedWeightedSampler):  # the one draw all ranks share
                whole = DistributedWeightedSampler(self.weights, self.total_size, self.seed, num_replicas=1, rank=0)
                whole.set_epoch(self.epoch)
                entry["whole"] = list(_original(whole))
            seen.append(entry)
            return iter(indices)

        cls.__iter__ = recording

    for command, preset, out, port in jobs:  # one process group per command, as torchrun would run them
        os.environ["MASTER_PORT"] = str(port)
        module = importlib.import_module(launch.TASKS[command][0])
        train_name = launch.TASKS[command][2]
        train = getattr(module, train_name)
        captured: dict = {}

        def keep_state(config, _train=train, _captured=captured):
            run = _train(config)
            _captured.update({k: v.detach().clone() for k, v in run.model.state_dict().items()})
            return run

        setattr(module, train_name, keep_state)
        seen.clear()
        assert launch.main([command, "-f", preset, "--output-dir", out]) == 0
        torch.save({"seen": list(seen), "state": captured}, f"{out}/seen_rank{rank}.pt")


def _check_checkpoint(out: Path, r0: dict, r1: dict) -> None:
    """best.pt holds exactly rank 0's final (best) weights; rank 1 ended with the same."""
    best = load_checkpoint(out / "checkpoints" / "best.pt")["model"]
    assert set(best) == set(r0["state"])
    for k, v in best.items():
        assert torch.equal(v, r0["state"][k]), k
        assert torch.allclose(v.float(), r1["state"][k].float()), k


def test_train_gender_and_recognition_under_two_processes(demo_root: Path, tmp_path: Path) -> None:
    """Both tasks, 2 gloo processes each, through the ``facecom train-*`` entry point.

    Task A uses the class-balanced DistributedWeightedSampler: the ranks take alternate positions
    of one shared draw. Task B uses plain shuffling (``clean_cap=None``): DistributedSampler,
    disjoint shards of one permutation. In both, rank 0 alone writes, and ``best.pt`` holds exactly
    rank 0's final weights (which rank 1 shares).
    """
    import torch.multiprocessing as mp

    params = {
        ("train-gender", "02"): {"data_root": str(demo_root), "balance": "sampler", "val_fraction": 0.3,
                                 "tta": False, "evaluate_distortions": False, "eval_batch_size": 8},
        ("train-recognition", "03"): {"data_root": str(demo_root), "clean_cap": None, "embedding_dim": 32,
                                      "flip_tta": False, "max_identities": 6, "holdout_fraction": 0.0,
                                      "val_fraction": 0.34},
    }
    jobs = []
    for (command, section), extra in params.items():
        preset = tmp_path / f"{command}.yml"
        preset.write_text(yaml.safe_dump({section: {**TINY, **extra}}))
        (tmp_path / command).mkdir()
        jobs.append((command, str(preset), str(tmp_path / command), _free_port()))
    mp.spawn(_worker, args=(2, jobs, str(tmp_path / "cache")), nprocs=2, join=True)

    out = tmp_path / "train-gender"
    r0, r1 = (torch.load(out / f"seen_rank{r}.pt", weights_only=False) for r in range(2))
    a = [e for e in r0["seen"] if e["kind"] == "DistributedWeightedSampler"]
    b = [e for e in r1["seen"] if e["kind"] == "DistributedWeightedSampler"]
    assert a and len(a) == len(b)
    for ea, eb in zip(a, b):
        assert ea["whole"] == eb["whole"]
        assert ea["indices"] == ea["whole"][0::2] and eb["indices"] == eb["whole"][1::2]
    assert (out / "metrics.json").is_file()
    _check_checkpoint(out, r0, r1)

    out = tmp_path / "train-recognition"
    r0, r1 = (torch.load(out / f"seen_rank{r}.pt", weights_only=False) for r in range(2))
    a = [e["indices"] for e in r0["seen"] if e["kind"] == "DistributedSampler"]
    b = [e["indices"] for e in r1["seen"] if e["kind"] == "DistributedSampler"]
    assert len(a) == len(b) == 1 and len(a[0]) == len(b[0]) > 0
    assert len(set(a[0]) & set(b[0])) <= 1  # at most DistributedSampler's one padding index
    assert (out / "metrics.json").is_file()
    _check_checkpoint(out, r0, r1)


def test_alone_makes_a_distributed_process_a_one_process_run(monkeypatch) -> None:
    """Rank 0's face-model tracks after a torchrun training run alone: fit and the samplers see (0, 1)."""
    import torch.distributed as dist

    from facecom_utils.common.distributed import alone, distributed_info
    from facecom_utils.data.datasets import DistributedWeightedSampler

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    assert distributed_info() == (0, 4)
    assert DistributedWeightedSampler([1.0] * 8, seed=0).num_replicas == 4
    with alone():
        assert distributed_info() == (0, 1)
        sampler = DistributedWeightedSampler([1.0] * 8, seed=0)
        assert (sampler.num_replicas, sampler.rank, len(list(sampler))) == (1, 0, 8)
    assert distributed_info() == (0, 4)


@pytest.mark.parametrize("task", ["gender", "recognition"])
def test_train_commands_run_the_tracks_alone_on_rank_0_only(monkeypatch, task) -> None:
    from facecom_utils.common import distributed
    from facecom_utils.gender import pipeline as gender_pipeline, tracks as gender_tracks
    from facecom_utils.recognition import face_tracks, pipeline as recognition_pipeline

    pipeline, stages, tracks, run_tracks, train = {
        "gender": (gender_pipeline, "train_gender_stages", gender_tracks, "run_gender_tracks", "train_gender_with_tracks"),
        "recognition": (recognition_pipeline, "train_recognition_stages", face_tracks, "run_recognition_tracks",
                        "train_recognition_with_tracks"),
    }[task]
    seen = []
    monkeypatch.setattr(pipeline, stages, lambda config: ("splits", "run"))
    monkeypatch.setattr(tracks, run_tracks, lambda *a: seen.append((a[1:], distributed.distributed_info())))
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "_ALONE", [])
        monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(distributed.dist, "is_available", lambda: True)
        monkeypatch.setattr(distributed.dist, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
        assert getattr(tracks, train)(object()) == "run"
    # rank 0 ran them on the stages' splits and run, as a one-process run; rank 1 did not
    assert seen == [(("splits", "run"), (0, 1))]
