"""Identity scores of probes against a gallery, and the identification rank rule (FACECOM Task B).

Vocabulary:

* **gallery**: the clean images of the evaluated identities (embedding matrix [G, D] + identity
  label per row). **probes**: the distorted images ([P, D] + identity, distortion type and the
  gallery index of the clean source each was made from).
* **identity score**: the cosine similarity of a probe to an identity = the maximum cosine over that
  identity's gallery images. :func:`identity_scores` returns the [P, I] matrix of them;
  :class:`ScoreTable` holds it with each probe's true column.
* **strict variant**: each probe's own clean source image is removed from the gallery before
  scoring (:func:`strict_score_table`), so near-duplicate matching cannot help; probes whose identity
  then has no gallery image left get ``true_idx = -1``.
* **rank rule** (identification): a probe is a top-k hit when fewer than k identities score at least
  as high as its true identity; ties count against the probe (:func:`identity_ranks`, the one
  place this rule is written).

Verification metrics and the match protocol built on these scores live in
:mod:`facecom_utils.metrics.verification`.

All embeddings are expected L2-normalised (cosine = dot product); they may be numpy arrays or torch
tensors. Scores are float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ScoreTable",
    "best_rival",
    "cosine_scores",
    "identity_macro_top1",
    "identity_ranks",
    "identity_scores",
    "per_pair_loop_scores",
    "score_table",
    "strict_score_table",
    "topk_accuracy",
]

DEFAULT_CHUNK_SIZE = 1024


def _to_numpy(x: Any, dtype: type | None = np.float32) -> np.ndarray:
    """Converts a numpy array, torch tensor or sequence to a numpy array of ``dtype``."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_embeddings(x: Any, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(_to_numpy(x))
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] embedding matrix, got shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def cosine_scores(probes: Any, gallery: Any, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Cosine similarity of every probe to every gallery image (embeddings L2-normalised).

    Args:
        probes: [P, D] probe embeddings.
        gallery: [G, D] gallery embeddings.
        chunk_size: Probes scored per matrix product (bounds temporary memory); ``None`` = all at once.
            float32 throughout: chunked and unchunked results agree to float32 rounding (~1e-7 for
            unit vectors), not necessarily bit for bit (BLAS kernels may round differently for
            different block shapes).

    Returns:
        float32 [P, G] score matrix.
    """
    p = _check_embeddings(probes, "probes")
    g = _check_embeddings(gallery, "gallery")
    if p.shape[1] != g.shape[1]:
        raise ValueError(f"probes have dimension {p.shape[1]} but gallery has {g.shape[1]}")
    step = max(p.shape[0] if not chunk_size else int(chunk_size), 1)
    out = np.empty((p.shape[0], g.shape[0]), dtype=np.float32)
    for start in range(0, p.shape[0], step):
        np.matmul(p[start : start + step], g.T, out=out[start : start + step])  # straight into the result
    return out


# Ranks (k-th image of every identity that has one) narrower than this go to the reduceat tail instead
# of one np.maximum call each, so the number of numpy calls per chunk stays <= G / _MIN_RANK_WIDTH + 2.
_MIN_RANK_WIDTH = 8


@dataclass(frozen=True)
class _GalleryLayout:
    """The gallery's columns reordered so that the identity max is a few wide ``np.maximum`` calls.

    Identities are ordered by image count, descending (ties: column order). Rank ``r`` = the r-th
    image of an identity. Columns are laid out rank-major for the first ``len(widths)`` ranks: rank
    ``r`` holds the r-th image of the first ``widths[r]`` identities (a prefix, because of the
    count order). The remaining images (the "tail", of the first ``tail_width`` identities only) follow
    identity-major and are reduced with one ``np.maximum.reduceat`` over ``tail_starts``.
    """

    gt: np.ndarray  # float32 [D, G], columns in layout order
    position: np.ndarray  # [G] gallery row -> column of ``gt``
    widths: tuple[int, ...]  # identities in each rank-major rank (non-increasing; widths[0] = all present)
    offsets: tuple[int, ...]  # first column of each rank-major rank, and where the tail starts
    tail_starts: np.ndarray  # segment starts within the tail (one per tail identity)
    tail_width: int
    columns: np.ndarray  # [n_present] result column of each identity, in layout (count) order
    direct: bool  # columns == arange(n_columns): reduce straight into the result rows
    gather: np.ndarray | None  # every column present: layout slot of each result column (for np.take)


def _gallery_layout(g: np.ndarray, codes: np.ndarray, n_columns: int) -> _GalleryLayout:
    counts = np.bincount(codes, minlength=n_columns)
    present = np.flatnonzero(counts)  # result columns with at least one image
    by_count = present[np.argsort(-counts[present], kind="stable")]  # layout order of the identities
    slot = np.empty(n_columns, dtype=np.int64)
    slot[by_count] = np.arange(by_count.size)
    ident = slot[codes]  # [G] identity slot of each image
    order = np.argsort(ident, kind="stable")
    first = np.flatnonzero(np.r_[True, ident[order][1:] != ident[order][:-1]])
    rank = np.empty_like(ident)
    rank[order] = np.arange(ident.size) - np.repeat(first, np.diff(np.r_[first, ident.size]))
    width_of_rank = np.bincount(rank)  # identities having an image of each rank (non-increasing)
    n_ranks = max(1, int(np.sum(width_of_rank >= _MIN_RANK_WIDTH)))
    group = np.minimum(rank, n_ranks)  # rank-major ranks, then the tail (group n_ranks)
    tail = rank >= n_ranks
    # Rank-major part: by (rank, identity slot); tail: by (identity slot, rank).
    layout = np.lexsort((np.where(tail, rank, 0), ident, group))
    position = np.empty_like(layout)
    position[layout] = np.arange(layout.size)
    widths = tuple(int(w) for w in width_of_rank[:n_ranks])
    offsets = tuple(int(o) for o in np.r_[0, np.cumsum(widths)])
    tail_ident = ident[layout][offsets[-1] :]
    tail_starts = np.flatnonzero(np.r_[True, tail_ident[1:] != tail_ident[:-1]]) if tail_ident.size else tail_ident
    return _GalleryLayout(
        gt=np.ascontiguousarray(g[layout].T),
        position=position,
        widths=widths,
        offsets=offsets,
        tail_starts=tail_starts,
        tail_width=int(tail_starts.size),
        columns=by_count,
        direct=by_count.size == n_columns and bool(np.all(by_count == np.arange(n_columns))),
        gather=np.argsort(by_count) if by_count.size == n_columns else None,
    )


def _identity_max(block: np.ndarray, lay: _GalleryLayout, out: np.ndarray) -> None:
    """Writes the max over each identity's columns of ``block`` ([c, G], layout order) into ``out``
    ([c, n_present], layout identity order)."""
    w, o = lay.widths, lay.offsets
    if len(w) > 1:  # ranks 0 and 1 in one pass, then the rest of rank 0
        np.maximum(block[:, : w[1]], block[:, o[1] : o[1] + w[1]], out=out[:, : w[1]])
        np.copyto(out[:, w[1] :], block[:, w[1] : w[0]])
    else:
        np.copyto(out, block[:, : w[0]])
    for r in range(2, len(w)):
        np.maximum(out[:, : w[r]], block[:, o[r] : o[r] + w[r]], out=out[:, : w[r]])
    if lay.tail_width:
        t = lay.tail_width
        tail = np.maximum.reduceat(block[:, o[-1] :], lay.tail_starts, axis=1)
        np.maximum(out[:, :t], tail, out=out[:, :t])


def _identity_columns(labels: np.ndarray, identities: Sequence[Any] | None) -> tuple[np.ndarray, list[Any]]:
    """Result column of each gallery image, and the identities in column order.

    Args:
        labels: [G] identity label of each gallery image.
        identities: Column order; ``None`` = the sorted unique labels.

    Returns:
        ``(codes, ids)``: int64 [G] column of each image and the list of identities (columns).

    Raises:
        ValueError: If a gallery label is not among ``identities``.
    """
    label_list = labels.tolist()
    ids = sorted(set(label_list)) if identities is None else list(identities)
    column = {identity: j for j, identity in enumerate(ids)}
    missing = set(label_list) - set(column)
    if missing:
        raise ValueError(f"gallery labels {sorted(missing)[:5]} are not in `identities`")
    return np.fromiter((column[v] for v in label_list), dtype=np.int64, count=len(label_list)), ids


def _checked_exclude(
    exclude: Sequence[int] | np.ndarray | None, n_probes: int, n_gallery: int
) -> np.ndarray | None:
    """``exclude`` as an int64 [P] array of gallery rows (``-1`` = nothing), checked; ``None`` stays ``None``.

    Raises:
        ValueError: If it has not one entry per probe, or an entry is neither ``-1`` nor a gallery row.
    """
    if exclude is None:
        return None
    excl = np.asarray(exclude, dtype=np.int64).reshape(-1)
    if excl.shape != (n_probes,):
        raise ValueError(f"exclude must have one entry per probe ({n_probes}), got {excl.shape}")
    if (excl >= n_gallery).any() or (excl < -1).any():
        raise ValueError(f"exclude entries must be gallery indices in [0, {n_gallery}) or -1")
    return excl


def identity_scores(
    probe_emb: Any,
    gallery_emb: Any,
    gallery_labels: Sequence[Any] | np.ndarray,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    exclude: Sequence[int] | np.ndarray | None = None,
    identities: Sequence[Any] | None = None,
) -> tuple[np.ndarray, list[Any]]:
    """Identity score matrix: the max cosine over each identity's gallery images, per probe.

    Fast path, float32 throughout: the gallery's columns are reordered once so that the k-th images
    of all identities sit side by side (:class:`_GalleryLayout`); each chunk of probes is scored with
    one matrix product into a preallocated buffer and reduced with a few whole-chunk
    ``np.maximum`` calls (one per image rank, identities with many images in one
    ``np.maximum.reduceat``), straight into the result rows. No python loop over probes or pairs.

    Args:
        probe_emb: [P, D] L2-normalised probe embeddings.
        gallery_emb: [G, D] L2-normalised gallery embeddings.
        gallery_labels: [G] identity label of each gallery image.
        chunk_size: Probes scored at a time (memory is O(chunk_size * G)); ``None`` = all at once.
            Chunked and unchunked results agree to float32 rounding (~1e-7), not necessarily bit
            for bit: BLAS kernels may round differently for different block shapes.
        exclude: Optional [P] gallery index to ignore for each probe (``-1`` = nothing), e.g. the
            probe's own clean source image in the strict protocol.
        identities: Column order of the result. Defaults to the sorted unique gallery labels;
            identities given here without any gallery image score ``-inf``.

    Returns:
        ``(scores, identities)``: float32 [P, I] scores and the list of I identities (columns).
        A probe whose every image of some identity is excluded scores ``-inf`` for that identity.
    """
    p = _check_embeddings(probe_emb, "probe_emb")
    g = _check_embeddings(gallery_emb, "gallery_emb")
    labels = np.asarray(gallery_labels)
    if labels.shape != (g.shape[0],):
        raise ValueError(f"gallery_labels must have one label per gallery row ({g.shape[0]}), got {labels.shape}")
    if g.shape[0] == 0:
        raise ValueError("gallery_emb is empty; expected at least one gallery image")
    if p.shape[1] != g.shape[1]:
        raise ValueError(f"probe_emb has dimension {p.shape[1]} but gallery_emb has {g.shape[1]}")
    codes, ids = _identity_columns(labels, identities)
    lay = _gallery_layout(g, codes, len(ids))
    excl = _checked_exclude(exclude, p.shape[0], g.shape[0])

    n_probes = p.shape[0]
    if lay.gather is not None:  # every column has images: every entry is written below
        scores = np.empty((n_probes, len(ids)), dtype=np.float32)
    else:
        scores = np.full((n_probes, len(ids)), -np.inf, dtype=np.float32)
    step = max(n_probes if not chunk_size else min(int(chunk_size), n_probes), 1)
    buffer = np.empty((step, g.shape[0]), dtype=np.float32)
    reduced = None if lay.direct else np.empty((step, lay.columns.size), dtype=np.float32)
    for start in range(0, n_probes, step):
        stop = min(start + step, n_probes)
        block = buffer[: stop - start]
        np.matmul(p[start:stop], lay.gt, out=block)
        if excl is not None:
            e = excl[start:stop]
            rows = np.flatnonzero(e >= 0)
            block[rows, lay.position[e[rows]]] = -np.inf
        if lay.direct:
            _identity_max(block, lay, scores[start:stop])
        else:
            _identity_max(block, lay, reduced[: stop - start])
            if lay.gather is not None:  # a permutation of all columns: a gather is cheaper than a scatter
                np.take(reduced[: stop - start], lay.gather, axis=1, out=scores[start:stop])
            else:
                scores[start:stop, lay.columns] = reduced[: stop - start]
    return scores, ids


def per_pair_loop_scores(
    probe_emb: Any, gallery_emb: Any, gallery_labels: Sequence[Any] | np.ndarray
) -> tuple[np.ndarray, list[Any]]:
    """Reference implementation of :func:`identity_scores`: one python loop step per (probe, image).

    Only for tests and the speed benchmark; it is orders of magnitude slower.
    """
    p = _check_embeddings(probe_emb, "probe_emb")
    g = _check_embeddings(gallery_emb, "gallery_emb")
    labels = np.asarray(gallery_labels).tolist()
    ids = sorted(set(labels))
    column = {identity: j for j, identity in enumerate(ids)}
    scores = np.full((p.shape[0], len(ids)), -np.inf, dtype=np.float32)
    for i in range(p.shape[0]):
        for k in range(g.shape[0]):
            j = column[labels[k]]
            s = np.float32(np.dot(p[i], g[k]))
            if s > scores[i, j]:
                scores[i, j] = s
    return scores, ids


@dataclass
class ScoreTable:
    """Identity scores of a probe set with each probe's true column.

    Attributes:
        scores: float32 [P, I] identity scores.
        identities: The I identities (columns of ``scores``).
        true_idx: int64 [P] column of each probe's identity; ``-1`` when the identity has no usable
            gallery image (not in the gallery, or all its images excluded).
    """

    scores: np.ndarray
    identities: list[Any]
    true_idx: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """Boolean [P] mask of the probes that can be evaluated (``true_idx >= 0``)."""
        return self.true_idx >= 0

    def subset(self, mask: np.ndarray) -> ScoreTable:
        """The rows selected by a boolean or index mask."""
        return ScoreTable(self.scores[mask], self.identities, self.true_idx[mask])


def score_table(
    probe_emb: Any,
    probe_identity: Sequence[Any] | np.ndarray,
    gallery_emb: Any,
    gallery_identity: Sequence[Any] | np.ndarray,
    exclude: Sequence[int] | np.ndarray | None = None,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> ScoreTable:
    """Scores probes against the gallery and records each probe's true column.

    Args:
        probe_emb: [P, D] probe embeddings.
        probe_identity: [P] identity of each probe.
        gallery_emb: [G, D] gallery embeddings.
        gallery_identity: [G] identity of each gallery image.
        exclude: Optional [P] gallery index to drop per probe (``-1`` = none); see :func:`identity_scores`.
        chunk_size: Probes per matrix product.

    Returns:
        A :class:`ScoreTable`; probes whose identity has no usable gallery image get ``true_idx = -1``.
    """
    probe_ids = np.asarray(probe_identity).tolist()
    if len(probe_ids) != _check_embeddings(probe_emb, "probe_emb").shape[0]:
        raise ValueError("probe_identity must have one entry per probe embedding")
    scores, ids = identity_scores(probe_emb, gallery_emb, gallery_identity, chunk_size=chunk_size, exclude=exclude)
    column = {identity: j for j, identity in enumerate(ids)}
    true_idx = np.array([column.get(v, -1) for v in probe_ids], dtype=np.int64)
    rows = np.flatnonzero(true_idx >= 0)
    no_image_left = rows[~np.isfinite(scores[rows, true_idx[rows]])]
    true_idx[no_image_left] = -1
    return ScoreTable(scores, ids, true_idx)


def strict_score_table(
    probe_emb: Any,
    probe_identity: Sequence[Any] | np.ndarray,
    gallery_emb: Any,
    gallery_identity: Sequence[Any] | np.ndarray,
    probe_source_idx: Sequence[int] | np.ndarray,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> ScoreTable:
    """The strict variant's :class:`ScoreTable`: each probe's own clean source image is removed from the
    gallery, so it can only be matched through another photo of its person; probes whose source is
    unknown (``-1``) are left out (``true_idx = -1``), as are those with no other photo."""
    source = np.asarray(probe_source_idx, dtype=np.int64).reshape(-1)
    table = score_table(probe_emb, probe_identity, gallery_emb, gallery_identity, exclude=source, chunk_size=chunk_size)
    table.true_idx[source < 0] = -1  # unknown source: cannot guarantee strictness, leave out
    return table

# --------------------------------------------------------------------------------------------------
# Identification: the rank rule
# --------------------------------------------------------------------------------------------------


def identity_ranks(scores: np.ndarray, true_idx: Sequence[int] | np.ndarray) -> np.ndarray:
    """The rank rule: how many other identities score at least as high as each probe's true one.

    The one place the identification tie rule is written: rank 0 is a top-1 hit, and an identity
    scoring *exactly* as high as the true one counts against the probe (a tie for first place is a
    miss). :func:`topk_accuracy`, :func:`identity_macro_top1`, the threshold analysis and the error
    gallery of Task B all decide top-1 here.

    Args:
        scores: [P, I] identity scores.
        true_idx: [P] column of each probe's identity (every entry a valid column).

    Returns:
        int64 [P] ranks (0 = top-1 hit).
    """
    s = np.asarray(scores)
    t = np.asarray(true_idx, dtype=np.int64).reshape(-1)
    genuine = s[np.arange(t.size), t]
    return (s >= genuine[:, None]).sum(axis=1).astype(np.int64) - 1


def best_rival(scores: np.ndarray, true_idx: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each probe's best-scoring *other* identity: ``(column [P], score [P])``.

    Among rivals with the same score the first column wins; a probe with no other identity gets
    column 0 and score ``-inf``. Whether the rival beats the probe is :func:`identity_ranks`' call.
    """
    s = np.asarray(scores)
    t = np.asarray(true_idx, dtype=np.int64).reshape(-1)
    rows = np.arange(t.size)
    if s.shape[1] < 2:
        return np.zeros(t.size, np.int64), np.full(t.size, -np.inf, np.float32)
    masked = s.copy()
    masked[rows, t] = -np.inf
    column = masked.argmax(axis=1)
    return column, masked[rows, column]


def topk_accuracy(
    scores: np.ndarray, true_idx: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Top-k identification accuracy.

    A probe is correct at k when fewer than k identities score at least as high as its true identity
    (ties count against the probe: a tie for first place is not a top-1 hit).

    Args:
        scores: [P, I] identity scores.
        true_idx: [P] column of each probe's identity (all must be valid).
        ks: The k values.

    Returns:
        ``{k: accuracy}``; NaN for an empty probe set.
    """
    s = np.asarray(scores)
    t = np.asarray(true_idx, dtype=np.int64).reshape(-1)
    if s.ndim != 2 or t.shape[0] != s.shape[0]:
        raise ValueError(f"scores must be [P, I] with one true_idx per row, got {s.shape} and {t.shape}")
    if t.size and ((t < 0).any() or (t >= s.shape[1]).any()):
        raise ValueError("true_idx must index columns of scores; drop probes without a gallery identity first")
    if t.size == 0:
        return {int(k): float("nan") for k in ks}
    rank = identity_ranks(s, t)
    return {int(k): float(np.mean(rank < k)) for k in ks}


def identity_macro_top1(table: ScoreTable, probe_identity: Sequence[Any] | np.ndarray) -> float:
    """Top-1 of the evaluable probes averaged per identity first, then over identities.

    One identity with many photos (FACECOM's training split has one with 236) would otherwise decide
    the top-1 of any probe set holding it. NaN when no probe can be evaluated.
    """
    rows = np.flatnonzero(table.valid)
    if rows.size == 0:
        return float("nan")
    hit = (identity_ranks(table.scores[rows], table.true_idx[rows]) == 0).astype(np.float64)
    _, group = np.unique(np.asarray([str(v) for v in np.asarray(probe_identity)[rows].tolist()]), return_inverse=True)
    return float(np.mean(np.bincount(group, weights=hit) / np.bincount(group)))
