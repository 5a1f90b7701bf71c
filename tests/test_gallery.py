"""``facecom verify`` and ``facecom enroll`` score with the run's headline track, as notebooks 03 and 04 do.

The run: one epoch on the demo plus notebook 03's face-model tracks (headline ``fused``: dlib's restored
descriptor, the FACECOM embedder and the copy evidence, calibrated per estimated type).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_runs import recognition_run
from facecom_utils.cli import commands as cli


@pytest.fixture(scope="module")
def fused_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return recognition_run(tmp_path_factory, demo_root, tracks=True)


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _pairs(table, emb: np.ndarray) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Per distortion type, one probe against its source photo, another photo of its person, and another person."""
    clean = table[table["distortion"].isna()]
    row = {p: k for k, p in enumerate(table["path"])}
    pairs: list[tuple[str, str]] = []
    for _, probe in table[table["distortion"].notna()].groupby("distortion").head(1).iterrows():
        own = clean[clean["identity"] == probe["identity"]]["path"].tolist()
        other = clean[clean["identity"] != probe["identity"]]["path"].tolist()
        references = [probe["source"], *[p for p in own if p != probe["source"]][:1], other[0]]
        pairs += [(ref, probe["path"]) for ref in references]
    expected = np.array([float(emb[row[b]] @ emb[row[a]]) for a, b in pairs])
    return pairs, expected


def test_verify_reproduces_the_runs_own_scores_and_decisions(fused_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Scores of the reported split as notebook 04 reads them (rebuilt from the run folder), the fold's thresholds."""
    from facecom_utils.recognition.analysis import load_recognition_run

    files = load_recognition_run(fused_run)
    assert files.track == "fused"
    pairs, expected = _pairs(*files.report)
    pair_file = tmp_path / "lists" / "pairs.csv"
    pair_file.parent.mkdir()
    with pair_file.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["reference", "probe"])
        writer.writerow([os.path.relpath(pairs[0][0], pair_file.parent), pairs[0][1]])  # relative to the CSV's folder
        writer.writerows(pairs[1:])
    for protocol, threshold in (("main", files.threshold), ("strict", files.strict_threshold)):
        out = tmp_path / f"{protocol}.csv"
        assert cli.main(["verify", str(fused_run), "--pairs", str(pair_file), "--protocol", protocol, "-o", str(out),
                         "--device", "cpu"]) == 0
        rows = _rows(out.read_text())
        assert [(r["reference"], r["probe"]) for r in rows] == [(str(Path(a).resolve()), str(Path(b).resolve())) for a, b in pairs]
        scores = np.array([float(r["score"]) for r in rows])
        np.testing.assert_allclose(scores, expected, atol=1e-4)
        (shown,) = {r["threshold"] for r in rows}
        assert float(shown) == pytest.approx(threshold, abs=1e-6)
        clear = np.abs(expected - threshold) > 1e-3
        assert [r["decision"] for r, c in zip(rows, clear) if c] == [
            "match" if s >= threshold else "no_match" for s, c in zip(expected, clear) if c]
    assert {r["decision"] for r in rows} == {"match", "no_match"}  # the pairs exercise both sides
    capsys.readouterr()
    reference, probe = pairs[-1]
    assert cli.main(["verify", str(fused_run), reference, probe, "--device", "cpu"]) == 0
    (row,) = _rows(capsys.readouterr().out)
    assert list(row) == ["reference", "probe", "score", "threshold", "decision", "error"]
    assert float(row["score"]) == pytest.approx(expected[-1], abs=1e-4) and row["error"] == ""


def test_enrolled_gallery_gives_the_folder_gallerys_predictions(fused_run: Path, demo_root: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`identify --gallery gallery.pt` embeds only the probes: the folder's predictions, scores within 1e-5."""
    from facecom_utils.metrics.scoring import identity_scores
    from facecom_utils.recognition.face_tracks import run_embeddings
    from facecom_utils.recognition.gallery import run_fingerprint

    gallery_dir = demo_root / "Task_B" / "val"
    probes = [str(p.resolve()) for p in sorted(gallery_dir.glob("*/distortion/*.jpg"))[::4]]
    enrolled = tmp_path / "gallery.pt"
    assert cli.main(["enroll", str(fused_run), str(gallery_dir), "-o", str(enrolled), "--device", "cpu"]) == 0
    stored = torch.load(enrolled, weights_only=True)
    assert stored["track"] == "fused" and stored["run"] == str(fused_run)
    assert stored["fingerprint"] == run_fingerprint(fused_run / "checkpoints" / "best.pt", fused_run / "face_tracks.pt")
    assert len(stored["paths"]) == len(list(gallery_dir.glob("*/*.jpg")))
    capsys.readouterr()
    found = {}
    for gallery in (gallery_dir, enrolled):
        assert cli.main(["identify", str(fused_run), *probes, "--gallery", str(gallery), "--device", "cpu"]) == 0
        found[gallery] = _rows(capsys.readouterr().out)
    folder, file = found[gallery_dir], found[enrolled]
    assert [(r["path"], r["prediction"], r["decision"]) for r in folder] == [
        (r["path"], r["prediction"], r["decision"]) for r in file]
    np.testing.assert_allclose([float(r["score"]) for r in file], [float(r["score"]) for r in folder], atol=1e-5)
    # the scoring `identify RUN_DIR` always had: the run's headline track over gallery and probes at once
    gallery_paths = [str(p.resolve()) for p in sorted(gallery_dir.glob("*/*.jpg"))]
    is_gallery = np.arange(len(gallery_paths) + len(probes)) < len(gallery_paths)
    emb, _, track = run_embeddings(fused_run, gallery_paths + probes, is_gallery, "cpu")
    scores, columns = identity_scores(emb[~is_gallery], emb[is_gallery], [Path(p).parent.name for p in gallery_paths])
    assert track == "fused"
    assert [r["prediction"] for r in file] == [columns[k] for k in scores.argmax(axis=1)]
    np.testing.assert_allclose([float(r["score"]) for r in file], scores.max(axis=1), atol=1e-4)
