"""What bounds strict sunny: two measurements on finished notebook-03 runs (the CV folds', by default).

Feeds ``docs/results.md`` § "Task B — what bounds strict sunny" with ``<out>/sunny_strict.md`` (one row
per run: its strict sunny probes, the saturated share of their frames, top-1 as is, with the oracle
periphery, and with query expansion chosen on the run's validation fold, beside the mean over every
setting), rewritten from the saved ``<out>/<run>.json`` results every time the driver runs::

    python experiments/measure_sunny_strict.py            # reports/cv_notebook03/runs/fold*/03_arcface_recognition
    python experiments/measure_sunny_strict.py /x/runs/fold0/03_arcface_recognition --out reports/sunny_strict

The strict protocol scores a sunny probe against the gallery with the probe's own clean source left
out, so the probe must be recognised from another photo of the person. This driver measures, on each
run's reported split (people the run never trained on):

* **oracle periphery**: the embedder is given the clean source photo with exactly the pixels that
  glare saturated (every channel >= ``--saturated``) set to white. Every pixel the glare did not
  saturate is then perfect: a ceiling for restorations that repair the unsaturated pixels (only one
  that invents the hidden face could pass it). Shown beside the sunny probes as they are, and the
  saturated share of the frame.
* **query expansion with dlib**: each gallery photo's FACECOM cosine plus ``lam`` times how well
  dlib's descriptor of that (clean) photo agrees with the probe's other top-``k`` photos (weights
  ``softmax(cosine / tau)``; with ``loo`` off a photo may vote for itself). The source is left out
  of the expansion too. Each setting of :data:`GRID` is scored on the run's validation fold and on the
  reported split; the one best on the fold is the estimate, the mean over all settings is shown beside it.

Top-1 is scored by identity (the maximum over an identity's photos), ties against the probe, on
probes whose identity has two or more clean photos, as in :mod:`facecom_utils.metrics.scoring`.
A run whose JSON is in ``--out`` (same ``--saturated``) is not measured again. Cost per run (not timed):
embedding its strict sunny probes' oracle images once on the CPU, then the 36 settings of :data:`GRID`
(dlib descriptors of the gallery come from the cache, computed when missing).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from _common import cached, markdown_table, number, write_text
from facecom_utils.common.paths import REPORTS_DIR
from facecom_utils.data.cache import default_cache_dir
from facecom_utils.face.descriptors import DescriptorStore
from facecom_utils.recognition.embedding import extract_embeddings
from facecom_utils.recognition.model import load_recognition_model
from facecom_utils.train.rundir import FOLD_ROLE, REPORT_ROLE, RunDir

GRID = {"k": (5, 10, 20), "tau": (0.05, 0.2), "lam": (0.25, 0.5, 1.0), "loo": (True, False)}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class StrictSunny:
    """The sunny probes of one role (with two or more clean photos of their identity) and its gallery."""

    def __init__(self, rundir: RunDir, role: str, store: DescriptorStore | None, kind: str = "sunny") -> None:
        table, emb = rundir.load_embeddings(role)
        emb = _unit(emb)
        gallery = table["distortion"].isna().to_numpy()
        self.gallery_table = table[gallery].reset_index(drop=True)
        self.g = emb[gallery]
        identities = self.gallery_table["identity"].to_numpy()
        self.uniq, self.codes = np.unique(identities, return_inverse=True)
        counts = np.bincount(self.codes)
        rows = np.flatnonzero((table["distortion"] == kind).to_numpy())
        truth = np.searchsorted(self.uniq, table["identity"].to_numpy()[rows])
        keep = counts[truth] >= 2
        self.rows, self.truth = rows[keep], truth[keep]
        self.table = table
        self.p = emb[self.rows]
        where = {p: i for i, p in enumerate(self.gallery_table["path"])}
        self.source = np.array([where.get(s, -1) for s in table["source"].to_numpy()[self.rows]])
        if (self.source < 0).any():
            raise ValueError(f"{role}: {int((self.source < 0).sum())} {kind} probes have no source photo in the gallery")
        self.faces = (None if store is None
                      else store.describe(self.gallery_table["path"].tolist()).normalised())

    def top1(self, scores: np.ndarray) -> float:
        """Identity top-1 of ``[P, G]`` scores (source columns already -inf)."""
        per_identity = np.full((len(scores), len(self.uniq)), -np.inf)
        for k in range(len(self.uniq)):
            per_identity[:, k] = scores[:, self.codes == k].max(axis=1)
        true = per_identity[np.arange(len(scores)), self.truth]
        return float(np.mean((per_identity >= true[:, None]).sum(axis=1) == 1))

    def scores(self, probes: np.ndarray | None = None) -> np.ndarray:
        s = (self.p if probes is None else probes) @ self.g.T
        s[np.arange(len(s)), self.source] = -np.inf
        return s

    def expanded(self, k: int, tau: float, lam: float, loo: bool) -> np.ndarray:
        s = self.scores()
        top = np.argsort(-s, axis=1)[:, :k]                                   # [P, k], never the source
        st = np.take_along_axis(s, top, axis=1)
        w = np.exp((st - st[:, :1]) / tau)                                    # [P, k]
        agree = np.einsum("gd,pkd->pgk", self.faces, self.faces[top])         # [P, G, k]
        weights = np.broadcast_to(w[:, None, :], agree.shape).copy()
        if loo:  # a photo does not vote for itself
            weights[np.arange(len(s))[:, None], top, np.arange(k)[None, :]] = 0.0
        consensus = (agree * weights).sum(-1) / np.maximum(weights.sum(-1), 1e-12)
        out = s + lam * consensus
        out[np.arange(len(s)), self.source] = -np.inf
        return out


def oracle_periphery(rundir: RunDir, data: StrictSunny, saturated: int) -> dict[str, float]:
    model, payload = load_recognition_model(rundir.best_checkpoint, "cpu")
    cfg = payload.get("config", {})
    shares, paths = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n, i in enumerate(data.rows):
            sunny = np.asarray(Image.open(data.table["path"].iat[i]).convert("RGB"))
            clean = np.asarray(Image.open(data.table["source"].iat[i]).convert("RGB").resize(sunny.shape[1::-1]))
            mask = sunny.min(axis=2) >= saturated
            shares.append(float(mask.mean()))
            path = f"{tmp}/{n}.png"
            Image.fromarray(np.where(mask[..., None], 255, clean).astype(np.uint8)).save(path)
            paths.append(path)
        emb = extract_embeddings(model, paths, image_size=int(cfg.get("image_size", 112)), batch_size=64,
                                 device="cpu", flip_tta=bool(cfg.get("flip_tta", True)),
                                 face_crop=float(cfg.get("face_crop", 1.0)),
                                 source=str(payload.get("embedding_source", "neck")),
                                 tta_crops=tuple(cfg.get("tta_crops") or ()))
    return {"saturated_share": float(np.mean(shares)), "as_is": data.top1(data.scores()),
            "oracle_periphery": data.top1(data.scores(_unit(emb)))}


def measure(run_dir: Path, store: DescriptorStore, saturated: int) -> dict:
    """Both measurements on one notebook-03 run: the oracle periphery, then query expansion over :data:`GRID`."""
    rundir = RunDir(run_dir)
    fold, report = StrictSunny(rundir, FOLD_ROLE, store), StrictSunny(rundir, REPORT_ROLE, store)
    result = {"n_probes": {"fold": len(fold.rows), "report": len(report.rows)}}
    result.update(oracle_periphery(rundir, report, saturated))
    print(f"{run_dir}: {len(report.rows)} strict sunny probes, saturated share {result['saturated_share']:.3f}; "
          f"top-1 as is {result['as_is']:.3f}, oracle periphery {result['oracle_periphery']:.3f}", flush=True)
    settings = []
    for k, tau, lam, loo in itertools.product(*GRID.values()):
        settings.append({"k": k, "tau": tau, "lam": lam, "loo": loo,
                         "fold": fold.top1(fold.expanded(k, tau, lam, loo)),
                         "report": report.top1(report.expanded(k, tau, lam, loo))})
    best = max(settings, key=lambda r: r["fold"])  # the first of equals, in grid order
    result.update(query_expansion_chosen=best, query_expansion_mean=float(np.mean([r["report"] for r in settings])),
                  query_expansion_fold_before=fold.top1(fold.scores()), query_expansion=settings)
    print(f"query expansion: chosen on the fold {best} -> reported {best['report']:.3f}; "
          f"mean over {len(settings)} settings {result['query_expansion_mean']:.3f}", flush=True)
    return result


def sunny_table(results: dict[str, dict]) -> str:
    """The docs' table: one row per run, from :func:`measure`'s results.

    Args:
        results: Run name -> its result, in row order.

    Returns:
        Columns: run, strict sunny probes (reported), saturated share, top-1 as is, with the oracle
        periphery, with query expansion (the setting best on the fold; the setting), the mean over all settings.
    """
    rows = []
    for name, r in results.items():
        best = r["query_expansion_chosen"]
        setting = f"k={best['k']}, tau={best['tau']}, lam={best['lam']}, loo={'on' if best['loo'] else 'off'}"
        rows.append([name, r["n_probes"]["report"], number(r["saturated_share"]), number(r["as_is"]),
                     number(r["oracle_periphery"]), number(best["report"]), setting,
                     number(r["query_expansion_mean"])])
    return markdown_table(["run", "strict sunny probes", "saturated share", "top-1 as is", "oracle periphery",
                           "query expansion (chosen on the fold)", "its setting", "mean over all settings"], rows)


def run_name(run_dir: Path) -> str:
    """A run's row name: its folder, or the folder above when it is named after the notebook (``fold0``)."""
    return run_dir.parent.name if run_dir.name.startswith("03_") else run_dir.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="*", type=Path,
                    help="notebook-03 output folders (hold embeddings/ and checkpoints/); default: the folds of "
                         "reports/cv_notebook03")
    ap.add_argument("--saturated", type=int, default=245)
    ap.add_argument("--cache-dir", default=None, help="dlib descriptor cache (default: the package's)")
    ap.add_argument("--out", type=Path, default=REPORTS_DIR / "sunny_strict",
                    help="folder of the per-run JSON results and sunny_strict.md")
    args = ap.parse_args()
    run_dirs = args.run_dirs or sorted((REPORTS_DIR / "cv_notebook03" / "runs").glob("fold*/03_arcface_recognition"))
    if not run_dirs:
        raise SystemExit("no notebook-03 runs given, and none in reports/cv_notebook03: run "
                         "experiments/cv_notebooks.py --notebook 03 first, or name run folders")
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir() / "face_model"
    for run_dir in run_dirs:  # each run's face tracks on the descriptor they were fitted on (face_tracks.pt records it)
        mirror = bool((RunDir(run_dir).load_tracks("recognition") or {}).get("face_mirror", False))
        store = DescriptorStore(cache, mirror=mirror)
        cached(args.out / f"{run_name(run_dir)}.json",
               {"run_dir": str(run_dir.resolve()), "saturated": args.saturated, "face_mirror": mirror},
               lambda: measure(run_dir, store, args.saturated))
    results = {f.stem: json.loads(f.read_text())["result"] for f in sorted(args.out.glob("*.json"))}
    print(write_text(args.out / "sunny_strict.md", sunny_table(results)).read_text())


if __name__ == "__main__":
    main()
