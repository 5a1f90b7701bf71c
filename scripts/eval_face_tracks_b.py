"""Task B face-model tracks on a notebook-03 run's held-out identities (resumable via the caches).

    python scripts/eval_face_tracks_b.py RUN_DIR --data-root ../shared/facecom

Reads the run's saved FACECOM-only embeddings of its validation fold (role ``fold``) and its
reported identities (role ``report``), computes dlib descriptors of the same images (unrestored, and
after the restoration the distortion estimator picks from each image's pixels; the estimator is
fitted on Task B training images of identities in neither role), and scores four tracks with the
project's protocol (main and strict, per type): ``facecom_only``, ``face_model``,
``face_model_restored`` and ``fused``. The fusion is per probe: score = w * cos(face model) +
(1 - w) * cos(FACECOM embedder), with one weight per *estimated* type, chosen on the ``fold`` role
only (mean of main and strict top-1) and applied unchanged to ``report``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from facecom_utils.cache import default_cache_dir
from facecom_utils.data import scan_task_b
from facecom_utils.face_model import DescriptorStore
from facecom_utils.quality import DistortionEstimator, quality_feature_matrix
from facecom_utils.recognition.embedding import load_embeddings
from facecom_utils.recognition.face_tracks import choose_fusion_weights, fuse_embeddings
from facecom_utils.recognition.protocol import protocol_metrics

def top1s(table: pd.DataFrame, emb: np.ndarray) -> dict:
    m = protocol_metrics(table, emb, threshold=0.5, seed=0)
    return {"top1": m["top1"], "strict_top1": m["strict_top1"], "per_distortion": m["per_distortion"],
            "strict_per_distortion": m["strict_per_distortion"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--data-root", default="../shared/facecom")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cache = Path(args.cache or default_cache_dir()) / "face_model"
    store = DescriptorStore(cache, workers=args.workers, progress=True)
    roles = {r: load_embeddings(args.run_dir, r) for r in ("fold", "report")}
    used = set().union(*(set(t["identity"]) for t, _ in roles.values()))
    train = scan_task_b(args.data_root, splits=("train",))
    train = train[~train["identity"].isin(used)]
    est = DistortionEstimator.fit(quality_feature_matrix(train["path"], cache_dir=cache),
                                  train["distortion"].fillna("clean").tolist())
    data = {}
    for role, (table, emb) in roles.items():
        q = quality_feature_matrix(table["path"], workers=args.workers, cache_dir=cache)
        kinds = est.predict(q)
        data[role] = dict(table=table, facecom=emb / np.linalg.norm(emb, axis=1, keepdims=True),
                          face=store.describe(table["path"].tolist()).normalised(),
                          restored=store.describe(table["path"].tolist(), est.restorations(q)).normalised(),
                          kinds=kinds, gallery=table["distortion"].isna().to_numpy())
    # per estimated type, the weight of the (restored) face model, chosen on the fold role only
    fold = data["fold"]
    weights = choose_fusion_weights(fold["table"], fold["restored"], fold["facecom"], fold["kinds"])
    print(f"fold-chosen face-model weights per estimated type: {weights}", flush=True)
    results = {}
    for role, d in data.items():
        w_probe = np.array([weights.get(k, 0.0) for k in d["kinds"]])
        tracks = {"facecom_only": d["facecom"], "face_model": d["face"], "face_model_restored": d["restored"],
                  "fused": fuse_embeddings(d["restored"], d["facecom"], w_probe, d["gallery"])}
        results[role] = {name: top1s(d["table"], emb) for name, emb in tracks.items()}
        for name, m in results[role].items():
            print(f"{role:6} {name:20} top1 {m['top1']:.4f} strict {m['strict_top1']:.4f} | "
                  + " ".join(f"{k[:4]} {v:.2f}/{m['strict_per_distortion'][k]:.2f}" for k, v in m["per_distortion"].items()),
                  flush=True)
    out = Path(args.out or Path(args.run_dir) / "face_tracks_b.json")
    out.write_text(json.dumps({"weights": weights, "results": results}, indent=1, default=float))
    print(out)


if __name__ == "__main__":
    main()
