"""The recognition protocol on embeddings: thresholds chosen on the fold, main and strict metrics, and the
evaluation of a saved checkpoint on a data root."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facecom_utils.data.layout import OnError, drop_unreadable, scan_task_b
from facecom_utils.data.demo import resolve_data_root
from facecom_utils.data.splits import subsample_identities
from facecom_utils.metrics.scoring import identity_macro_top1, identity_ranks, score_table, strict_score_table, topk_accuracy
from facecom_utils.metrics.verification import choose_match_threshold, evaluate_protocol
from facecom_utils.recognition.model import load_recognition_model
from facecom_utils.recognition.embedding import embedding_table, extract_embeddings, protocol_inputs

__all__ = ["choose_thresholds", "protocol_metrics", "evaluate_recognition", "top1_by_type"]


def choose_thresholds(table: pd.DataFrame, emb: np.ndarray, method: str = "kfold", seed: int = 0) -> dict[str, Any]:
    """Chooses the main and strict match thresholds on a validation table.

    Args:
        table: :func:`embedding_table` rows of the validation fold.
        emb: Their embeddings.
        method: See :func:`facecom_utils.metrics.verification.choose_match_threshold`.
        seed: Seed of the impostor draw and the folds.

    Returns:
        ``{"threshold", "strict_threshold", "details", "strict_details"}``; the strict threshold
        falls back to the main one when the fold has no strict probe.
    """
    args = protocol_inputs(table, emb)
    main = score_table(args["probe_emb"], args["probe_identity"], args["gallery_emb"], args["gallery_identity"])
    details = choose_match_threshold(main, method=method, seed=seed)
    strict = strict_score_table(args["probe_emb"], args["probe_identity"], args["gallery_emb"],
                                args["gallery_identity"], args["probe_source_idx"])
    try:
        strict_details = choose_match_threshold(strict, method=method, seed=seed)
    except ValueError:  # no identity with two or more clean images in the fold
        strict_details = {**details, "fallback": "main threshold (no strict probe in the fold)"}
    return {
        "threshold": float(details["threshold"]),
        "strict_threshold": float(strict_details["threshold"]),
        "details": details,
        "strict_details": strict_details,
    }


def protocol_metrics(
    table: pd.DataFrame,
    emb: np.ndarray,
    threshold: float,
    strict_threshold: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The issue's Task B metrics for one embedded split, main and strict.

    Delegates to :func:`facecom_utils.metrics.verification.evaluate_protocol` and flattens its output:
    ``per_distortion`` maps each type to its top-1 (the full per-type metrics stay under
    ``per_distortion_metrics``); the same for the ``strict_`` keys. ``strict_top1_identity_macro``
    averages the strict top-1 per identity first (one many-photo identity can otherwise decide
    ``strict_top1``: FACECOM's train split has identities with 236 and 71 photos).

    Args:
        table: :func:`embedding_table` rows.
        emb: Their embeddings.
        threshold: Match threshold (chosen elsewhere, applied unchanged).
        strict_threshold: Threshold of the strict variant (default: ``threshold``).
        seed: Seed of the impostor-pair draw.

    Returns:
        Flat metrics dict (see :data:`METRIC_KEYS`).
    """
    raw = evaluate_protocol(**protocol_inputs(table, emb), threshold=threshold, seed=seed,
                            strict_threshold=strict_threshold)
    out = dict(raw)
    for prefix in ("", "strict_"):
        per = raw[f"{prefix}per_distortion"]
        out[f"{prefix}per_distortion_metrics"] = per
        out[f"{prefix}per_distortion"] = {kind: m["top1"] for kind, m in per.items()}
    return out


def _quick_scores(table: pd.DataFrame, emb: np.ndarray) -> dict[str, float]:
    """Model-choice scores of an embedded fold.

    ``top1`` / ``strict_top1``: main and strict top-1 over probes; ``strict_top1_macro``: the strict
    top-1 averaged per identity first (:func:`~facecom_utils.metrics.scoring.identity_macro_top1`);
    ``selection_score``: the mean of ``top1`` and ``strict_top1_macro`` (``top1`` alone when the fold
    has no strict probe).
    """
    args = protocol_inputs(table, emb)
    gallery = (args["gallery_emb"], args["gallery_identity"])
    main = score_table(args["probe_emb"], args["probe_identity"], *gallery)
    strict = strict_score_table(args["probe_emb"], args["probe_identity"], *gallery, args["probe_source_idx"])
    out = {}
    for prefix, st in (("", main), ("strict_", strict)):
        out[f"{prefix}top1"] = topk_accuracy(st.scores[st.valid], st.true_idx[st.valid], ks=(1,))[1]
    out["strict_top1_macro"] = identity_macro_top1(strict, args["probe_identity"])
    macro = out["strict_top1_macro"]
    out["selection_score"] = out["top1"] if math.isnan(macro) else 0.5 * (out["top1"] + macro)
    return out


def top1_by_type(table: pd.DataFrame, emb: np.ndarray) -> dict[str, Any]:
    """Main and strict top-1 of an embedded split, overall and per distortion type (no threshold).

    Returns:
        ``{"top1", "strict_top1", "per_type": {type: top1}, "strict_per_type": {type: top1},
        "strict_six": mean strict top-1 over the types other than sunny (NaN when none)}``.
    """
    args = protocol_inputs(table, emb)
    gallery = (args["gallery_emb"], args["gallery_identity"])
    kinds = np.asarray(args["probe_distortion"], dtype=object)
    out: dict[str, Any] = {}
    for prefix, st in (("", score_table(args["probe_emb"], args["probe_identity"], *gallery)),
                       ("strict_", strict_score_table(args["probe_emb"], args["probe_identity"], *gallery,
                                                      args["probe_source_idx"]))):
        valid = st.valid
        hit = np.zeros(len(valid), bool)
        hit[valid] = identity_ranks(st.scores[valid], st.true_idx[valid]) == 0
        out[f"{prefix}top1"] = float(hit[valid].mean()) if valid.any() else float("nan")
        out[f"{prefix}per_type"] = {str(k): float(hit[valid & (kinds == k)].mean())
                                    for k in sorted(set(kinds[valid]))}
    six = [v for k, v in out["strict_per_type"].items() if k != "sunny"]
    out["strict_six"] = float(np.mean(six)) if six else float("nan")
    return out


def _scalar_view(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics without the bulky nested per-distortion detail (for checkpoints)."""
    return {k: v for k, v in metrics.items() if not k.endswith("per_distortion_metrics")}


def evaluate_recognition(
    checkpoint_path: str | Path,
    data_root: str | Path | None = None,
    split: str = "val",
    batch_size: int = 64,
    device: str = "auto",
    flip_tta: bool | None = None,
    seed: int | None = None,
    on_error: OnError = "raise",
) -> dict[str, Any]:
    """Evaluates a trained checkpoint on a split with the full protocol and its stored threshold.

    The split's images are screened first (:func:`~facecom_utils.data.layout.drop_unreadable`): with
    ``on_error="raise"`` the first unreadable one stops the evaluation; with ``"skip"`` each is left
    out with a warning (a distorted probe whose clean image is unreadable keeps ``source=None``; an
    identity left with no readable clean image drops out of the protocol, see :func:`embedding_table`).

    Args:
        checkpoint_path: ``best.pt`` written by :func:`train_recognition`.
        data_root: FACECOM root (None: see :func:`facecom_utils.data.demo.resolve_data_root`).
        split: ``"val"`` or ``"train"`` (all of ``Task_B/<split>``), or ``"holdout"``: the training
            identities the run held out and reported on (when ``data_root`` had no ``Task_B/val``).
        batch_size: Embedding batch size.
        device: Compute device.
        flip_tta: Override the training run's flip TTA setting (None: keep it).
        seed: Seed of the impostor draw (None: the training seed).
        on_error: ``"raise"`` or ``"skip"`` unreadable images (see above).

    Returns:
        Metrics dict (see :func:`protocol_metrics`) plus ``embed_images_per_second``, ``split``,
        ``n_images`` (images embedded), ``n_skipped`` and ``skipped`` (``{path: reason}``).

    Raises:
        ValueError: The checkpoint holds no threshold (it did not finish training).
        BadImageError: An unreadable image and ``on_error="raise"``.
    """
    model, payload = load_recognition_model(checkpoint_path, device)
    if "threshold" not in payload:
        raise ValueError(f"{checkpoint_path}: holds no match threshold; use the best.pt of a finished "
                         "train_recognition run")
    cfg = payload["config"]
    root = resolve_data_root(None if data_root is None else str(data_root))
    if split == "holdout":
        held = set(payload.get("holdout_identities", []))
        if not held:
            raise ValueError(f"{checkpoint_path}: the run held no identities out (its data_root had Task_B/val); "
                             "use split='val'")
        scanned = scan_task_b(root, splits=("train",), on_error="keep")
        scanned = scanned[scanned["identity"].isin(held)].reset_index(drop=True)
    else:
        scanned = scan_task_b(root, splits=(split,), on_error="keep")
    scanned, skipped = drop_unreadable(scanned, on_error)
    table = embedding_table(scanned)
    emb, speed = extract_embeddings(
        model, table["path"].tolist(), image_size=int(cfg["image_size"]), batch_size=batch_size, device=device,
        flip_tta=bool(cfg["flip_tta"]) if flip_tta is None else flip_tta, face_crop=float(cfg.get("face_crop", 1.0)),
        source=str(payload.get("embedding_source", "neck")), return_speed=True,
        tta_crops=tuple(cfg.get("tta_crops") or ()),
    )
    metrics = protocol_metrics(table, emb, float(payload["threshold"]),
                               float(payload.get("strict_threshold", payload["threshold"])),
                               seed=int(cfg["seed"]) if seed is None else seed)
    metrics.update(embed_images_per_second=speed, split=split, n_images=len(table), n_skipped=len(skipped),
                   skipped=skipped)
    return metrics


def _threshold_table(data_root: Path, split: str, identities: int, seed: int) -> pd.DataFrame:
    """A seeded subsample of a split's identities, for choosing a baseline's threshold elsewhere."""
    table = scan_task_b(data_root, splits=(split,))
    return embedding_table(subsample_identities(table, identities, seed))
