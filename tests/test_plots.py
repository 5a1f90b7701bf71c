"""Every plot returns a titled Figure with labelled axes and renders to PNG without a display."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from conftest import noise_images
from facecom_utils.reporting import plots
from facecom_utils.metrics.classification import reliability_curve


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


@pytest.fixture()
def image_paths(tmp_path: Path) -> list[Path]:
    return noise_images(tmp_path, 5, size=(40, 32), prefix="face_")


def _check_figure(fig: Figure, tmp_path: Path, name: str) -> None:
    assert isinstance(fig, Figure)
    titles = [fig._suptitle.get_text() if fig._suptitle is not None else ""]
    titles += [ax.get_title() for ax in fig.axes]
    assert any(t.strip() for t in titles), "figure has no title"
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison or ax.get_label() == "<colorbar>":
            continue
        if ax.get_images():  # image panels carry captions, not axis labels
            continue
        assert ax.get_ylabel().strip(), f"axes without a y label in {name}"
        # An x label may sit on an axes sharing this x axis (stacked panels, twin axes).
        siblings = ax.get_shared_x_axes().get_siblings(ax)
        assert any(a.get_xlabel().strip() for a in siblings), f"axes without an x label in {name}"
    out = tmp_path / f"{name}.png"
    fig.savefig(out, dpi=50)
    assert out.stat().st_size > 1000


def test_backend_is_headless() -> None:
    assert matplotlib.get_backend().lower() == "agg"


def test_training_curves(tmp_path: Path) -> None:
    history = pd.DataFrame(
        {"epoch": [1, 2, 3], "train_loss": [0.9, 0.6, 0.4], "val_loss": [1.0, 0.7, 0.6],
         "val_balanced_accuracy": [0.6, 0.7, 0.8], "lr": [1e-3, 5e-4, 1e-4], "val_n": [300, 300, 300],
         "seconds": [1.5, 1.4, 1.4]}
    )
    fig = plots.training_curves(history)
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert set(labels) == {"train_loss", "val_loss", "val_balanced_accuracy"}
    fig = plots.training_curves(history, metrics=["val_n"])
    assert "val_n" in [line.get_label() for line in fig.axes[1].get_lines()]
    _check_figure(fig, tmp_path, "training_curves")


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_plot(tmp_path: Path, normalize: bool) -> None:
    fig = plots.confusion_matrix_plot([[50, 5], [3, 12]], ["male", "female"], normalize=normalize)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("50" in t for t in texts) and any("12" in t for t in texts)
    _check_figure(fig, tmp_path, f"cm_{normalize}")
    with pytest.raises(ValueError, match="shape"):
        plots.confusion_matrix_plot([[1, 2, 3]], ["a", "b"])


def test_roc_pr_and_reliability(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(int)
    prob = np.clip(0.4 * y + 0.6 * rng.random(200), 0, 1)
    _check_figure(plots.roc_pr_curves(y, prob, threshold=0.5, positive_name="female"), tmp_path, "roc_pr")
    curve = reliability_curve(y, prob, n_bins=10)
    _check_figure(plots.reliability_diagram(curve, ece=0.05), tmp_path, "reliability")


def test_per_distortion_bars(tmp_path: Path) -> None:
    values = {"blurred": 0.95, "foggy": 0.9, "noisy": 0.7, "sunny": 0.5}
    _check_figure(plots.per_distortion_bars(values, "top1", baseline=0.97), tmp_path, "bars_line")
    fig = plots.per_distortion_bars(values, "top1", baseline={"blurred": 0.9, "noisy": 0.3}, labels=("ours", "dlib"))
    assert fig.axes[0].get_ylabel() == "top1" and fig.axes[0].get_title() == "top1 per distortion"
    _check_figure(fig, tmp_path, "bars_pair")


def test_image_and_pair_grids(tmp_path: Path, image_paths: list[Path]) -> None:
    fig = plots.image_grid(image_paths, [f"p={p:.2f}" for p in np.linspace(0, 1, 5)], ncols=3, title="Worst errors")
    assert fig._suptitle.get_text() == "Worst errors"
    assert sum(ax.get_visible() and ax.axison for ax in fig.axes) == 5
    _check_figure(fig, tmp_path, "image_grid")
    pairs = [(image_paths[0], image_paths[1]), (image_paths[2], image_paths[3]), (image_paths[4], image_paths[0])]
    fig = plots.pair_grid(pairs, [0.91, 0.42, 0.13], titles=["false match", "miss", "miss"], title="Hardest")
    _check_figure(fig, tmp_path, "pair_grid")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        plots.image_grid([tmp_path / "missing.png"])


def test_verification_plots(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    genuine, impostor = rng.normal(0.7, 0.1, 300), rng.normal(0.1, 0.15, 3000)
    _check_figure(plots.similarity_histograms(genuine, impostor, threshold=0.4), tmp_path, "hist")
    _check_figure(plots.det_curve(genuine, impostor), tmp_path, "det")
    fig = plots.threshold_sweep(genuine, impostor, threshold=0.4)
    assert {line.get_label() for line in fig.axes[0].get_lines()} >= {"precision", "recall (TAR)", "F1", "FAR"}
    _check_figure(fig, tmp_path, "sweep")
    _check_figure(plots.fold_thresholds_plot([0.41, 0.43, 0.4], [0.97, 0.98, 0.96]), tmp_path, "folds")


def test_plots_never_show(monkeypatch: pytest.MonkeyPatch, image_paths: list[Path]) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("library functions must not call plt.show()")

    monkeypatch.setattr(plt, "show", fail)
    plots.training_curves(pd.DataFrame({"epoch": [1], "train_loss": [1.0]}))
    plots.similarity_histograms([0.9], [0.1])
    plots.image_grid(image_paths[:2])


def test_tensor_grid_undoes_the_normalisation() -> None:
    import torch

    from facecom_utils.reporting.plots import tensor_grid

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    grey = torch.full((3, 3, 8, 8), 0.5)
    normalised = (grey - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    fig = tensor_grid(normalised, ["a", "b", "c"], ncols=2)
    shown = fig.axes[0].images[0].get_array()
    assert np.allclose(np.asarray(shown), 0.5, atol=1e-6) and len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        tensor_grid(torch.zeros(2, 8, 8))
