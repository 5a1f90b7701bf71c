"""experiments/: where the drivers find FACECOM, their cached measurements, and the Markdown tables they write.

Each table writer is fed a tiny synthetic result and must give the exact rows the docs quote; the drivers'
measurements themselves need FACECOM (``tests/test_cv_script.py`` and ``tests/test_sunny_strict_script.py``
cover the two CV-side drivers' logic).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO_ROOT, load_script


def _common():
    return load_script("_common")


# ----------------------------------------------------------------------------- _common


def test_markdown_table_and_cells() -> None:
    c = _common()
    assert c.markdown_table(["a", "b"], [[1, "x|y"], [None, 0.5]]).splitlines() == [
        "| a | b |", "|---|---|", "| 1 | x\\|y |", "| None | 0.5 |"]
    with pytest.raises(ValueError, match="2 columns"):
        c.markdown_table(["a", "b"], [[1]])
    assert c.spread(0.959, 0.0051) == "0.959 ± 0.005 (0.954)"
    assert c.spread(0.959, 0.0051, floor=False) == "0.959 ± 0.005"
    assert c.spread(0.9, float("nan")) == "0.900"  # one fold: no SD
    assert c.spread(None, 0.1) == c.MISSING and c.number(float("nan")) == c.MISSING
    frame = pd.DataFrame({"n": [61, 7], "share": [1.0, float("nan")], "note": ["x", "y"]},
                         index=pd.Index(["clean", "sunny"], name="type"))
    assert c.frame_table(frame).splitlines() == [
        "| type | n | share | note |", "|---|---|---|---|", "| clean | 61 | 1.000 | x |", "| sunny | 7 | n/a | y |"]


def _facecom(root: Path) -> Path:
    (root / "Task_A" / "train").mkdir(parents=True)
    (root / "Task_B" / "train").mkdir(parents=True)
    return root


def test_data_root_is_the_argument_then_the_environment_then_the_repository(tmp_path, monkeypatch) -> None:
    c = _common()
    given, from_env = _facecom(tmp_path / "given"), _facecom(tmp_path / "env")
    monkeypatch.setenv("FACECOM_DATA_ROOT", str(from_env))
    assert c.data_root(str(given)) == given.resolve()
    assert c.data_root(None) == from_env.resolve()
    monkeypatch.delenv("FACECOM_DATA_ROOT")
    if (REPO_ROOT / "Task_B" / "train").is_dir():
        assert c.data_root(None) == REPO_ROOT.resolve()
    else:  # a clone without FACECOM: the driver stops and says where the images go
        with pytest.raises(SystemExit, match="Task_A/ and Task_B/"):
            c.data_root(None)
    with pytest.raises(SystemExit, match="no Task_A/train"):
        c.data_root(str(tmp_path / "given" / "Task_B"), need=("Task_A/train",))


def test_cached_result_is_reused_only_for_the_same_parameters(tmp_path) -> None:
    c = _common()
    calls = []

    def compute():
        calls.append(1)
        return {"value": np.float64(0.5), "n": np.int64(len(calls))}

    file = tmp_path / "m.json"
    assert c.cached(file, {"seed": 0}, compute) == {"value": 0.5, "n": 1}
    assert c.cached(file, {"seed": 0}, compute) == {"value": 0.5, "n": 1}  # read back, not measured
    assert c.cached(file, {"seed": 1}, compute) == {"value": 0.5, "n": 2}  # other parameters: measured again
    assert json.loads(file.read_text())["params"] == {"seed": 1}


# ----------------------------------------------------------------------------- Task A drivers


def test_face_head_paired_table_subtracts_the_same_folds() -> None:
    m = load_script("cv_gender_face")

    def folds(shift: float, order: list[int]) -> pd.DataFrame:
        return pd.DataFrame([{"track": "face", "repeat": r, "fold": f, "balanced_accuracy": 0.9 + 0.01 * f + shift * (f + 1)}
                             for r in (0, 1) for f in order])

    # the mirrored run's rows come in another order: they are matched by (track, repeat, fold), not by position
    table = m.paired_table({"face_model": folds(0.01, [2, 0, 1])}, {"face_model": folds(0.0, [0, 1, 2])},
                           metrics=("balanced_accuracy",)).splitlines()
    # differences 0.01, 0.02, 0.03 in each repeat: mean 0.020, SD 0.009
    assert table[2] == "| `face_model` | balanced_accuracy | +0.020 ± 0.009 (+0.011) | 6 |"
    assert len(table) == 3
    # a metric neither run has (a type without copies) is left out, not a KeyError
    assert m.paired_table({"face_model": folds(0.01, [0, 1, 2])}, {"face_model": folds(0.0, [0, 1, 2])},
                          metrics=("balanced_accuracy", "bal_acc_sunny")).splitlines()[2:] == [table[2]]


def test_face_head_table_names_variants_and_tracks() -> None:
    from facecom_utils.gender.tracks import summarise_folds

    m = load_script("cv_gender_face")
    folds = pd.DataFrame([
        {"track": track, "repeat": 0, "fold": f, "balanced_accuracy": b, "recall_female": 0.9, "roc_auc": 0.95,
         "bal_acc_noisy": b - 0.1, "bal_acc_sunny": s}
        for f, (b, s) in enumerate(((0.90, 0.60), (0.94, 0.70))) for track in ("face", "fused")])
    plain = folds[folds["track"] == "face"].drop(columns="bal_acc_sunny")
    table = m.results_table({"face_model": summarise_folds(plain), "face_model_restored": summarise_folds(folds)})
    assert table.splitlines() == [
        "| track | balanced acc. | female recall | ROC AUC | worst type | noisy | sunny |",
        "|---|---|---|---|---|---|---|",
        "| `face_model` | 0.920 ± 0.028 (0.892) | 0.900 ± 0.000 (0.900) | 0.950 ± 0.000 "
        "| noisy 0.820 ± 0.028 (0.792) | 0.820 ± 0.028 | n/a |",
        "| `face_model_restored` | 0.920 ± 0.028 (0.892) | 0.900 ± 0.000 (0.900) | 0.950 ± 0.000 "
        "| sunny 0.650 ± 0.071 (0.579) | 0.820 ± 0.028 | 0.650 ± 0.071 |",
        "| `fused (face_model_restored)` | 0.920 ± 0.028 (0.892) | 0.900 ± 0.000 (0.900) | 0.950 ± 0.000 "
        "| sunny 0.650 ± 0.071 (0.579) | 0.820 ± 0.028 | 0.650 ± 0.071 |",
    ]


def test_glare_table_one_row_per_variant() -> None:
    m = load_script("cv_glare")
    summary = pd.DataFrame([
        {"fold": f, "members": members, "epochs": 4, "image_size": 128, "balanced_accuracy": b, "recall_female": r,
         "roc_auc": 0.9, "person_balanced_accuracy": b, "seconds": sec}
        for members, rows in ((3, ((1, 0.80, 0.9, 240.4), (0, 0.86, 0.8, 216.0))), (1, ((0, 0.70, 0.5, 110.0),)))
        for f, b, r, sec in rows])
    assert m.glare_table(summary).splitlines() == [
        "| glare expert | balanced acc. | female recall | ROC AUC | person bal. acc. | per fold | fit seconds |",
        "|---|---|---|---|---|---|---|",
        "| 3 networks, 4 epochs, 128 px | 0.830 ± 0.042 (0.788) | 0.850 ± 0.071 (0.779) | 0.900 ± 0.000 "
        "| 0.830 ± 0.042 | 0.860, 0.800 | 216-240 |",
        "| 1 network, 4 epochs, 128 px | 0.700 | 0.500 | 0.900 | 0.700 | 0.700 | 110-110 |",
    ]


def test_glare_fold_roots_default_to_those_of_the_notebook_02_cv(tmp_path, monkeypatch) -> None:
    m = load_script("cv_glare")
    monkeypatch.setattr(m, "REPORTS_DIR", tmp_path)
    with pytest.raises(SystemExit, match="cv_notebooks.py --notebook 02"):
        m.fold_roots(None)
    for i in (1, 0):
        (tmp_path / "cv_notebook02" / f"fold{i}" / "data").mkdir(parents=True)
    assert m.fold_roots(None) == [str(tmp_path / "cv_notebook02" / f"fold{i}" / "data") for i in (0, 1)]
    assert m.fold_roots(["/x/fold0/data"]) == ["/x/fold0/data"]


# ----------------------------------------------------------------------------- measurements


def _values(ours: float, facecom: list[float]) -> dict:
    from facecom_utils.data.distortions import STATISTICS
    from facecom_utils.data.layout import DISTORTION_TYPES

    return {"ours": {t: {s: [ours, ours, ours] for s in STATISTICS} for t in DISTORTION_TYPES},
            "facecom": {t: {s: (facecom if t == "sunny" else []) for s in STATISTICS} for t in DISTORTION_TYPES}}


def test_distortion_tables() -> None:
    from facecom_utils.data.distortions import FACECOM_REFERENCE

    m = load_script("measure_distortions")
    values = _values(0.3, [0.0, 10.0, 20.0, 30.0, 40.0])
    facecom = m.facecom_table(values).splitlines()
    assert facecom[0] == ("| type | mean brightness delta | contrast ratio | edge energy ratio | saturated px frac "
                          "| black px frac | colourfulness ratio | mean abs diff |")  # the doc's header
    assert facecom[-1] == "| sunny" + " | 20.0 [4.0, 36.0]" * 7 + " |"  # median [p10, p90], printed as the doc prints
    assert facecom[2] == "| blurred" + " | n/a" * 7 + " |"
    lines = m.comparison_table(values, {"blurred": 5.934, "sunny": 5.4}).splitlines()
    med, p10, p90 = FACECOM_REFERENCE["lowlight"]["contrast_ratio"]  # 0.3 lands in lowlight's contrast band
    assert f"| lowlight | contrast_ratio | 0.300 [0.300, 0.300] | n/a | {med} [{p10}, {p90}] | yes |" in lines
    assert "| sunny | contrast_ratio | 0.300 [0.300, 0.300] | 20.000 | 0.835 [0.566, 1.02] | **NO** |" in lines
    assert lines[-1] == "ms per 224 px image: blurred 5.93, sunny 5.40"


def _pairs(root: Path) -> Path:
    """Two identities, one clean 32 px photo each with a noisy copy; the second also a foggy one."""
    rng = np.random.default_rng(0)
    for i, kinds in enumerate((("noisy",), ("noisy", "foggy"))):
        folder = root / "Task_B" / "train" / f"Person_{i}"
        (folder / "distortion").mkdir(parents=True)
        clean = rng.integers(40, 200, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(clean).save(folder / f"Person_{i}_0001.jpg", quality=95)
        for kind in kinds:
            noisy = np.clip(clean.astype(int) + rng.integers(-60, 60, clean.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / "distortion" / f"Person_{i}_0001_{kind}.jpg", quality=95)
    return root


def test_restoration_tables_from_a_measurement(tmp_path) -> None:
    m = load_script("measure_restorations")
    root = _pairs(tmp_path / "data")
    result = json.loads(json.dumps(m.measure(root, identities=2, seed=0, tune=False)))  # as cached() reads it back
    assert (result["pairs"], result["clean"], result["tuned"]) == (3, 2, {})
    clean = root / "Task_B" / "train" / "Person_1" / "Person_1_0001.jpg"
    image, target = m.load_pair(clean.parent / "distortion" / "Person_1_0001_foggy.jpg", clean)
    psnr, ssim = m.scores(image, target)
    assert result["base"]["foggy"] == pytest.approx([1, psnr, ssim])
    text = m.restoration_tables(result, identities=2, seed=0)
    names = list(m.RESTORATIONS)
    gain = [f"{result['gain']['foggy'][n][0]:+.2f}" for n in names]
    assert text.splitlines()[0].startswith("2 identities (seed 0): 2 clean images, 3 distorted copies, ")
    assert f"| foggy | 1 | {psnr:.2f} | {ssim:.3f} | " + " | ".join(gain) + " |" in text.splitlines()
    assert [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and " | n | " not in line][:3] \
        == ["| foggy", "| noisy", "| type"]  # the PSNR rows in the package's type order, then the SSIM table
    assert "Tuning" not in text


def test_face_fallback_report() -> None:
    m = load_script("measure_face_fallback")
    result = {
        "settings": {"detector": "hog", "upsample": 1, "workers": 2},
        "clean": {"sample": 150, "clean": 1926, "seed": 0, "sizes": [[224, 224]], "seconds": 12.34, "detected": 150,
                  "median_score": 1.6871, "box": [0.2946, 0.3393, 0.6964, 0.7455], "landmarks": [[0.7889, 0.2895]],
                  "image_landmarks": [[0.6116, 0.4569]], "box_width": 0.4018, "x0_iqr": 0.0, "error_median": 0.0781,
                  "error_p90": 0.1291},
        "types": {"identities": 40, "images": 122, "seconds": 30.0,
                  "rates": [{"type": "clean", "n": 61, "detected": 1.0, "median_score": 1.608},
                            {"type": "sunny", "n": 61, "detected": 0.0820, "median_score": None}],
                  "errors": {"sunny": [56, 0.0712, 0.2081]}},
    }
    lines = m.fallback_report(result).splitlines()
    assert "detected 150/150 = 1.000; median score 1.687" in lines
    assert "fallback box (x0, y0, x1, y1) / image: (0.2946, 0.3393, 0.6964, 0.7455)" in lines  # DEFAULT_FALLBACK's
    assert lines[lines.index("| type | n | detected | median_score |") + 2:][:2] == [
        "| clean | 61 | 1.000 | 1.608 |", "| sunny | 61 | 0.082 | n/a |"]
    assert lines[-1] == "| sunny | 56 | 0.071 | 0.208 |"


def test_face_features_timing_table() -> None:
    m = load_script("face_features")
    stages = [("quality features", 15408, 300.4), ("descriptors, clean", 1926, 99.6)]
    assert m.timing_table(stages, "/c", 2).splitlines() == ["cache /c, 2 workers", "", "| stage | images | seconds |", "|---|---|---|",
            "| quality features | 15,408 | 300 |", "| descriptors, clean | 1,926 | 100 |", "| total |  | 400 |"]


def test_gender_breakdown_by_style_images_and_bootstrap(tmp_path) -> None:
    """experiments/cv_gender_breakdown.py on two tiny folds with known answers."""
    b = load_script("cv_gender_breakdown")
    assert b.person_style("007_frontal") == "NNN_frontal" and b.person_style("Colin_Powell") == "First_Last"
    rows = []
    for fold, people in (("fold0", ["001_frontal", "002_frontal", "Ann_A", "Bob_B"]),
                         ("fold1", ["003_frontal", "004_frontal", "Cat_C", "Dan_D"])):
        for p in people:
            female = p in ("001_frontal", "003_frontal", "Ann_A", "Cat_C")
            n = 1 if p.endswith("frontal") else 5
            for i in range(n):
                for kind in ("clean", "sunny"):
                    # fused is right everywhere except the frontal women's clean images; stacked is right everywhere
                    wrong = female and p.endswith("frontal") and kind == "clean"
                    rows.append({"fold": fold, "path": f"{p}_{i}_{kind}", "label": "female" if female else "male",
                                 "person": p, "kind": kind, "female_fused": female != wrong, "female_stacked": female})
    table = pd.DataFrame(rows)
    counts = table[table["kind"] == "clean"].groupby("person")["path"].count()
    out = b.breakdown(table, counts, ["fused", "stacked"])
    get = lambda group, track, key: out[(out["group"] == group) & (out["track"] == track)][key].iloc[0]  # noqa: E731
    assert get("NNN_frontal", "fused", "recall_female") == 0.0 and get("First_Last", "fused", "recall_female") == 1.0
    assert get("NNN_frontal", "fused", "balanced_accuracy") == 0.5 and get("all", "stacked", "balanced_accuracy") == 1.0
    assert get("1 image", "fused", "persons") == 4 and get("5+ images", "fused", "images") == 20
    assert get("all", "fused", "sunny balanced_accuracy") == 1.0
    # fused on clean: female recall 10/12 pooled; per fold 5/6 -> stacked beats it by 1/6 in every fold
    paired = b.paired_differences(table, ["fused", "stacked"])
    recall = paired[(paired["track"] == "stacked") & (paired["metric"] == "recall_female")].iloc[0]
    assert recall["mean"] == pytest.approx(1 / 6) and recall["sd"] == pytest.approx(0.0)
    boot = b.person_bootstrap(table, "stacked", n_boot=50)
    assert boot["balanced_accuracy"] == [1.0, 1.0]
    low, high = b.person_bootstrap(table, "fused", n_boot=200)["recall_female"]
    assert low < 10 / 12 < high <= 1.0
    text, data = b.report(table, counts, n_boot=20)
    assert "NNN_frontal" in text and "Paired per-fold difference" in text and data["bootstrap"]["stacked"]


def test_gender_breakdown_by_first_name() -> None:
    """The first-name groups and where each track's wrong clean images sit (a dict lexicon, no package)."""
    b = load_script("cv_gender_breakdown")
    lexicon = {"ann": "female", "bob": "male", "kim": None}.get
    agree, other, undecided = b.NAME_GROUPS
    assert b.name_agreement("Ann_A", "female", lambda n: lexicon(n.lower())) == agree
    assert b.name_agreement("Ann_Z", "male", lambda n: lexicon(n.lower())) == other
    assert b.name_agreement("Kim_K", "male", lambda n: lexicon(n.lower())) == undecided
    assert b.name_agreement("Zed_Q", "male", lambda n: lexicon(n.lower())) == undecided
    assert b.name_agreement("007_frontal", "male", lambda n: "male") == undecided  # numbered people have no name
    rows = pd.DataFrame({
        "person": ["Ann_A", "Ann_Z", "Ann_Z", "Bob_B", "Kim_K", "Ann_A"],
        "label": ["female", "male", "male", "male", "female", "female"],
        "kind": ["clean", "clean", "clean", "clean", "clean", "sunny"],
        # fused calls both of Ann_Z's (labelled male) images female and misses Kim_K; the sunny miss is not counted
        "female_fused": [True, True, True, False, False, False],
    })
    rows = b.with_names(rows, lambda n: lexicon(n.lower()))
    errors = b.name_errors(rows, ["fused"])["fused"]
    assert errors[other] == {"male": 2, "female": 0} and errors[undecided] == {"male": 0, "female": 1}
    assert errors[agree] == {"male": 0, "female": 0} and errors["all"] == {"male": 2, "female": 1}
    counts = rows[rows["kind"] == "clean"].groupby("person")["person"].count()
    out = b.breakdown(rows.assign(path=range(len(rows)), fold="fold0"), counts, ["fused"])
    assert out[out["group"] == agree]["balanced_accuracy"].tolist() == [1.0]  # Ann_A and Bob_B both right
    assert out[out["group"] == other]["balanced_accuracy"].isna().all()  # one class only: no balanced accuracy
    assert out[(out["group kind"] == "first name")]["group"].tolist() == list(b.NAME_GROUPS)  # the errors table's order
    agreeing = out[out["group kind"] == "name agrees, images per person"]
    assert agreeing["group"].tolist() == ["1 image"] and agreeing["persons"].tolist() == [2]  # Ann_A and Bob_B
    assert agreeing["images"].tolist() == [2] and agreeing["female persons"].tolist() == [1]
    text, data = b.report(rows.assign(path=range(len(rows)), fold="fold0"), counts, n_boot=5)
    assert "| `fused` | 0 / 0 | 2 / 0 | 0 / 1 | 2 / 1 |" in text and data["name_errors"]["fused"] == errors


def test_gender_breakdown_name_lexicon_keeps_confident_answers_only() -> None:
    pytest.importorskip("gender_guesser")
    sex = load_script("cv_gender_breakdown").name_lexicon()
    assert (sex("Monica"), sex("monica"), sex("Colin")) == ("female", "female", "male")
    assert sex("Kim") is None and sex("Zzyzx") is None  # unisex ("andy") and unknown names decide nothing


def test_gender_breakdown_reads_the_folds_and_a_fixed_stacker_threshold(tmp_path) -> None:
    b = load_script("cv_gender_breakdown")
    folder = tmp_path / "runs" / "fold0" / "02_gender_classification"
    folder.mkdir(parents=True)
    pd.DataFrame({"path": ["a", "b", "c"], "label": ["female", "male", "female"], "person": ["P", "Q", "R"],
                  "kind": ["clean", "clean", "sunny"], "prob_fused": [0.7, 0.2, 0.9], "prob_stacked": [0.45, 0.3, 0.2],
                  "routed_to_glare": [False, False, True]}).to_csv(folder / "track_predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"tracks": {"fused": {"threshold": 0.5},
                                                                "stacked": {"threshold": 0.4}}}))
    rows = b.load_folds(tmp_path, fixed_threshold=0.5)
    assert rows["female_fused"].tolist() == [True, False, True]
    assert rows["female_stacked"].tolist() == [True, False, False]
    assert rows["female_stacked_fixed"].tolist() == [False, False, False]  # 0.45 < 0.5; the routed row keeps its own
    with pytest.raises(SystemExit, match="no finished fold"):
        b.load_folds(tmp_path / "nothing")


def test_face_finetune_fold_trains_only_on_its_training_part(tmp_path, monkeypatch) -> None:
    """The network of a fold never sees a reported identity, and early stopping reads only the validation part."""
    pytest.importorskip("face_recognition_models")
    import argparse

    m = load_script("cv_face_finetune")
    rows = []
    for i in range(12):
        for j in range(2):
            rows.append({"path": f"id{i}/{j}.jpg", "identity": f"id{i}", "distortion": None, "source": None, "role": "gallery"})
    for i in range(12):
        for j in range(2):
            for kind in ("blurred", "noisy"):
                rows.append({"path": f"id{i}/d/{j}_{kind}.jpg", "identity": f"id{i}", "distortion": kind,
                             "source": f"id{i}/{j}.jpg", "role": "probe"})
    table = pd.DataFrame(rows)
    rng = np.random.default_rng(0)
    act = rng.random((len(table), 256, 4, 4)).astype(np.float16)
    flip = rng.random((len(table), 256, 4, 4)).astype(np.float16)
    original = rng.normal(size=(len(table), 128)).astype(np.float32)
    original_flip = rng.normal(size=(len(table), 128)).astype(np.float32)
    held = {"id0", "id1", "id2", "id3"}
    args = argparse.Namespace(inner_fraction=0.25, seed=0, frozen_blocks=13, objectives=["consistency"], epochs=1, lr=1e-3,
                              tag="", target="source", folds=3)
    seen = {}
    real = m.finetune

    def spy(activations, targets, labels, config, select, **kw):
        seen["activations"], seen["labels"] = activations, labels
        calls = []

        def spied_select(net):
            calls.append(1)
            return select(net)

        out = real(activations, targets, labels, config, spied_select, **kw)
        seen["selects"] = len(calls)
        return out

    monkeypatch.setattr(m, "finetune", spy)
    scored = []
    real_top1 = m.top1_by_type
    monkeypatch.setattr(m, "top1_by_type", lambda t, e: scored.append(set(t["identity"])) or real_top1(t, e))
    records = m.run_fold(0, table, act, flip, original, original_flip, held, args, tmp_path)
    inner = m.inner_split(sorted(set(table["identity"]) - held), 0.25, 0)
    fit = ~table["identity"].isin(held | inner).to_numpy()
    assert len(inner) == 2 and not inner & held
    np.testing.assert_array_equal(seen["activations"], np.concatenate([act[fit], flip[fit]]))  # rows and mirrors
    assert len(seen["labels"]) == 2 * fit.sum() and seen["labels"].max() == 12 - 4 - 2 - 1
    # selection scored the validation part only (epoch 0 and epoch 1); the reports scored the held-out people only
    assert seen["selects"] == 2
    assert [s for s in scored if s == inner] and all(s in (inner, held) for s in scored)
    rec = records["consistency_b13"]
    assert set(rec["report"]) == {"plain", "flip", "flip+original"}
    assert (tmp_path / "fold0" / "consistency_b13.pt").is_file()
    rows_out = m.summary_rows([records, records])
    assert [r[:2] for r in rows_out] == [["original", "plain"], ["original", "flip"], ["consistency_b13", "plain"],
                                         ["consistency_b13", "flip"], ["consistency_b13", "flip+original"]]
    same = rec["report"]["flip"]["strict_six"] - records["original"]["report"]["flip"]["strict_six"]
    # a second run resumes from the records; one with another target under the same name is refused
    seen.clear()
    again = m.run_fold(0, table, act, flip, original, original_flip, held, args, tmp_path)["consistency_b13"]
    assert again["report"] == rec["report"] and not seen  # read back, not trained again
    args.target = "centroid"
    with pytest.raises(SystemExit, match="other settings"):
        m.run_fold(0, table, act, flip, original, original_flip, held, args, tmp_path)
    # the paired difference to dlib's weights with the same test time
    assert float(rows_out[3][3].split(" ")[0].replace("\u2212", "-")) == pytest.approx(same, abs=1e-3)


def test_face_finetune_clean_ceiling_leaves_each_photo_out() -> None:
    m = load_script("cv_face_finetune")
    table = pd.DataFrame({"identity": ["a", "a", "b", "b", "c", "a"], "distortion": [None, None, None, None, None, "noisy"]})
    e = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.75, 0.7], [0, 1]], np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    # a's two photos find each other, b's too; c has no other photo (left out); the probe row is not a photo
    assert m.clean_top1(table, e) == 1.0
    e2 = e.copy()
    e2[1] = [0.7, 0.72]  # a's second photo now sits beside c's: a's two photos miss, b's still find each other
    e2[1] /= np.linalg.norm(e2[1])
    assert m.clean_top1(table, e2) == 0.5


def test_xfit_members_never_train_on_their_part(monkeypatch) -> None:
    """Each cross-fitted CNN trains on the persons outside its part and chooses its epoch on the part: spied."""
    import torch

    import facecom_utils.gender.pipeline as pipeline

    m = load_script("cv_gender_xfit")
    persons = pd.DataFrame({"person": [f"p{i}" for i in range(12) for _ in range(2)],
                            "label": ["female" if i % 3 == 0 else "male" for i in range(12) for _ in range(2)]})
    persons["path"] = [f"/x/{p}_{j}.jpg" for j, p in enumerate(persons["person"])]
    parts = m.member_parts(persons, 3, seed=0)
    assert len(parts) == 3 and set().union(*parts) == set(persons["person"])
    assert all(a.isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1:])
    assert all({"p0", "p3", "p6", "p9"} & part for part in parts)  # every part holds women (stratified)
    seen = []

    def spy_pipeline(cfg, splits):
        seen.append((set(splits.train["person"]), set(splits.fold["person"])))
        return "pipe"

    class Fitted:
        model = torch.nn.Linear(1, 1)
        result = type("R", (), {"best_metrics": {"threshold": 0.4}, "train_seconds": 1.0, "best_epoch": 2})()

    monkeypatch.setattr(pipeline, "gender_pipeline", spy_pipeline)
    monkeypatch.setattr(pipeline, "fit_gender", lambda cfg, pipe: Fitted())
    monkeypatch.setattr(pipeline, "predict_proba", lambda model, paths, *a: np.full(len(paths), 0.25))
    splits = type("S", (), {"train": persons.iloc[:16], "fold": persons.iloc[16:], "data_root": Path("/x")})()
    config = pipeline.GenderConfig(output_dir="unused")
    for part in parts:
        out = m.train_member(config, splits, part, Path("/tmp/unused"), {"part": ["a", "b"], "report": ["c"]})
        trained, chosen = seen[-1]
        assert trained == set(persons["person"]) - part and chosen == part
        assert out["threshold"] == 0.4 and out["prob_part"].tolist() == [0.25, 0.25] and len(out["prob_report"]) == 1


def test_xfit_tables_pair_the_same_folds() -> None:
    m = load_script("cv_gender_xfit")

    def fold(shift: float) -> dict:
        base = {"balanced_accuracy": 0.9, "recall_female": 0.8, "roc_auc": 0.95,
                "per_distortion": {"noisy": 0.9, "sunny": 0.8}}
        out = {t: {**base, "per_distortion": dict(base["per_distortion"])} for t in m.TRACKS}
        out["stacked_xfit"]["balanced_accuracy"] = 0.9 + shift
        out["stacked_xfit"]["per_distortion"]["sunny"] = 0.8 - shift
        return out

    table, paired = m.tables([fold(0.01), fold(0.03)])
    assert "| `stacked_xfit` | 0.920 ± 0.014 (0.906) |" in table
    line = next(row for row in paired.splitlines() if row.startswith("| `stacked_xfit` − `fused`"))
    assert "+0.020 ± 0.014 (+0.006)" in line and "-0.020 ± 0.014 (-0.034)" in line and "+0.010 +0.030" in line


def test_glare_synthetic_variants_are_paired_by_fold() -> None:
    m = load_script("cv_glare")
    rows = [{"fold": f, "members": 3, "epochs": 4, "image_size": 128, "synthetic": n, "balanced_accuracy": b,
             "recall_female": 0.8, "roc_auc": 0.9, "person_balanced_accuracy": b, "seconds": 200.0}
            for f, (b0, b1) in enumerate(((0.80, 0.83), (0.84, 0.85), (0.82, 0.81))) for n, b in ((0, b0), (1, b1))]
    summary = pd.DataFrame(rows)
    table = m.glare_table(summary)
    assert "| 3 networks, 4 epochs, 128 px, + 1 synthetic glare per copy | 0.830 ± 0.020 (0.810) |" in table
    paired = m.glare_paired(summary).splitlines()[-1]
    assert "+0.010 ± 0.020 (-0.010)" in paired and "+0.030 +0.010 -0.010" in paired
    assert m.glare_paired(summary[summary["synthetic"] == 0]) == ""


def test_synthetic_glare_is_seeded_and_reaches_only_the_members_training(tmp_path, monkeypatch) -> None:
    """Renderings are reproducible per (seed, image, copy); a member trains on those of its fitted persons only."""
    import torch

    import facecom_utils.gender.glare as glare

    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 + 40 * i, np.uint8)).save(tmp_path / f"s{i}.png")
    sources = [str(tmp_path / "s0.png"), str(tmp_path / "s1.png")]
    a, b = glare.synthetic_glare(sources, 32, 2, seed=3), glare.synthetic_glare(sources, 32, 2, seed=3)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a[0], a[1])
    assert a.float().mean() > glare._load(sources, 32).float().mean()  # glare brightens

    trained = []

    def spy(X, y, persons, **kw):
        trained.append((len(X), set(persons)))
        return torch.nn.Linear(1, 1), type("R", (), {"history": {}})()

    monkeypatch.setattr(glare, "_train_network", spy)
    monkeypatch.setattr(glare, "_load", lambda paths, size: torch.zeros(len(paths), 3, size, size))
    monkeypatch.setattr(glare.GlareCNN, "probabilities", lambda self, paths, **kw: np.full(len(paths), 0.5))
    persons = np.array(["p0", "p1", "p2", "p3"])
    splits = [(np.array([0, 1]), np.array([2, 3])), (np.array([2, 3]), np.array([0, 1]))]
    extra = (torch.ones(8, 3, 8, 8), np.repeat([0, 1, 0, 1], 2), np.repeat(persons, 2))
    _, held, _ = glare._fit_members(["a", "b", "c", "d"], np.array([0, 1, 0, 1]), persons, splits, 0,
                                    {"image_size": 8, "device": "cpu"}, extra)
    assert trained == [(6, {"p0", "p1"}), (6, {"p2", "p3"})] and len(held) == 4


def test_glare_run_names_round_trip_and_keep_the_earlier_runs_names() -> None:
    m = load_script("cv_glare")
    assert m.file_name(2, 0, **m.SHIPPED) == "fold2_members3_epochs4_size128_seed0.npz"
    assert m.file_name(0, 1, synthetic=1) == "fold0_members3_epochs4_size128_seed1_synthetic1.npz"
    name = m.file_name(1, 0, init="cnn", lr=3e-4, image_size=160)
    assert name == "fold1_members3_epochs4_size160_seed0_initcnn_lr0.0003.npz"
    assert m.parse_name(name) == {"fold": 1, "seed": 0, "members": 3, "epochs": 4, "image_size": 160,
                                  "synthetic": 0, "init": "cnn", "lr": 3e-4}
    assert m.parse_name("fold0_members3_epochs4_size128_seed0.npz")["init"] == "imagenet"
    assert m.parse_name("summary.csv") is None and m.parse_name("fold0_members3.npz") is None
    assert m.parse_name(m.file_name(0, 0, lr=1e-5)) ["lr"] == 1e-5
    for spelt_out in ("_lr0.001", "_synthetic0", "_initimagenet", "_lr-"):  # never written: not a second shipped run
        assert m.parse_name(f"fold0_members3_epochs4_size128_seed0{spelt_out}.npz") is None
    with pytest.raises(ValueError, match="six significant digits"):
        m.file_name(0, 0, lr=1.23456789e-4)


def test_glare_summary_is_rebuilt_from_every_saved_run_and_paired_with_the_shipped_one(tmp_path, monkeypatch) -> None:
    """Runs from different command lines in one folder all reach the table; each variant is paired fold by fold
    with the shipped expert of the same seed, and scored against its fold's own labels."""
    m = load_script("cv_glare")
    labels = {0: ["female", "male", "male", "female"], 1: ["male", "female", "male", "female"]}
    monkeypatch.setattr(m, "sunny_rows", lambda root, split: pd.DataFrame(
        {"label": labels[int(root[-1])], "person": ["a", "b", "c", "d"], "path": list("wxyz")}))
    right = {0: [0.9, 0.1, 0.2, 0.8], 1: [0.1, 0.9, 0.2, 0.8]}  # every image right at 0.5
    shipped = {0: [0.1, 0.1, 0.2, 0.8], 1: [0.1, 0.9, 0.6, 0.8]}  # fold 0 misses a woman, fold 1 a man
    for f in (0, 1):
        np.savez(tmp_path / m.file_name(f, 0), prob=shipped[f], threshold=0.5, seconds=10.0)
        np.savez(tmp_path / m.file_name(f, 0, init="cnn", lr=3e-4), prob=right[f], threshold=0.5, seconds=12.0)
        np.savez(tmp_path / m.file_name(f, 1, init="cnn"), prob=right[f], threshold=0.5, seconds=12.0)
    np.savez(tmp_path / m.file_name(0, 0, image_size=160), prob=right[0], threshold=0.5, seconds=30.0)
    np.savez(tmp_path / m.file_name(2, 0), prob=right[0], threshold=0.5, seconds=30.0)  # a third fold: not given
    (tmp_path / "notes.npz").write_bytes(b"")  # not a run: ignored
    summary = m.summarise(tmp_path, ["/x/fold0", "/x/fold1"])
    assert len(summary) == 7 and set(summary["fold"]) == {0, 1}
    table = m.glare_table(summary)
    assert "| 3 networks, 4 epochs, 128 px, seed 0 | 0.750 ± 0.000 (0.750) | 0.750 ± 0.354 (0.396) |" in table
    assert "| 3 networks, 4 epochs, 128 px, from the fold's gender CNN, lr 0.0003, seed 0 | 1.000 ± 0.000 (1.000) |" in table
    assert "| 3 networks, 4 epochs, 160 px, seed 0 | 1.000 |" in table
    assert table.splitlines()[2].startswith("| 3 networks, 4 epochs, 128 px, seed 0 |")  # the shipped row first
    paired = m.glare_paired(summary).splitlines()
    line = next(row for row in paired if "gender CNN, lr 0.0003, seed 0" in row)
    # fold 0 gains a woman (female recall +0.5), fold 1 a man (female recall unchanged)
    assert "+0.250 ± 0.000 (+0.250)" in line and "+0.250 ± 0.354 (-0.104)" in line and "+0.250 +0.250" in line
    assert next(row for row in paired if "160 px" in row).count("n/a") == 3  # one fold: no spread to pair
    assert any("seed 1: no shipped run of its seed and folds to pair with" in row for row in paired)
    np.savez(tmp_path / m.file_name(1, 0, image_size=160), prob=right[0][:3], threshold=0.5, seconds=1.0)
    with pytest.raises(SystemExit, match="another fold root"):
        m.summarise(tmp_path, ["/x/fold0", "/x/fold1"])


def test_run_config_keeps_the_configs_fields_and_applies_overrides() -> None:
    """A finished run's recorded parameters rebuild its config: unknown parameters are dropped, overrides win."""
    common = load_script("_common")
    from facecom_utils.gender.pipeline import GenderConfig

    recorded = {"image_size": 96, "epochs": 3, "seed": 7, "show_plots": True, "output_dir": "/old"}
    config = common.run_config(GenderConfig, recorded, output_dir="/new", progress=False)
    assert (config.image_size, config.epochs, config.seed, config.output_dir, config.progress) == (96, 3, 7, "/new", False)
    assert not hasattr(config, "show_plots") and recorded["output_dir"] == "/old"
    with pytest.raises(ValueError, match="takes no epohcs"):
        common.run_config(GenderConfig, recorded, epohcs=2)


def test_glare_starts_from_the_cnn_of_the_folds_own_notebook_02_run(tmp_path) -> None:
    m = load_script("cv_glare")
    root = tmp_path / "cv" / "fold1" / "data"
    with pytest.raises(SystemExit, match="no notebook-02 CNN"):
        m.cnn_checkpoint(str(root))
    best = tmp_path / "cv" / "runs" / "fold1" / "02_gender_classification" / "checkpoints" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"")
    assert m.cnn_checkpoint(str(root)) == best
