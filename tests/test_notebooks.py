"""The committed notebooks: structure, clean outputs, and in sync with scripts/make_notebooks.py.

Executing them is nbval's job (``pytest --nbval-lax notebooks/``) and, on the tiny demo, the runner's
(``test_notebooks_run_on_the_tiny_demo`` below).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest

from conftest import REPO_ROOT
from facecom_utils import run

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
EXPECTED = [f"{stem}.ipynb" for stem in run.NOTEBOOKS.values()]
CHECK = "# NBVAL_CHECK_OUTPUT"
PLOT_CALL = re.compile(r"\b(?:eda|notebook|thresholds)\.plot_")


def _committed() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def _load(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def test_the_four_notebooks_exist() -> None:
    missing = [name for name in EXPECTED if not (NOTEBOOK_DIR / name).is_file()]
    assert not missing, f"missing notebooks: {missing}"


@pytest.mark.parametrize("path", _committed(), ids=lambda p: p.name)
def test_structure(path: Path) -> None:
    nb = _load(path)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3", "kernel must be the current environment's python3"
    assert nb.metadata["kernelspec"]["language"] == "python"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "Protocol" in first.source, "the opening cell says which protocol the notebook follows"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", "exactly one code cell tagged 'parameters'"
    params = run.notebook_parameters(path)
    assigned = [ln.split("=")[0].strip() for ln in tagged[0].source.splitlines() if "=" in ln.split("#")[0]]
    assert list(params) == assigned, "papermill must parse every parameter (no '=' inside comments)"
    assert params.get("output_dir") == "None"
    assert "data_root" in params or "run_dir" in params
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "write_metrics(" in sources, "every notebook writes <output_dir>/metrics.json"
    assert "data_banner(" in sources, "every notebook shows which data it ran on"


@pytest.mark.parametrize("path", _committed(), ids=lambda p: p.name)
def test_no_stored_outputs_except_checked_cells(path: Path) -> None:
    for k, cell in enumerate(_load(path).cells):
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
def test_plot_cells_end_with_plt_show(path: Path) -> None:
    for cell in _load(path).cells:
        if cell.cell_type == "code" and ("plots." in cell.source or PLOT_CALL.search(cell.source)):
            last = cell.source.strip().splitlines()[-1].strip()
            assert last == "plt.show()", f"plot cell must end with plt.show():\n{cell.source}"


def test_notebooks_match_their_generator() -> None:
    """The committed notebooks are what scripts/make_notebooks.py writes (regenerate after edits)."""
    spec = importlib.util.spec_from_file_location("make_notebooks", REPO_ROOT / "scripts" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for nid, (stem, build) in module.BUILDERS.items():
        committed = _load(NOTEBOOK_DIR / f"{stem}.ipynb")
        generated = build()
        assert [c.source for c in committed.cells] == [c.source for c in generated.cells], (
            f"{stem}.ipynb differs from scripts/make_notebooks.py; run: python scripts/make_notebooks.py --execute --only {nid}"
        )


def test_eda_notebook_runs_on_the_tiny_demo(demo_root: Path, tmp_path: Path) -> None:
    result = run.run_reports(
        notebooks="01", name="eda", data_root=demo_root, reports_dir=tmp_path, html=False, quiet=True,
        parameters={"property_sample": 5},
    )
    assert result.ok, result.notebooks[0].error
    metrics = json.loads((tmp_path / "eda" / "01_eda" / "metrics.json").read_text())
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
    assert analysis["match_f1_macro"] == pytest.approx(recognition["match_f1_macro"])
    for key in ("recommended_threshold", "far_at_recommended", "tar_at_recommended", "strict_recommended_threshold"):
        assert key in analysis, key
    for stem in ("02_gender_classification", "03_arcface_recognition", "04_threshold_analysis"):
        assert (tmp_path / "tiny" / f"{stem}.nocode.html").is_file()
