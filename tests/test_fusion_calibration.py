"""The fused track's per-type score calibration: exact scales, top-1 untouched, one scale for every probe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from facecom_utils.recognition.face_tracks import (
    IMPOSTOR_QUANTILE,
    MIN_PROBES,
    MIN_SPREAD,
    POOLED,
    Fusion,
    calibrate_scores,
    fuse_embeddings,
)
from facecom_utils.recognition.protocol import protocol_metrics


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _two_kinds(n_id: int = 30, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Two clean photos per person; each photo has one probe of kind "face" and one of kind "glare".

    The face model's descriptors share a strong common direction (impostor cosines near 0.6, like
    dlib's); the FACECOM embedder's do not (impostors near 0). "face" probes are read by the face model,
    "glare" probes by the FACECOM embedder, each of which sees the person only through noise.
    """
    rng = np.random.default_rng(seed)
    common = rng.normal(size=32)
    people_f = _unit(rng.normal(size=(n_id, 32)) + 1.3 * common / np.linalg.norm(common) * np.sqrt(32))
    people_c = _unit(rng.normal(size=(n_id, 32)))

    def noise() -> np.ndarray:  # norm about 1, like the people's unit vectors
        return rng.normal(size=32) / np.sqrt(32)

    rows, face, facecom = [], [], []
    for i in range(n_id):
        for g in range(2):
            rows.append({"path": f"/g/{i}_{g}.jpg", "identity": f"id{i:02d}", "distortion": None, "source": None})
            face.append(people_f[i] + 0.15 * noise())
            facecom.append(people_c[i] + 0.15 * noise())
    for i in range(n_id):
        for g in range(2):
            for kind in ("face", "glare"):
                rows.append({"path": f"/p/{i}_{g}_{kind}.jpg", "identity": f"id{i:02d}", "distortion": kind,
                             "source": f"/g/{i}_{g}.jpg"})
                face.append(people_f[i] + (0.5 if kind == "face" else 3.0) * noise())
                facecom.append(people_c[i] + (3.0 if kind == "face" else 1.5) * noise())
    table = pd.DataFrame(rows)
    kinds = table["distortion"].fillna("clean").to_numpy()
    return table, _unit(np.asarray(face)), _unit(np.asarray(facecom)), kinds


def _impostors(emb: np.ndarray, table: pd.DataFrame, probes: np.ndarray) -> list[float]:
    """Brute force: every given probe against every gallery photo of another person."""
    gallery = table["distortion"].isna().to_numpy()
    ident = table["identity"].to_numpy()
    return [float(emb[p] @ emb[g]) for p in probes for g in np.flatnonzero(gallery) if ident[p] != ident[g]]


def test_scales_are_the_impostor_quantiles_of_each_type() -> None:
    table, face, facecom, kinds = _two_kinds()
    fusion = Fusion({"face": 1.0, "glare": 0.0})
    gallery = table["distortion"].isna().to_numpy()
    emb = fusion.embed(face, facecom, kinds, gallery)
    scale = calibrate_scores(table, emb, kinds, quantile=0.99, min_probes=10)
    default = calibrate_scores(table, emb, kinds)
    assert IMPOSTOR_QUANTILE == 0.999 and set(scale) == set(default) == {"face", "glare"}
    for kind in ("face", "glare"):
        imp = _impostors(emb, table, np.flatnonzero(kinds == kind))
        assert scale[kind] == pytest.approx((np.quantile(imp, 0.5), np.quantile(imp, 0.99)), abs=1e-6)
        assert default[kind] == pytest.approx((np.quantile(imp, 0.5), np.quantile(imp, 0.999)), abs=1e-6)
    # the two recognisers' impostors live on different scales: what the calibration is for
    assert scale["face"][0] > 0.4 and abs(scale["glare"][0]) < 0.1
    # each kind has 60 probes: a type needs min_probes of them to be scaled on its own
    assert set(calibrate_scores(table, emb, kinds, min_probes=60)) == {"face", "glare"}
    assert calibrate_scores(table, emb, kinds, min_probes=61) == {}


def test_small_and_unseen_types_are_scaled_on_every_probe_scored_their_way() -> None:
    table, face, facecom, kinds = _two_kinds()
    gallery = table["distortion"].isna().to_numpy()
    rare = kinds.copy()
    rare[np.flatnonzero(kinds == "face")[: MIN_PROBES - 1]] = "rare"  # too few probes for a scale of its own
    fusion = Fusion({"face": 1.0, "glare": 0.0, "rare": 1.0})
    fusion.fit_calibration(table, face, facecom, rare)
    assert set(fusion.calibration) == {"face", "glare", "rare", POOLED}
    probes = np.flatnonzero(~gallery)
    q = [0.5, IMPOSTOR_QUANTILE]
    own = _impostors(face, table, np.flatnonzero(rare == "face"))  # w = 1: the face model's cosine
    assert fusion.calibration["face"] == pytest.approx(tuple(np.quantile(own, q)), abs=1e-6)
    every_face = _impostors(face, table, probes)  # "rare" has w = 1 too: all probes, face-model cosine
    assert fusion.calibration["rare"] == pytest.approx(tuple(np.quantile(every_face, q)), abs=1e-6)
    every_facecom = _impostors(facecom, table, probes)  # a type never seen: w = 0, the FACECOM cosine
    assert fusion.calibration[POOLED] == pytest.approx(tuple(np.quantile(every_facecom, q)), abs=1e-6)


def test_a_degenerate_scale_keeps_a_minimum_spread() -> None:
    table, face, facecom, kinds = _two_kinds(n_id=4)
    same = np.tile(face[:1], (len(face), 1))  # every image alike: every impostor scores the same
    (median, high), = calibrate_scores(table, same, np.where(kinds == "clean", "clean", "x"), min_probes=1).values()
    assert high - median == pytest.approx(MIN_SPREAD)


def test_calibrated_dot_product_is_the_affine_map_and_top1_is_unchanged() -> None:
    table, face, facecom, kinds = _two_kinds()
    gallery = table["distortion"].isna().to_numpy()
    plain = Fusion({"face": 1.0, "glare": 0.0})
    raw = plain.embed(face, facecom, kinds, gallery)
    calibrated = Fusion(plain.weights)
    calibrated.fit_calibration(table, face, facecom, kinds)
    emb = calibrated.embed(face, facecom, kinds, gallery)
    probes = np.flatnonzero(~gallery)
    for p in probes[:: len(probes) // 7]:
        median, high = calibrated.calibration[kinds[p]]
        np.testing.assert_allclose(emb[p] @ emb[gallery].T, (raw[p] @ raw[gallery].T - high) / (high - median),
                                   rtol=1e-4, atol=1e-4)
    before = protocol_metrics(table, raw, threshold=0.5)
    after = protocol_metrics(table, emb, threshold=0.0)
    for key in ("top1", "top5", "strict_top1", "strict_top5"):  # a per-probe affine map keeps every ranking
        assert after[key] == before[key], key
    assert after["per_distortion"] == before["per_distortion"]
    # pooled over both kinds, the raw scores mix two scales (a "face" impostor outscores a "glare" genuine
    # match); on one scale the same scores separate far better
    assert before["strict_roc_auc"] < 0.9 and before["roc_auc"] < 0.9
    assert after["strict_roc_auc"] > 0.95 and after["roc_auc"] > 0.95


def test_calibration_round_trips_weights_only_and_old_files_stay_uncalibrated(tmp_path) -> None:
    table, face, facecom, kinds = _two_kinds(n_id=12)
    gallery = table["distortion"].isna().to_numpy()
    fusion = Fusion({"face": 0.8, "glare": 0.1}, {"face": 0.0, "glare": 0.0})
    fusion.fit_calibration(table, face, facecom, kinds)
    torch.save(fusion.state_dict(), tmp_path / "face_tracks.pt")
    loaded = Fusion.from_state_dict(torch.load(tmp_path / "face_tracks.pt", weights_only=True))
    assert loaded == fusion
    np.testing.assert_array_equal(loaded.embed(face, facecom, kinds, gallery),
                                  fusion.embed(face, facecom, kinds, gallery))
    # a type the fold never estimated takes the pooled scale
    other = kinds.copy()
    other[~gallery] = "unseen"
    median, high = fusion.calibration[POOLED]
    got = fusion.embed(face, facecom, other, gallery)
    raw = fuse_embeddings(face, facecom, np.zeros(len(kinds)), gallery)
    p = int(np.flatnonzero(~gallery)[0])
    np.testing.assert_allclose(got[p] @ got[gallery].T, (raw[p] @ raw[gallery].T - high) / (high - median),
                               rtol=1e-4, atol=1e-4)
    # a face_tracks.pt written before the calibration: the fused scores as they were
    old = Fusion.from_state_dict({"weights": fusion.weights, "gammas": fusion.gammas})
    assert old.calibration == {}
    np.testing.assert_array_equal(old.embed(face, facecom, kinds, gallery),
                                  fuse_embeddings(face, facecom, old.per_probe(kinds)[0], gallery))


def test_a_fold_of_one_identity_cannot_be_calibrated() -> None:
    table, face, facecom, kinds = _two_kinds(n_id=3)
    one = table["identity"].eq("id00").to_numpy()
    with pytest.raises(ValueError, match="no probe has an impostor"):
        Fusion({"face": 1.0}).fit_calibration(table[one].reset_index(drop=True), face[one], facecom[one], kinds[one])
