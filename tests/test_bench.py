"""The speed benchmark runs end to end on the tiny demo and reports positive numbers (not timed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from facecom_utils.bench import speed as bench

REQUIRED = ("data_naive_images_per_second", "data_cached_images_per_second", "data_speedup",
            "epoch_task_a_naive_seconds", "epoch_task_a_cached_seconds", "epoch_task_a_speedup",
            "epoch_task_b_naive_seconds", "epoch_task_b_cached_seconds", "epoch_task_b_speedup",
            "embed_images_per_second", "scoring_ms", "scoring_matmul_ms", "scoring_matmul_ratio", "scoring_loop_ms",
            "scoring_speedup", "cpu_count", "channels_last_contiguous_seconds", "channels_last_seconds",
            "channels_last_speedup")


def test_bench_on_demo_writes_and_prints_the_json(demo_root: Path, tmp_path: Path, capsys) -> None:
    small = {"backbone": "efficientnet_lite0", "pretrained": None, "image_size": 32, "batch_size": 8, "amp": "none"}
    preset_a = tmp_path / "a.yml"
    preset_a.write_text(yaml.safe_dump({**small, "distortion_augment": 0.3}))
    preset_b = tmp_path / "b.yml"
    preset_b.write_text(yaml.safe_dump({"03": {**small, "face_crop": 0.85, "samples_per_epoch": 16,
                                               "distortion_augment": 0.5, "embedding_dim": 32}}))
    out = tmp_path / "bench.json"
    rc = bench.main(["--data-root", str(demo_root), "--out", str(out), "--max-images", "16", "--threads", "1",
                     "--repeats", "2", "--preset-a", str(preset_a), "--preset-b", str(preset_b)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    for key in REQUIRED:
        assert isinstance(result[key], (int, float)) and math.isfinite(result[key]) and result[key] > 0, key
    assert result["torch_version"] and result["device"] == "cpu" and result["data_passes"] == 2
    assert result["scoring_probes"] == 3000 and result["scoring_gallery"] == 500
    assert result["scoring_loop_extrapolated"] is True and result["scoring_max_abs_difference"] < 1e-5
    if "descriptors_skipped" not in result:  # dlib installed: both backends timed on the same demo chips
        assert result["descriptor_images"] == 16
        for key in ("descriptor_front_end_ms", "descriptor_dlib_network_ms", "descriptor_torch_network_ms"):
            assert math.isfinite(result[key]) and result[key] > 0, key
        assert result["descriptor_max_abs_difference"] < 1e-5

