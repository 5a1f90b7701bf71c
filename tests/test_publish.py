"""What a published run may show: figures without dataset images, a compact copy without absolute paths.

``facecom run --no-dataset-images`` / ``--publish DIR`` (reporting.plots.show_dataset_images,
reporting.publish), on small stand-in notebooks and on the real figure functions.
"""

from __future__ import annotations

import ast
import json
import shutil
import tempfile
from pathlib import Path

import matplotlib.axes
import nbformat
import pandas as pd
import pytest
import torch

from facecom_utils.common import paths
from facecom_utils.data.layout import DISTORTION_TYPES
from facecom_utils.reporting import eda, plots
from facecom_utils.reporting import plan as planning
from facecom_utils.reporting import runner as run
from facecom_utils.reporting.notebook import plot_worst_errors
from facecom_utils.reporting.publish import PublishError, publish_run

# The one imshow that draws no dataset image: the confusion matrix's heat map.
NOT_DATASET_IMAGES = {"confusion_matrix_plot"}


@pytest.fixture()
def images_off():
    previous = plots.show_dataset_images(False)
    yield
    plots.show_dataset_images(previous)


def _figures_that_read(missing: str) -> dict[str, object]:
    """A call of every registered figure function on images that do not exist."""
    triplet = pd.DataFrame({"probe": [missing], "wrong_image": [missing], "true_image": [missing], "type": ["blurred"],
                            "identity": ["a"], "predicted": ["b"], "score_wrong": [0.6], "score_true": [0.4]})
    kinds = ["clean", *DISTORTION_TYPES]
    task_b = pd.DataFrame({"path": [missing] * len(kinds), "identity": ["a"] * len(kinds),
                           "split": ["train"] * len(kinds), "distortion": kinds, "source": [missing] * len(kinds)})
    pairs = pd.DataFrame({"path_a": [missing], "path_b": [missing], "split_a": ["train"], "split_b": ["val"],
                          "distance": [3]})
    probabilities = pd.DataFrame({"path": [missing], "label": ["male"], "prob": [0.9], "pred": ["female"]})
    return {
        "image_grid": lambda: plots.image_grid([missing], title="grid"),
        "tensor_grid": lambda: plots.tensor_grid(torch.zeros(2, 3, 8, 8)),
        "pair_grid": lambda: plots.pair_grid([(missing, missing)], [0.5], title="pairs"),
        "failure_triplets": lambda: plots.failure_triplets(triplet),
        "plot_distortion_grid": lambda: eda.plot_distortion_grid(task_b, n_identities=1),
        "plot_image_pairs": lambda: eda.plot_image_pairs(pairs, "near-duplicates"),
        "plot_worst_errors": lambda: plot_worst_errors(probabilities, n=1),
    }


def test_with_dataset_images_off_no_figure_reads_or_draws_an_image(images_off, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def no_imshow(*_args, **_kwargs):
        raise AssertionError("imshow called with dataset images off")

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", no_imshow)
    for name, call in _figures_that_read(str(tmp_path / "missing.jpg")).items():
        figure = call()
        texts = [t.get_text() for ax in figure.axes for t in ax.texts]
        assert any("dataset images left out" in t for t in texts), name
    assert plots.show_dataset_images(True) is False  # the switch reports the previous state


def test_with_dataset_images_on_the_same_figures_read_their_images(tmp_path: Path) -> None:
    """The switch, not the inputs, is what keeps the figures above from reading: on, each reads the missing file."""
    assert plots.show_dataset_images(True) is True
    for name, call in _figures_that_read(str(tmp_path / "missing.jpg")).items():
        if name == "tensor_grid":
            assert call().axes, name  # draws the tensors it is given
            continue
        with pytest.raises(Exception, match="missing.jpg"):
            call()


def test_every_figure_that_calls_imshow_is_marked() -> None:
    """A new figure that draws images must be marked with draws_dataset_images (or listed above with a reason)."""
    unmarked = []
    for module in (paths.REPO_ROOT / "facecom_utils").rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if not isinstance(node, ast.FunctionDef) or node.name in NOT_DATASET_IMAGES:
                continue
            calls = {n.func.attr for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
            marked = any(getattr(d, "id", None) == "draws_dataset_images" for d in node.decorator_list)
            if "imshow" in calls and not marked:
                unmarked.append(f"{module.name}:{node.name}")
    assert not unmarked, f"figures that call imshow without @draws_dataset_images: {unmarked}"
    assert {n.rsplit(".", 1)[1] for n in plots.DATASET_IMAGE_FIGURES} == {
        "image_grid", "tensor_grid", "pair_grid", "failure_triplets", "plot_distortion_grid", "plot_image_pairs"}


def test_no_dataset_images_reaches_every_notebook_that_declares_it(demo_root: Path, tmp_path: Path) -> None:
    for images in (True, False):
        plan = planning.plan_run(data_root=demo_root, reports_dir=tmp_path, dataset_images=images)
        for stem in plan.notebooks:
            assert plan.parameters[stem].get("dataset_images", True) is images, stem
            assert "dataset_images" in planning.notebook_parameters(run.NOTEBOOK_DIR / f"{stem}.ipynb"), stem


# ----------------------------------------------------------------------------- the published copy


def _stand_ins(folder: Path) -> Path:
    """Four tiny notebooks that print their paths and write metrics naming them (what publishing must hide)."""
    folder.mkdir()
    body = ("import json, pathlib\nprint('data at', data_root, 'output at', output_dir)\n"
            "pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)\n"
            "(pathlib.Path(output_dir) / 'metrics.json').write_text(json.dumps("
            "{'top1': 0.5, 'balanced_accuracy': 0.75, 'data_root': str(data_root), 'images': dataset_images}))")
    for stem in run.NOTEBOOKS.values():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        params = nbformat.v4.new_code_cell("data_root = None\noutput_dir = None\nrun_dir = None\ndataset_images = True")
        params.metadata["tags"] = ["parameters"]
        nb.cells = [nbformat.v4.new_markdown_cell(f"# {stem}"), params, nbformat.v4.new_code_cell(body)]
        nbformat.write(nb, folder / f"{stem}.ipynb")
    return folder


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> tuple[Path, Path, Path]:
    """One run of the stand-ins with --publish: (run folder, published folder, data root)."""
    base = tmp_path_factory.mktemp("publish")
    notebooks = _stand_ins(base / "notebooks")
    dest = base / "site" / "reference-run"
    code = run.main(["--name", "ref", "--data-root", str(demo_root), "--reports-dir", str(base / "reports"),
                     "--notebook-dir", str(notebooks), "--publish", str(dest)])
    assert code == 0
    return base / "reports" / "ref", dest, demo_root


def test_publish_writes_the_compact_copy_with_no_absolute_path(published: tuple[Path, Path, Path]) -> None:
    run_dir, dest, data_root = published
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    stems = list(run.NOTEBOOKS.values())
    assert files == sorted(["index.html", "summary.json", "reports.css", *(f"{s}.nocode.html" for s in stems),
                            *(f"{s}/metrics.json" for s in stems)])
    theme = (dest / "reports.css").read_text()  # nbconvert's theme, once, linked from every report
    assert len(theme) > 10_000 and "<style" not in theme
    for s_ in stems:
        report = (dest / f"{s_}.nocode.html").read_text()
        assert report.count('<link rel="stylesheet" href="reports.css"/>') == 1 and theme[:200] not in report
    original = json.loads((run_dir / "summary.json").read_text())
    assert original["notebooks"][0]["parameters"]["dataset_images"] is False  # --publish implies it
    assert str(data_root) in (run_dir / "01_eda.nocode.html").read_text()  # the source names the paths ...
    for file in dest.rglob("*"):
        if file.is_file():
            text = file.read_text()
            for absolute in (str(data_root), str(run_dir), str(paths.REPO_ROOT), str(Path.home()) + "/",
                             tempfile.gettempdir() + "/"):
                assert absolute not in text, (file.name, absolute)  # ... the copy does not
    assert "data at &lt;data_root&gt; output at ./01_eda" in (dest / "01_eda.nocode.html").read_text()
    metrics = json.loads((dest / "02_gender_classification" / "metrics.json").read_text())
    assert metrics == {"top1": 0.5, "balanced_accuracy": 0.75, "data_root": "<data_root>", "images": False}
    summary = json.loads((dest / "summary.json").read_text())
    assert summary["headline"]["02_gender_classification"]["balanced_accuracy"] == 0.75
    assert summary["data_root"] == "synthetic demo data" and summary["python"] == "python"
    origin = summary["provenance"]
    assert len(origin["commit"]) == 40 and origin["machine"] and origin["torch"] == torch.__version__
    assert origin["commit"] == original["commit"]["commit"]  # the commit the run ran, recorded at its start
    index = (dest / "index.html").read_text()
    assert origin["commit"][:12] in index and 'href="02_gender_classification.nocode.html"' in index
    assert 'href="02_gender_classification.html"' not in index and ".ipynb" not in index  # not published


def test_publish_refuses_what_it_must_not_publish(published: tuple[Path, Path, Path], tmp_path: Path) -> None:
    run_dir, dest, _ = published
    before = (dest / "index.html").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())

    def variant(name: str, change) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for f in run_dir.glob("*.nocode.html"):
            (folder / f.name).write_text(f.read_text())
        copy = json.loads(json.dumps(summary))
        change(copy)
        (folder / "summary.json").write_text(json.dumps(copy))
        return folder

    with_images = variant("images", lambda s: s["notebooks"][1]["parameters"].update(dataset_images=True))
    with pytest.raises(PublishError, match="02_gender_classification ran with dataset_images=True"):
        publish_run(with_images, dest)
    failed = variant("failed", lambda s: s["notebooks"][2].update(status="failed"))
    with pytest.raises(PublishError, match="03_arcface_recognition is failed"):
        publish_run(failed, dest)
    with pytest.raises(PublishError, match="would weigh"):
        publish_run(run_dir, dest, max_bytes=10_000)
    with pytest.raises(PublishError, match="summary.json does not exist"):
        publish_run(tmp_path, dest)
    assert (dest / "index.html").read_text() == before  # every refusal left the published copy whole
    assert not dest.with_name(dest.name + ".partial").exists()


def test_publish_names_the_commit_it_is_told_for_an_older_run(published: tuple[Path, Path, Path], tmp_path: Path) -> None:
    run_dir, _, _ = published
    older = tmp_path / "older"
    shutil.copytree(run_dir, older)
    summary = json.loads((older / "summary.json").read_text())
    del summary["commit"]  # runs before the runner recorded its commit
    (older / "summary.json").write_text(json.dumps(summary))
    dest = tmp_path / "published"
    publish_run(older, dest, commit="0" * 40)
    assert json.loads((dest / "summary.json").read_text())["provenance"]["commit"] == "0" * 40
    assert "000000000000" in (dest / "index.html").read_text()


def test_message_figures_are_titled_in_words(images_off, tmp_path: Path) -> None:
    """Without a ``title`` argument a left-out figure is titled by what it shows, not by a function name."""
    titles = {name: [ax.get_title() for ax in call().axes][0]
              for name, call in _figures_that_read(str(tmp_path / "missing.jpg")).items()}
    assert titles["image_grid"] == "grid" and titles["pair_grid"] == "pairs"  # a given title wins
    assert titles["plot_distortion_grid"] == "Each distortion beside its clean source"
    assert not [t for t in titles.values() if "_" in t or not t]
