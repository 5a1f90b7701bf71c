"""facecom_utils.reporting.notebook: the plumbing every notebook shares (metrics.json, summary tables, banner)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from facecom_utils.reporting import eda
from facecom_utils.reporting import notebook


def test_write_metrics_is_plain_json_with_parameters(tmp_path: Path, demo_root: Path) -> None:
    config = eda.EDAConfig(data_root=str(demo_root), output_dir=str(tmp_path))
    metrics = {"a": np.float32(0.5), "b": np.int64(3), "c": float("nan"), "d": pd.Series([1, 2]), "e": Path("x")}
    path = notebook.write_metrics(tmp_path / "out", metrics, config, data_root=demo_root)
    saved = json.loads(path.read_text())
    assert saved["a"] == 0.5 and saved["b"] == 3 and saved["c"] is None and saved["d"] == [1, 2] and saved["e"] == "x"
    assert saved["parameters"]["hash_kind"] == "phash"
    assert saved["synthetic"] is True


def test_metrics_table_flattens_nested_keys() -> None:
    table = notebook.metrics_table({"x": 0.123456, "n": {"train": {"female": 3}}, "parameters": {"seed": 0}})
    assert table.loc["x", "value"] == 0.1235
    assert table.loc["n.train.female", "value"] == 3
    assert "parameters.seed" not in table.index


def test_data_banner_says_synthetic(demo_root: Path, tmp_path: Path) -> None:
    assert "SYNTHETIC" in notebook.data_banner(demo_root).data
    assert "SYNTHETIC" not in notebook.data_banner(tmp_path).data


def test_worst_errors_are_the_most_confident_mistakes() -> None:
    probabilities = pd.DataFrame({
        "path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
        "label": ["female", "male", "male", "female"],
        "prob": [0.9, 0.6, 0.95, 0.2],
        "pred": ["female", "female", "female", "male"],
    })
    paths, captions = notebook.worst_errors(probabilities, n=2)
    assert paths == ["c.jpg", "d.jpg"]  # confidence 0.95 and 0.8; b.jpg (0.6) is cut by n
    assert captions[0] == "true male, p(female)=0.95"
    right = probabilities[probabilities["pred"] == probabilities["label"]]
    fig = notebook.plot_worst_errors(right, title="none")
    assert fig.axes[0].get_title() == "none"
