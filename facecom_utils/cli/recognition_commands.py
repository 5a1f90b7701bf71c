"""``facecom evaluate-recognition``, ``identify``, ``enroll`` and ``verify``: a Task B run folder on images.

A run folder scores with its headline track, a ``best.pt`` alone with the FACECOM-only embedder
(:class:`~facecom_utils.recognition.gallery.RunScorer`), at the thresholds the run's validation fold chose.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from facecom_utils.cli.inputs import (CliError, collect_images, data_root, gallery_images, readable_split, screen,
                                      warn)
from facecom_utils.cli.options import add_batch_options, add_evaluation_arguments, add_run_argument, subcommand
from facecom_utils.cli.outputs import emit_metrics, error_row, finish, write_rows
from facecom_utils.cli.runs import resolve_run

__all__ = ["VERIFY_FIELDS", "cmd_enroll", "cmd_evaluate_recognition", "cmd_identify", "cmd_verify", "register"]

#: The columns of ``verify``'s CSV.
VERIFY_FIELDS = ("reference", "probe", "score", "threshold", "decision", "error")


def cmd_evaluate_recognition(args: argparse.Namespace) -> int:
    """The Task B protocol (main and strict) of a run's headline track, or of a best.pt's embedder."""
    from facecom_utils.recognition import evaluate_recognition
    from facecom_utils.recognition.face_tracks import evaluate_run

    run = resolve_run(args.run, "recognition", args.command)
    if run.is_dir:  # a run folder: its headline track (the fused one included)
        root = readable_split(args, "Task_B")
        metrics = evaluate_run(run.path, root, split=args.split, device=args.device, batch_size=args.batch_size,
                               seed=0 if args.seed is None else args.seed)
        metrics.update(n_skipped=0, skipped={})
    else:
        root = data_root(args.data_root, "Task_B", args.split)
        metrics = evaluate_recognition(run.path, root, split=args.split, batch_size=args.batch_size,
                                       device=args.device, seed=args.seed, on_error="raise" if args.strict else "skip")
    if not args.json:
        for key in ("per_distortion_metrics", "strict_per_distortion_metrics", "threshold_details"):
            metrics.pop(key, None)
    emit_metrics(metrics, args.json, args.out)
    return finish(args, metrics["n_skipped"], metrics["n_images"] + metrics["n_skipped"])


def _scorer(args: argparse.Namespace) -> Any:
    """The checked run's :class:`~facecom_utils.recognition.gallery.RunScorer`."""
    from facecom_utils.recognition.gallery import RunScorer

    run = resolve_run(args.run, "recognition", args.command)
    return RunScorer.load(run.path, device=args.device, batch_size=args.batch_size)


def _readable_gallery(args: argparse.Namespace, folder: str | Path) -> tuple[list[Path], list[str], dict[str, str], list[str]]:
    """A gallery folder's readable images and their identities, the skipped images, and the identities lost."""
    gallery, identities = gallery_images(folder)
    bad = screen(gallery, args, "gallery image")
    keep = [k for k, p in enumerate(gallery) if str(p) not in bad]
    lost = sorted(set(identities) - {identities[k] for k in keep})
    for identity in lost:
        warn(args, f"gallery identity {identity}: no readable image; left out of the gallery")
    if not keep:
        raise CliError(f"{folder}: no readable gallery image ({len(bad)} unreadable)")
    return [gallery[k] for k in keep], [identities[k] for k in keep], bad, lost


def _skip_detail(bad_gallery: dict[str, str], lost: list[str]) -> str:
    detail = f"; {len(bad_gallery)} of them in the gallery" if bad_gallery else ""
    return detail + (f"; identities with no readable gallery image: {', '.join(lost)}" if lost else "")


def cmd_identify(args: argparse.Namespace) -> int:
    """The best-scoring gallery identity of each probe, with the run's match decision."""
    import numpy as np

    from facecom_utils.metrics.scoring import identity_scores
    from facecom_utils.recognition.gallery import Gallery

    scorer = _scorer(args)
    probes = collect_images(args.probes)
    source = Path(args.gallery).expanduser()
    bad_gallery: dict[str, str] = {}
    lost: list[str] = []
    paths: list[Path] = []
    if source.is_file():
        gallery = Gallery.load(source, scorer)
    elif source.is_dir():  # embedded below, once a probe is readable
        paths, identities, bad_gallery, lost = _readable_gallery(args, source)
        gallery = None
    else:
        raise CliError(f"{source}: no such gallery folder or file (expected <gallery>/<identity>/<image>.jpg or "
                       "a gallery file written by `facecom enroll`)")
    bad = screen(probes, args)
    good = [p for p in probes if str(p) not in bad]
    best: dict[str, tuple[str, float]] = {}
    if good:
        gallery = gallery or Gallery.enroll(scorer, paths, identities)
        gallery_emb, probe_emb = scorer.embed(gallery.features, scorer.features(good))
        scores, columns = identity_scores(probe_emb, gallery_emb, np.asarray(gallery.identities))
        top = np.argmax(scores, axis=1)
        best = {str(p): (str(columns[top[k]]), float(scores[k, top[k]])) for k, p in enumerate(good)}
    threshold = float(args.threshold) if args.threshold is not None else scorer.thresholds[0]
    rows = [
        error_row(p, bad[str(p)]) if str(p) in bad else {
            "path": str(p), "prediction": best[str(p)][0], "score": f"{best[str(p)][1]:.6f}",
            "decision": "match" if best[str(p)][1] >= threshold else "no_match", "error": "",
        }
        for p in probes
    ]
    write_rows(rows, args.out)
    n_total = len(probes) + len(paths) + len(bad_gallery)
    return finish(args, len(bad) + len(bad_gallery), n_total, _skip_detail(bad_gallery, lost))


def cmd_enroll(args: argparse.Namespace) -> int:
    """Embeds a gallery folder once into a file that ``identify --gallery`` reads instead of the folder."""
    from facecom_utils.recognition.gallery import Gallery

    scorer = _scorer(args)
    paths, identities, bad, lost = _readable_gallery(args, args.gallery)
    target = Gallery.enroll(scorer, paths, identities).save(args.out)
    print(f"enrolled {len(paths)} photos of {len(set(identities))} identities with the {scorer.track} track of "
          f"{scorer.source} into {target}", file=sys.stderr)
    return finish(args, len(bad), len(paths) + len(bad), _skip_detail(bad, lost))


def _read_pairs(file: str | Path) -> list[tuple[Path, Path]]:
    """``(reference, probe)`` rows of a CSV with those two columns; relative paths are relative to the CSV's folder."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise CliError(f"{path}: pairs file not found (expected a CSV with the columns reference,probe)")
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as err:
        raise CliError(f"{path}: not a readable CSV ({err}); expected the columns reference,probe") from None
    if not rows or not {"reference", "probe"} <= set(rows[0]):
        found = ",".join(rows[0]) if rows else "no row"
        raise CliError(f"{path}: expected a CSV with the columns reference,probe and one row per pair (found: {found})")
    base = path.resolve().parent
    return [((base / Path(r["reference"] or "").expanduser()).resolve(), (base / Path(r["probe"] or "").expanduser()).resolve())
            for r in rows]


def _pairs(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    if args.pairs and args.images:
        raise CliError("give two images or --pairs FILE, not both")
    if args.pairs:
        return _read_pairs(args.pairs)
    if len(args.images) != 2:
        raise CliError(f"verify needs two images, IMG_A (the reference) and IMG_B (the probe), or --pairs FILE "
                       f"(got {len(args.images)} image(s))")
    for image in args.images:
        if not Path(image).expanduser().is_file():
            raise CliError(f"{Path(image).expanduser()}: no such image")
    args.strict = True  # one pair: an unreadable image leaves nothing to do
    a, b = (Path(i).expanduser().resolve() for i in args.images)
    return [(a, b)]


def cmd_verify(args: argparse.Namespace) -> int:
    """Is IMG_B (the probe) the person of IMG_A (the reference)? The run's calibrated score and decision."""
    from facecom_utils.recognition.gallery import pair_scores

    scorer = _scorer(args)
    pairs = _pairs(args)
    images = list(dict.fromkeys(str(p) for pair in pairs for p in pair))
    bad = screen(images, args)
    good = [(a, b) for a, b in pairs if str(a) not in bad and str(b) not in bad]
    scores = dict(zip(good, pair_scores(scorer, [a for a, _ in good], [b for _, b in good]))) if good else {}
    threshold = float(args.threshold) if args.threshold is not None else scorer.thresholds[1 if args.protocol == "strict" else 0]
    rows = []
    for a, b in pairs:
        row: dict[str, Any] = {"reference": str(a), "probe": str(b), "score": "", "threshold": f"{threshold:.6f}",
                               "decision": "", "error": "; ".join(f"{p}: {bad[str(p)]}" for p in (a, b) if str(p) in bad)}
        if (a, b) in scores:
            row.update(score=f"{scores[(a, b)]:.6f}", decision="match" if scores[(a, b)] >= threshold else "no_match")
        rows.append(row)
    write_rows(rows, args.out, VERIFY_FIELDS)
    return finish(args, len(bad), len(images))


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``evaluate-recognition``, ``identify``, ``enroll`` and ``verify``."""
    _register_evaluate(sub)
    _register_identify(sub)
    p = subcommand(sub, "enroll", "embed a gallery folder once, for `identify --gallery FILE`",
                   ["facecom enroll runs/03_arcface_recognition Task_B/val -o gallery.pt",
                    "facecom identify runs/03_arcface_recognition probes/ --gallery gallery.pt"])
    add_run_argument(p, "recognition")
    p.add_argument("gallery", metavar="GALLERY_DIR", help="folder with one subfolder of clean images per identity")
    add_batch_options(p, "the gallery file to write", out_required=True)
    p.set_defaults(func=cmd_enroll)
    _register_verify(sub)


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = subcommand(sub, "evaluate-recognition",
                   "Task B protocol (main + strict) of a recognition run (thresholds from the run's validation fold)",
                   ["facecom evaluate-recognition runs/03_arcface_recognition data/facecom --json -o metrics.json"])
    add_evaluation_arguments(p, "recognition")
    p.add_argument("--seed", type=int, default=None, help="seed of the strict protocol's impostor draw")
    p.set_defaults(func=cmd_evaluate_recognition)


def _register_identify(sub: argparse._SubParsersAction) -> None:
    p = subcommand(sub, "identify", "match probe images against a gallery; CSV path,prediction,score,decision,error",
                   ["facecom identify runs/03_arcface_recognition probes/ --gallery Task_B/val -o matches.csv",
                    "facecom identify runs/03_arcface_recognition probes/ --gallery gallery.pt  # from facecom enroll"])
    add_run_argument(p, "recognition")
    p.add_argument("probes", nargs="+", help="probe image files or folders")
    p.add_argument("--gallery", required=True,
                   help="folder with one subfolder of clean images per identity, or a file from `facecom enroll`")
    add_batch_options(p, "CSV file (default: stdout)")
    p.add_argument("--threshold", type=float, default=None,
                   help="override the run's match threshold (a run folder's fused track: on its calibrated scale, "
                        "0 = each type's 99.9th-percentile impostor on the fold)")
    p.set_defaults(func=cmd_identify)


def _register_verify(sub: argparse._SubParsersAction) -> None:
    p = subcommand(sub, "verify", "same person? the run's score of IMG_B (probe) against IMG_A (reference), and the decision",
                   ["facecom verify runs/03_arcface_recognition id_photo.jpg door_camera.jpg",
                    "facecom verify runs/03_arcface_recognition --pairs pairs.csv -o decisions.csv"])
    add_run_argument(p, "recognition")
    p.add_argument("images", nargs="*", metavar="IMG", help="IMG_A (the reference, in the gallery role) and IMG_B (the probe)")
    p.add_argument("--pairs", default=None, metavar="CSV",
                   help="many pairs: a CSV with the columns reference,probe (paths relative to the CSV's folder)")
    p.add_argument("--protocol", choices=("main", "strict"), default="main",
                   help="whose fold threshold decides: the main protocol's (default) or the strict one's (the "
                        "reference is never the probe's own source photo)")
    p.add_argument("--threshold", type=float, default=None, help="override the run's threshold")
    add_batch_options(p, "CSV file reference,probe,score,threshold,decision,error (default: stdout)")
    p.set_defaults(func=cmd_verify)
