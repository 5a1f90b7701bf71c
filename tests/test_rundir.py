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
