"""Task A's class labels, written once: 0 = ``"male"``, 1 = ``"female"``, the positive class.

Every Task A model predicts P(female): the FACECOM-only CNN (:mod:`facecom_utils.gender.pipeline`,
whose checkpoints store :data:`CLASS_TO_IDX`), the face-model tracks
(:mod:`facecom_utils.gender.tracks`) and the glare expert (:mod:`facecom_utils.gender.glare`). They
all turn label names into 0/1 with :func:`label_indices` and decisions back into names with
:func:`predicted_labels`, so the positive class cannot differ between them. ``"female"`` is the
minority (303 of FACECOM's 1926 training images), so recall and F1 of the positive class are the
figures that an always-male classifier would get wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["CLASS_NAMES", "CLASS_TO_IDX", "IDX_TO_CLASS", "POSITIVE", "label_indices", "predicted_labels"]

CLASS_TO_IDX: dict[str, int] = {"male": 0, "female": 1}
IDX_TO_CLASS: dict[int, str] = {v: k for k, v in CLASS_TO_IDX.items()}
CLASS_NAMES: tuple[str, ...] = tuple(IDX_TO_CLASS[i] for i in range(len(IDX_TO_CLASS)))
"""The names in index order (the ``class_names`` of :func:`~facecom_utils.metrics.classification.binary_metrics`)."""
POSITIVE: str = IDX_TO_CLASS[1]
"""The class whose probability every Task A model predicts."""


def label_indices(labels: Sequence[str] | np.ndarray) -> np.ndarray:
    """0/1 (int64) of label names: 1 for :data:`POSITIVE`.

    Args:
        labels: Label names (a ``label`` column of :func:`~facecom_utils.data.layout.scan_task_a`).

    Raises:
        ValueError: A name that is not a Task A class.
    """
    names = np.asarray(labels, dtype=object)
    unknown = sorted({str(n) for n in names.tolist()} - set(CLASS_TO_IDX))
    if unknown:
        raise ValueError(f"Task A labels must be one of {sorted(CLASS_TO_IDX)}, got {unknown[:5]}")
    return np.fromiter((CLASS_TO_IDX[n] for n in names.tolist()), dtype=np.int64, count=len(names))


def predicted_labels(prob: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """Label names of decisions: :data:`POSITIVE` where ``prob >= threshold``, the other class elsewhere.

    Args:
        prob: P(:data:`POSITIVE`) per image.
        threshold: The decision threshold.
    """
    return np.where(np.asarray(prob, dtype=np.float64) >= threshold, POSITIVE, IDX_TO_CLASS[0])
