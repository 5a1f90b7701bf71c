"""experiments/measure_sunny_strict.py: identity top-1 with the source left out, query expansion by face agreement,
and the table of the docs from the saved results."""

from __future__ import annotations

import json

import numpy as np

from conftest import load_script


def _script():
    return load_script("measure_sunny_strict")


def _data(m):
    """Gallery: A1, A2, A3 (person A), B1, C1. One probe, a copy of A1 (its source), true identity A."""
    d = m.StrictSunny.__new__(m.StrictSunny)
    d.uniq = np.array(["A", "B", "C"])
    d.codes = np.array([0, 0, 0, 1, 2])
    d.truth = np.array([0])
    d.source = np.array([0])
    # FACECOM cosines: the source A1 first (left out), then B1, then A2, A3, C1
    d.g = np.eye(5, dtype=np.float64)
    d.p = np.array([[0.99, 0.50, 0.45, 0.60, 0.10]])
    # dlib: A2 and A3 agree with each other; the source A1's face agrees with B1 only (were the source let
    # into the expansion, B1 would get its vote and win); C agrees with nobody
    faces = np.array([[0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    d.faces = faces
    return d


def test_source_is_left_out_and_ties_count_against_the_probe():
    m = _script()
    d = _data(m)
    s = d.scores()
    assert np.isneginf(s[0, 0])
    assert d.top1(s) == 0.0                      # B1 (0.60) beats A's best remaining photo (0.50)
    s[0, 1] = 0.60                               # a tie with the true identity counts against the probe
    assert d.top1(s) == 0.0
    s[0, 1] = 0.61
    assert d.top1(s) == 1.0


def test_query_expansion_lifts_the_identity_whose_faces_agree():
    m = _script()
    d = _data(m)
    np.testing.assert_array_equal(d.expanded(k=3, tau=0.1, lam=0.0, loo=True), d.scores())  # lam 0: plain scores
    tau = 0.1
    out = d.expanded(k=3, tau=tau, lam=1.0, loo=True)
    # top-3 without the source: B1 (0.60), A2 (0.50), A3 (0.45), weights exp((s - 0.60) / tau)
    w_b1, w_a2, w_a3 = 1.0, np.exp(-0.10 / tau), np.exp(-0.15 / tau)
    assert np.isneginf(out[0, 0])
    np.testing.assert_allclose(out[0, 1], 0.50 + w_a3 / (w_b1 + w_a3), rtol=1e-12)  # A2: A3 agrees, B1 not
    np.testing.assert_allclose(out[0, 2], 0.45 + w_a2 / (w_b1 + w_a2), rtol=1e-12)  # A3: A2 agrees, B1 not
    np.testing.assert_allclose(out[0, 3], 0.60, rtol=1e-12)                          # B1: neither A photo agrees
    np.testing.assert_allclose(out[0, 4], 0.10, rtol=1e-12)                          # C1: nobody agrees
    assert d.top1(out) == 1.0
    # letting a photo vote for itself gives B1 its own vote too
    np.testing.assert_allclose(d.expanded(k=3, tau=tau, lam=1.0, loo=False)[0, 3],
                               0.60 + w_b1 / (w_b1 + w_a2 + w_a3), rtol=1e-12)


def test_table_row_per_run_from_the_saved_results(tmp_path):
    m = _script()
    result = {"n_probes": {"fold": 91, "report": 365}, "saturated_share": 0.3812, "as_is": 0.26575,
              "oracle_periphery": 0.3041,
              "query_expansion_chosen": {"k": 10, "tau": 0.2, "lam": 0.5, "loo": True, "fold": 0.45, "report": 0.2959},
              "query_expansion_mean": 0.2862, "query_expansion": []}
    calls = []
    file = tmp_path / "fold0.json"
    for _ in range(2):  # the second run reads the saved result instead of measuring
        m.cached(file, {"run_dir": "/x/fold0/03_arcface_recognition", "saturated": 245},
                 lambda: calls.append(1) or result)
    assert calls == [1]
    results = {f.stem: json.loads(f.read_text())["result"] for f in sorted(tmp_path.glob("*.json"))}
    assert m.sunny_table(results).splitlines() == [
        "| run | strict sunny probes | saturated share | top-1 as is | oracle periphery "
        "| query expansion (chosen on the fold) | its setting | mean over all settings |",
        "|---|---|---|---|---|---|---|---|",
        "| fold0 | 365 | 0.381 | 0.266 | 0.304 | 0.296 | k=10, tau=0.2, lam=0.5, loo=on | 0.286 |",
    ]
    assert m.run_name(tmp_path / "runs" / "fold2" / "03_arcface_recognition") == "fold2"
