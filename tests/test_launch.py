"""``facecom train-gender`` / ``train-recognition``: presets and parameters become the task config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from facecom_utils.cli import commands as cli
from facecom_utils.cli.launch import LaunchError, build_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_build_config_merges_flat_keys_section_and_params(tmp_path: Path) -> None:
    preset = tmp_path / "p.yml"
    preset.write_text(yaml.safe_dump({"seed": 3, "property_sample": 9, "02": {"image_size": 48, "cache": "off"},
                                      "03": {"image_size": 40, "crop_scale": [0.5, 1.0]}}))
    gender = build_config("train-gender", [preset], [("epochs", "2")], output_dir=str(tmp_path / "out"))
    assert (gender.seed, gender.image_size, gender.epochs, gender.cache) == (3, 48, 2, "off")
    assert gender.output_dir == str(tmp_path / "out")
    recognition = build_config("train-recognition", [preset], [("cache", "memory")])
    assert recognition.image_size == 40 and recognition.crop_scale == (0.5, 1.0) and recognition.cache == "memory"
    # a dict-valued top-level key is a parameter too; lists and mappings can be given with -p
    preset.write_text(yaml.safe_dump({"distortion_weights": {"sunny": 3.0}}))
    recognition = build_config("train-recognition", [preset], [("tta_crops", "[0.85]")])
    assert recognition.distortion_weights == {"sunny": 3.0} and recognition.tta_crops == (0.85,)
    recognition = build_config("train-recognition", [], [("distortion_weights", "{noisy: 2}")])
    assert recognition.distortion_weights == {"noisy": 2.0}


def test_the_repository_presets_build_what_their_notebook_runs() -> None:
    """A preset lists what differs from its notebook's defaults, so those defaults are the base here too."""
    from facecom_utils.reporting.runner import notebook_defaults

    for command, stem in (("train-gender", "02_gender_classification"), ("train-recognition", "03_arcface_recognition")):
        defaults = notebook_defaults(REPO_ROOT / "notebooks" / f"{stem}.ipynb")
        assert build_config(command, []).epochs == defaults["epochs"]  # no preset: the notebook's own run
        for preset in sorted((REPO_ROOT / "params" / stem).glob("*.yml")):
            config = build_config(command, [preset])
            expected = {**defaults, **yaml.safe_load(preset.read_text())}
            for key, value in expected.items():
                if key not in ("data_root", "output_dir", "dataset_images"):  # paths; a display setting of the notebook
                    got = getattr(config, key)
                    assert got == value or (isinstance(got, tuple) and list(got) == list(value)), (preset, key)
    with pytest.raises(LaunchError, match="02_gender_classification"):
        build_config("train-recognition", [REPO_ROOT / "params" / "02_gender_classification" / "facecom_cpu.yml"])


def test_bad_parameters_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(LaunchError, match="not a parameter of GenderConfig"):
        build_config("train-gender", [], [("no_such_thing", "1")])
    with pytest.raises(LaunchError, match="cache must be one of"):
        build_config("train-gender", [], [("cache", "sometimes")])
    with pytest.raises(LaunchError, match="distortion_weights must map"):
        build_config("train-recognition", [], [("distortion_weights", "{snowy: 2}")])
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"03": {"wings": 2}}))
    assert cli.main(["train-recognition", "-f", str(bad)]) == 2
    assert "unknown parameter(s) wings" in capsys.readouterr().err
