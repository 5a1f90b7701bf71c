"""experiments/cv_notebooks.py: the fold data roots it links are person-disjoint and cover everyone once; the tables
of the docs it writes from the folds' metrics and the saved cheap repeats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_script


def _script():
    return load_script("cv_notebooks")


def _layout(root: Path) -> dict[str, str]:
    """Task A and Task B of 12 people (4 female), two clean photos each, one distorted copy each."""
    rng = np.random.default_rng(0)
    labels = {}
    for i in range(12):
        person, label = f"Person_{i:02d}", "female" if i % 3 == 0 else "male"
        labels[person] = label
        for k in (1, 2):
            name = f"{person}_{k:04d}.jpg"
            img = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
            for path in (root / "Task_A" / "train" / label / name, root / "Task_B" / "train" / person / name):
                path.parent.mkdir(parents=True, exist_ok=True)
                img.save(path)
            copy = root / "Task_B" / "train" / person / "distortion" / f"{person}_{k:04d}_noisy.jpg"
            copy.parent.mkdir(parents=True, exist_ok=True)
            img.save(copy)
    return labels


def test_fold_roots_are_person_disjoint_and_cover_everyone(tmp_path: Path) -> None:
    cv = _script()
    labels = _layout(tmp_path / "data")
    for notebook in ("02", "03"):
        roots = cv.make_fold_roots(tmp_path / "data", tmp_path / f"out{notebook}", notebook, 3, 0)
        assert len(roots) == 3
        held = []
        for root in roots:
            train = {p.name for p in (root / "Task_B" / "train").iterdir()}
            val = {p.name for p in (root / "Task_B" / "val").iterdir()}
            assert train.isdisjoint(val) and train | val == set(labels)
            assert (root / "Task_B" / "val" / sorted(val)[0] / "distortion").is_dir()  # copies travel with the person
            held.append(val)
            if notebook == "02":  # Task A follows the same people, labels kept; both genders in every val part
                for split, people in (("train", train), ("val", val)):
                    files = list((root / "Task_A" / split).glob("*/*.jpg"))
                    assert {f.name.rsplit("_", 1)[0] for f in files} == people
                    assert all(f.parent.name == labels[f.name.rsplit("_", 1)[0]] for f in files)
                assert {labels[p] for p in val} == {"female", "male"}
        assert sorted(p for part in held for p in part) == sorted(labels)  # each person held out exactly once


def test_cheap_repeat_subset_keeps_whole_identities_and_aligned_rows() -> None:
    import pandas as pd

    cv = _script()
    table = pd.DataFrame({"identity": [f"id{i % 10}" for i in range(40)], "path": [f"/x/{i}.jpg" for i in range(40)]})
    data = {"table": table, "kinds": np.array([f"k{i}" for i in range(40)]), "facecom": np.arange(80.0).reshape(40, 2),
            "cohort_like": np.zeros((7, 2))}  # not a per-row array: left whole
    sub = cv.subset_identities(data, 0.8, seed=3)
    kept = set(sub["table"]["identity"])
    assert len(kept) == 8
    assert sub["table"]["identity"].value_counts().eq(4).all()  # every row of a kept identity, none of the others
    rows = [int(p[3:-4]) for p in sub["table"]["path"]]
    assert [int(k[1:]) for k in sub["kinds"]] == rows and sub["facecom"][:, 0].tolist() == [2.0 * i for i in rows]
    assert sub["cohort_like"].shape == (7, 2)
    assert set(cv.subset_identities(data, 0.8, seed=3)["table"]["identity"]) == kept  # seeded
    assert set(cv.subset_identities(data, 0.8, seed=4)["table"]["identity"]) != kept


def test_repeat_summary_separates_the_spread_within_and_between_folds() -> None:
    cv = _script()
    records = {"fold0": [{"values": {"m": v}} for v in (0.1, 0.3)],   # mean 0.2, SD 0.1414
               "fold1": [{"values": {"m": v}} for v in (0.5, 0.5)]}   # mean 0.5, SD 0
    row = cv.summarise_repeats(records).loc["m"]
    assert row["fold0 mean"] == pytest.approx(0.2) and row["fold0 sd"] == pytest.approx(np.sqrt(0.02))
    assert row["mean"] == pytest.approx(0.35)
    assert row["sd within"] == pytest.approx(np.sqrt((0.02 + 0.0) / 2))
    assert row["sd between"] == pytest.approx(np.std([0.2, 0.5], ddof=1))
    assert row["mean - sd between"] == pytest.approx(0.35 - np.std([0.2, 0.5], ddof=1))


def _fold_metrics(top1: float, strict: float, sunny: float, auc: float | None) -> dict:
    """One notebook-03 fold's metrics.json with two tracks (the second without verification metrics)."""
    types = {"blurred": 1.0, "sunny": sunny}
    track = {"top1": top1, "strict_top1": strict, "roc_auc": auc, "strict_roc_auc": 0.9, "tar_at_far_1e-3": 0.8,
             "strict_tar_at_far_1e-3": 0.3, "match_f1": 0.99, "strict_match_f1": 0.87,
             "per_distortion": types, "strict_per_distortion": {"blurred": 0.5, "sunny": sunny / 2}}
    plain = {"top1": 0.7, "strict_top1": 0.6, "per_distortion": {"blurred": 0.9}, "strict_per_distortion": {}}
    return {"tracks": {"fused": track, "face_model": plain}, "selector": {"sunny": {"type_accuracy": 1.0}}}


def test_recognition_results_table_is_the_docs_table() -> None:
    cv = _script()
    table = cv.summarise([_fold_metrics(0.99, 0.80, 0.96, 1.0), _fold_metrics(0.97, 0.90, 0.98, None),
                          _fold_metrics(0.98, 0.85, 1.00, 0.998)], "03")
    assert table.loc[("fused", "strict top-1"), "sd"] == pytest.approx(0.05)
    top1, verification = cv.results_table(table, "03").split("\n\n")
    assert top1.splitlines() == [
        "| track | main top-1 | strict top-1 | strict, types but sunny | main per type (blurred, sunny) "
        "| strict per type (blurred, sunny) |",
        "|---|---|---|---|---|---|",
        "| `fused` | 0.980 ± 0.010 (0.970) | 0.850 ± 0.050 (0.800) | 0.500 ± 0.000 (0.500) | 1.00 0.98 | 0.50 0.49 |",
        "| `face_model` | 0.700 ± 0.000 (0.700) | 0.600 ± 0.000 (0.600) | n/a | 0.90 n/a | n/a n/a |",
    ]  # the selector's rows are not a track; the gate's column leaves sunny out
    assert verification.splitlines()[2] == (
        "| `fused` | 0.999 ± 0.001 | 0.800 ± 0.000 | 0.990 ± 0.000 | 0.900 ± 0.000 | 0.300 ± 0.000 "
        "| 0.870 ± 0.000 |")
    assert verification.splitlines()[3] == "| `face_model` | n/a | n/a | n/a | n/a | n/a | n/a |"


def test_gender_results_table_names_the_worst_type(tmp_path: Path) -> None:
    cv = _script()
    folds = [{"tracks": {"fused": {"balanced_accuracy": b, "recall_female": r, "roc_auc": 0.98, "threshold": 0.3,
                                   "per_distortion": {"noisy": n, "sunny": s}}}}
             for b, r, n, s in ((0.95, 0.96, 0.90, 0.80), (0.97, 0.98, 0.94, 0.84))]
    table = cv.summarise(folds, "02")
    cv.write_summary(tmp_path, table, "02")
    assert (tmp_path / "results_table.md").read_text().splitlines() == [
        "| track | balanced acc. | female recall | ROC AUC | worst type | noisy | sunny |",
        "|---|---|---|---|---|---|---|",
        "| `fused` | 0.960 ± 0.014 (0.946) | 0.970 ± 0.014 (0.956) | 0.980 ± 0.000 | sunny 0.820 ± 0.028 (0.792) "
        "| 0.920 ± 0.028 | 0.820 ± 0.028 |",
    ]
    summary = (tmp_path / "summary.md").read_text().splitlines()
    assert summary[0] == "| track | metric | fold0 | fold1 | mean | sd | mean - sd |"
    assert "| fused | worst type bal_acc | 0.800 | 0.840 | 0.820 | 0.028 | 0.792 |" in summary


def test_cheap_repeats_table_is_rewritten_from_the_saved_repeats(tmp_path: Path) -> None:
    import json

    cv = _script()
    done = {f"fold{i}": [{"repeat": r, "fraction": 0.8, "seconds": 1.0, "values": {"strict_top1": v}}
                         for r, v in enumerate(values)] for i, values in enumerate(((0.8, 0.9, 0.1), (0.7, 0.7)))}
    (tmp_path / "cheap_repeats.json").write_text(json.dumps(done))
    cv.run_cheap_repeats(tmp_path, folds=2, repeats=2, fraction=0.8)  # nothing left to run; repeat 2 is not asked for
    assert (tmp_path / "cheap_repeats.md").read_text().splitlines() == [
        "| metric | fold0 mean | fold0 sd | fold1 mean | fold1 sd | mean | sd within | sd between "
        "| mean - sd between |",
        "|---|---|---|---|---|---|---|---|---|",
        "| strict_top1 | 0.850 | 0.071 | 0.700 | 0.000 | 0.775 | 0.050 | 0.106 | 0.669 |",
    ]
    with pytest.raises(ValueError, match="--cheap-fraction"):
        cv.run_cheap_repeats(tmp_path, folds=2, repeats=2, fraction=0.5)


def test_six_type_mean_leaves_sunny_out_and_paired_table_subtracts_fold_by_fold(tmp_path: Path) -> None:
    cv = _script()

    def fold(strict: dict) -> dict:
        track = {"top1": 0.99, "strict_top1": 0.8, "per_distortion": {}, "strict_per_distortion": strict}
        return {"tracks": {"fused": track}}

    base = cv.summarise([fold({"blurred": 0.90, "noisy": 0.80, "sunny": 0.1}),
                         fold({"blurred": 0.92, "noisy": 0.84, "sunny": 0.3})], "03")
    ours = cv.summarise([fold({"blurred": 0.94, "noisy": 0.82, "sunny": 0.2}),
                         fold({"blurred": 0.93, "noisy": 0.85, "sunny": 0.3})], "03")
    assert base.loc[("fused", cv.SIX_TYPES), "fold0"] == pytest.approx(0.85)  # (0.90 + 0.80) / 2: sunny left out
    for name, table in (("ours", ours), ("base", base)):
        (tmp_path / name).mkdir()
        cv.write_summary(tmp_path / name, table, "03")
    lines = cv.paired_table(tmp_path / "ours", tmp_path / "base", tracks=("fused", "face_model"),
                            metrics=(cv.SIX_TYPES, "strict sunny")).splitlines()
    # fold differences +0.030 and +0.010: mean +0.020, SD 0.014
    assert lines[2] == "| `fused` | strict top-1, types but sunny | +0.020 ± 0.014 (+0.006) | +0.030 +0.010 |"
    assert lines[3] == "| `fused` | strict sunny | +0.050 ± 0.071 (-0.021) | +0.100 +0.000 |"
    assert lines[4] == "| `face_model` | strict top-1, types but sunny | n/a | n/a |"


def test_retrack_overrides_replace_the_runs_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--retrack-param face_mirror=false`` re-scores a fold with that setting, recorded as the run's own."""
    import json

    from facecom_utils import recognition as rec
    import facecom_utils.recognition.face_tracks as face_tracks

    cv = _script()
    run = tmp_path / "fold0" / "03_arcface_recognition"
    run.mkdir(parents=True)
    metrics = {"parameters": {"face_mirror": True, "seed": 3, "output_dir": "elsewhere"},
               "tracks": {"facecom_only": {"threshold": 0.4, "strict_threshold": 0.3}}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    seen = []
    monkeypatch.setattr(rec, "recognition_splits", lambda config: "splits")
    monkeypatch.setattr(face_tracks, "recognition_tracks", lambda config, splits, r: seen.append(config))
    cv.retrack(tmp_path / "fold0", {"face_mirror": False})
    cv.retrack(tmp_path / "fold0")
    assert [c.face_mirror for c in seen] == [False, True] and {c.seed for c in seen} == {3}
    assert seen[0].output_dir == str(run)  # the fold's own folder, never the recorded one
    # a run from before the setting: the descriptor its face_tracks.pt was fitted on (plain), not today's default
    import torch

    del metrics["parameters"]["face_mirror"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    torch.save({"task": "recognition", "headline": "fused"}, run / "face_tracks.pt")
    cv.retrack(tmp_path / "fold0")
    assert seen[-1].face_mirror is False
    # cheap repeats kept on one descriptor are refused beside runs on the other
    (tmp_path / "runs").mkdir()
    (tmp_path / "fold0").rename(tmp_path / "runs" / "fold0")
    (tmp_path / "cheap_repeats.json").write_text(json.dumps({"fold0": [{"repeat": 0, "fraction": 0.8, "face_mirror": True,
                                                                          "values": {"top1": 1.0}}]}))
    with pytest.raises(ValueError, match="mirrored descriptor and the runs' face tracks read the other"):
        cv.run_cheap_repeats(tmp_path, 1, 1, 0.8)


def test_retrack_param_must_name_a_notebook_03_parameter(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    cv = _script()
    for argv, message in ((["--retrack", "--retrack-param", "face_miror=false"], "not a notebook-03 parameter"),
                          (["--retrack-param", "face_mirror=false"], "needs --retrack"),
                          (["--retrack", "--retrack-param", "face_mirror"], "takes KEY=VALUE")):
        monkeypatch.setattr(sys, "argv", ["cv_notebooks.py", *argv])
        with pytest.raises(SystemExit):
            cv.main()
        assert message in capsys.readouterr().err
