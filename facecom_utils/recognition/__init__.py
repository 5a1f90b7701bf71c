"""FACECOM Task B pipeline: train a face embedder with a margin head, embed, evaluate, baselines.

This module ties the library together for face recognition under distortion; notebooks 03/04 and
the command line call it. Everything below is built from the modules to its left: ``data`` scans
the folders, ``models.FaceEmbedder`` embeds, ``heads`` supply the margin loss, ``training.fit`` is
the one training loop, ``verification.evaluate_protocol`` is the evaluation protocol.

The recipe (:func:`train_recognition`) and why:

* **Classes** are the training identities of ``<data_root>/Task_B/train`` minus an
  identity-disjoint validation **fold** (:func:`split_identities`, stratified by clean-image count
  so the fold holds identities with two or more clean photos, which the strict protocol needs).
  Clean *and* distorted images are trained on; each identity is one class.
* **Sampling** (:func:`identity_sample_weights`): an identity is drawn in proportion to
  ``min(n_clean, clean_cap)``; ``clean_fraction`` of its draws go to its clean photos, the rest
  to its distorted copies. Identities with several clean photos are the only ones that teach
  "same person, different photo" (what the strict protocol measures), so they are drawn more
  often, while the cap stops a 236-photo identity from dominating and the one-photo identities
  still get a few draws per epoch each (they teach distortion invariance and serve as negatives).
  Drawing clean photos more often than their 1-in-8 share feeds the on-the-fly distortions.
  ``distortion_weights`` draws the hard types more often among the distorted copies (the CPU
  preset draws sunny, whose glare wipes out the face, twice as often as each other type).
* **Augmentation** (:func:`build_recognition_transforms`): an optional central face crop, a
  random resized crop, flip, colour jitter, random greyscale, and FACECOM distortions drawn on
  the fly (``distortion_augment``) for the clean images -- new distorted views of every photo,
  not just the seven stored copies, so a near-duplicate shortcut is harder to learn.
* **Loss**: cross-entropy with label smoothing over margin-head logits (ArcFace, CosFace or AdaFace,
  AdaFace with the neck's pre-normalisation feature norm); AdamW with a smaller learning rate for
  the pretrained backbone (``backbone_lr_scale``); per-step cosine annealing after a linear warm-up.
  :func:`facecom_utils.train.fit.fit` runs the loop (AMP on CUDA, checkpoints, resume, early stop).
* **Model choice** after every epoch on the fold: gallery = the fold's clean images, probes = its
  distorted images. The monitored ``selection_score`` is the mean of the main top-1 and the
  strict top-1 averaged per identity (strict: the probe's own clean source removed from the
  gallery). The main top-1 alone saturates near 1.0 by near-duplicate matching within an epoch or
  two; the strict top-1 measures face identity, which is what carries over to unseen people; the
  per-identity average stops one many-photo identity from deciding it; the mean of the two keeps a
  model from trading one protocol for the other. With ``embedding_source="auto"`` both the neck embedding and the backbone's
  pooled features are scored every epoch and the better one is kept.
* **Embeddings** for the threshold and the report: the ``face_crop`` view averaged with its
  mirror (``flip_tta``), concatenated with the ``tta_crops`` views if any (cosine = the mean of
  the per-view cosines); the per-epoch model choice uses the ``face_crop`` view alone.
* **Threshold** of the match decision: chosen on the fold by k-fold cross-validation
  (main and strict separately), stored in the checkpoint and applied unchanged to the
  reported split: ``<data_root>/Task_B/val``, or, when there is none, an identity-disjoint
  ``holdout_fraction`` of the training identities held out before anything else.

Outputs of a run (``output_dir``)::

    checkpoints/best.pt  checkpoints/last.pt    (training.fit; best.pt gains threshold etc.)
    embeddings/fold.npz  embeddings/fold.csv    (validation fold: embeddings + path/identity/...)
    embeddings/val.npz   embeddings/val.csv     (the reported split, when present)
    history.csv  metrics.json

Baselines for scale, under the same protocol: :func:`imagenet_baseline` (the backbone's pooled
ImageNet features, no face training) and :func:`dlib_embeddings` / :func:`dlib_baseline` (dlib's
128-d ResNet face descriptor with 5-point alignment).
"""

from __future__ import annotations

from facecom_utils.recognition.config import EMBEDDING_SOURCES, METRIC_KEYS, RecognitionConfig
from facecom_utils.recognition.model import RecognitionModel, load_recognition_model, build_recognition_model
from facecom_utils.recognition.sampling import identity_sample_weights
from facecom_utils.data.splits import split_identities
from facecom_utils.recognition.embedding import build_recognition_transforms, extract_embeddings, embedding_table, protocol_inputs, load_embeddings
from facecom_utils.recognition.protocol import choose_thresholds, protocol_metrics, evaluate_recognition
from facecom_utils.recognition.baselines import imagenet_baseline, dlib_embeddings, dlib_baseline
from facecom_utils.recognition.pipeline import RecognitionRun, RecognitionSplits, recognition_splits, RecognitionPipeline, recognition_pipeline, fit_recognition, report_recognition, train_recognition

__all__ = [
    "EMBEDDING_SOURCES",
    "METRIC_KEYS",
    "RecognitionConfig",
    "RecognitionModel",
    "RecognitionRun",
    "build_recognition_transforms",
    "choose_thresholds",
    "dlib_baseline",
    "dlib_embeddings",
    "embedding_table",
    "evaluate_recognition",
    "extract_embeddings",
    "identity_sample_weights",
    "imagenet_baseline",
    "load_embeddings",
    "load_recognition_model",
    "protocol_inputs",
    "protocol_metrics",
    "split_identities",
    "RecognitionSplits",
    "RecognitionPipeline",
    "recognition_splits",
    "recognition_pipeline",
    "build_recognition_model",
    "fit_recognition",
    "report_recognition",
    "train_recognition",
]
