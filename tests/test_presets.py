"""Every shipped preset runs as shipped: plain papermill (``papermill NB OUT -f PRESET -p ...``), end to end.

A preset is a plain papermill parameter file for one notebook, ``params/<notebook>/<preset>.yml``. Each
one is injected by papermill's own command line into the notebook it is for and executed on the tiny
demo data, shrunk only through the overrides a user would pass (``SHRINKING``; for GPU presets also
``GPU_ON_CPU``). Any other override makes the test fail: a preset that needs one is not runnable as
shipped. Each preset runs on a data root **without** a ``val`` split (the holdout path, as
``../shared/facecom``); the CPU presets also on one with it; notebook 04 reads each notebook-03 run.
A preset names no data root (the notebooks' ``data_root=None`` reads FACECOM in the repository), says
what it is for, and carries the one ``# expected_minutes:`` figure the runner shows.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import yaml

from conftest import REPO_ROOT
from facecom_utils.reporting import execution
from facecom_utils.reporting import plan
from facecom_utils.reporting import runner as run

PRESETS = sorted((REPO_ROOT / "params").glob("*/*.yml"))
SHRINKING = {"data_root", "output_dir", "epochs", "samples_per_epoch", "image_size", "batch_size",
             "max_identities", "max_train_images", "max_train_minutes", "face_glare_cnn_size"}
GPU_ON_CPU = {"device", "amp", "num_workers", "pretrained"}


def _notebook(preset: Path) -> Path:
    stem = run.preset_notebook(preset)
    assert stem is not None, f"{preset}: a preset lives in params/<notebook>/ (one of {list(run.NOTEBOOKS.values())})"
    return REPO_ROOT / "notebooks" / f"{stem}.ipynb"


def shrinking_overrides(preset: Path, data_root: Path, output_dir: Path) -> dict:
    """The overrides that make a preset run in seconds on the demo, checked against the allowed set."""
    values = yaml.safe_load(preset.read_text()) or {}
    stem = run.preset_notebook(preset)
    overrides: dict = {"data_root": str(data_root), "output_dir": str(output_dir)}
    if stem in ("02_gender_classification", "03_arcface_recognition"):
        overrides.update(epochs=1, image_size=32, batch_size=16)
    if stem == "02_gender_classification" and values.get("face_glare_cnn"):
        overrides.update(face_glare_cnn_size=32)
    if stem == "03_arcface_recognition":
        overrides.update(samples_per_epoch=32, max_identities=None)
    allowed = SHRINKING
    if values.get("device") == "cuda":
        allowed = SHRINKING | GPU_ON_CPU
        # no network here: ImageNet downloads are replaced by random weights (Lite0 keeps its offline ones)
        offline = "offline" if values.get("backbone", "efficientnet_lite0") == "efficientnet_lite0" else None
        overrides.update(device="cpu", amp="none", num_workers=0, pretrained=offline)
    extra = sorted(set(overrides) - allowed)
    assert not extra, f"{preset.name}: overrides {extra} are not allowed; the preset must run as shipped"
    return overrides


def _papermill(notebook: Path, out: Path, preset: Path | None, overrides: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(out), "--no-progress-bar", "-k", "python3"]
    if preset is not None:
        cmd += ["-f", str(preset)]
    cmd += ["-y", yaml.safe_dump(overrides)]  # papermill's own YAML parameters: typed like a preset
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}

    def once(_attempt: int) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode and execution.is_kernel_start_failure(proc.stderr) and "Exception encountered" not in proc.stderr:
            raise _DiedStarting(proc)  # papermill's CLI does not retry a kernel that died starting: the runner's retry does
        return proc

    try:
        return execution.start_with_retries(once, retryable=lambda error: isinstance(error, _DiedStarting))[0]
    except execution.KernelStartError as error:
        return error.__cause__.proc


class _DiedStarting(RuntimeError):
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        super().__init__(proc.stderr[-2000:])
        self.proc = proc


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small demo (train + val) and the same with no val split (like ../shared/facecom).

    Larger than the session's tiny demo: without val, Task A's persons are split three ways (held out,
    validation fold, training part) and each part needs women.
    """
    from facecom_utils.data.demo import make_demo_dataset

    demo_root = make_demo_dataset(tmp_path_factory.mktemp("presets") / "demo", seed=0, train_identities=30,
                                  val_identities=8, clean_per_identity=2, image_size=48)
    train_only = tmp_path_factory.mktemp("train_only")
    for task in ("Task_A", "Task_B"):
        (train_only / task).mkdir()
        (train_only / task / "train").symlink_to(demo_root / task / "train", target_is_directory=True)
    return {"with_val": demo_root, "no_val": train_only}


def test_there_are_presets_for_both_tasks() -> None:
    names = {(p.parent.name, p.stem) for p in PRESETS}
    for stem in ("02_gender_classification", "03_arcface_recognition"):
        assert {(stem, "facecom_cpu"), (stem, "facecom_gpu")} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_preset_keys_are_declared_and_differ_from_the_defaults(preset: Path) -> None:
    """Every key is a parameter of its notebook; a preset lists only what differs from the notebook's defaults."""
    values = yaml.safe_load(preset.read_text()) or {}
    assert isinstance(values, dict) and values, f"{preset}: a YAML mapping of parameter: value"
    defaults = run.notebook_defaults(_notebook(preset))
    unknown = sorted(set(values) - set(defaults))
    assert not unknown, f"{preset}: not parameters of {_notebook(preset).name}: {unknown}"
    same = sorted(k for k, v in values.items() if k not in ("data_root", "output_dir") and v == defaults[k]
                  and not (isinstance(defaults[k], tuple) and list(defaults[k]) == v))
    assert not same, f"{preset}: {same} repeat the notebook's defaults (a preset lists only differences)"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_preset_names_no_data_root_and_states_its_purpose_and_time(preset: Path) -> None:
    """No path outside the repository; one expected time (read by the runner); the details live in docs/presets.md."""
    text = preset.read_text()
    assert "data_root" not in (yaml.safe_load(text) or {}), f"{preset}: data_root=None reads FACECOM in the repository"
    assert "../" not in text and "shared" not in text, f"{preset}: names a path outside the repository"
    assert len(re.findall(r"^# expected_minutes:", text, flags=re.MULTILINE)) == 1
    minutes = plan.expected_minutes(preset)
    assert minutes is not None and 1 <= minutes <= 180
    assert "docs/presets.md" in text and text.startswith(f"# Notebook {preset.parent.name[:2]} ")
    assert not re.search(r"\d+(\.\d+)? ?(\+-|±)", text), f"{preset}: measured figures belong in docs/presets.md"


def test_shrinking_refuses_other_overrides(tmp_path: Path) -> None:
    cpu = next(p for p in PRESETS if p.stem == "facecom_cpu")
    overrides = shrinking_overrides(cpu, tmp_path, tmp_path)
    assert set(overrides) <= SHRINKING and "device" not in overrides
    sneaky = tmp_path / "params" / "03_arcface_recognition" / "facecom_cpu.yml"
    sneaky.parent.mkdir(parents=True)
    sneaky.write_text(yaml.safe_dump({"device": "cuda", "backbone": "resnet10t"}))
    assert shrinking_overrides(sneaky, tmp_path, tmp_path)["device"] == "cpu"  # GPU presets may move to the CPU


def _cases() -> list:
    cases = []
    for preset in PRESETS:
        values = yaml.safe_load(preset.read_text()) or {}
        kinds = ["no_val", "with_val"] if values.get("device") != "cuda" else ["no_val"]
        marks = [pytest.mark.slow] if run.preset_notebook(preset) != "01_eda" else []
        cases += [pytest.param(preset, kind, marks=marks, id=f"{preset.parent.name[:2]}/{preset.stem}/{kind}")
                  for kind in kinds]
    return cases


@pytest.mark.parametrize(("preset", "kind"), _cases())
def test_preset_runs_as_shipped_with_plain_papermill(preset: Path, kind: str, roots: dict[str, Path],
                                                     tmp_path: Path) -> None:
    notebook = _notebook(preset)
    output_dir = tmp_path / notebook.stem
    proc = _papermill(notebook, tmp_path / notebook.name, preset,
                      shrinking_overrides(preset, roots[kind], output_dir))
    assert proc.returncode == 0, f"{preset} on {kind}:\n{proc.stderr[-4000:]}"
    executed = nbformat.read(tmp_path / notebook.name, as_version=4)  # MPLBACKEND=Agg, yet the figures are there
    assert any("image/png" in o.get("data", {}) for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    metrics = json.loads((output_dir / "metrics.json").read_text())
    values = yaml.safe_load(preset.read_text())
    for key, value in values.items():  # the preset's own keys reached the notebook, unless shrunk
        if key not in SHRINKING | GPU_ON_CPU:
            got = metrics["parameters"][key]
            assert got == value or (isinstance(got, list) and got == list(value)), (key, got, value)
    split = metrics.get("reported_split") or metrics.get("report_split")
    assert (split == "val") == (kind == "with_val"), split
    if notebook.stem == "02_gender_classification" and values.get("face_glare_cnn"):
        import torch  # the glare expert the preset asks for was fitted, with its number of networks

        glare = torch.load(output_dir / "face_tracks.pt", weights_only=True)["model"]["glare_cnn"]
        assert glare is not None, "the preset's glare CNN was not fitted on the demo"
        assert len(glare["members"]) == values.get("face_glare_cnn_members", 1)
        assert glare["info"]["epochs"] == [values["face_glare_cnn_epochs"]] * len(glare["members"])
    if notebook.stem in CLI_COMMANDS and kind == "with_val" and values.get("device") != "cuda":
        _assert_cli_matches_notebook(preset, shrinking_overrides(preset, roots[kind], tmp_path / "cli"), metrics)
    if notebook.stem == "03_arcface_recognition" and kind == "no_val":
        # notebook 04 reads the holdout run through its run_dir (nbval runs it on a run with val)
        proc = _papermill(REPO_ROOT / "notebooks" / "04_threshold_analysis.ipynb", tmp_path / "04.ipynb", None,
                          {"run_dir": str(output_dir), "output_dir": str(tmp_path / "04")})
        assert proc.returncode == 0, proc.stderr[-4000:]
        analysis = json.loads((tmp_path / "04" / "metrics.json").read_text())
        assert analysis["reported_split"] == metrics["reported_split"]
        # notebook 04 analyses the headline track (fused with dlib installed), with that track's fold threshold
        headline = metrics.get("headline_track", "facecom_only")
        analysed = metrics.get("tracks", {}).get(headline, metrics)
        assert analysis["track"] == headline
        assert analysis["recommended_threshold"] == pytest.approx(analysed["threshold"])
        assert analysis["match_f1_macro"] == pytest.approx(analysed["match_f1_macro"])


def test_papermill_help_lists_typed_parameters() -> None:
    """``papermill --help-notebook`` shows every parameter with a type and a help line."""
    notebook = REPO_ROOT / "notebooks" / "02_gender_classification.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(notebook)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name, info in pm.inspect_notebook(str(notebook)).items():
        assert f"{name}: {info['inferred_type_name']} (default {info['default']})" in proc.stdout, name
    assert "Unknown type" not in proc.stdout


CLI_COMMANDS = {"02_gender_classification": "train-gender", "03_arcface_recognition": "train-recognition"}
_TIMING = ("seconds", "per_second", "minutes")


def numeric_leaves(value: object, prefix: str = "") -> dict[str, float]:
    """Every number in a metrics.json tree, keyed by its path (timings and paths left out)."""
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, item in value.items():
            if key in ("parameters", "provenance") or any(t in str(key) for t in _TIMING):
                continue
            out.update(numeric_leaves(item, f"{prefix}{key}/"))
        return out
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in numeric_leaves(item, f"{prefix}{i}/").items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix.rstrip("/"): float(value)}
    return {}


def _assert_cli_matches_notebook(preset: Path, overrides: dict, notebook_metrics: dict) -> None:
    """``facecom train-*`` with the same preset and overrides writes the run folder the notebook wrote: the same
    headline and every track's numbers to 1e-6 (one function composes the stages the notebook runs cell by cell)."""
    command = CLI_COMMANDS[run.preset_notebook(preset)]
    args = [sys.executable, "-m", "facecom_utils", command, "--preset", str(preset),
            "--data-root", overrides.pop("data_root"), "--output-dir", overrides.pop("output_dir")]
    out_dir = Path(args[-1])
    for name, value in overrides.items():
        text = str(value) if value is None or isinstance(value, (bool, int, float, str)) else \
            yaml.safe_dump(value, default_flow_style=True).strip()
        args += ["-p", name, text]  # typed as papermill's -p types it (None, True, 32, [0.85])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cli_metrics = json.loads((out_dir / "metrics.json").read_text())
    assert cli_metrics.get("headline_track") == notebook_metrics.get("headline_track")
    assert set(cli_metrics.get("tracks", {})) == set(notebook_metrics.get("tracks", {}))
    want, got = numeric_leaves(notebook_metrics), numeric_leaves(cli_metrics)
    assert set(got) == set(want), sorted(set(got) ^ set(want))[:10]
    differ = {k: (want[k], got[k]) for k in want if not abs(want[k] - got[k]) <= 1e-6
              and not (want[k] != want[k] and got[k] != got[k])}
    assert not differ, dict(list(differ.items())[:10])


def test_numeric_leaves_skip_timings_and_keep_nested_numbers() -> None:
    tree = {"top1": 0.5, "train_seconds": 3.0, "tracks": {"fused": {"top1": 0.75, "per": [1, 2]}},
            "parameters": {"epochs": 2}, "flag": True, "name": "x"}
    assert numeric_leaves(tree) == {"top1": 0.5, "tracks/fused/top1": 0.75, "tracks/fused/per/0": 1.0,
                                    "tracks/fused/per/1": 2.0}
