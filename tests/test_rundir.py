"""The run directory: one owner of a run's outputs (metrics.json, history, embeddings by role)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from facecom_utils.train.config import RunConfig
from facecom_utils.train.rundir import FOLD_ROLE, REPORT_ROLE, RunDir, to_jsonable


def test_metrics_are_written_once_with_parameters_and_provenance(demo_root: Path, tmp_path: Path) -> None:
    out = RunDir(tmp_path / "run")
    path = out.write_metrics({"top1": np.float32(0.5), "eer": math.nan, "per": {"sunny": np.float64(0.25)},
                              "cm": np.array([[1, 2], [3, 4]]), "t": torch.tensor(0.75)},
                             RunConfig(epochs=3), demo_root)
    assert path == out.metrics_path and sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]
    saved = json.loads(path.read_text())  # strict JSON: NaN became null
    assert saved["top1"] == 0.5 and saved["eer"] is None and saved["per"] == {"sunny": 0.25}
    assert saved["cm"] == [[1, 2], [3, 4]] and saved["t"] == 0.75
    assert saved["parameters"]["epochs"] == 3 and saved["data_root"] == str(demo_root) and saved["synthetic"] is True
    assert out.read_metrics() == saved
    assert RunDir(tmp_path / "missing").read_metrics() is None


def test_embeddings_by_role(tmp_path: Path) -> None:
    out = RunDir(tmp_path)
    table = pd.DataFrame({"path": ["a.jpg", "b.jpg"], "identity": ["007", "x"], "distortion": [None, "sunny"]})
    emb = np.eye(2, dtype=np.float64)
    out.save_embeddings(REPORT_ROLE, table, emb)
    loaded, got = out.load_embeddings(REPORT_ROLE)
    assert got.dtype == np.float32 and np.array_equal(got, emb)
    assert loaded["identity"].tolist() == ["007", "x"] and loaded["distortion"].tolist() == [None, "sunny"]
    with pytest.raises(FileNotFoundError, match="fold"):
        out.load_embeddings(FOLD_ROLE)
    with pytest.raises(ValueError, match="2 rows but there are 1"):
        out.save_embeddings(FOLD_ROLE, table, emb[:1])


def test_a_run_from_before_the_roles_is_still_read(tmp_path: Path) -> None:
    """Runs written before the roles were named saved the reported split as val.npz."""
    out = RunDir(tmp_path)
    out.save_embeddings("val", pd.DataFrame({"path": ["a.jpg"], "identity": ["a"]}), np.ones((1, 3)))
    assert out.has_embeddings(REPORT_ROLE)
    assert out.load_embeddings(REPORT_ROLE)[1].shape == (1, 3)


def test_to_jsonable_never_leaves_a_nan() -> None:
    value = to_jsonable({"a": [math.inf, -math.inf, np.nan], Path("p"): (1, 2)})
    assert value == {"a": [None, None, None], "p": [1, 2]}
    json.dumps(value, allow_nan=False)


# ----------------------------------------------------------------------------- face_tracks.pt



def _same(a: object, b: object) -> bool:
    """Equal nested values, tensors by dtype, shape and content; tuples stay tuples."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _state() -> dict:
    return {"estimator": {"mean": torch.arange(3, dtype=torch.float64), "classes": ["clean", "sunny"]},
            "weights": {"sunny": 0.2}, "copy_cohort": torch.ones(2, 4, dtype=torch.float16),
            "thresholds": {"fused": [0.5, 0.25]}, "restoration_versions": {"denoise": 2}, "none": None}


def test_write_tracks_writes_the_file_old_runs_wrote_and_the_metrics(demo_root: Path, tmp_path: Path) -> None:
    """One writer for both tasks: face_tracks.pt holds exactly what the tasks' own torch.save wrote before
    ({"task", "headline", **state}), atomically, and metrics.json gets the headline and fresh provenance."""
    out = RunDir(tmp_path / "run")
    metrics = {"top1": 0.5, "tracks": {"fused": {"top1": 0.5}}, "parameters": {"stale": 1}, "synthetic": False}
    written = out.write_tracks("recognition", "fused", _state(), metrics, RunConfig(epochs=2), demo_root)
    assert sorted(p.name for p in out.path.iterdir()) == ["face_tracks.pt", "metrics.json"]  # no temporary left
    old = tmp_path / "old.pt"  # what recognition_tracks / gender_tracks wrote themselves before
    torch.save({"task": "recognition", "headline": "fused", **_state()}, old)
    assert _same(torch.load(out.tracks_path, weights_only=True), torch.load(old, weights_only=True))
    assert _same(out.load_tracks("recognition"), torch.load(old, weights_only=True))
    assert written == {"top1": 0.5, "tracks": {"fused": {"top1": 0.5}}, "headline_track": "fused"}
    saved = out.read_metrics()
    assert saved["headline_track"] == "fused" and saved["tracks"] == {"fused": {"top1": 0.5}}
    assert saved["parameters"]["epochs"] == 2 and "stale" not in saved["parameters"] and saved["synthetic"] is True
    with pytest.raises(ValueError, match="task must be one of"):
        out.write_tracks("detection", "fused", {}, {})


def test_load_tracks_names_a_bad_file(tmp_path: Path) -> None:
    """(Old run folders' tracks files: tests/test_previous_layout_runs.py.)"""
    other = RunDir(tmp_path / "other")
    other.write_tracks("recognition", "fused", {"weights": {}}, {})
    with pytest.raises(ValueError, match=r"face_tracks.pt: holds 'recognition' tracks, not 'gender'"):
        other.load_tracks("gender")
    out = RunDir(tmp_path)
    assert out.load_tracks() is None  # no file: the caller falls back to the FACECOM-only model
    out.write_tracks("gender", "fused", {"model": {"w": torch.ones(64, 64)}}, {})
    data = out.tracks_path.read_bytes()
    out.tracks_path.write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(ValueError, match="not a readable tracks file") as err:
        out.load_tracks("gender")
    assert str(out.tracks_path) in str(err.value) and "\n" not in str(err.value)
    torch.save({"weights": {"sunny": 0.2}}, out.tracks_path)  # a Fusion state dict alone
    with pytest.raises(ValueError, match="not a tracks file"):
        out.load_tracks()
