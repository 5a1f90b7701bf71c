"""Task A's glare expert: a small CNN fine-tuned on FACECOM's real *sunny* copies.

FACECOM's ``sunny`` distortion saturates the centre of the crop to white (on 250 training pairs,
86 % of the central face pixels are 255): the face that dlib's descriptor and the face head read is
gone, while hair, outline and the edges of the face remain. A logistic regression on frozen
ImageNet features of the whole frame (the glare *head* of :mod:`facecom_utils.gender.tracks`)
reads some of that; fine-tuning the whole network on the training persons' real sunny copies
reads more of it.

One network with its threshold chosen on a held-out fifth of the training persons (about 20 women
on a FACECOM fold) was unstable: on 3 person-disjoint folds of the training split that threshold
ranged from 0.07 to 0.47, and on one fold it found 46 % of the unseen women's sunny copies where
the best threshold would have given 0.82 balanced accuracy. The shipped presets therefore
cross-fit an ensemble (``members=3``): each network trains on two thirds of the persons and
predicts the third it never saw, so the threshold is chosen on out-of-fold predictions of *every*
training person, and P(female) is the members' mean. On the same 3 folds (``experiments/cv_glare.py``)
balanced accuracy on unseen people's sunny copies went from 0.786 ± 0.069 (one network, 6 epochs;
ROC AUC 0.887) to 0.833 ± 0.017 with the presets' 3 members x 4 epochs (AUC 0.915; 0.834 ± 0.037
with 6 epochs each, at 1.6x the time); the README has these and the notebook-level figures.
Those came from the expert's own training loop; it now trains through the project's fit loop
(:func:`~facecom_utils.train.fit.fit`), which on 3 person-disjoint folds of the training split gave
0.826 ± 0.011 (AUC 0.905 ± 0.022) with the presets' setting where the old loop gave 0.836 ± 0.036
(AUC 0.913 ± 0.039) on the same folds and seed (per fold -0.044, +0.014, -0.001; with seed 1 on the
first fold 0.849 against 0.842: differences of the size of a change of seed).

This is FACECOM-only knowledge (ImageNet initialisation, FACECOM images and labels; no face
data). Every threshold maximises balanced accuracy with every person weighing the same (one
FACECOM person has 236 images); the number of epochs is fixed, so nothing else is chosen on data.

Example:
    >>> cnn = fit_glare_cnn(paths, labels, persons, image_size=128, epochs=6, members=3)   # doctest: +SKIP
    >>> cnn.probabilities(new_sunny_paths)                                                # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facecom_utils.data.splits import person_folds, usable_folds
from facecom_utils.metrics.classification import logit

__all__ = ["GlareCNN", "GlareDataError", "fit_glare_cnn", "held_out_persons", "person_balanced_accuracy",
           "person_balanced_threshold", "person_weights", "sampling_weights"]


class GlareDataError(ValueError):
    """Too few images or persons of a label to fit the glare CNN and hold its threshold's persons out."""


@dataclass
class GlareCNN:
    """One or more fine-tuned :class:`~facecom_utils.nn.backbones.GenderClassifier` networks and one threshold.

    With several members (:func:`fit_glare_cnn` with ``members >= 2``) P(female) is the mean of the
    members' probabilities and the threshold comes from their out-of-fold predictions over every
    training person; with one, the threshold comes from a held-out fifth of the persons.

    Attributes:
        models: The networks (images -> logit of "female").
        threshold: P(female) at or above which an image is called female.
        image_size: Input side.
        info: How it was fitted (images, persons, held-out or out-of-fold metrics, seconds).
    """

    models: list[Any]
    threshold: float
    image_size: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> Any:
        """The first member (the only one of a single-network glare CNN)."""
        return self.models[0]

    def probabilities(self, paths: Sequence[str | Path], batch_size: int = 64, device: Any = None) -> np.ndarray:
        """P(female) of image files: per member the mean logit of the image and its mirror, then the members' mean probability."""
        from facecom_utils.gender.pipeline import predict_proba

        if len(paths) == 0:
            return np.zeros(0)
        return predict_proba(self.models, [str(p) for p in paths], self.image_size, batch_size, device, tta=True)

    def margin(self, paths: Sequence[str | Path], **kwargs: Any) -> np.ndarray:
        """``logit(P(female)) - logit(threshold)``: positive means female."""
        return logit(self.probabilities(paths, **kwargs), eps=1e-6) - logit(self.threshold)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values (``torch.load(..., weights_only=True)`` reads it back)."""
        return {"members": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in self.models],
                "model_config": dict(self.model.model_config), "threshold": float(self.threshold),
                "image_size": int(self.image_size), "info": dict(self.info)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "GlareCNN":
        """Reads :meth:`state_dict` (and the single-network ``weights`` of runs saved before ensembles)."""
        from facecom_utils.nn.backbones import GenderClassifier

        cfg = state["model_config"]
        models = []
        for weights in state["members"] if "members" in state else [state["weights"]]:
            model = GenderClassifier(cfg["backbone"], pretrained=None, dropout=float(cfg.get("dropout", 0.2)),
                                     image_size=cfg.get("image_size"))
            model.load_state_dict(weights)
            models.append(model.eval())
        return cls(models, float(state["threshold"]), int(state["image_size"]), dict(state.get("info", {})))


def _load(paths: Sequence[str], image_size: int) -> Any:
    """Eval-transformed images as one float16 tensor ``[N, 3, S, S]`` (as :func:`~facecom_utils.gender.pipeline.predict_proba` sees them)."""
    import torch

    from facecom_utils.data.layout import load_image
    from facecom_utils.data.datasets import build_transforms

    tf = build_transforms(image_size, train=False)
    return torch.stack([tf(load_image(p)) for p in paths]).half()


def synthetic_glare(sources: Sequence[str], image_size: int, copies: int, seed: int) -> Any:
    """``copies`` renderings of the project's ``sunny`` distortion (:func:`~facecom_utils.data.distortions.apply_distortion`)
    of each of ``sources`` (clean photos), eval-transformed: float16 ``[len(sources) * copies, 3, S, S]``, the
    copies of ``sources[0]`` first. Rendering ``(j, c)`` is seeded by ``(seed, j, c)``."""
    import torch

    from facecom_utils.data.datasets import build_transforms
    from facecom_utils.data.distortions import apply_distortion
    from facecom_utils.data.layout import load_image

    tf = build_transforms(image_size, train=False)
    return torch.stack([tf(apply_distortion(load_image(p), "sunny", rng=np.random.default_rng([seed, j, c])))
                        for j, p in enumerate(sources) for c in range(copies)]).half()


def held_out_persons(persons: Sequence[str], labels: Sequence[int], k: int = 5,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(fit_idx, held_idx)`` of images: the first of ``k`` label-stratified parts of the *persons* is held out.

    :func:`~facecom_utils.data.splits.person_folds`: about 1/k of each label's persons whatever their
    numbers of images (an image-balanced group fold held out 26 of 584 persons on a FACECOM fold);
    ``k`` is lowered to the rarer label's number of persons when that is smaller.
    """

    return person_folds(persons, labels, k, 1, seed)[0]


def person_weights(persons: Sequence[str]) -> np.ndarray:
    """``1 / (the person's number of images)`` per image: every person's images sum to 1."""
    persons = pd.Series(np.asarray(persons))
    return 1.0 / persons.map(persons.value_counts()).to_numpy(np.float64)


def sampling_weights(y: Sequence[int], persons: Sequence[str]) -> np.ndarray:
    """Per-image sampling weights: every person the same total (within their label), both labels the same.

    :func:`person_weights`, normalised so that each label sums to 1 (a person whose images carry both
    labels splits their share between the labels).
    """
    y = np.asarray(y, np.int64)
    w = person_weights(persons)
    for label in (0, 1):
        if (y == label).any():
            w[y == label] /= w[y == label].sum()
    return w


def _both_labels(y: Sequence[int]) -> None:
    if len(set(np.asarray(y).tolist())) < 2:
        raise ValueError("a balanced accuracy needs images of both labels")


def person_balanced_accuracy(y: Sequence[int], prob: Sequence[float], persons: Sequence[str],
                             thresholds: Sequence[float] | float) -> np.ndarray | float:
    """Balanced accuracy of ``prob >= threshold`` with every *person* weighing the same, per threshold.

    :func:`~facecom_utils.metrics.classification.threshold_criterion` with :func:`person_weights`; a scalar
    threshold gives a float.
    """
    from facecom_utils.metrics.classification import threshold_criterion

    _both_labels(y)
    score = threshold_criterion(y, np.asarray(prob, np.float64), np.atleast_1d(thresholds), "balanced_accuracy",
                                person_weights(persons))
    return float(score[0]) if np.ndim(thresholds) == 0 else score


def person_balanced_threshold(y: Sequence[int], prob: Sequence[float], persons: Sequence[str]) -> float:
    """The threshold on ``prob`` that maximises :func:`person_balanced_accuracy`.

    One person with hundreds of images (FACECOM's training split has one with 236) counts as one
    person, not as most of their label. :func:`~facecom_utils.metrics.classification.choose_threshold` with
    :func:`person_weights` (its candidates and tie rule: closest to 0.5, the lower on an exact tie).
    Predict female when ``prob >= threshold``.
    """
    from facecom_utils.metrics.classification import choose_threshold

    _both_labels(y)
    return choose_threshold(y, np.asarray(prob, np.float64), "balanced_accuracy", sample_weight=person_weights(persons))


def _train_network(X: Any, y: np.ndarray, persons: np.ndarray, *, image_size: int, epochs: int, batch_size: int,
                   lr: float, seed: int, device: Any, backbone: str, pretrained: str | None, label_smoothing: float,
                   max_seconds: float | None, channels_last: bool, init: Any = None) -> tuple[Any, Any]:
    """Fine-tunes one network on ``X`` (float16 ``[N, 3, S, S]``) with :func:`~facecom_utils.train.fit.fit`.

    The recipe: AdamW (weight decay 1e-4 on weights, none on biases and norms: fit's groups), a linear
    warm-up over the first 15 % of the steps then cosine annealing to 4e-6 x ``lr`` (one-cycle's end
    point), :func:`sampling_weights` drawn with replacement (one epoch: as many draws as images),
    a random mirror per image, label-smoothed binary cross-entropy; mixed precision on CUDA. Every
    epoch is trained (no early stopping, the last epoch is kept): nothing is chosen on data.

    Args:
        X, y, persons: The images, 1 = female, and each image's person.
        image_size, epochs, batch_size, lr, seed, device, backbone, pretrained, label_smoothing,
            channels_last: As :func:`fit_glare_cnn` takes them (``seed`` seeds the head's initialisation
            and, through fit, every epoch's draws).
        max_seconds: Training budget: fit stops after the epoch when one more would exceed it.
        init: A :class:`~facecom_utils.nn.backbones.GenderClassifier` state dict of the same backbone (its
            weights must load) to start from instead of ``pretrained``'s weights; ``None``: ``pretrained``.

    Returns:
        ``(model in eval mode on device, fit's FitResult)``.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.data import TensorDataset

    from facecom_utils.data.cache import apply_speedups
    from facecom_utils.data.datasets import DistributedWeightedSampler, make_loader
    from facecom_utils.nn.backbones import GenderClassifier
    from facecom_utils.train.fit import TrainConfig, fit

    torch.manual_seed(seed)
    model = GenderClassifier(backbone, pretrained if init is None else None, image_size=image_size)
    if init is not None:
        model.load_state_dict(init)
    model = apply_speedups(model, channels_last)
    sampler = DistributedWeightedSampler(sampling_weights(y, persons), seed=seed)
    loader = make_loader(TensorDataset(X, torch.as_tensor(y, dtype=torch.float32)), batch_size, True, sampler)

    def loss_fn(m: Any, batch: tuple[Any, Any]) -> Any:
        x, target = batch
        flip = torch.rand(len(x), device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x).float()
        target = target * (1 - label_smoothing) + label_smoothing / 2
        return F.binary_cross_entropy_with_logits(m(x).float(), target)

    config = TrainConfig(epochs=epochs, lr=lr, weight_decay=1e-4, optimizer="adamw", warmup_epochs=0.15 * epochs,
                         min_lr_ratio=4e-6, patience=None, max_train_seconds=max_seconds, seed=seed,
                         device=str(device), resume=False, restore_best=False, progress=False)
    result = fit(model, loader, loss_fn, config=config)
    return model.eval(), result


def fit_glare_cnn(paths: Sequence[str | Path], labels: Sequence[int], persons: Sequence[str], image_size: int = 128,
                  epochs: int = 6, batch_size: int = 32, lr: float = 1e-3, holdout_folds: int = 5, seed: int = 0,
                  device: Any = "cpu", backbone: str = "efficientnet_lite0", pretrained: str | None = "offline",
                  label_smoothing: float = 0.05, max_minutes: float | None = None,
                  channels_last: bool = False, members: int = 1, sources: Sequence[str | Path] | None = None,
                  synthetic: int = 0, init: Any = None) -> GlareCNN:
    """Fine-tunes :class:`~facecom_utils.nn.backbones.GenderClassifier` networks on (sunny) images and chooses one threshold.

    Every network trains for ``epochs`` epochs through the project's fit loop
    (:func:`~facecom_utils.train.fit.fit`: AdamW, warm-up then cosine schedule, person- and
    class-balanced sampling (:func:`sampling_weights`), random mirror, label smoothing, mixed
    precision on CUDA; the recipe is :func:`_train_network`'s). The threshold maximises
    person-weighted balanced accuracy (:func:`person_balanced_threshold`) on predictions for persons
    the predicting network never saw:

    * ``members == 1``: the persons are split label-stratified into ``holdout_folds`` parts
      (:func:`held_out_persons`); one network trains on all but one part, the threshold comes from
      the held-out part (a fifth of the persons: on FACECOM's folds about 20 women, and the threshold
      it gave ranged from 0.07 to 0.47 across three folds).
    * ``members >= 2`` (a cross-fitted ensemble, by design): the persons are split label-stratified
      into ``members`` parts (:func:`~facecom_utils.data.splits.person_folds`); member ``i`` trains
      on every part but the ``i``-th and predicts that part, so each training person gets one
      out-of-fold probability and the threshold is chosen on all of them. The ensemble's P(female)
      is the mean of its members' probabilities.

    Args:
        paths, labels, persons: The training images, 1 = female, and each image's person.
        image_size, epochs, batch_size, lr, label_smoothing: Training settings per network (targets ``y(1-ls) + ls/2``).
        holdout_folds: With one member, one of this many person-grouped parts holds the threshold's persons.
        seed: Seeds the split, the sampling and the initialisation of the head (member ``i``: ``seed + i``).
        device: Where to train.
        backbone, pretrained: See :func:`~facecom_utils.nn.backbones.create_backbone` (``"offline"``: the
            ImageNet Lite0 weights that install from PyPI).
        max_minutes: Training budget in minutes, shared equally by the members (each stops after the
            epoch when one more epoch would exceed its share: fit's ``max_train_seconds``; loading the
            images and predicting held-out persons are not counted).
        channels_last: Channels-last weights (:func:`~facecom_utils.data.cache.apply_speedups`; about 1.35x
            faster training steps on a 2-core CPU, the same arithmetic up to float rounding).
        members: Networks in the ensemble (1: a single network and a held-out threshold).
        sources, synthetic: Each image's clean source photo, and how many renderings of the project's own
            ``sunny`` distortion of it (:func:`synthetic_glare`) are added to the training images of the
            members that train on its person (never predicted, so never in a threshold). 0: real copies only.
        init: A ``backbone`` :class:`~facecom_utils.nn.backbones.GenderClassifier` state dict every member starts
            from (``None``: ``pretrained``), e.g. notebook 02's CNN: the out-of-fold predictions the threshold is
            chosen on are then optimistic where it saw those persons' other photos.

    Raises:
        GlareDataError: Fewer persons of either label than the parts need (``holdout_folds`` or ``members``).
        ValueError: ``paths``, ``labels`` and ``persons`` differ in length, or ``members < 1``.

    The ``info`` of the result gives the ROC AUC and the balanced accuracy at the chosen threshold of
    the predictions the threshold was chosen on (held-out or out-of-fold), counted per image and
    with every person weighing the same (optimistic: the threshold maximised the latter on them).
    With several members those ``holdout_*`` figures describe single members trained on part of the persons;
    the ensemble averages all of them, so its probabilities are less spread, and the threshold chosen on single
    members is applied to that mean (the cross-validated figures in the README measure exactly this).
    """
    import torch

    paths = [str(p) for p in paths]
    y, persons = np.asarray(labels, np.int64), np.asarray(persons)
    if not (len(paths) == len(y) == len(persons)):
        raise ValueError("paths, labels and persons must have one entry per image")
    if synthetic and (sources is None or len(sources) != len(paths)):
        raise ValueError("synthetic glare needs each image's clean source photo (sources, one per image)")
    splits = _member_splits(persons, y, members, holdout_folds, seed)
    extra = None if not synthetic else (synthetic_glare([str(p) for p in sources], image_size, synthetic, seed),
                                        np.repeat(y, synthetic), np.repeat(persons, synthetic))
    settings = dict(image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr, device=torch.device(device),
                    backbone=backbone, pretrained=pretrained, label_smoothing=label_smoothing,
                    max_seconds=None if max_minutes is None else 60 * max_minutes / len(splits),
                    channels_last=channels_last, init=init)
    t0 = time.perf_counter()
    models, held_prob, histories = _fit_members(paths, y, persons, splits, seed, settings, extra)
    held = np.concatenate([h for _, h in splits])
    threshold = person_balanced_threshold(y[held], held_prob[held], persons[held])
    info = _fit_info(y, persons, splits, held_prob, threshold, histories, holdout_folds, image_size)
    info.update(seconds=round(time.perf_counter() - t0, 1), synthetic_copies=int(synthetic),
                init="pretrained" if init is None else "given")
    return GlareCNN(models, threshold, image_size, info)


def _member_splits(persons: np.ndarray, y: np.ndarray, members: int, holdout_folds: int,
                   seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(fit_idx, held_idx)`` of each member: one held-out part, or one cross-fitting part per member.

    Args:
        persons, y: Each image's person and label (1 = female).
        members: Networks; 1 holds out the first of ``holdout_folds`` label-stratified person parts
            (:func:`held_out_persons`), ``k >= 2`` splits the persons into ``k`` parts
            (:func:`~facecom_utils.data.splits.person_folds`), member ``i`` holding out the ``i``-th.
        holdout_folds: Parts with one member.
        seed: Seeds the split.

    Raises:
        GlareDataError: Fewer persons of a label than the parts, or a part or its complement with one label.
        ValueError: ``members < 1``.
    """
    if members < 1:
        raise ValueError(f"members must be at least 1, got {members}")
    parts = holdout_folds if members == 1 else members
    if usable_folds(persons, y, parts) < parts:  # the folds' own per-person label count
        per_person = pd.Series(y).groupby(persons).first()
        need = (f"to hold a 1/{parts} of them out for its threshold" if members == 1
                else f"to cross-fit {members} members")
        raise GlareDataError(f"the glare CNN needs at least {parts} persons of each label {need}; got "
                             f"{int((per_person == 0).sum())} male and {int((per_person == 1).sum())} female persons")
    splits = [held_out_persons(persons, y, parts, seed)] if members == 1 else person_folds(persons, y, parts, 1, seed)
    for fit_idx, held_idx in splits:
        if len(set(y[fit_idx])) < 2 or len(set(y[held_idx])) < 2:
            raise GlareDataError("the glare CNN needs images of both labels in the training and held-out persons "
                                 "of every member")
    return splits


def _fit_members(paths: list[str], y: np.ndarray, persons: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]],
                 seed: int, settings: dict[str, Any], extra: tuple[Any, np.ndarray, np.ndarray] | None = None,
                 ) -> tuple[list[Any], np.ndarray, list[Any]]:
    """Trains member ``i`` on ``splits[i]``'s fitted persons (seed ``seed + i``) and predicts its held-out ones.

    ``extra``: ``(images, labels, persons)`` added to a member's training images where their person is one
    of its fitted persons (the synthetic glare; never predicted).

    Returns:
        ``(models on the CPU, P(female) per image from the member that held it out (NaN elsewhere),
        each member's fit history)``.
    """
    import torch

    X = _load(paths, settings["image_size"])
    models, histories, held_prob = [], [], np.full(len(paths), np.nan)
    for i, (fit_idx, held_idx) in enumerate(splits):
        X_i, y_i, p_i = X[torch.as_tensor(fit_idx)], y[fit_idx], persons[fit_idx]
        if extra is not None:
            take = np.flatnonzero(np.isin(extra[2], p_i))
            X_i = torch.cat([X_i, extra[0][torch.as_tensor(take)]])
            y_i, p_i = np.concatenate([y_i, extra[1][take]]), np.concatenate([p_i, extra[2][take]])
        model, result = _train_network(X_i, y_i, p_i, seed=seed + i, **settings)
        held_prob[held_idx] = GlareCNN([model], 0.5, settings["image_size"]).probabilities(
            [paths[j] for j in held_idx], device=settings["device"])
        models.append(model.to("cpu"))
        histories.append(result.history)
    return models, held_prob, histories


def _fit_info(y: np.ndarray, persons: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], held_prob: np.ndarray,
              threshold: float, histories: list[Any], holdout_folds: int, image_size: int) -> dict[str, Any]:
    """How the glare CNN was fitted: images and persons per part, epochs and losses, held-out metrics.

    The ``holdout_*`` figures are the ROC AUC and the balanced accuracy (per image and person-weighted)
    at ``threshold`` of the predictions it was chosen on (held-out or out-of-fold), so optimistic.
    """
    from facecom_utils.metrics.classification import binary_metrics

    single = len(splits) == 1
    fits = [fit for fit, _ in splits]
    held = np.concatenate([h for _, h in splits])
    m = binary_metrics(y[held], held_prob[held], threshold)
    epochs = [len(h) for h in histories]
    return {"members": len(splits),
            "n_fit": int(len(fits[0])) if single else [int(len(f)) for f in fits],
            "n_holdout": int(len(held)),
            "persons_fit": (int(len(set(persons[fits[0]]))) if single else [int(len(set(persons[f]))) for f in fits]),
            "persons_holdout": int(len(set(persons[held]))),
            "epochs": epochs[0] if single else epochs, "image_size": int(image_size),
            "train_loss": [[round(float(v), 4) for v in h["train_loss"]] for h in histories],
            "threshold_source": (f"held-out persons (1/{holdout_folds} of them)" if single else
                                 f"out-of-fold predictions of {len(splits)} cross-fitted members over every "
                                 "training person"),
            "holdout_roc_auc": float(m["roc_auc"]),
            "holdout_balanced_accuracy_at_own_threshold": float(m["balanced_accuracy"]),
            "holdout_person_balanced_accuracy_at_own_threshold": person_balanced_accuracy(
                y[held], held_prob[held], persons[held], threshold)}
