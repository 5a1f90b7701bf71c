"""The ``facecom`` command: run the notebooks, and use trained models on new folders.

::

    facecom run [-f PRESET.yml] [-p NAME VALUE] [--name RUN] [--notebooks 01,02] [--data-root DIR]
    facecom evaluate-gender CHECKPOINT|RUN_DIR DATA_ROOT [--split val] [--json] [--out FILE] [--strict]
    facecom evaluate-recognition CHECKPOINT|RUN_DIR DATA_ROOT [--split val] [--json] [--out FILE] [--strict]
    facecom predict-gender CHECKPOINT|RUN_DIR IMAGES... [--out CSV] [--strict]
    facecom identify CHECKPOINT|RUN_DIR --gallery DIR PROBES... [--out CSV] [--strict]
    facecom make-demo ROOT [--seed 0] [--train-identities 60] [--val-identities 20] [--image-size 112]
    facecom split SRC_ROOT DST_ROOT [--val-fraction 0.2] [--seed 0] [--overwrite]
    facecom train-gender -f PRESET.yml [-p NAME VALUE] [--data-root DIR] [--output-dir DIR] [--json]
    facecom train-recognition -f PRESET.yml [-p NAME VALUE] [--data-root DIR] [--output-dir DIR] [--json]

``train-*`` train from a notebook preset in one process, or in every process under
``torchrun --nproc_per_node=N $(which facecom) train-gender ...`` (see :mod:`facecom_utils.cli.launch`).

A Task A **run directory** (the ``output_dir`` of notebook 02) in place of ``best.pt`` runs the
run's headline track (``headline_track`` in its metrics.json; with the face-model tracks, dlib's
descriptor behind the restoration selector, and the glare head for the ``fused`` track) at its
out-of-fold threshold; ``evaluate-gender`` then also scores the real distorted copies of
``Task_B/<split>``. ``best.pt`` alone runs the FACECOM-only CNN. Likewise a Task B run directory
(notebook 03) makes ``identify`` and ``evaluate-recognition`` run its headline track (``fused``:
the FACECOM embedder, dlib's restored descriptor and the pixel copy evidence against the run's saved
cohort, weighted per probe by its estimated type) with the thresholds its validation fold chose; ``best.pt`` alone runs the
FACECOM-only embedder.

``evaluate-*`` apply the protocol and the threshold stored in the checkpoint (chosen on the training
run's validation fold) to ``DATA_ROOT/Task_A/<split>`` or ``DATA_ROOT/Task_B/<split>`` -- the same
protocol and metric keys as notebooks 02 and 03. ``predict-gender`` and ``identify`` write one CSV
row per image: ``path, prediction, score, decision, error`` (``error``: see below):

* predict-gender: ``prediction`` = female/male at the checkpoint's threshold, ``score`` = P(female),
  ``decision`` = the rule applied, e.g. ``score>=0.412``;
* identify: ``prediction`` = the best-scoring gallery identity, ``score`` = its similarity (max over
  the identity's gallery images: the cosine for a ``best.pt``; for a run directory the headline track's
  score, which for ``fused`` is put on one scale per estimated type, 0 = the 99.9th percentile of that
  type's impostor scores on the run's validation fold), ``decision`` = ``match`` when the score clears
  the checkpoint's match threshold, else ``no_match`` (the probe is probably nobody in the gallery).

IMAGES / PROBES may be files or folders (searched recursively for .jpg/.jpeg/.png; hidden files such
as ``.DS_Store`` are ignored). Bad paths and checkpoints of the wrong task give a one-line error and
exit code 2.

One unreadable image (zero-byte, truncated, not an image, fails to decode) does not sink a batch.
``predict-gender``, ``identify`` and ``evaluate-*`` screen every image first
(:func:`facecom_utils.data.layout.screen_images`; grayscale, CMYK, palette and transparent images are
fine, they are converted to RGB) and by default skip each unreadable one with a warning on stderr
naming the file and the problem, finish the rest, print ``facecom COMMAND: N of M images skipped``
last and exit with code 1 (``EXIT_SKIPPED``):

* predict-gender / identify: the CSV has a fifth column ``error``, empty for good rows; a skipped
  image keeps its row with the reason there and ``prediction``, ``score``, ``decision`` empty.
  An unreadable gallery image of ``identify`` is left out of the gallery (warning and summary); an
  identity left with no readable gallery image is reported and can no longer be predicted.
* evaluate-*: the metrics cover the readable images; ``n_skipped`` and ``skipped``
  (``{path: reason}``, in ``--json`` / ``--out``) list the others.

``--strict`` stops at the first unreadable image instead: a one-line error naming it, exit code 2,
and nothing is written (the screening runs before any prediction or output).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "CliError", "collect_images", "gallery_images", "EXIT_SKIPPED", "EXIT_USAGE"]

EXIT_SKIPPED = 1  # the batch finished, but some unreadable images were skipped
EXIT_USAGE = 2


class CliError(Exception):
    """A problem with the user's input, reported as one line (exit code 2)."""


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def collect_images(items: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) under folders; hidden files skipped."""
    from facecom_utils.data.layout import IMAGE_EXTENSIONS

    found: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_file():
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise CliError(f"{p}: not an image (expected {', '.join(IMAGE_EXTENSIONS)})")
            found.append(p.resolve())
        elif p.is_dir():
            images = sorted(
                f.resolve() for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not images:
                raise CliError(f"{p}: folder holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            found += images
        else:
            raise CliError(f"{p}: no such file or folder")
    if not found:
        raise CliError("no image given")
    return found


def gallery_images(folder: str | Path) -> tuple[list[Path], list[str]]:
    """The gallery of ``identify``: clean images of ``folder/<identity>/`` (``distortion/`` subfolders skipped).

    ``folder`` may be a FACECOM split (``Task_B/val``) or any folder with one subfolder per identity.
    """
    from facecom_utils.data.layout import IMAGE_EXTENSIONS

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CliError(f"{root}: gallery folder not found (expected <gallery>/<identity>/<image>.jpg)")
    paths: list[Path] = []
    identities: list[str] = []
    for identity_dir in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for f in sorted(identity_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."):
                paths.append(f.resolve())
                identities.append(identity_dir.name)
    if not paths:
        raise CliError(f"{root}: no identity folder with images (expected <gallery>/<identity>/<image>.jpg)")
    return paths, identities


def _checkpoint(path: str | Path, task: str, command: str) -> dict[str, Any]:
    """Load a checkpoint and check it belongs to ``task``; errors are one line."""
    from facecom_utils.common.checkpoints import load_checkpoint

    p = Path(path).expanduser()
    if not p.is_file():
        raise CliError(f"{p}: checkpoint not found (expected a best.pt written by notebook "
                       f"{'02 / train_gender' if task == 'gender' else '03 / train_recognition'})")
    try:
        payload = load_checkpoint(p)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise CliError(f"{p}: not a readable facecom checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    found = payload.get("task") if isinstance(payload, dict) else None
    if found != task:
        hint = {"gender": "evaluate-gender / predict-gender", "recognition": "evaluate-recognition / identify"}
        raise CliError(f"{p}: is a {found or 'unknown'}-task checkpoint; `facecom {command}` needs a {task} "
                       f"checkpoint" + (f" (use `facecom {hint[found]}` for this one)" if found in hint else ""))
    return payload


def _data_root(path: str | Path, task: str, split: str) -> Path:
    from facecom_utils.data.layout import find_task_dir

    root = Path(path).expanduser()
    if not root.is_dir():
        raise CliError(f"{root}: data root not found (expected a folder holding {task}/{split}/)")
    task_dir = find_task_dir(root, task)
    if not (task_dir / split).is_dir():
        raise CliError(f"{task_dir / split}: split folder not found (choose another with --split)")
    return root.resolve()


def _screen(paths: Sequence[str | Path], args: argparse.Namespace, what: str = "image") -> dict[str, str]:
    """``{path: reason}`` of the unreadable ``paths``: skipped with a warning, or the first raised under --strict."""
    from facecom_utils.data.layout import screen_images

    return screen_images([str(p) for p in paths], "raise" if args.strict else "skip", what)


def _warn(args: argparse.Namespace, message: str) -> None:
    print(f"facecom {args.command}: warning: {message}", file=sys.stderr)


def _finish(args: argparse.Namespace, n_skipped: int, n_total: int, detail: str = "") -> int:
    """Exit code of a batch command: 0, or EXIT_SKIPPED after a one-line summary of what was skipped."""
    if not n_skipped:
        return 0
    print(f"facecom {args.command}: {n_skipped} of {n_total} images skipped (unreadable{detail})", file=sys.stderr)
    return EXIT_SKIPPED


def _show_data_warnings(command: str) -> None:
    """Print each FacecomDataWarning (skipped image, odd folder entry) as ``facecom CMD: warning: ...``.

    Call inside ``warnings.catch_warnings()``, which restores the previous filters and printer.
    """
    from facecom_utils.data.layout import FacecomDataWarning

    previous = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if issubclass(category, FacecomDataWarning):
            print(f"facecom {command}: warning: {message}", file=sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.simplefilter("always", FacecomDataWarning)  # one line per skipped file, every run
    warnings.showwarning = show


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    from facecom_utils.train.rundir import to_jsonable

    return to_jsonable(value)


def _metrics_text(metrics: dict[str, Any]) -> str:
    """Scalars as an aligned two-column table, then per-distortion values as one table."""
    scalars = {k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float, str, bool))}
    width = max((len(k) for k in scalars), default=0)
    lines = []
    for key, value in scalars.items():
        text = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
        lines.append(f"{key:<{width}}  {text}")
    for key in ("per_distortion", "strict_per_distortion"):
        per = metrics.get(key)
        if isinstance(per, dict) and per:
            lines.append("")
            lines.append(key)
            for kind, value in per.items():
                text = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
                lines.append(f"  {kind:<{max(len(k) for k in per)}}  {text}")
    cm = metrics.get("confusion_matrix")
    if cm is not None:
        lines += ["", f"confusion_matrix  {cm}"]
    return "\n".join(lines)


def _emit_metrics(metrics: dict[str, Any], as_json: bool, out: str | None) -> None:
    plain = _plain(metrics)
    if out:
        Path(out).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(out).expanduser().write_text(json.dumps(plain, indent=2) + "\n")
    print(json.dumps(plain, indent=2) if as_json else _metrics_text(plain))


def _error_row(path: str | Path, reason: str) -> dict[str, str]:
    """The CSV row of a skipped image: the reason in ``error``, the prediction columns empty."""
    return {"path": str(path), "prediction": "", "score": "", "decision": "", "error": reason}


def _write_rows(rows: list[dict[str, Any]], out: str | None) -> None:
    """Write ``path, prediction, score, decision, error`` rows to ``out`` (or stdout)."""
    fields = ["path", "prediction", "score", "decision", "error"]
    if out:
        target = Path(out).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {len(rows)} rows to {target}", file=sys.stderr)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.write(buffer.getvalue())


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from facecom_utils.reporting.runner import run_from_args

    return run_from_args(args)


def _is_run_dir(path: str | Path) -> bool:
    return Path(path).expanduser().is_dir()


def _readable_split(args: argparse.Namespace, task: str) -> Path:
    """The data root of a run-directory evaluation, once every image of ``<task>/<split>`` is readable.

    The face-model tracks score whole tables (clean images with their copies), so an unreadable image
    stops the evaluation with a one-line error (under ``--strict`` the screening itself raises).
    """
    from facecom_utils.data.layout import drop_unreadable, scan_task_a, scan_task_b

    root = _data_root(args.data_root, task, args.split)
    scan = scan_task_a if task == "Task_A" else scan_task_b
    _, skipped = drop_unreadable(scan(root, splits=(args.split,), on_error="keep"), "raise" if args.strict else "skip")
    if skipped:
        raise CliError(f"{root}: {len(skipped)} unreadable image(s) in {task}/{args.split} "
                       f"(first: {next(iter(skipped))}); the run-directory evaluation needs every image")
    return root


def cmd_evaluate_gender(args: argparse.Namespace) -> int:
    from facecom_utils.gender.pipeline import evaluate_gender

    if _is_run_dir(args.checkpoint):  # a run directory: its headline track (face-model tracks included)
        from facecom_utils.gender.tracks import evaluate_with_run

        root = _readable_split(args, "Task_A")
        try:
            metrics = evaluate_with_run(args.checkpoint, root, split=args.split, device=args.device)
        except FileNotFoundError as err:
            raise CliError(str(err)) from None
        metrics.update(n_skipped=0, skipped={})
        _emit_metrics(metrics, args.json, args.out)
        return _finish(args, 0, metrics["n_images"])
    _checkpoint(args.checkpoint, "gender", "evaluate-gender")
    root = _data_root(args.data_root, "Task_A", args.split)
    metrics = evaluate_gender(args.checkpoint, root, split=args.split, distortions=not args.no_distortions,
                              batch_size=args.batch_size, device=args.device, seed=args.seed,
                              on_error="raise" if args.strict else "skip")
    metrics.pop("reliability", None)
    if not args.json:
        metrics.pop("per_distortion_metrics", None)
    _emit_metrics(metrics, args.json, args.out)
    return _finish(args, metrics["n_skipped"], metrics["n_images"] + metrics["n_skipped"])


def cmd_evaluate_recognition(args: argparse.Namespace) -> int:
    from facecom_utils.recognition import evaluate_recognition

    if _is_run_dir(args.checkpoint):  # a run directory: its headline track (the fused one included)
        from facecom_utils.recognition.face_tracks import evaluate_run

        root = _readable_split(args, "Task_B")
        _task_b_run_dir(args.checkpoint)
        metrics = evaluate_run(args.checkpoint, root, split=args.split, device=args.device,
                               batch_size=args.batch_size, seed=0 if args.seed is None else args.seed)
        if not args.json:
            for key in ("per_distortion_metrics", "strict_per_distortion_metrics", "threshold_details"):
                metrics.pop(key, None)
        metrics.update(n_skipped=0, skipped={})
        _emit_metrics(metrics, args.json, args.out)
        return _finish(args, 0, metrics["n_images"])
    _checkpoint(args.checkpoint, "recognition", "evaluate-recognition")
    root = _data_root(args.data_root, "Task_B", args.split)
    metrics = evaluate_recognition(args.checkpoint, root, split=args.split, batch_size=args.batch_size,
                                   device=args.device, seed=args.seed, on_error="raise" if args.strict else "skip")
    if not args.json:
        for key in ("per_distortion_metrics", "strict_per_distortion_metrics", "threshold_details"):
            metrics.pop(key, None)
    _emit_metrics(metrics, args.json, args.out)
    return _finish(args, metrics["n_skipped"], metrics["n_images"] + metrics["n_skipped"])


def cmd_predict_gender(args: argparse.Namespace) -> int:
    from facecom_utils.gender.pipeline import predict_gender

    run_dir = _is_run_dir(args.checkpoint)
    if run_dir:  # a run directory: its headline track
        from facecom_utils.gender.tracks import load_run_tracks, predict_with_run

        try:
            load_run_tracks(args.checkpoint)
        except FileNotFoundError as err:
            raise CliError(str(err)) from None
        threshold = float("nan")
    else:
        payload = _checkpoint(args.checkpoint, "gender", "predict-gender")
        threshold = float(args.threshold if args.threshold is not None else payload.get("threshold", 0.5))
    paths = collect_images(args.images)
    bad = _screen(paths, args)
    good = [p for p in paths if str(p) not in bad]
    probs: dict[str, float] = {}
    if good and run_dir:
        table, threshold, _ = predict_with_run(args.checkpoint, good, device=args.device)
        threshold = float(args.threshold) if args.threshold is not None else threshold
        probs = dict(zip(table["path"], table["prob"]))
    elif good:
        table = predict_gender(args.checkpoint, good, threshold=threshold, batch_size=args.batch_size,
                               device=args.device)
        probs = dict(zip(table["path"], table["prob"]))
    rows = [
        _error_row(p, bad[str(p)]) if str(p) in bad else {
            "path": str(p),
            "prediction": "female" if probs[str(p)] >= threshold else "male",
            "score": f"{probs[str(p)]:.6f}",
            "decision": f"score{'>=' if probs[str(p)] >= threshold else '<'}{threshold:.6g}",
            "error": "",
        }
        for p in paths
    ]
    _write_rows(rows, args.out)
    return _finish(args, len(bad), len(paths))


def _readable_gallery(args: argparse.Namespace) -> tuple[list[Path], list[str], dict[str, str], list[str]]:
    """The gallery's readable images and their identities, the skipped images, and the identities lost."""
    gallery, identities = gallery_images(args.gallery)
    bad = _screen(gallery, args, "gallery image")
    keep = [k for k, p in enumerate(gallery) if str(p) not in bad]
    lost = sorted(set(identities) - {identities[k] for k in keep})
    for identity in lost:
        _warn(args, f"gallery identity {identity}: no readable image; left out of the gallery")
    if not keep:
        raise CliError(f"{args.gallery}: no readable gallery image ({len(bad)} unreadable)")
    return [gallery[k] for k in keep], [identities[k] for k in keep], bad, lost


def cmd_identify(args: argparse.Namespace) -> int:
    import numpy as np

    from facecom_utils.recognition import extract_embeddings, load_recognition_model
    from facecom_utils.train.fit import select_device
    from facecom_utils.metrics.scoring import identity_scores

    if _is_run_dir(args.checkpoint):
        return _identify_with_run(args)
    payload = _checkpoint(args.checkpoint, "recognition", "identify")
    threshold = float(args.threshold if args.threshold is not None else payload.get("threshold", math.nan))
    if math.isnan(threshold):
        raise CliError(f"{args.checkpoint}: holds no match threshold; pass --threshold or use the best.pt of a finished run")
    probes = collect_images(args.probes)
    gallery, identities, bad_gallery, lost = _readable_gallery(args)
    bad = _screen(probes, args)
    good = [p for p in probes if str(p) not in bad]
    model, payload = load_recognition_model(args.checkpoint, select_device(args.device))
    cfg = payload.get("config", {})
    kw = dict(
        image_size=int(cfg.get("image_size", 112)), batch_size=args.batch_size, device=args.device,
        flip_tta=bool(cfg.get("flip_tta", True)), face_crop=float(cfg.get("face_crop", 1.0)),
        source=str(payload.get("embedding_source", "neck")), tta_crops=tuple(cfg.get("tta_crops") or ()),
    )
    best: dict[str, tuple[str, float]] = {}
    if good:
        gallery_emb = extract_embeddings(model, [str(p) for p in gallery], **kw)
        probe_emb = extract_embeddings(model, [str(p) for p in good], **kw)
        scores, columns = identity_scores(probe_emb, gallery_emb, np.asarray(identities))
        top = np.argmax(scores, axis=1)
        best = {str(p): (str(columns[top[k]]), float(scores[k, top[k]])) for k, p in enumerate(good)}
    rows = [
        _error_row(p, bad[str(p)]) if str(p) in bad else {
            "path": str(p),
            "prediction": best[str(p)][0],
            "score": f"{best[str(p)][1]:.6f}",
            "decision": "match" if best[str(p)][1] >= threshold else "no_match",
            "error": "",
        }
        for p in probes
    ]
    _write_rows(rows, args.out)
    detail = f"; {len(bad_gallery)} of them in the gallery" if bad_gallery else ""
    detail += f"; identities with no readable gallery image: {', '.join(lost)}" if lost else ""
    return _finish(args, len(bad) + len(bad_gallery), len(probes) + len(gallery) + len(bad_gallery), detail)


def _task_b_run_dir(path: str | Path) -> None:
    if not (Path(path) / "checkpoints" / "best.pt").is_file():
        raise CliError(f"{path}: not a Task B run directory (no checkpoints/best.pt)")


def _identify_with_run(args: argparse.Namespace) -> int:
    """``identify RUN_DIR``: the run's headline track (see :func:`facecom_utils.recognition.face_tracks.run_embeddings`)."""
    import numpy as np

    from facecom_utils.recognition.face_tracks import run_embeddings
    from facecom_utils.metrics.scoring import identity_scores

    _task_b_run_dir(args.checkpoint)
    probes = collect_images(args.probes)
    gallery, identities, bad_gallery, lost = _readable_gallery(args)
    bad = _screen(probes, args)
    good = [p for p in probes if str(p) not in bad]
    best: dict[str, tuple[str, float]] = {}
    threshold = math.nan
    if good:
        paths = [str(p) for p in gallery] + [str(p) for p in good]
        is_gallery = np.arange(len(paths)) < len(gallery)
        emb, (threshold, _), _ = run_embeddings(args.checkpoint, paths, is_gallery, args.device, args.batch_size)
        scores, columns = identity_scores(emb[~is_gallery], emb[is_gallery], np.asarray(identities))
        top = np.argmax(scores, axis=1)
        best = {str(p): (str(columns[top[k]]), float(scores[k, top[k]])) for k, p in enumerate(good)}
    threshold = float(args.threshold) if args.threshold is not None else threshold
    rows = [
        _error_row(p, bad[str(p)]) if str(p) in bad else {
            "path": str(p), "prediction": best[str(p)][0], "score": f"{best[str(p)][1]:.6f}",
            "decision": "match" if best[str(p)][1] >= threshold else "no_match", "error": "",
        }
        for p in probes
    ]
    _write_rows(rows, args.out)
    detail = f"; {len(bad_gallery)} of them in the gallery" if bad_gallery else ""
    detail += f"; identities with no readable gallery image: {', '.join(lost)}" if lost else ""
    return _finish(args, len(bad) + len(bad_gallery), len(probes) + len(gallery) + len(bad_gallery), detail)


def cmd_make_demo(args: argparse.Namespace) -> int:
    from facecom_utils.data.demo import make_demo_dataset

    root = make_demo_dataset(args.root, seed=args.seed, train_identities=args.train_identities,
                             val_identities=args.val_identities, clean_per_identity=args.clean_per_identity,
                             image_size=args.image_size, overwrite=args.overwrite)
    print(root)
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from facecom_utils.data.splits import split_by_identity

    src = Path(args.src_root).expanduser()
    if not src.is_dir():
        raise CliError(f"{src}: source root not found (expected a folder holding Task_A/train and/or Task_B/train)")
    dst = split_by_identity(src, args.dst_root, val_fraction=args.val_fraction, seed=args.seed, overwrite=args.overwrite)
    print(dst)
    return 0


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    """``train-gender`` / ``train-recognition`` (torchrun-aware; see facecom_utils.cli.launch)."""
    from facecom_utils.cli.launch import LaunchError, train_from_args

    try:
        return train_from_args(args.command, args)
    except LaunchError as exc:
        raise CliError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``facecom`` argument parser (one subcommand per task; room for train-* commands)."""
    from facecom_utils.reporting.runner import add_run_arguments

    parser = argparse.ArgumentParser(prog="facecom", description="FACECOM: notebooks, reports and trained models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run notebooks 01-04 with papermill and write reports/<run>/",
                       description="Run notebooks 01-04 with papermill and write reports/<run>/ (HTML, index.html, summary.json).")
    add_run_arguments(p)
    p.set_defaults(func=cmd_run)

    def evaluation(name: str, task_dir: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> None:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("checkpoint", help="best.pt of a training run")
        p.add_argument("data_root", help=f"folder in FACECOM layout (holding {task_dir}/<split>/)")
        p.add_argument("--split", default="val", help="split to evaluate (default: %(default)s)")
        p.add_argument("--json", action="store_true", help="print every metric as JSON instead of a table")
        p.add_argument("--out", default=None, help="also write the metrics as JSON to this file")
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
        p.add_argument("--seed", type=int, default=None if name == "evaluate-recognition" else 0,
                       help="seed of the seeded parts of the protocol (distortions / impostor draw)")
        p.add_argument("--strict", action="store_true", help="stop at the first unreadable image (exit 2, nothing written) instead of skipping it")
        if name == "evaluate-gender":
            p.add_argument("--no-distortions", action="store_true", help="skip the per-distortion robustness pass")
        p.set_defaults(func=func)

    evaluation("evaluate-gender", "Task_A", "Task A metrics of a gender checkpoint (threshold from the checkpoint)",
               cmd_evaluate_gender)
    evaluation("evaluate-recognition", "Task_B",
               "Task B protocol (main + strict) of a recognition checkpoint (threshold from the checkpoint)",
               cmd_evaluate_recognition)

    p = sub.add_parser("predict-gender", help="predict gender for images; CSV path,prediction,score,decision,error")
    p.add_argument("checkpoint", help="best.pt of a gender run (its CNN), or the run directory (its headline track)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", default=None, help="CSV file (default: stdout)")
    p.add_argument("--threshold", type=float, default=None, help="override the checkpoint's threshold on P(female)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image (exit 2, nothing written) instead of skipping it")
    p.set_defaults(func=cmd_predict_gender)

    p = sub.add_parser("identify", help="match probe images against a gallery; CSV path,prediction,score,decision,error")
    p.add_argument("checkpoint", help="best.pt of a recognition run")
    p.add_argument("probes", nargs="+", help="probe image files or folders")
    p.add_argument("--gallery", required=True, help="folder with one subfolder of clean images per identity")
    p.add_argument("--out", default=None, help="CSV file (default: stdout)")
    p.add_argument("--threshold", type=float, default=None, help="override the checkpoint's match threshold (a run directory's fused track: on its "
                        "calibrated scale, 0 = each type's 99.9th-percentile impostor on the fold)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image (exit 2, nothing written) instead of skipping it")
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser("make-demo", help="write the synthetic demo dataset (FACECOM layout)")
    p.add_argument("root")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-identities", type=int, default=60)
    p.add_argument("--val-identities", type=int, default=20)
    p.add_argument("--clean-per-identity", type=int, default=2)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_make_demo)

    p = sub.add_parser("split", help="identity-disjoint train/val copy (symlinks) of a FACECOM training split")
    p.add_argument("src_root", help="FACECOM root with Task_A/train and/or Task_B/train")
    p.add_argument("dst_root", help="where to write the new root")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_split)
    from facecom_utils.cli.launch import add_train_arguments

    for name, text in (("train-gender", "train a Task A gender classifier from a preset (runs under torchrun too)"),
                       ("train-recognition", "train a Task B face embedder from a preset (runs under torchrun too)")):
        p = sub.add_parser(name, help=text, description=text)
        add_train_arguments(p)
        p.set_defaults(func=cmd_train)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input, reported as one line."""
    from facecom_utils.data.layout import BadImageError, FacecomLayoutError

    errors: list[type[BaseException]] = [CliError, FacecomLayoutError, BadImageError, FileNotFoundError,
                                          NotADirectoryError, FileExistsError, PermissionError]
    try:
        from facecom_utils.nn.backbones import WeightsUnavailableError

        errors.append(WeightsUnavailableError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``facecom`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            _show_data_warnings(args.command)
            return int(args.func(args) or 0)
    except _user_errors() as exc:
        message = str(exc).strip().splitlines()
        print(f"facecom {args.command}: error: {message[0] if message else type(exc).__name__}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"facecom {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
