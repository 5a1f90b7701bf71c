"""Task B: dlib's face network fine-tuned on FACECOM's distortions, on 3 identity-disjoint folds.

Feeds ``docs/results.md`` § Task B — fine-tuning the face network. Writes ``<out>/finetune_table.md``
(every configuration run into ``--out`` against dlib's own weights, mean ± SD over the folds)::

    python experiments/cv_face_finetune.py                       # -> reports/cv_face_finetune/
    python experiments/cv_face_finetune.py --objectives consistency --frozen-blocks 7

The folds are ``cv_notebooks.py --notebook 03``'s (same seed: the same reported people). In each fold,
15 % of the training identities (seeded per fold) are the validation part that early stopping reads
(mean strict top-1 over the six types other than sunny); the network trains on the rest and is
scored once on the fold's reported people. Every row is described through the face front end after the
restoration of its **folder's** type (:data:`~facecom_utils.face.quality.RESTORATION_FOR`; the
notebooks' estimator picks the same restoration for >= 99 % of every type, so dlib's row approximates the
notebooks' ``face_model_restored`` track; the frozen trunk's activations are kept in float16, for dlib's
row and the fine-tuned ones alike). Descriptors are compared by cosine, gallery =
the reported people's clean photos; strict leaves out each probe's own source photo.

Each network is scored three ways at test time: ``plain`` (one descriptor per chip), ``flip`` (the
mean of the chip's and its mirror image's unit descriptors) and, for a fine-tuned network,
``flip+original`` (that mean averaged with dlib's own). Training rows are every chip and its mirror;
the consistency target is dlib's ``flip`` descriptor of the row's clean source. Early stopping reads
the ``flip`` score.

Resumable: the chips (:class:`~facecom_utils.face.chips.ChipStore`) and the frozen trunk's activations
are cached under ``--cache`` (keyed by the images' contents, the restorations, the chips' settings and
dlib's weights); each (fold, configuration) writes its JSON record with its settings and its weights
(``<out>/fold<i>/<objective>_b<k><tag>.pt``) and is skipped when its record exists; a record made with
other settings under the same name (or another seed / number of folds in the same ``--out``) is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from cv_notebooks import held_out_people
from _common import add_data_root, data_root, markdown_table, spread, write_text
from facecom_utils.common.paths import REPORTS_DIR
from facecom_utils.data.cache import default_cache_dir
from facecom_utils.data.layout import DISTORTION_TYPES, scan_task_b
from facecom_utils.face.chips import ChipStore
from facecom_utils.face.descriptors import mirrored_mean
from facecom_utils.data.features import file_digest
from facecom_utils.face.finetune import (OBJECTIVES, FinetuneConfig, config_dict, finetune, save_finetuned,
                                         source_rows, stock_digest, stock_network, tail_descriptors,
                                         trunk_activations)
from facecom_utils.face.quality import RESTORATION_FOR
from facecom_utils.recognition.embedding import embedding_table
from facecom_utils.metrics.scoring import identity_ranks, score_table
from facecom_utils.recognition.protocol import top1_by_type

SIX = tuple(t for t in DISTORTION_TYPES if t != "sunny")


def inner_split(train_ids: list[str], fraction: float, seed: int) -> set[str]:
    """The validation part of a fold's training identities (``fraction`` of them, seeded)."""
    ids = sorted(train_ids)
    n = max(1, int(round(fraction * len(ids))))
    return set(np.asarray(ids)[np.random.default_rng(seed).permutation(len(ids))[:n]].tolist())


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def load_rows(root: Path, cache: Path, workers: int, blocks: int) -> tuple:
    """``(table, activations, activations of the mirrored chips, original descriptors of both)`` of
    every Task B training row (the activations cached under ``cache``)."""
    table = embedding_table(scan_task_b(root, splits=["train"]))
    restorations = [RESTORATION_FOR.get(d, "identity") if isinstance(d, str) else "identity" for d in table["distortion"]]
    store = ChipStore(cache, workers=workers, progress=True)
    what = [stock_digest(), *(store._dir(r).name for r in sorted(set(restorations))),
            *(f"{file_digest(p)}:{r}" for p, r in zip(table["path"], restorations))]
    key = hashlib.sha256("\n".join(what).encode()).hexdigest()[:12] + f"_b{blocks}"
    files = [cache / f"ft_trunk_{key}.npy", cache / f"ft_trunk_{key}_flip.npy"]
    if not all(f.is_file() for f in files):
        chips = store.chips(table["path"].tolist(), restorations).chips
        for file, view in zip(files, (chips, chips[:, :, ::-1])):
            t0 = time.perf_counter()
            act = trunk_activations(stock_network(), view, blocks)
            print(f"trunk activations of {len(chips)} chips ({blocks} blocks): {time.perf_counter() - t0:.0f} s")
            tmp = file.with_name(f".{file.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, act)
            tmp.replace(file)
        del chips
    act, flip = (np.load(f) for f in files)
    net = stock_network()
    return table, act, flip, tail_descriptors(net, act, blocks), tail_descriptors(net, flip, blocks)


def clean_top1(table, emb: np.ndarray) -> float:
    """Top-1 of every clean photo against the other clean photos (itself left out): the strict protocol with
    clean probes, the ceiling a distortion-proof descriptor would reach on the distorted copies."""
    clean = table["distortion"].isna().to_numpy()
    g, people = emb[clean], table["identity"].to_numpy()[clean]
    st = score_table(g, people, g, people, exclude=np.arange(len(g)))
    valid = st.valid
    return float((identity_ranks(st.scores[valid], st.true_idx[valid]) == 0).mean())


def variants(net_plain: np.ndarray, net_flip: np.ndarray, orig_plain: np.ndarray, orig_flip: np.ndarray,
             tuned: bool) -> dict[str, np.ndarray]:
    """The test-time variants of a network's descriptors: ``plain``; ``flip`` (the mean of a chip's and its
    mirror's unit descriptors, :func:`~facecom_utils.face.descriptors.mirrored_mean`, as the notebooks'
    ``face_mirror``); for a fine-tuned network also ``flip+original`` (that mean with dlib's)."""
    out = {"plain": unit(net_plain), "flip": unit(mirrored_mean(net_plain, net_flip))}
    if tuned:
        out["flip+original"] = unit(out["flip"] + unit(mirrored_mean(orig_plain, orig_flip)))
    return out


def run_settings(args: argparse.Namespace, objective: str) -> dict:
    """Everything a fold's record depends on besides the data: refused when a record was made otherwise."""
    return {"objective": objective, "frozen_blocks": args.frozen_blocks, "epochs": args.epochs, "lr": args.lr,
            "target": args.target, "inner_fraction": args.inner_fraction, "seed": args.seed, "folds": args.folds}


def checked(file: Path, wanted: dict) -> dict:
    """A record, provided it was made with ``wanted`` settings.

    Raises:
        SystemExit: The record was made with other settings (another name via ``--tag``, or another ``--out``).
    """
    record = json.loads(file.read_text())
    made = record.get("settings", {})
    differ = {k: (made.get(k), v) for k, v in wanted.items() if made.get(k) != v}
    if differ:
        raise SystemExit(f"{file}: made with other settings {differ} (recorded, wanted); "
                         "name this configuration with --tag or use another --out")
    return record


def run_fold(i: int, table, act: np.ndarray, flip: np.ndarray, original: np.ndarray, original_flip: np.ndarray,
             held: set[str], args, out: Path) -> dict:
    record_dir = out / f"fold{i}"
    record_dir.mkdir(parents=True, exist_ok=True)
    ids = table["identity"].to_numpy()
    train_ids = sorted(set(ids) - held)
    inner = inner_split(train_ids, args.inner_fraction, args.seed * 100 + i)
    fit = np.isin(ids, sorted(set(train_ids) - inner))
    val = np.isin(ids, sorted(inner))
    rep = np.isin(ids, sorted(held))
    rep_table = table[rep].reset_index(drop=True)
    val_table = table[val].reset_index(drop=True)
    records = {}
    base_file = record_dir / "original.json"
    folds = {"seed": args.seed, "folds": args.folds}
    if not base_file.is_file():
        views = variants(original[rep], original_flip[rep], original[rep], original_flip[rep], tuned=False)
        write_text(base_file, json.dumps({"report": {k: top1_by_type(rep_table, v) for k, v in views.items()},
                                          "settings": folds}))
    records["original"] = checked(base_file, folds)
    if "clean_top1" not in records["original"]:
        views = variants(original[rep], original_flip[rep], original[rep], original_flip[rep], tuned=False)
        records["original"]["clean_top1"] = {k: clean_top1(rep_table, v) for k, v in views.items()}
        write_text(base_file, json.dumps(records["original"]))
    k = args.frozen_blocks
    for objective in args.objectives:
        name = f"{objective}_b{k}{args.tag}"
        file = record_dir / f"{name}.json"
        wanted = run_settings(args, objective)
        if file.is_file():
            records[name] = checked(file, wanted)
            continue
        fit_table = table[fit].reset_index(drop=True)
        src = source_rows(fit_table["path"].to_numpy(), fit_table["source"].to_numpy())
        # target: dlib's descriptor of the row's clean source, averaged with its mirror's (--target source),
        # or the mean of those of every clean photo of the row's person (--target centroid)
        target = unit(unit(original[fit]) + unit(original_flip[fit]))[src]
        if args.target == "centroid":
            people = fit_table["identity"].to_numpy()
            clean = fit_table["distortion"].isna().to_numpy()
            centre = {p: unit(target[clean & (people == p)].mean(0, keepdims=True))[0] for p in set(people)}
            target = np.stack([centre[p] for p in people])
        labels = np.unique(fit_table["identity"].to_numpy(), return_inverse=True)[1]
        config = FinetuneConfig(objective=objective, frozen_blocks=k, epochs=args.epochs, lr=args.lr, seed=args.seed)

        def select(net) -> float:
            emb = unit(unit(tail_descriptors(net, act[val], k)) + unit(tail_descriptors(net, flip[val], k)))
            return top1_by_type(val_table, emb)["strict_six"]

        print(f"fold {i}, {name}: {fit.sum()} training rows (and their mirrors) of {len(set(ids[fit]))} people, "
              f"{val.sum()} validation rows, {rep.sum()} reported rows")
        result = finetune(np.concatenate([act[fit], flip[fit]]), np.concatenate([target, target]),
                          np.concatenate([labels, labels]), config, select,
                          log=lambda line: print(f"  fold {i} {name} {line}", flush=True))
        views = variants(tail_descriptors(result.network, act[rep], k), tail_descriptors(result.network, flip[rep], k),
                         original[rep], original_flip[rep], tuned=True)
        save_finetuned(result.network, record_dir / f"{name}.pt", {"config": config_dict(config), "fold": i})
        rec = {"report": {v: top1_by_type(rep_table, e) for v, e in views.items()}, "best_epoch": result.best_epoch,
               "history": result.history, "seconds": result.seconds, "config": config_dict(config), "settings": wanted}
        write_text(file, json.dumps(rec))
        records[name] = rec
    return records


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def summary_rows(per_fold: list[dict]) -> list[list[str]]:
    """One row per (network, test-time variant): strict six-type mean, per type, sunny, strict and main top-1,
    the paired difference of the six-type mean to dlib's own weights with the same variant, epochs."""
    rows = []
    names = [n for n in per_fold[0] if all(n in f for f in per_fold)]
    for name in names:
        for variant in per_fold[0][name]["report"]:
            reps = [f[name]["report"][variant] for f in per_fold]

            def cell(values: list[float]) -> str:
                return spread(*_mean_sd(values))

            per_type = " ".join(f"{np.mean([r['strict_per_type'].get(t, np.nan) for r in reps]):.3f}" for t in SIX)
            base = [f["original"]["report"].get(variant, f["original"]["report"]["flip"])["strict_six"] for f in per_fold]
            diff = cell([r["strict_six"] - b for r, b in zip(reps, base)]) if name != "original" else "—"
            epochs = ", ".join(str(f[name].get("best_epoch", "-")) for f in per_fold)
            rows.append([name, variant, cell([r["strict_six"] for r in reps]), diff, per_type,
                         cell([r["strict_per_type"].get("sunny", np.nan) for r in reps]),
                         cell([r["strict_top1"] for r in reps]), cell([r["top1"] for r in reps]), epochs])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_root(ap)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--objectives", default=",".join(OBJECTIVES))
    ap.add_argument("--frozen-blocks", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--target", choices=("source", "centroid"), default="source",
                    help="consistency target: the row's clean source, or its person's clean photos' mean")
    ap.add_argument("--tag", default="", help="appended to the configuration's name (e.g. _lr1e-4)")
    ap.add_argument("--inner-fraction", type=float, default=0.15)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPORTS_DIR / "cv_face_finetune")
    args = ap.parse_args()
    args.objectives = [o for o in args.objectives.split(",") if o]
    cache = (args.cache or default_cache_dir()) / "face_model"
    root = data_root(args.data_root, ("Task_B/train",))
    table, act, flip, original, original_flip = load_rows(root, cache, args.workers, args.frozen_blocks)
    for i, held in enumerate(held_out_people(root, "03", args.folds, args.seed)):
        run_fold(i, table, act, flip, original, original_flip, held, args, args.out)
    per_fold = [{"original": json.loads((args.out / f"fold{i}" / "original.json").read_text()),
                 **{f.stem: json.loads(f.read_text()) for f in sorted((args.out / f"fold{i}").glob("*_b*.json"))}}
                for i in range(args.folds)]  # every configuration run so far, this run's and earlier ones
    header = ["network", "test time", "strict, six types (mean ± SD (mean − SD))", "paired − dlib's (same test time)",
              "strict " + " ".join(SIX),
              "strict sunny", "strict top-1", "main top-1", "best epoch per fold"]
    ceiling = ", ".join(
        f"{v} {spread(*_mean_sd([f['original']['clean_top1'][v] for f in per_fold]))}" for v in per_fold[0]["original"]["clean_top1"])
    text = (f"{args.folds} identity-disjoint folds (seed {args.seed}), face descriptors alone after the folder "
            f"type's restoration; `<objective>_b<k>`: fine-tuned with k of 14 blocks frozen\n\n"
            + markdown_table(header, summary_rows(per_fold))
            + f"\n\nThe ceiling, dlib's weights: clean photos against the other clean photos (the strict protocol with "
            f"clean probes): {ceiling}.")
    write_text(args.out / "finetune_table.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
