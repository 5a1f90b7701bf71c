"""``facecom evaluate-gender`` and ``facecom predict-gender``: a Task A run folder (or its best.pt) on images."""

from __future__ import annotations

import argparse
from pathlib import Path

from facecom_utils.cli.inputs import collect_images, data_root, readable_split, screen
from facecom_utils.cli.options import add_batch_options, add_evaluation_arguments, add_run_argument, subcommand
from facecom_utils.cli.outputs import emit_metrics, error_row, finish, write_rows
from facecom_utils.cli.runs import RunInput, resolve_run

__all__ = ["cmd_evaluate_gender", "cmd_predict_gender", "register"]


def cmd_evaluate_gender(args: argparse.Namespace) -> int:
    """Task A metrics of a run's headline track (a run folder) or of a best.pt's CNN."""
    from facecom_utils.gender.pipeline import evaluate_gender

    run = resolve_run(args.run, "gender", args.command)
    if run.is_dir:  # a run folder: its headline track (face-model tracks included)
        from facecom_utils.gender.tracks import evaluate_with_run

        root = readable_split(args, "Task_A")
        metrics = evaluate_with_run(run.path, root, split=args.split, device=args.device)
        metrics.update(n_skipped=0, skipped={})
        emit_metrics(metrics, args.json, args.out)
        return finish(args, 0, metrics["n_images"])
    root = data_root(args.data_root, "Task_A", args.split)
    metrics = evaluate_gender(run.path, root, split=args.split, distortions=not args.no_distortions,
                              batch_size=args.batch_size, device=args.device, seed=args.seed,
                              on_error="raise" if args.strict else "skip")
    metrics.pop("reliability", None)
    if not args.json:
        metrics.pop("per_distortion_metrics", None)
    emit_metrics(metrics, args.json, args.out)
    return finish(args, metrics["n_skipped"], metrics["n_images"] + metrics["n_skipped"])


def _probabilities(args: argparse.Namespace, run: RunInput, good: list[Path]) -> tuple[dict[str, float], float]:
    """``({path: P(female)}, threshold)`` of the readable images by the run's headline track or the CNN."""
    from facecom_utils.common.checkpoints import load_checkpoint
    from facecom_utils.gender.pipeline import predict_gender
    from facecom_utils.gender.tracks import predict_with_run

    if run.is_dir:
        if not good:
            return {}, float("nan")
        table, threshold, _ = predict_with_run(run.path, good, device=args.device)
    else:
        threshold = float(load_checkpoint(run.path).get("threshold", 0.5))
        if not good:
            return {}, threshold
        table = predict_gender(run.path, good, threshold=threshold, batch_size=args.batch_size, device=args.device)
    return dict(zip(table["path"], table["prob"])), threshold


def cmd_predict_gender(args: argparse.Namespace) -> int:
    """One CSV row per image: ``path, prediction (female/male), score = P(female), decision, error``."""
    run = resolve_run(args.run, "gender", args.command)
    paths = collect_images(args.images)
    bad = screen(paths, args)
    probs, threshold = _probabilities(args, run, [p for p in paths if str(p) not in bad])
    threshold = float(args.threshold) if args.threshold is not None else threshold
    rows = [
        error_row(p, bad[str(p)]) if str(p) in bad else {
            "path": str(p),
            "prediction": "female" if probs[str(p)] >= threshold else "male",
            "score": f"{probs[str(p)]:.6f}",
            "decision": f"score{'>=' if probs[str(p)] >= threshold else '<'}{threshold:.6g}",
            "error": "",
        }
        for p in paths
    ]
    write_rows(rows, args.out)
    return finish(args, len(bad), len(paths))


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``evaluate-gender`` and ``predict-gender``."""
    p = subcommand(sub, "evaluate-gender", "Task A metrics of a gender run (threshold from the run's validation fold)",
                   ["facecom evaluate-gender runs/02_gender_classification data/facecom --json -o metrics.json"])
    add_evaluation_arguments(p, "gender")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic distortions (default: %(default)s)")
    p.add_argument("--no-distortions", action="store_true", help="skip the per-distortion robustness pass")
    p.set_defaults(func=cmd_evaluate_gender)

    p = subcommand(sub, "predict-gender", "predict gender for images; CSV path,prediction,score,decision,error",
                   ["facecom predict-gender runs/02_gender_classification photos/ -o predictions.csv"])
    add_run_argument(p, "gender")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    add_batch_options(p, "CSV file (default: stdout)")
    p.add_argument("--threshold", type=float, default=None, help="override the run's threshold on P(female)")
    p.set_defaults(func=cmd_predict_gender)
