"""experiments/cv_notebooks.py: the fold data roots it links are person-disjoint and cover everyone once."""

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
