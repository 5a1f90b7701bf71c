"""The committed notebooks: structure, typed parameters, clean outputs, in step with their jupytext twins.

The notebooks are the source people edit (in JupyterLab); each ``NN_name.ipynb`` is paired with
``NN_name.py`` (jupytext ``py:percent``), and ``make notebooks`` (``tools/sync_notebooks.py``) syncs
the pair and strips what a JupyterLab save stores. Executing them is nbval's job
(``pytest --nbval-lax notebooks/``), the runner's (``test_notebooks_run_on_the_tiny_demo`` below) and,
for every shipped preset, ``tests/test_presets.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
import time
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from conftest import REPO_ROOT
from facecom_utils.reporting import runner as run
from facecom_utils.reporting.eda import EDAConfig
from facecom_utils.gender.pipeline import GenderConfig
from facecom_utils.recognition import RecognitionConfig
from facecom_utils.recognition.analysis import ThresholdConfig

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
EXPECTED = [f"{stem}.ipynb" for stem in run.NOTEBOOKS.values()]
CHECK = "# NBVAL_CHECK_OUTPUT"
PLOT_CALL = re.compile(r"\b(?:eda|notebook|thresholds)\.plot_")

# Each notebook's parameters cell declares exactly the fields of its config dataclass, plus these
# display-only extras (documented in the cell's help), and nothing else.
CONFIGS: dict[str, tuple[type, set[str]]] = {
    "01_eda": (EDAConfig, {"grid_faces", "dataset_images"}),
    "02_gender_classification": (GenderConfig, {"dataset_images"}),
    "03_arcface_recognition": (RecognitionConfig, {"dataset_images"}),
    "04_threshold_analysis": (ThresholdConfig, {"dataset_images"}),
}


def _sync_module():
    spec = importlib.util.spec_from_file_location("sync_notebooks", REPO_ROOT / "tools" / "sync_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def _load(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def test_the_four_notebooks_exist() -> None:
    missing = [name for name in EXPECTED if not (NOTEBOOK_DIR / name).is_file()]
    assert not missing, f"missing notebooks: {missing}"


def check_structure(path: Path) -> None:
    """What every notebook must be; also applied to a notebook edited in JupyterLab and synced."""
    nb = _load(path)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3", "kernel must be the current environment's python3"
    assert nb.metadata["kernelspec"]["language"] == "python"
    assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent", "paired with its py:percent twin"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "Protocol" in first.source, "the opening cell says which protocol the notebook follows"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", "exactly one code cell tagged 'parameters'"
    assigned = [re.split(r"[:=]", ln)[0].strip() for ln in tagged[0].source.splitlines()
                if re.match(r"^\w+\s*(:[^=]*)?=", ln)]
    params = run.notebook_parameters(path)
    assert list(params) == assigned, "papermill must parse every parameter (no '=' inside comments)"
    assert params.get("output_dir") == "None"
    assert "data_root" in params or "run_dir" in params
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    writes = ("write_metrics(", "train_gender(", "report_gender(", "report_recognition(")  # runs write through RunDir
    assert any(w in sources for w in writes), "every notebook writes <output_dir>/metrics.json"
    assert "data_banner(" in sources, "every notebook shows which data it ran on"
    for k, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if CHECK in cell.source:
            assert cell.outputs, f"checked cell {k} has no stored output to compare"
            assert cell.execution_count, f"checked cell {k} needs an execution count, else nbval skips it"
            for output in cell.outputs:
                assert output.output_type in ("stream", "execute_result"), output.output_type
                assert output.get("name") != "stderr", f"checked cell {k} stores stderr"
        else:
            assert not cell.outputs, f"cell {k} stores outputs but is not marked {CHECK}"
            assert cell.execution_count is None, f"cell {k} has an execution count"


@pytest.mark.parametrize("path", _committed(), ids=lambda p: p.name)
def test_structure_and_clean_outputs(path: Path) -> None:
    check_structure(path)


@pytest.mark.parametrize("path", _committed(), ids=lambda p: p.name)
def test_parameters_are_typed_and_documented(path: Path) -> None:
    """``papermill --help-notebook`` shows a type, a default and a one-line help for every parameter."""
    for info in pm.inspect_notebook(str(path)).values():
        assert info["inferred_type_name"] not in ("None", ""), f"{path.name}: {info['name']} has no type annotation"
        assert info["help"], f"{path.name}: {info['name']} has no help comment"
        assert info["default"] != "", f"{path.name}: {info['name']} has no default"


@pytest.mark.parametrize("stem", list(CONFIGS))
def test_parameters_declare_exactly_the_config_fields(stem: str) -> None:
    """The generator's one good idea, kept as a test: the parameters cell mirrors the config."""
    cls, extras = CONFIGS[stem]
    declared = set(run.notebook_parameters(NOTEBOOK_DIR / f"{stem}.ipynb"))
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    assert declared - extras == fields, (
        f"{stem}: parameters not in {cls.__name__}: {sorted(declared - extras - fields)}; "
        f"fields not declared: {sorted(fields - declared)}")
    # ... with the config's defaults, so a preset (the differences from the notebook) means the same to
    # papermill, the runner and `facecom train-*`
    defaults = run.notebook_defaults(NOTEBOOK_DIR / f"{stem}.ipynb")
    for f in dataclasses.fields(cls):
        if not f.init or f.name in ("data_root", "output_dir", "run_dir") or f.default is dataclasses.MISSING and (
                f.default_factory is dataclasses.MISSING):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        got = defaults[f.name]
        same = got == default or (isinstance(default, tuple) and list(default) == list(got))
        assert same, f"{stem}: {f.name} defaults to {got!r} in the notebook but {default!r} in {cls.__name__}"


@pytest.mark.parametrize("path", _committed(), ids=lambda p: p.name)
def test_paired_twin_in_step_and_stripped(path: Path) -> None:
    found = _sync_module().problems(path)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", _committed(), ids=lambda p: p.name)
def test_plot_cells_end_with_plt_show(path: Path) -> None:
    for cell in _load(path).cells:
        if cell.cell_type == "code" and (re.search(r"\bplots\.(?!show_dataset_images\()", cell.source)
                                         or PLOT_CALL.search(cell.source)):
            last = cell.source.strip().splitlines()[-1].strip()
            assert last == "plt.show()", f"plot cell must end with plt.show():\n{cell.source}"


def test_a_jupyterlab_save_is_put_back_by_the_sync_step(tmp_path: Path) -> None:
    """Edit a code cell in the .ipynb only, store outputs as a JupyterLab save does, run the sync step."""
    sync = _sync_module()
    for suffix in (".ipynb", ".py"):
        shutil.copy(NOTEBOOK_DIR / f"02_gender_classification{suffix}", tmp_path)
    ipynb, py = tmp_path / "02_gender_classification.ipynb", tmp_path / "02_gender_classification.py"
    nb = _load(ipynb)
    checked = next(c for c in nb.cells if c.cell_type == "code" and CHECK in c.source)
    kept = [dict(o) for o in checked.outputs]
    edited = next(c for c in nb.cells if c.cell_type == "code" and "display(run.history.round(4))" in c.source)
    edited.source = edited.source.replace("display(run.history.round(4))", "display(run.history.round(3))")
    for n, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = n + 1
        cell.metadata["execution"] = {"iopub.status.busy": "2026-12-01T12:00:00Z"}
        cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="a warning\n")]
        if cell is checked:
            cell.outputs += [nbformat.from_dict(o) for o in kept]
        elif n % 2:
            cell.outputs.append(nbformat.v4.new_output("display_data", data={"text/plain": "<Figure>"}))
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    time.sleep(0.05)
    nbformat.write(nb, ipynb)  # the save: newer than its twin
    assert sync.problems(ipynb), "an unsynced save must be reported by --check"
    assert sync.main([str(ipynb)]) == 0
    assert sync.problems(ipynb) == []
    check_structure(ipynb)
    assert "display(run.history.round(3))" in py.read_text(), "the edit reached the py:percent twin"
    synced = _load(ipynb)
    assert "widgets" not in synced.metadata
    assert next(c for c in synced.cells if c.cell_type == "code" and CHECK in c.source).outputs == kept

    # the other way round: an edit of the text twin wins over the older .ipynb, outputs of checked cells kept
    time.sleep(0.05)
    py.write_text(py.read_text().replace("display(run.history.round(3))", "display(run.history.round(2))"))
    assert sync.main([str(ipynb)]) == 0
    synced = _load(ipynb)
    assert any("display(run.history.round(2))" in c.source for c in synced.cells)
    assert next(c for c in synced.cells if c.cell_type == "code" and CHECK in c.source).outputs == kept


def test_eda_notebook_runs_with_plain_papermill_and_keeps_its_figures(
    demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain papermill (no runner) under ``MPLBACKEND=Agg``: the notebook picks the inline backend itself, so its
    figures are in the executed notebook (and so in any report rendered from it)."""
    from facecom_utils.reporting.execution import is_kernel_start_failure, start_with_retries

    monkeypatch.setenv("MPLBACKEND", "Agg")  # what `make` exports; the kernel inherits it
    out, output_dir = tmp_path / "01_eda.ipynb", tmp_path / "01_eda"
    start_with_retries(lambda _attempt: pm.execute_notebook(
        str(NOTEBOOK_DIR / "01_eda.ipynb"), str(out), kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOK_DIR),
        parameters={"data_root": str(demo_root), "output_dir": str(output_dir), "property_sample": 5}),
        retryable=lambda error: is_kernel_start_failure(str(error)))
    figures = [o for c in _load(out).cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 3, "the notebook's figures are missing: did it choose the inline backend?"
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["synthetic"] is True and metrics["parameters"]["property_sample"] == 5
    assert metrics["task_a_counts"]["train"]["female"] + metrics["task_a_counts"]["train"]["male"] == (
        metrics["task_a_counts"]["train"]["total"]
    )
    assert metrics["leakage"]["task_b_identity_overlap"] == 0


@pytest.mark.slow
def test_notebooks_02_03_04_run_on_the_tiny_demo(demo_root: Path, tmp_path: Path) -> None:
    """Papermill runs 02, then 03 and 04 (04 reads 03's folder), with tiny models; metrics.json has the issue's keys."""
    tiny = {"backbone": "resnet10t", "pretrained": None, "image_size": 32, "epochs": 1,
            "batch_size": 16, "device": "cpu"}
    result = run.run_reports(
        notebooks="02,03,04", name="tiny", data_root=demo_root, reports_dir=tmp_path, quiet=True,
        parameters={**tiny, "02": {"evaluate_distortions": True},
                    "03": {"embedding_dim": 32, "samples_per_epoch": 64, "max_identities": None}},
    )
    assert result.ok, [r.error for r in result.notebooks]
    metrics = {r.name: r.metrics for r in result.notebooks}
    gender = metrics["02_gender_classification"]
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "precision_female", "recall_female", "f1_female",
                "roc_auc", "threshold", "confusion_matrix", "per_distortion", "train_seconds",
                "train_images_per_second", "parameters"):
        assert key in gender, key
    assert gender["parameters"]["image_size"] == 32 and gender["synthetic"] is True
    assert len(gender["per_distortion"]) == 7
    recognition = metrics["03_arcface_recognition"]
    for key in ("top1", "top5", "roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "match_accuracy",
                "match_f1_macro", "threshold", "per_distortion", "train_seconds", "embed_images_per_second",
                "strict_top1", "parameters"):
        assert key in recognition, key
    analysis = metrics["04_threshold_analysis"]
    assert analysis["run_dir"] == str(tmp_path / "tiny" / "03_arcface_recognition")
    # notebook 04 analyses the headline track by default (fused with dlib installed, else the FACECOM-only one)
    headline = recognition.get("headline_track", "facecom_only")
    assert analysis["track"] == headline
    analysed = recognition.get("tracks", {}).get(headline, recognition)
    assert analysis["recommended_threshold"] == pytest.approx(analysed["threshold"])
    assert analysis["match_f1_macro"] == pytest.approx(analysed["match_f1_macro"])
    for key in ("recommended_threshold", "far_at_recommended", "tar_at_recommended", "strict_recommended_threshold"):
        assert key in analysis, key
    for stem in ("02_gender_classification", "03_arcface_recognition", "04_threshold_analysis"):
        assert (tmp_path / "tiny" / f"{stem}.nocode.html").is_file()
    # the run directory's headline track, re-run from disk, gives the notebook's numbers
    from facecom_utils.gender.tracks import evaluate_with_run
    from facecom_utils.recognition.face_tracks import evaluate_run

    rec_dir = tmp_path / "tiny" / "03_arcface_recognition"
    again = evaluate_run(rec_dir, demo_root, split="val", device="cpu", seed=recognition["parameters"]["seed"])
    assert again["track"] == recognition.get("headline_track", "facecom_only")
    if "tracks" in recognition:  # dlib installed: every track, the copy detector's included, and the copy weights
        from facecom_utils.recognition.face_tracks import TRACKS

        assert set(recognition["tracks"]) == set(TRACKS)
        from facecom_utils.train.rundir import RunDir

        # the run folder records the descriptor its face tracks were fitted on (notebook 03's default: mirrored)
        assert RunDir(rec_dir).load_tracks("recognition")["face_mirror"] is recognition["parameters"]["face_mirror"] is True
        assert set(recognition["fusion_copy_weights"]) == set(recognition["fusion_weights"])
        scales = recognition["fusion_score_calibration"]  # the fused score's scale per estimated type
        assert set(scales) == set(recognition["fusion_weights"]) | {"*"}  # "*": types the fold never estimated
        # every track rebuilt from the run folder without re-embedding is the one notebook 03 scored
        from facecom_utils.recognition.protocol import protocol_metrics
        from facecom_utils.recognition.analysis import load_recognition_run

        for name in TRACKS:
            files = load_recognition_run(rec_dir, name)
            assert files.track == name
            # the per-fold details notebook 04 plots are recomputed: they must land on the saved threshold
            assert files.threshold_details["threshold"] == pytest.approx(files.threshold, abs=1e-9), name
            again_track = protocol_metrics(*files.report, files.threshold, files.strict_threshold,
                                           seed=recognition["parameters"]["seed"])
            for key in ("top1", "strict_top1", "roc_auc", "strict_roc_auc", "match_f1"):
                assert again_track[key] == pytest.approx(recognition["tracks"][name][key], abs=1e-9), (name, key)
        with pytest.raises(ValueError, match="no 'nonsense' track"):
            load_recognition_run(rec_dir, "nonsense")
        # a run folder copied without face_tracks.pt: the headline falls back to the FACECOM-only track
        bare = tmp_path / "bare"
        shutil.copytree(rec_dir, bare, ignore=shutil.ignore_patterns("face_tracks.pt", "checkpoints"))
        with pytest.warns(UserWarning, match="no face_tracks.pt"):
            assert load_recognition_run(bare).track == "facecom_only"
        # the CV script's cheap-stage repeat, on the whole fold at the run's own seed, is the notebook's fused track
        from conftest import load_script

        seed = int(recognition["parameters"]["seed"])
        (repeat,) = load_script("cv_notebooks").cheap_repeats(tmp_path / "tiny", [seed], fraction=1.0)
        for key in ("top1", "strict_top1", "roc_auc", "strict_roc_auc", "match_f1", "strict_match_f1"):
            assert repeat["values"][key] == pytest.approx(recognition["tracks"]["fused"][key], abs=1e-9), key
        assert recognition["tracks"]["pixel_copies"]["outside_face_data"] is False
    for key in ("top1", "strict_top1", "roc_auc"):
        assert again[key] == pytest.approx(recognition[key], abs=1e-6), key
    gender_again = evaluate_with_run(tmp_path / "tiny" / "02_gender_classification", demo_root, split="val")
    assert gender_again["balanced_accuracy"] == pytest.approx(gender["balanced_accuracy"], abs=1e-6)
