"""Task A with face-trained knowledge: dlib's descriptor + a linear head, cross-validated by person.

Outside face data: dlib's descriptor was trained on public face datasets that may hold people who
are also in FACECOM (see :mod:`facecom_utils.face.descriptors`); these tracks are reported apart from
the FACECOM-only CNN (``tracks.face_model``, ``tracks.face_model_restored``, ``tracks.fused``).

The pieces, each usable alone:

- :func:`with_distorted_copies`: every Task A image is one of Task B's clean images, and Task B's
  ``distortion/`` folder holds its seven real distorted copies (same person, same label). They
  train the head (robustness) and measure it per distortion type.
- :func:`grouped_folds`: repeated, person-grouped, label-stratified K-fold splits; nobody is ever
  on both sides of a fold.
- :func:`fit_gender_face`: the per-image restoration selector
  (:class:`~facecom_utils.face.quality.DistortionEstimator`, fitted on the training rows' pixels and
  types; it reads pixels only at prediction) -> restored, aligned descriptors -> a class-balanced
  logistic regression (:func:`fit_linear`) on the clean images and their distorted copies, its
  threshold chosen on person-grouped out-of-fold probabilities of the clean training images
  (:func:`oof_linear`, :func:`threshold_from_oof`, with a person-bootstrap interval). With
  ``glare_expert`` the images the selector calls ``sunny`` are routed to a head on whole-frame
  ImageNet features (:func:`~facecom_utils.nn.backbones.pooled_features`): glare wipes out the face the
  descriptor reads, while hair and outline remain. That routed track is ``fused``.
- :func:`cross_validate`: the honest estimate: in each outer fold every choice (selector, heads,
  thresholds by inner out-of-fold passes) is made on the fold's training persons, then its test
  persons are scored clean and per distortion type. Mean +- SD over folds x repeats.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facecom_utils.common.progress import ProgressLog
from facecom_utils.data.layout import find_task_dir, scan_task_b
from facecom_utils.metrics.classification import binary_metrics
from facecom_utils.face.descriptors import face_tracks_wanted
from facecom_utils.gender.labels import CLASS_NAMES, predicted_labels
from facecom_utils.face.quality import RESTORATION_FOR, DistortionEstimator, quality_feature_matrix
from facecom_utils.face.restoration import RESTORATION_VERSIONS, check_restoration_versions
from facecom_utils.data.splits import grouped_folds, usable_folds
from facecom_utils.gender.heads import (LinearHead, copy_weights, female_labels, fit_linear, oof_linear,
                                        threshold_from_oof)
from facecom_utils.metrics.classification import logit

__all__ = [
    "FaceHeadRecipe",
    "GenderFaceModel",
    "LinearHead",
    "cross_validate",
    "fit_gender_face",
    "female_labels",
    "fit_linear",
    "oof_linear",
    "score_rows",
    "summarise_folds",
    "threshold_from_oof",
    "with_distorted_copies",
    "GenderTracks",
    "TRACKS",
    "gender_tracks",
    "run_gender_tracks",
    "train_gender_with_tracks",
    "load_run_tracks",
    "load_run_stacker",
    "predict_with_run",
    "evaluate_with_run",
]


def with_distorted_copies(task_a: pd.DataFrame, data_root: str | Path, split: str) -> pd.DataFrame:
    """Task A rows plus the real distorted copies of each image from ``Task_B/<split>``.

    A Task A image is matched to the Task B clean image with the same file name; its distorted
    copies get its label and person. Without a ``Task_B/<split>`` folder only the clean rows come back.

    Returns:
        The Task A columns plus ``kind`` (``"clean"`` or the distortion type) and ``image`` (the
        Task A path the row derives from), clean rows first.
    """
    clean = task_a.assign(kind="clean", image=task_a["path"])
    try:
        task_b = find_task_dir(data_root, "Task_B")
    except Exception:  # noqa: BLE001 - no Task B at all: clean rows only
        return clean.reset_index(drop=True)
    if not (task_b / split).is_dir():
        return clean.reset_index(drop=True)
    b = scan_task_b(data_root, splits=(split,), on_error="skip")
    dist = b[b["distortion"].notna() & b["source"].notna()]
    by_name = {Path(p).name: row for row, p in zip(task_a.itertuples(index=False), task_a["path"])}
    rows = []
    for path, kind, source in zip(dist["path"], dist["distortion"], dist["source"]):
        row = by_name.get(Path(source).name)
        if row is not None:
            rows.append({**row._asdict(), "path": path, "kind": kind, "image": row.path})
    copies = pd.DataFrame(rows, columns=list(clean.columns))
    return pd.concat([clean, copies], ignore_index=True)


@dataclass
class FaceHeadRecipe:
    """Where descriptors and features come from, and the head settings.

    Attributes:
        store: The descriptor cache (anything with :meth:`DescriptorStore.describe`).
        restore: Choose a restoration per image with the estimator (else none: the ``face_model`` track).
        C: Inverse L2 strength of the logistic regressions.
        distorted_weight: Total weight of an image's distorted copies relative to the clean image.
        glare_expert: Route images the estimator calls ``sunny`` to a head on whole-frame ImageNet
            features (glare wipes out the face the descriptor reads; hair and outline remain).
        glare_cnn: With ``glare_expert``: route them instead to a CNN fine-tuned on the training
            persons' real sunny copies (:mod:`facecom_utils.gender.glare`; ``glare_cnn_size`` px,
            ``glare_cnn_epochs`` epochs, ``glare_cnn_members`` cross-fitted networks, on ``device``,
            channels-last weights with ``channels_last``).
            :func:`cross_validate` leaves it out (it
            fits cheap heads only; the fine-tuned CNN's estimate comes from ``experiments/cv_notebooks.py``).
        feature_cache: Where quality and frame features are cached (by file content).
        workers: Worker processes for quality features.
        k, seed: Inner person-grouped folds for thresholds, and the seed.
    """

    store: Any
    restore: bool = True
    C: float = 1.0
    distorted_weight: float = 1.0
    glare_expert: bool = False
    glare_cnn: bool = False
    glare_cnn_size: int = 128
    glare_cnn_epochs: int = 6
    glare_cnn_members: int = 1
    channels_last: bool = False
    device: str = "cpu"
    feature_cache: str | Path | None = None
    workers: int = 1
    k: int = 5
    seed: int = 0

    def quality(self, rows: pd.DataFrame) -> np.ndarray:
        return quality_feature_matrix(rows["path"], workers=self.workers, cache_dir=self.feature_cache)

    def descriptors(self, rows: pd.DataFrame, estimator: DistortionEstimator | None,
                    quality: np.ndarray | None = None) -> np.ndarray:
        """L2-normalised descriptors of ``rows``, each after the restoration the estimator picks from its pixels."""
        if estimator is None:
            names: list[str] | str = "identity"
        else:
            names = estimator.restorations(self.quality(rows) if quality is None else quality)
        return self.store.describe(rows["path"].tolist(), names).normalised()

    def frames(self, rows: pd.DataFrame) -> np.ndarray:
        from facecom_utils.nn.backbones import pooled_features

        return pooled_features(rows["path"].tolist(), cache_dir=self.feature_cache)


@dataclass(frozen=True)
class GenderFaceModel:
    """The fitted face-model tracks: the selector, the face head and (optionally) the glare expert.

    ``face`` reads dlib descriptors (after the selector's restoration when ``estimator`` is set);
    ``glare`` reads whole-frame ImageNet features of the images the selector calls ``sunny``;
    ``glare_cnn``, when fitted, takes those images instead (:class:`~facecom_utils.gender.glare.GlareCNN`).
    ``mirror``: the descriptors the head was fitted on were mirrored (``DescriptorStore(mirror=True)``).
    """

    estimator: DistortionEstimator | None
    face: LinearHead
    glare: LinearHead | None = None
    oof: dict[str, Any] | None = None
    glare_cnn: Any = None
    mirror: bool = False

    def scores(self, rows: pd.DataFrame, recipe: FaceHeadRecipe) -> dict[str, np.ndarray]:
        """``{"face": P(female) of the face head, "fused": P(female) after routing}``.

        The fused probability is the routed head's probability shifted so that its own threshold
        sits at the face head's: one threshold (``face.threshold``) decides every image.
        """
        q = recipe.quality(rows) if self.estimator is not None else None
        face = self.face.probabilities(recipe.descriptors(rows, self.estimator, q))
        out = {"face": face, "fused": face.copy()}
        if self.glare is not None and self.estimator is not None:
            sunny = self.estimator.predict(q) == "sunny"
            if sunny.any():
                if self.glare_cnn is not None:
                    margin = self.glare_cnn.margin(rows.loc[sunny, "path"].tolist(), device=recipe.device)
                else:
                    margin = self.glare.margin(recipe.frames(rows[sunny]))
                margin = margin + logit(self.face.threshold)
                out["fused"][sunny] = 1.0 / (1.0 + np.exp(-margin))
            out["routed_to_glare"] = sunny
        return out

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values (``torch.load(..., weights_only=True)`` reads it back)."""
        return {"estimator": None if self.estimator is None else self.estimator.state_dict(),
                "face": self.face.state_dict(), "glare": None if self.glare is None else self.glare.state_dict(),
                "glare_cnn": None if self.glare_cnn is None else self.glare_cnn.state_dict(),
                "restoration_versions": dict(RESTORATION_VERSIONS) if self.estimator is not None else {},
                "face_mirror": bool(self.mirror)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "GenderFaceModel":
        from facecom_utils.gender.glare import GlareCNN

        est, glare, cnn = state.get("estimator"), state.get("glare"), state.get("glare_cnn")
        if est is not None:
            check_restoration_versions(state.get("restoration_versions"), "this run's Task A face model")
        return cls(None if est is None else DistortionEstimator.from_state_dict(est),
                   LinearHead.from_state_dict(state["face"]),
                   None if glare is None else LinearHead.from_state_dict(glare),
                   glare_cnn=None if cnn is None else GlareCNN.from_state_dict(cnn),
                   mirror=bool(state.get("face_mirror", False)))  # runs from before the setting: plain


def fit_gender_face(rows: pd.DataFrame, recipe: FaceHeadRecipe, n_boot: int = 0) -> GenderFaceModel:
    """Fits everything on ``rows`` (training persons only) and chooses both thresholds out of fold.

    1. The selector: :class:`DistortionEstimator` on the rows' pixels and image types.
    2. The face head on the restored descriptors of clean images and copies (copies of one image
       share ``distorted_weight``); its threshold from person-grouped out-of-fold probabilities of
       the clean images (:func:`threshold_from_oof`, ``recipe.k`` folds).
    3. With ``glare_expert``: a head on whole-frame features of the ``sunny`` copies, its threshold
       out of fold on them too; with ``glare_cnn`` also the fine-tuned glare CNN on the same copies
       (its threshold on a held-out fifth of their persons, or out of fold over all of them with several
       cross-fitted members), which then takes the routed images.
    """
    y, persons = female_labels(rows), rows["person"].to_numpy()
    estimator = None
    q = None
    if recipe.restore:
        q = recipe.quality(rows)
        estimator = DistortionEstimator.fit(q, rows["kind"].tolist(), seed=recipe.seed)
    X = recipe.descriptors(rows, estimator, q)
    mirror = bool(getattr(recipe.store, "mirror", False))  # recorded with the model: predictions read the same
    w = copy_weights(rows, recipe.distorted_weight)
    keep = w > 0
    X, y, persons, w, clean = X[keep], y[keep], persons[keep], w[keep], (rows["kind"] == "clean").to_numpy()[keep]
    if usable_folds(persons, y, recipe.k) < 2:
        raise ValueError("the face-model tracks need at least two training persons of each label "
                         "(their thresholds are chosen out of fold)")
    prob = oof_linear(X, y, persons, w, recipe.C, recipe.k, 1, recipe.seed)
    oof = threshold_from_oof(y[clean], prob[:, clean], persons[clean], n_boot=n_boot, seed=recipe.seed)
    face = fit_linear(X, y, w, recipe.C, recipe.seed).with_threshold(oof["threshold"])
    glare = None
    if recipe.glare_expert and recipe.restore:
        sunny = (rows["kind"] == "sunny").to_numpy()
        y_s, p_s = female_labels(rows)[sunny], rows["person"].to_numpy()[sunny]
        if sunny.any() and usable_folds(p_s, y_s, recipe.k) >= 2:
            F = recipe.frames(rows[sunny])
            g_oof = threshold_from_oof(y_s, oof_linear(F, y_s, p_s, None, recipe.C, recipe.k, 1, recipe.seed), p_s,
                                       n_boot=0)
            glare = fit_linear(F, y_s, None, recipe.C, recipe.seed).with_threshold(g_oof["threshold"])
            oof["glare_threshold"] = g_oof["threshold"]
            if recipe.glare_cnn:
                from facecom_utils.gender.glare import GlareDataError, fit_glare_cnn

                try:
                    cnn = fit_glare_cnn(rows.loc[sunny, "path"].tolist(), y_s, p_s, image_size=recipe.glare_cnn_size,
                                        epochs=recipe.glare_cnn_epochs, seed=recipe.seed, device=recipe.device,
                                        channels_last=recipe.channels_last, members=recipe.glare_cnn_members)
                except GlareDataError as err:  # too few persons of a label for its held-out or cross-fitted parts: keep the glare head
                    warnings.warn(f"glare CNN not fitted ({err}); glare images go to the frame head", stacklevel=2)
                    oof["glare_cnn"] = {"skipped": str(err)}
                else:
                    oof["glare_cnn"] = cnn.info | {"threshold": cnn.threshold}
                    return GenderFaceModel(estimator, face, glare, oof, cnn, mirror=mirror)
    return GenderFaceModel(estimator, face, glare, oof, mirror=mirror)


def score_rows(rows: pd.DataFrame, prob: np.ndarray, threshold: float) -> dict[str, Any]:
    """Metrics of one scored set: clean images (headline) and each distortion type's copies."""
    y = female_labels(rows)
    kinds = rows["kind"].to_numpy()
    clean = kinds == "clean"
    out = binary_metrics(y[clean], prob[clean], threshold, CLASS_NAMES)
    out["per_distortion"] = {
        kind: binary_metrics(y[kinds == kind], prob[kinds == kind], threshold, CLASS_NAMES)["balanced_accuracy"]
        for kind in sorted(set(kinds) - {"clean"})}
    if out["per_distortion"]:
        out["worst_distortion"] = min(out["per_distortion"], key=out["per_distortion"].get)
        out["worst_distortion_balanced_accuracy"] = out["per_distortion"][out["worst_distortion"]]
    return out


def cross_validate(rows: pd.DataFrame, recipe: FaceHeadRecipe, k: int = 5, repeats: int = 3, seed: int = 0,
                   on_fold: Callable[[int, dict[str, Any]], None] | None = None) -> pd.DataFrame:
    """Repeated person-grouped CV of the whole recipe, every choice inside each fold's training part.

    For each outer fold, :func:`fit_gender_face` fits the selector, the heads and their
    out-of-fold thresholds on the training persons only; the test persons are then scored clean
    and per distortion type on their real copies, for the face head and the fused (routed) track.

    The fine-tuned glare CNN is not refitted per fold (too slow for a notebook on a CPU): with
    ``recipe.glare_cnn`` the fused row is the glare *head*'s routing and is named
    ``fused_glare_head``; ``experiments/cv_notebooks.py`` estimates the shipped fused track.

    Returns:
        One row per fold and track: ``track``, ``repeat``, ``fold``, ``threshold``, the clean
        metrics and ``bal_acc_<type>`` per distortion type.
    """
    fused_name = "fused_glare_head" if recipe.glare_cnn else "fused"
    recipe = dataclasses.replace(recipe, glare_cnn=False)
    clean = (rows["kind"] == "clean").to_numpy()
    base = rows[clean]
    k = usable_folds(base["person"].to_numpy(), female_labels(base), k)
    folds = grouped_folds(base["person"].to_numpy(), female_labels(base), k, repeats, seed)
    out = []
    log = ProgressLog(len(folds), "face-head CV folds")
    for i, (tr, te) in enumerate(folds):
        train = rows[rows["person"].isin(set(base["person"].iloc[tr]))]
        test = rows[rows["person"].isin(set(base["person"].iloc[te]))]
        model = fit_gender_face(train, recipe)
        scores = model.scores(test, recipe)
        tracks = {"face": scores["face"]}
        if model.glare is not None:
            tracks[fused_name] = scores["fused"]
        for track, prob in tracks.items():
            m = score_rows(test, prob, model.face.threshold)
            row = {"track": track, "repeat": i // k, "fold": i % k, "threshold": model.face.threshold,
                   **{key: m[key] for key in ("balanced_accuracy", "recall_female", "recall_male", "accuracy", "roc_auc")},
                   **{f"bal_acc_{t}": v for t, v in m["per_distortion"].items()}}
            if "per_distortion" in m and m["per_distortion"]:
                row["worst_type_bal_acc"] = min(m["per_distortion"].values())
            if on_fold is not None:
                on_fold(i, row)
            out.append(row)
        log.update(detail=f"repeat {i // k + 1}/{repeats}")
    log.close()
    return pd.DataFrame(out)


def summarise_folds(folds: pd.DataFrame) -> pd.DataFrame:
    """Mean, SD and mean - SD of every metric over the folds: one row per (track, metric)."""
    cols = [c for c in folds.columns if c not in ("repeat", "fold", "track")]
    groups = folds.groupby("track") if "track" in folds.columns else [("all", folds)]
    parts = []
    for track, part in groups:
        stats = part[cols].agg(["mean", "std"]).T
        stats["mean_minus_sd"] = stats["mean"] - stats["std"]
        stats.index = pd.MultiIndex.from_product([[track], stats.index], names=["track", "metric"])
        parts.append(stats)
    return pd.concat(parts)


# ----------------------------------------------------------------------------- the notebook's stage

#: The tracks of Task A's metrics.json, in display order (``face_model_restored`` is the face head
#: behind the restoration selector; ``fused`` routes glare images to the glare expert; ``stacked`` decides
#: the other images by a stacker over the CNN, the face head and the quality signals: :mod:`~facecom_utils.gender.stacking`).
TRACKS: tuple[str, ...] = ("facecom_only", "face_model_restored", "fused", "stacked")
TRACK_PREDICTIONS = "track_predictions.csv"
"""The run folder's table of every reported row's P(female) per track (``path, label, person, kind, prob_<track>, routed_to_glare``)."""
TRACK_KEYS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "f1_macro", "precision_female", "recall_female",
                               "recall_male", "f1_female", "roc_auc", "average_precision", "brier",
                               "confusion_matrix", "threshold", "n", "n_positive")


def sample_copies(rows: pd.DataFrame, copies: int | None, seed: int,
                  keep_kinds: Sequence[str] = ("sunny",)) -> pd.DataFrame:
    """All clean rows, every copy of a ``keep_kinds`` type, and at most ``copies`` other copies per image.

    Seeded; None keeps every copy. Sunny copies are all kept by default: they alone train the glare
    head (and give the worst type's estimate its full sample).
    """
    if copies is None:
        return rows
    clean = rows[rows["kind"] == "clean"]
    kept = rows[rows["kind"].isin(list(keep_kinds))]
    dist = rows[(rows["kind"] != "clean") & ~rows["kind"].isin(list(keep_kinds))].sample(frac=1.0, random_state=seed)
    return pd.concat([clean, kept, dist.groupby("image", sort=False).head(int(copies))]).sort_index()


@dataclass
class GenderTracks:
    """Stage 5 of notebook 02: the face-model tracks beside the FACECOM-only CNN.

    Attributes:
        train_rows, report_rows: Rows (clean images and real distorted copies) of the training
            persons and of the reported split.
        model: The fitted :class:`GenderFaceModel` (selector, heads, thresholds).
        cv: One row per outer fold and track (:func:`cross_validate`); empty when ``face_cv_repeats=0``.
        predictions: Per report row: ``path``, ``label``, ``kind``, ``prob_<track>``, ``routed_to_glare``.
        tracks: ``{track: metrics}`` (the :data:`TRACK_KEYS` on clean images, ``per_distortion`` on the real copies).
        headline: The track written at the top of metrics.json.
        selector: Per type: how often the selector chose that type's restoration on the reported split.
    """

    train_rows: pd.DataFrame
    report_rows: pd.DataFrame
    model: GenderFaceModel
    cv: pd.DataFrame
    predictions: pd.DataFrame
    tracks: dict[str, dict[str, Any]]
    headline: str
    selector: pd.DataFrame
    stacker: Any = None

    def cv_summary(self) -> pd.DataFrame:
        """Mean, SD and mean - SD over the folds per track and metric."""
        return summarise_folds(self.cv) if len(self.cv) else pd.DataFrame()

    def side_by_side(self) -> pd.DataFrame:
        """Tracks as columns: the headline metrics on clean images and balanced accuracy per real distortion type."""
        rows = {}
        for name, m in self.tracks.items():
            col = {k: m.get(k) for k in ("balanced_accuracy", "recall_female", "recall_male", "accuracy", "roc_auc",
                                         "threshold")}
            col.update({f"bal. acc. {t}": v for t, v in m.get("per_distortion", {}).items()})
            rows[name + (" (headline)" if name == self.headline else "")] = col
        return pd.DataFrame(rows)


def face_head_recipe(config: Any, device: str = "cpu") -> FaceHeadRecipe:
    """The face-model tracks' :class:`FaceHeadRecipe` of a :class:`~facecom_utils.gender.pipeline.GenderConfig`
    (its descriptor store and feature caches under the config's cache folder)."""
    from facecom_utils.data.cache import default_cache_dir
    from facecom_utils.face.descriptors import DescriptorStore

    cfg = config
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    workers = cfg.face_workers or max(1, min(4, os.cpu_count() or 1))
    store = DescriptorStore(cache / "face_model", workers=workers, progress=cfg.progress, mirror=cfg.face_mirror)
    return FaceHeadRecipe(store, restore=True, glare_expert=True, glare_cnn=bool(cfg.face_glare_cnn),
                          glare_cnn_size=cfg.face_glare_cnn_size, glare_cnn_epochs=cfg.face_glare_cnn_epochs,
                          glare_cnn_members=cfg.face_glare_cnn_members, channels_last=bool(cfg.channels_last),
                          device=device, feature_cache=cache / "face_model", workers=workers, k=cfg.face_cv_folds,
                          seed=cfg.seed)


def track_rows(config: Any, splits: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(training rows, reported rows)`` of the face-model tracks: the training persons (training part and
    validation fold) with up to ``config.face_copies`` real distorted copies per image, and the reported
    split with all of its copies."""
    root = splits.data_root
    train_persons = pd.concat([splits.train, splits.fold], ignore_index=True)
    train_rows = sample_copies(with_distorted_copies(train_persons, root, "train"), config.face_copies, config.seed)
    report_folder = "train" if splits.report_split == "heldout_from_train" else splits.report_split
    report_rows = with_distorted_copies(splits.report, root, report_folder).reset_index(drop=True)
    return train_rows.reset_index(drop=True), report_rows


def gender_tracks(config: Any, splits: Any, run: Any) -> GenderTracks:
    """Stage 5: fits the face-model tracks on the training persons and reports every track.

    The training persons (training part and validation fold of :func:`~facecom_utils.gender.pipeline.gender_splits`)
    with up to ``config.face_copies`` real distorted copies per image train the selector and the
    heads; both thresholds come from person-grouped out-of-fold probabilities over all of them
    (never from the reported split). ``config.face_cv_repeats`` x ``config.face_cv_folds``
    cross-validation estimates every track on unseen persons first. The reported split is then
    scored clean and on its real copies by every track, the CNN included (its own fold threshold).
    """
    from facecom_utils.gender.pipeline import predict_proba
    from facecom_utils.train.rundir import RunDir

    cfg = config
    recipe = face_head_recipe(cfg, str(next(run.model.parameters()).device))
    train_rows, report_rows = track_rows(cfg, splits)
    train_persons = pd.concat([splits.train, splits.fold], ignore_index=True)
    clean_train = train_rows[train_rows["kind"] == "clean"]
    can_cv = usable_folds(clean_train["person"].to_numpy(), female_labels(clean_train), cfg.face_cv_folds) >= 3
    if cfg.face_cv_repeats and not can_cv:
        print("face-model CV skipped: it needs at least three training persons of each label")
    cv = (cross_validate(train_rows, recipe, k=cfg.face_cv_folds, repeats=cfg.face_cv_repeats, seed=cfg.seed)
          if cfg.face_cv_repeats and can_cv else pd.DataFrame())
    model = fit_gender_face(train_rows, recipe, n_boot=1000)
    scores = model.scores(report_rows, recipe)
    cnn = run.probabilities.set_index("path")["prob"]
    copies = report_rows["kind"] != "clean"
    cnn_prob = np.array(report_rows["path"].map(cnn).to_numpy(dtype=np.float64), copy=True)
    if copies.any():
        cnn_prob[copies.to_numpy()] = predict_proba(run.model, report_rows.loc[copies, "path"].tolist(), cfg.image_size,
                                                    cfg.eval_batch_size, next(run.model.parameters()).device, cfg.tta)
    q = recipe.quality(report_rows)
    stacker, stacked = _stacked_track(train_rows, splits, recipe, model, run, cfg, report_rows, scores, cnn_prob, q)
    predictions = report_rows[["path", "label", "person", "kind"]].assign(
        prob_facecom_only=cnn_prob, prob_face_model_restored=scores["face"], prob_fused=scores["fused"],
        **({"prob_stacked": stacked} if stacker is not None else {}),
        routed_to_glare=scores.get("routed_to_glare", np.zeros(len(report_rows), bool)))
    thresholds = {"facecom_only": run.threshold, "face_model_restored": model.face.threshold,
                  "fused": model.face.threshold, "stacked": None if stacker is None else stacker.threshold}
    tracks = _score_tracks(report_rows, predictions, thresholds)
    tracks["facecom_only"]["threshold_source"] = "the CNN's validation fold"
    for name in ("face_model_restored", "fused"):
        tracks[name]["threshold_source"] = f"out-of-fold over all {len(train_persons)} training images"
        tracks[name]["outside_face_data"] = True
    if model.glare_cnn is not None:
        tracks["fused"]["glare_threshold_source"] = (
            f"the glare CNN: {model.glare_cnn.info.get('threshold_source', 'held-out persons')} "
            "(training persons with sunny copies, each person weighing the same)")
    elif model.glare is not None:
        tracks["fused"]["glare_threshold_source"] = "out-of-fold over the training persons' sunny copies"
    tracks["face_model_restored"]["oof"] = {k: model.oof[k] for k in ("recall_female_ci", "balanced_accuracy_ci")}
    tracks["face_model_restored"]["oof"].update({k: model.oof["oof"][k] for k in ("balanced_accuracy", "recall_female")})
    if stacker is not None:
        tracks["stacked"].update(outside_face_data=True, stacker=stacker.info, threshold_source=(
            "out-of-fold over the stacker's own rows: the CNN's validation-fold persons and their copies"))
    headline = "fused" if cfg.headline_track == "auto" else cfg.headline_track
    if headline not in tracks:
        raise ValueError(f"headline_track must be 'auto' or one of {list(tracks)}, got {cfg.headline_track!r}")
    chosen = np.asarray(model.estimator.restorations(q))
    wanted = np.array([RESTORATION_FOR.get(k, "identity") for k in report_rows["kind"]])
    selector = (pd.DataFrame({"type": report_rows["kind"], "right restoration": chosen == wanted,
                              "estimated type correct": model.estimator.predict(q) == report_rows["kind"].to_numpy()})
                .groupby("type").mean())
    out = GenderTracks(train_rows, report_rows, model, cv, predictions, tracks, headline, selector, stacker)
    _write_tracks(RunDir(cfg.output_dir), run, out, cfg, splits.data_root)
    return out


def _score_tracks(rows: pd.DataFrame, predictions: pd.DataFrame, thresholds: dict[str, float | None]) -> dict[str, Any]:
    """Each track's clean metrics (:data:`TRACK_KEYS`) and per-type balanced accuracy; tracks without predictions are left out."""
    tracks = {}
    for name in TRACKS:
        if f"prob_{name}" not in predictions or thresholds.get(name) is None:
            continue
        m = score_rows(rows, predictions[f"prob_{name}"].to_numpy(), thresholds[name])
        tracks[name] = {**{k: m[k] for k in TRACK_KEYS}, "per_distortion": m["per_distortion"],
                        **{k: m[k] for k in ("worst_distortion", "worst_distortion_balanced_accuracy") if k in m}}
    return tracks


def _stacked_track(train_rows: pd.DataFrame, splits: Any, recipe: FaceHeadRecipe, model: GenderFaceModel, run: Any,
                   cfg: Any, report_rows: pd.DataFrame, scores: dict[str, np.ndarray], cnn_prob: np.ndarray,
                   quality: np.ndarray) -> tuple[Any, np.ndarray | None]:
    """The stacker (fitted on the CNN's validation-fold persons, every input out of sample for them) and the
    reported rows' ``stacked`` P(female); ``(None, None)`` with a note when the fold is too small."""
    from facecom_utils.gender.pipeline import predict_proba
    from facecom_utils.gender.stacking import fit_stacked, stacked_probabilities

    device = next(run.model.parameters()).device
    try:
        stacker = fit_stacked(train_rows, set(splits.fold["person"]), recipe, route_glare=model.glare is not None,
                              cnn_predict=lambda paths: predict_proba(run.model, paths, cfg.image_size,
                                                                      cfg.eval_batch_size, device, cfg.tta))
    except ValueError as err:
        print(f"stacked track skipped: {err}")
        return None, None
    return stacker, stacked_probabilities(stacker, model, cnn_prob, scores, quality)


def _write_tracks(rundir: Any, run: Any, tracks: GenderTracks, cfg: Any, root: Path) -> None:
    """``face_tracks.pt`` (weights_only-loadable) and metrics.json with ``tracks`` and the headline on top
    (:meth:`~facecom_utils.train.rundir.RunDir.write_tracks`)."""
    state = {"model": tracks.model.state_dict(), "cnn_threshold": float(run.threshold),
             "stacker": None if tracks.stacker is None else tracks.stacker.state_dict()}
    metrics = dict(run.metrics)
    cnn_synthetic = metrics.get("per_distortion")
    metrics["tracks"] = tracks.tracks
    metrics["tracks"]["facecom_only"]["per_synthetic_distortion"] = cnn_synthetic
    if len(tracks.cv):
        summary = tracks.cv_summary()
        metrics["cv"] = {f"{t}/{m}": {"mean": r["mean"], "sd": r["std"], "mean_minus_sd": r["mean_minus_sd"]}
                         for (t, m), r in summary.iterrows()}
        metrics["cv_protocol"] = (f"{cfg.face_cv_repeats} x {cfg.face_cv_folds}-fold person-grouped CV of the training "
                                  "persons; selector, heads and thresholds fitted inside each fold's training part"
                                  + ("; the fine-tuned glare CNN is not refitted per fold: fused_glare_head routes "
                                     "glare to the glare head instead" if cfg.face_glare_cnn else ""))
    head = tracks.tracks[tracks.headline]
    metrics.update({k: head[k] for k in TRACK_KEYS if k in head})
    metrics["per_distortion"] = head["per_distortion"]
    metrics["per_distortion_source"] = "real distorted copies (Task_B distortion folders)"
    run.metrics.update(rundir.write_tracks("gender", tracks.headline, state, metrics, cfg, root))
    run.metrics_path = rundir.metrics_path
    table = rundir.path / TRACK_PREDICTIONS  # per reported image and copy, every track: the CV breakdowns read it
    partial = table.with_name(table.name + ".partial")
    tracks.predictions.to_csv(partial, index=False)
    partial.replace(table)


def run_gender_tracks(config: Any, splits: Any, run: Any) -> GenderTracks | None:
    """:func:`gender_tracks` when ``config.face_model`` asks for it and dlib is installed, else None (with a note).

    Raises:
        ImportError: ``face_model=True`` without dlib / face-recognition-models.
    """
    if not face_tracks_wanted(config.face_model, "the FACECOM-only CNN"):
        return None
    persons = pd.concat([splits.train, splits.fold])
    if usable_folds(persons["person"].to_numpy(), female_labels(persons), 2) < 2:
        print("face-model tracks skipped: their out-of-fold thresholds need at least two training persons of "
              "each label")
        return None
    return gender_tracks(config, splits, run)


def train_gender_with_tracks(config: Any) -> Any:
    """What notebook 02 computes, in one call (``facecom train-gender`` runs it): the FACECOM-only CNN's stages
    (:func:`~facecom_utils.gender.pipeline.train_gender_stages`), then the face-model tracks
    (:func:`run_gender_tracks`), which put the headline track on top of ``metrics.json`` and write
    ``face_tracks.pt``. Under torchrun the tracks run on rank 0 only, as a one-process run (:func:`~facecom_utils.common.distributed.then_on_rank_zero`).

    Args:
        config: A :class:`~facecom_utils.gender.pipeline.GenderConfig`.

    Returns:
        The CNN's :class:`~facecom_utils.gender.pipeline.GenderRun` (the run folder holds the tracks).
    """
    from facecom_utils.common.distributed import then_on_rank_zero
    from facecom_utils.gender.pipeline import train_gender_stages

    return then_on_rank_zero(train_gender_stages, run_gender_tracks, config)


# ----------------------------------------------------------------------------- a run directory's headline track


def load_run_tracks(run_dir: str | Path) -> tuple[str, GenderFaceModel | None, Path]:
    """``(headline track, its face model or None, best.pt)`` of a notebook 02 / train-gender run directory.

    Raises:
        FileNotFoundError: The folder has neither ``face_tracks.pt`` nor ``checkpoints/best.pt``.
        ValueError: Its ``face_tracks.pt`` is truncated or not Task A's (:meth:`~facecom_utils.train.rundir.RunDir.load_tracks`).
    """
    from facecom_utils.train.rundir import RunDir

    rundir = RunDir(run_dir)
    payload = rundir.load_tracks("gender")
    if payload is None:
        if not rundir.best_checkpoint.is_file():
            raise FileNotFoundError(f"{rundir.path}: not a Task A run directory (no face_tracks.pt, no checkpoints/best.pt)")
        return "facecom_only", None, rundir.best_checkpoint
    return str(payload["headline"]), GenderFaceModel.from_state_dict(payload["model"]), rundir.best_checkpoint


def load_run_stacker(run_dir: str | Path) -> Any:
    """The :class:`~facecom_utils.gender.stacking.Stacker` of a run folder's ``face_tracks.pt``.

    Raises:
        ValueError: The run has no stacker (an older run, or a validation fold too small to fit one).
    """
    from facecom_utils.gender.stacking import Stacker
    from facecom_utils.train.rundir import RunDir

    rundir = RunDir(run_dir)
    payload = rundir.load_tracks("gender")
    if payload is None or payload.get("stacker") is None:
        raise ValueError(f"{rundir.tracks_path}: no stacked track in this run (retrain it with this version)")
    return Stacker.from_state_dict(payload["stacker"])


def _headline_scores(run_dir: str | Path, rows: pd.DataFrame, cache_dir: str | Path | None,
                     device: str) -> tuple[np.ndarray, float, str]:
    from facecom_utils.data.cache import default_cache_dir
    from facecom_utils.face.descriptors import DescriptorStore
    from facecom_utils.gender.pipeline import predict_gender

    headline, model, best = load_run_tracks(run_dir)
    if model is None or headline == "facecom_only":
        table = predict_gender(best, rows["path"].tolist(), device=device)
        from facecom_utils.common.checkpoints import load_checkpoint

        return table["prob"].to_numpy(), float(load_checkpoint(best).get("threshold", 0.5)), "facecom_only"
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    workers = max(1, min(4, os.cpu_count() or 1))
    from facecom_utils.train.fit import select_device

    recipe = FaceHeadRecipe(DescriptorStore(cache / "face_model", workers=workers, mirror=model.mirror),
                            restore=model.estimator is not None,
                            glare_expert=model.glare is not None, feature_cache=cache / "face_model", workers=workers,
                            device=str(select_device(device)))
    scores = model.scores(rows, recipe)
    if headline == "stacked":
        from facecom_utils.gender.stacking import stacked_probabilities

        from facecom_utils.common.checkpoints import load_checkpoint

        stacker = load_run_stacker(run_dir)
        tta = bool(load_checkpoint(best).get("config", {}).get("tta", True))  # as the notebook predicted
        cnn = predict_gender(best, rows["path"].tolist(), device=device, tta=tta)["prob"].to_numpy()
        return stacked_probabilities(stacker, model, cnn, scores, recipe.quality(rows)), stacker.threshold, headline
    return scores["fused" if headline == "fused" else "face"], model.face.threshold, headline


def predict_with_run(run_dir: str | Path, paths: Sequence[str | Path], cache_dir: str | Path | None = None,
                     device: str = "auto") -> tuple[pd.DataFrame, float, str]:
    """P(female) of images by a run's headline track: ``(table path/prob/pred, threshold, track)``."""
    rows = pd.DataFrame({"path": [str(p) for p in paths]})
    prob, threshold, track = _headline_scores(run_dir, rows, cache_dir, device)
    return rows.assign(prob=prob, pred=predicted_labels(prob, threshold)), threshold, track


def evaluate_with_run(run_dir: str | Path, data_root: str | Path, split: str = "val",
                      cache_dir: str | Path | None = None, device: str = "auto") -> dict[str, Any]:
    """A run's headline track on ``Task_A/<split>``: clean metrics and balanced accuracy per real distortion type.

    The real distorted copies come from ``Task_B/<split>`` when it exists (as in notebook 02).
    """
    from facecom_utils.data.layout import scan_task_a

    rows = with_distorted_copies(scan_task_a(data_root, splits=(split,)), data_root, split)
    prob, threshold, track = _headline_scores(run_dir, rows, cache_dir, device)
    m = score_rows(rows, prob, threshold)
    m.update(track=track, split=split, n_images=int((rows["kind"] == "clean").sum()),
             n_distorted=int((rows["kind"] != "clean").sum()), run_dir=str(run_dir))
    return m
