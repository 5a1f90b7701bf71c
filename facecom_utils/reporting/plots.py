"""Figures for both tasks: training curves, classification and verification diagnostics, image grids.

Every function builds one titled figure with labelled axes and returns the ``matplotlib.figure.Figure``
(it never calls ``plt.show()``; notebooks end their plot cells with it). Figures are created through
``pyplot`` so that notebooks display them inline; close them (``plt.close(fig)``) in loops.

Headless-safe: on import, when no backend has been chosen (``MPLBACKEND`` unset), nothing runs inside
IPython/Jupyter, and there is no display (Linux without ``DISPLAY``/``WAYLAND_DISPLAY``), the ``Agg``
backend is selected, so scripts and tests render to files without a screen.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd


def _in_ipython() -> bool:
    return "IPython" in sys.modules and getattr(sys.modules["IPython"], "get_ipython", lambda: None)() is not None


def _ensure_headless_backend() -> None:
    """Selects Agg when there is no display and neither the user nor a notebook chose a backend."""
    if os.environ.get("MPLBACKEND") or _in_ipython():
        return
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        matplotlib.use("Agg")


_ensure_headless_backend()

import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)
from matplotlib.figure import Figure  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

__all__ = [
    "DATASET_IMAGE_FIGURES",
    "draws_dataset_images",
    "show_dataset_images",
    "track_bars",
    "confusion_matrix_plot",
    "det_curve",
    "fold_thresholds_plot",
    "image_grid",
    "pair_grid",
    "message_figure",
    "per_distortion_bars",
    "tensor_grid",
    "reliability_diagram",
    "roc_pr_curves",
    "similarity_histograms",
    "threshold_sweep",
    "training_curves",
    "plot_error_pairs",
    "plot_fold_thresholds",
    "plot_histograms_per_distortion",
]

_DATASET_IMAGES = {"on": True}
DATASET_IMAGE_FIGURES: list[str] = []
"""The figure functions that draw dataset images (``module.name``), registered by :func:`draws_dataset_images`."""


def show_dataset_images(on: bool = True) -> bool:
    """Let the figures draw dataset images (``True``, the default) or leave them out (``False``).

    A notebook calls it with its ``dataset_images`` parameter (``facecom run --no-dataset-images`` sets it
    ``False`` for every notebook): a report meant for publication then shows no face from the dataset;
    sample grids, augmented batches, near-duplicate pairs and error galleries become a one-line message.

    Returns:
        The previous setting.
    """
    previous = _DATASET_IMAGES["on"]
    _DATASET_IMAGES["on"] = bool(on)
    return previous


def _summary(function: Any) -> str:
    """What a figure function shows, for a title: its docstring's first clause, else its name in words."""
    import re

    first = re.sub(r"``[^`]*``", "", (inspect.getdoc(function) or "").strip().split("\n")[0])
    clause = " ".join(re.split(r"\s\((?:e\.g\.|see)|[:;]\s|\.(?:\s|$)", first)[0].split()).strip(" ,.")
    return clause or function.__name__.removeprefix("plot_").replace("_", " ")


def draws_dataset_images(function: Any) -> Any:
    """Mark a figure function that draws dataset images: with :func:`show_dataset_images` off it returns
    a message figure (under the call's ``title``, else its docstring's first clause) and reads no image."""
    signature = inspect.signature(function)
    DATASET_IMAGE_FIGURES.append(f"{function.__module__}.{function.__name__}")

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _DATASET_IMAGES["on"]:
            return function(*args, **kwargs)
        bound = signature.bind_partial(*args, **kwargs)
        bound.apply_defaults()
        title = bound.arguments.get("title") or _summary(function)
        return message_figure(str(title), "dataset images left out of this report (dataset_images=False)")

    return wrapper


_SKIP_HISTORY_COLUMNS = {
    "epoch", "step", "lr", "learning_rate", "time", "seconds", "epoch_seconds", "images_per_second",
}


def _load_rgb(path: str | Path, size: int | None) -> np.ndarray:
    from PIL import Image  # local import: only the grid functions need PIL

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image {p} does not exist; expected a readable image file")
    with Image.open(p) as im:
        im = im.convert("RGB")
        if size:
            im = im.resize((size, size))
        return np.asarray(im)


def _is_rate(series: pd.Series) -> bool:
    values = series.to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return values.size > 0 and bool(np.all((values >= -1) & (values <= 1)))


def training_curves(
    history: pd.DataFrame,
    title: str = "Training curves",
    x: str = "epoch",
    metrics: Sequence[str] | None = None,
) -> Figure:
    """Loss curves (left) and validation metrics (right) per epoch.

    Args:
        history: One row per epoch (e.g. ``training.fit``'s history); columns containing
            ``"loss"`` go left.
        title: Figure title.
        x: Column to use as the x axis (the row number when absent).
        metrics: Columns to draw on the right. Default: every numeric, non-loss column whose values
            lie in [-1, 1] (accuracies, F1, AUC, ...), leaving out bookkeeping (``lr``, timings,
            counts).
    """
    if len(history) == 0:
        raise ValueError("history is empty; expected one row per epoch")
    xs = history[x].to_numpy() if x in history.columns else np.arange(1, len(history) + 1)
    numeric = [c for c in history.columns if pd.api.types.is_numeric_dtype(history[c]) and c != x]
    loss_cols = [c for c in numeric if "loss" in c.lower()]
    if metrics is None:
        metric_cols = [
            c for c in numeric
            if c not in loss_cols and c.lower() not in _SKIP_HISTORY_COLUMNS
            and not c.lower().endswith("seconds") and _is_rate(history[c])
        ]
    else:
        missing = [c for c in metrics if c not in history.columns]
        if missing:
            raise ValueError(f"history has no columns {missing}; it has {list(history.columns)}")
        metric_cols = list(metrics)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, cols, ylabel, name in ((axes[0], loss_cols, "loss", "Loss"), (axes[1], metric_cols, "value", "Metrics")):
        for c in cols:
            ax.plot(xs, history[c].to_numpy(dtype=float), marker="o", label=c)
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if cols:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no columns", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix_plot(
    cm: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    title: str = "Confusion matrix",
    normalize: bool = False,
) -> Figure:
    """Annotated confusion matrix (rows = true class, columns = predicted class).

    Args:
        cm: [C, C] counts.
        class_names: C class names.
        title: Axes title.
        normalize: Colour and annotate by row fraction (recall) instead of counts; counts are kept
            in brackets.
    """
    counts = np.asarray(cm, dtype=float)
    if counts.shape != (len(class_names), len(class_names)):
        raise ValueError(f"cm has shape {counts.shape}, expected {(len(class_names),) * 2} for {list(class_names)}")
    rows = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    values = frac if normalize else counts
    fig, ax = plt.subplots(figsize=(1.6 * len(class_names) + 2.5, 1.4 * len(class_names) + 2))
    im = ax.imshow(values, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            text = f"{frac[i, j]:.1%}\n({int(counts[i, j])})" if normalize else f"{int(counts[i, j])}\n{frac[i, j]:.1%}"
            dark = values[i, j] > 0.6 * (values.max() or 1)
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black", fontsize=9)
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def roc_pr_curves(
    y_true: Sequence[int] | np.ndarray,
    prob: Sequence[float] | np.ndarray,
    threshold: float | None = None,
    title: str = "ROC and precision-recall",
    positive_name: str = "positive",
) -> Figure:
    """ROC curve (with AUC) and precision-recall curve (with AP) side by side.

    Args:
        y_true: Labels in {0, 1}.
        prob: Score of class 1 (probability, or a cosine for genuine-vs-impostor pairs).
        threshold: Operating point to mark on both curves (predict 1 when ``prob >= threshold``).
        title: Figure title.
        positive_name: Name of class 1, used in the axis labels.
    """
    y = np.asarray(y_true).astype(int).reshape(-1)
    p = np.asarray(prob, dtype=float).reshape(-1)
    if len(np.unique(y)) < 2:
        raise ValueError("roc_pr_curves needs both classes in y_true")
    fpr, tpr, _ = skm.roc_curve(y, p)
    precision, recall, _ = skm.precision_recall_curve(y, p)
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax_roc.plot(fpr, tpr, label=f"AUC = {skm.roc_auc_score(y, p):.4f}")
    ax_roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax_roc.set_xlabel("false positive rate")
    ax_roc.set_ylabel(f"true positive rate (recall of {positive_name})")
    ax_roc.set_title("ROC")
    ax_pr.plot(recall, precision, label=f"AP = {skm.average_precision_score(y, p):.4f}")
    ax_pr.axhline(y.mean(), ls="--", color="grey", lw=1, label=f"prevalence {y.mean():.3f}")
    ax_pr.set_xlabel(f"recall ({positive_name})")
    ax_pr.set_ylabel(f"precision ({positive_name})")
    ax_pr.set_title("Precision-recall")
    if threshold is not None:
        pred = p >= threshold
        tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
        rec, fpr_t = tp / max(np.sum(y == 1), 1), fp / max(np.sum(y == 0), 1)
        prec = tp / max(tp + fp, 1)
        ax_roc.plot([fpr_t], [rec], "o", color="red", label=f"threshold {threshold:.3g}")
        ax_pr.plot([rec], [prec], "o", color="red", label=f"threshold {threshold:.3g}")
    for ax in (ax_roc, ax_pr):
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def reliability_diagram(curve: pd.DataFrame, title: str = "Reliability diagram", ece: float | None = None) -> Figure:
    """Reliability diagram from :func:`facecom_utils.metrics.classification.reliability_curve`.

    Args:
        curve: DataFrame with ``mean_pred``, ``frac_pos`` and ``count`` columns.
        title: Figure title.
        ece: Expected calibration error to show in the legend, if given.
    """
    missing = {"mean_pred", "frac_pos", "count"} - set(curve.columns)
    if missing:
        raise ValueError(f"curve lacks columns {sorted(missing)}; pass the output of evaluation.reliability_curve")
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    label = "model" if ece is None else f"model (ECE {ece:.3f})"
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    ax.plot(curve["mean_pred"], curve["frac_pos"], marker="o", label=label)
    ax.set_ylabel("fraction of positives")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    width = 1.0 / max(len(curve), 10)
    ax_count.bar(curve["mean_pred"], curve["count"], width=width, color="tab:blue", alpha=0.6)
    ax_count.set_xlabel("mean predicted probability")
    ax_count.set_ylabel("count")
    fig.tight_layout()
    return fig


def message_figure(title: str, message: str) -> Figure:
    """A small titled figure holding only a message (a plot cell always shows a figure)."""
    fig, ax = plt.subplots(figsize=(6, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def per_distortion_bars(
    values: Mapping[str, float],
    metric: str = "balanced_accuracy",
    baseline: float | Mapping[str, float] | None = None,
    title: str | None = None,
    labels: tuple[str, str] = ("model", "baseline"),
) -> Figure:
    """Bar chart of one metric per distortion type.

    Args:
        values: Distortion type -> metric value.
        metric: Metric name (y axis label).
        baseline: A single value (drawn as a horizontal line, e.g. the clean score) or a mapping
            type -> value (drawn as a second bar per type, e.g. another model).
        title: Figure title (default: "<metric> per distortion").
        labels: Legend names of ``values`` and of a mapping ``baseline``.
    """
    if not values:  # e.g. a run with evaluate_distortions=False: a figure that says so, not a crash
        return message_figure(title or f"{metric} per distortion", "no per-distortion results in this run")
    kinds = list(values)
    xs = np.arange(len(kinds))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * len(kinds) + 2), 4))
    if isinstance(baseline, Mapping):
        width = 0.4
        bars = ax.bar(xs - width / 2, [values[k] for k in kinds], width, label=labels[0])
        other = ax.bar(xs + width / 2, [baseline.get(k, np.nan) for k in kinds], width, label=labels[1])
        ax.bar_label(other, fmt="%.3f", fontsize=7)
    else:
        bars = ax.bar(xs, [values[k] for k in kinds], 0.6, label=labels[0])
        if baseline is not None:
            ax.axhline(float(baseline), ls="--", color="red", lw=1, label=f"{labels[1]} {float(baseline):.3f}")
    ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(xs, kinds, rotation=20)
    ax.set_xlabel("distortion")
    ax.set_ylabel(metric)
    finite = [v for v in values.values() if np.isfinite(v)]
    if finite and 0 <= min(finite) and max(finite) <= 1:
        ax.set_ylim(0, 1.08)
    ax.set_title(title or f"{metric} per distortion")
    ax.grid(axis="y", alpha=0.3)
    if baseline is not None:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


@draws_dataset_images
def image_grid(
    paths: Sequence[str | Path],
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    title: str = "Images",
    image_size: int | None = 112,
) -> Figure:
    """Grid of images with a caption each (e.g. the worst errors with their probabilities).

    Args:
        paths: Image files.
        titles: One caption per image (e.g. ``"true female, p=0.03"``).
        ncols: Images per row.
        title: Figure title.
        image_size: Resize each image to this square size (``None`` keeps the original).
    """
    if len(paths) == 0:
        raise ValueError("paths is empty; expected at least one image")
    if titles is not None and len(titles) != len(paths):
        raise ValueError(f"got {len(titles)} titles for {len(paths)} images")
    ncols = max(1, min(ncols, len(paths)))
    nrows = int(np.ceil(len(paths) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols, 2.6 * nrows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(paths):
            ax.axis("off")
            continue
        ax.imshow(_load_rgb(paths[k], image_size))
        ax.set_xlabel(titles[k] if titles is not None else Path(paths[k]).name, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@draws_dataset_images
def tensor_grid(
    images: Any,
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    title: str = "Training images as the model sees them",
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> Figure:
    """A grid of image tensors ``[N, 3, H, W]`` (e.g. an augmented training batch), un-normalised.

    Args:
        images: A tensor or array ``[N, 3, H, W]``, normalised with ``mean``/``std`` (uint8 or [0, 1]
            floats are shown as they are when ``mean``/``std`` are None).
        titles: One caption per image (e.g. the label).
        ncols: Images per row.
        title: Figure title.
        mean: Per-channel mean the images were normalised with (None: not normalised).
        std: Per-channel standard deviation.
    """
    array = np.asarray(images.detach().cpu().float() if hasattr(images, "detach") else images, dtype=np.float32)
    if array.ndim != 4 or array.shape[1] != 3:
        raise ValueError(f"expected images of shape [N, 3, H, W], got {array.shape}")
    if mean is not None and std is not None:
        array = array * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    elif array.max() > 1.5:
        array = array / 255.0
    array = np.clip(array.transpose(0, 2, 3, 1), 0.0, 1.0)
    n = len(array)
    if n == 0:
        return message_figure(title, "no images")
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.8 * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(array[k])
            if titles is not None and k < len(titles):
                ax.set_title(str(titles[k]), fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@draws_dataset_images
def pair_grid(
    pairs: Sequence[tuple[str | Path, str | Path]],
    scores: Sequence[float],
    titles: Sequence[str] | None = None,
    ncols: int = 2,
    title: str = "Image pairs",
    image_size: int | None = 112,
) -> Figure:
    """Grid of (probe, gallery) image pairs with their similarity (e.g. hardest false matches / misses).

    Args:
        pairs: (probe path, gallery path) per pair.
        scores: Cosine score per pair.
        titles: Optional caption per pair (prefixed to the score).
        ncols: Pairs per row.
        title: Figure title.
        image_size: Square size each image is resized to.
    """
    if len(pairs) == 0:
        raise ValueError("pairs is empty; expected at least one (probe, gallery) pair")
    if len(scores) != len(pairs) or (titles is not None and len(titles) != len(pairs)):
        raise ValueError("pairs, scores (and titles) must have the same length")
    ncols = max(1, min(ncols, len(pairs)))
    nrows = int(np.ceil(len(pairs) / ncols))
    fig, axes = plt.subplots(nrows, 2 * ncols, figsize=(2.2 * 2 * ncols, 2.6 * nrows + 0.4), squeeze=False)
    for k in range(nrows * ncols):
        ax_probe, ax_gallery = axes[k // ncols, 2 * (k % ncols)], axes[k // ncols, 2 * (k % ncols) + 1]
        for ax in (ax_probe, ax_gallery):
            ax.set_xticks([])
            ax.set_yticks([])
        if k >= len(pairs):
            ax_probe.axis("off")
            ax_gallery.axis("off")
            continue
        probe, gallery = pairs[k]
        ax_probe.imshow(_load_rgb(probe, image_size))
        ax_gallery.imshow(_load_rgb(gallery, image_size))
        caption = f"cos = {float(scores[k]):.3f}"
        ax_probe.set_xlabel(f"probe\n{titles[k]}" if titles is not None else "probe", fontsize=8)
        ax_gallery.set_xlabel(f"gallery\n{caption}", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def similarity_histograms(
    genuine: Sequence[float] | np.ndarray,
    impostor: Sequence[float] | np.ndarray,
    threshold: float | None = None,
    title: str = "Genuine vs impostor cosine similarity",
    bins: int = 50,
    xlabel: str = "cosine similarity",
) -> Figure:
    """Density histograms of genuine and impostor scores, with the threshold as a vertical line."""
    g = np.asarray(genuine, dtype=float).reshape(-1)
    i = np.asarray(impostor, dtype=float).reshape(-1)
    if g.size == 0 and i.size == 0:
        raise ValueError("genuine and impostor are both empty")
    both = np.r_[g, i]
    edges = np.linspace(both.min(), both.max() + 1e-9, bins + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    if i.size:
        ax.hist(i, bins=edges, density=True, alpha=0.55, color="tab:red", label=f"impostor (n={i.size:,})")
    if g.size:
        ax.hist(g, bins=edges, density=True, alpha=0.55, color="tab:green", label=f"genuine (n={g.size:,})")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def det_curve(
    genuine: Sequence[float] | np.ndarray,
    impostor: Sequence[float] | np.ndarray,
    title: str = "DET curve",
    label: str = "model",
) -> Figure:
    """Detection error trade-off: false reject rate vs false accept rate (log-log), EER marked."""
    g = np.asarray(genuine, dtype=float).reshape(-1)
    i = np.asarray(impostor, dtype=float).reshape(-1)
    if g.size == 0 or i.size == 0:
        raise ValueError("det_curve needs both genuine and impostor scores")
    y = np.r_[np.ones(g.size), np.zeros(i.size)]
    fpr, tpr, _ = skm.roc_curve(y, np.r_[g, i], drop_intermediate=False)
    fnr = 1 - tpr
    floor_far, floor_frr = 0.5 / i.size, 0.5 / g.size  # zeros cannot be drawn on a log axis
    k = int(np.argmin(np.abs(fnr - fpr)))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot(np.maximum(fpr, floor_far), np.maximum(fnr, floor_frr), label=label)
    ax.plot([max(fpr[k], floor_far)], [max(fnr[k], floor_frr)], "o", color="red",
            label=f"EER ~ {(fpr[k] + fnr[k]) / 2:.4f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"false accept rate (n_impostor={i.size:,})")
    ax.set_ylabel(f"false reject rate (n_genuine={g.size:,})")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def threshold_sweep(
    genuine: Sequence[float] | np.ndarray,
    impostor: Sequence[float] | np.ndarray,
    threshold: float | None = None,
    balance: bool = True,
    n_points: int = 201,
    title: str = "Match metrics vs threshold",
) -> Figure:
    """Precision, recall, F1 and FAR of the match decision (``score >= t``) against the threshold.

    Args:
        genuine: Genuine scores.
        impostor: Impostor scores.
        threshold: Chosen threshold to mark.
        balance: Weight impostors so both classes count equally (as in the balanced match-pair
            protocol); otherwise precision reflects the given class ratio.
        n_points: Threshold grid size (between the lowest and the highest score).
        title: Figure title.
    """
    g = np.sort(np.asarray(genuine, dtype=float).reshape(-1))
    i = np.sort(np.asarray(impostor, dtype=float).reshape(-1))
    if g.size == 0 or i.size == 0:
        raise ValueError("threshold_sweep needs both genuine and impostor scores")
    ts = np.linspace(min(g[0], i[0]), max(g[-1], i[-1]), n_points)
    recall = 1 - np.searchsorted(g, ts, side="left") / g.size  # TAR
    far = 1 - np.searchsorted(i, ts, side="left") / i.size
    tp = recall * (g.size if not balance else 1.0)
    fp = far * (i.size if not balance else 1.0)
    precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ts, precision, label="precision")
    ax.plot(ts, recall, label="recall (TAR)")
    ax.plot(ts, f1, label="F1")
    ax.plot(ts, far, label="FAR")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("threshold (cosine similarity)")
    ax.set_ylabel("rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title + (" (balanced pairs)" if balance else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fold_thresholds_plot(
    fold_thresholds: Sequence[float],
    fold_accuracies: Sequence[float] | None = None,
    title: str = "Threshold chosen per fold",
) -> Figure:
    """How the threshold chosen on k-1 folds moves across folds (and the held-out accuracy)."""
    t = np.asarray(fold_thresholds, dtype=float)
    if t.size == 0:
        raise ValueError("fold_thresholds is empty")
    xs = np.arange(1, t.size + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, t, marker="o", color="tab:blue", label="threshold")
    ax.axhline(t.mean(), ls="--", color="tab:blue", lw=1, label=f"mean {t.mean():.4f} ± {t.std():.4f}")
    ax.set_xlabel("fold")
    ax.set_ylabel("threshold")
    ax.set_xticks(xs)
    handles, names = ax.get_legend_handles_labels()
    if fold_accuracies is not None:
        ax2 = ax.twinx()
        acc = np.asarray(fold_accuracies, dtype=float)
        label = f"held-out accuracy {acc.mean():.4f} ± {acc.std():.4f}"
        ax2.plot(xs, acc, marker="s", color="tab:orange", label=label)
        ax2.set_ylabel("held-out accuracy")
        h2, n2 = ax2.get_legend_handles_labels()
        handles, names = handles + h2, names + n2
    ax.legend(handles, names, fontsize=8, loc="lower right")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig



def track_bars(per_track: Mapping[str, Mapping[str, float]], metric: str = "balanced accuracy",
               title: str | None = None, bar: float | None = None) -> Figure:
    """Grouped bars: one metric per distortion type (x) for several tracks (one colour each).

    Args:
        per_track: Track name -> {type: value}.
        metric: y-axis label.
        title: Figure title.
        bar: A target drawn as a dashed horizontal line (e.g. 0.80).
    """
    kinds = sorted({k for values in per_track.values() for k in values})
    if not kinds:
        return message_figure(title or f"{metric} per distortion", "no per-distortion results in this run")
    xs = np.arange(len(kinds))
    width = 0.8 / max(len(per_track), 1)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(kinds) + 2), 4))
    for i, (name, values) in enumerate(per_track.items()):
        ax.bar(xs - 0.4 + width * (i + 0.5), [values.get(k, np.nan) for k in kinds], width, label=name)
    if bar is not None:
        ax.axhline(bar, ls="--", color="black", lw=1, label=f"target {bar:g}")
    ax.set_xticks(xs, kinds)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} per distortion type")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


@draws_dataset_images
def failure_triplets(failures: pd.DataFrame, title: str = "Task B failures", image_size: int | None = 112,
                     max_rows: int = 28) -> Figure:
    """Rows of (probe, the wrongly chosen identity's best photo, the true identity's best photo).

    Args:
        failures: :func:`~facecom_utils.recognition.errors.worst_failures` (or
            :func:`~facecom_utils.recognition.errors.identification_failures`) rows.
        title: Figure title; image_size: square size of each image; max_rows: at most this many rows.
    """
    if len(failures) == 0:
        return message_figure(title, "no failure: every probe's own identity scored highest")
    rows = failures.head(max_rows)
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.6, 2.3 * len(rows) + 0.5), squeeze=False)
    for r, (_, f) in enumerate(rows.iterrows()):
        protocol = f"{f['protocol']} · " if "protocol" in f else ""
        cells = ((f["probe"], f"{protocol}{f['type']} probe\n{str(f['identity'])[:22]}"),
                 (f["wrong_image"], f"chosen: {str(f['predicted'])[:22]}\nscore {f['score_wrong']:.3f}"),
                 (f["true_image"], f"true identity's best\nscore {f['score_true']:.3f}"))
        for c, (path, caption) in enumerate(cells):
            ax = axes[r, c]
            ax.imshow(_load_rgb(path, image_size))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(caption, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- notebook 04 (threshold analysis)


def plot_error_pairs(errors: pd.DataFrame, title: str, ncols: int = 3) -> Figure:
    """Probe | gallery image pairs of :func:`hardest_errors` (a message figure when there are none)."""
    if errors.empty:
        return message_figure(title, "none at this threshold")
    return pair_grid(list(zip(errors["probe"], errors["gallery"])), errors["score"].tolist(),
                     errors["caption"].tolist(), ncols=ncols, title=title)


def plot_fold_thresholds(run: Any,
                         title: str = "Match threshold chosen per fold (k-fold on the validation fold)") -> Figure:
    """How notebook 03's k-fold threshold moved across folds: a run's track (its ``threshold_details``),
    or a notebook-03 ``metrics.json`` (the FACECOM-only embedder's)."""
    details = (run.get("threshold_details") if isinstance(run, Mapping)
               else run.threshold_details) or {}
    if not details.get("fold_thresholds"):
        return message_figure(title, f"threshold method {details.get('method', 'unknown')!r}: no per-fold thresholds")
    return fold_thresholds_plot(details["fold_thresholds"], details.get("fold_accuracies"), title=title)


def plot_histograms_per_distortion(analysis: Any, threshold: float | None = None, bins: int = 40,
                                   xlabel: str = "cosine similarity") -> Figure:
    """Genuine vs impostor score histograms, one small panel per distortion type."""
    kinds = analysis.distortions
    ncols = min(4, len(kinds))
    nrows = math.ceil(len(kinds) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False, sharex=True)
    g_all, i_all = analysis.genuine_impostor()
    both = np.r_[g_all, i_all]
    edges = np.linspace(both.min(), both.max() + 1e-9, bins + 1) if both.size else bins
    for ax, kind in zip(axes.flat, kinds):
        g, i = analysis.genuine_impostor(kind)
        ax.hist(i, bins=edges, density=True, alpha=0.55, color="tab:red", label="impostor")
        ax.hist(g, bins=edges, density=True, alpha=0.55, color="tab:green", label="genuine")
        if threshold is not None:
            ax.axvline(threshold, color="black", ls="--", lw=1)
        ax.set_title(f"{kind} (n={len(g)} probes)", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    variant = "strict" if analysis.strict else "main"
    fig.suptitle(f"Genuine vs impostor scores per distortion ({variant} protocol; dashed: threshold)")
    fig.tight_layout()
    return fig
