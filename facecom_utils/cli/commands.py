"""The ``facecom`` command: run the notebooks, train, and use trained models on new folders.

::

    facecom run [--preset NAME|FILE] [-f FILE] [-p NAME VALUE] [--name RUN] [--notebooks 01,02] [--data-root DIR]
    facecom train-gender|train-recognition [--preset NAME|FILE] [-f FILE] [-p NAME VALUE] [--output-dir DIR]
    facecom evaluate-gender RUN_DIR DATA_ROOT [--split val] [--json] [-o FILE] [--strict]
    facecom evaluate-recognition RUN_DIR DATA_ROOT [--split val] [--json] [-o FILE] [--strict]
    facecom predict-gender RUN_DIR IMAGES... [-o CSV] [--strict]
    facecom identify RUN_DIR PROBES... --gallery DIR|gallery.pt [-o CSV] [--strict]
    facecom enroll RUN_DIR GALLERY_DIR -o gallery.pt [--strict]
    facecom verify RUN_DIR IMG_A IMG_B | --pairs pairs.csv [--protocol main|strict] [-o CSV]
    facecom make-demo ROOT | split SRC_ROOT DST_ROOT | check-data ROOT
    facecom --version

Every model command takes the run folder first (``RUN_DIR``: the ``output_dir`` of notebook 02/03
or ``facecom train-*``; its ``checkpoints/best.pt`` alone runs the FACECOM-only model). A run folder
runs the run's headline track (``headline_track`` in its metrics.json: with the face-model tracks,
dlib's descriptor behind the restoration selector, and for Task B the pixel copy evidence, fused per
estimated distortion type) at the thresholds its validation fold chose. ``--preset`` and
``-p/--param`` mean the same for ``run`` and ``train-*`` (:mod:`facecom_utils.cli.options`).

``predict-gender`` and ``identify`` write one CSV row per image: ``path, prediction, score,
decision, error`` (predict-gender: female/male, P(female), the rule applied; identify: the best
gallery identity, its score, ``match`` / ``no_match``). ``verify`` writes ``reference, probe, score,
threshold, decision, error`` per pair. IMAGES / PROBES may be files or folders (searched recursively;
hidden files ignored).

Exit codes: 0 done; 1 done, but unreadable images were skipped (a warning names each, the summary
line ``facecom COMMAND: N of M images skipped`` comes last; the CSV keeps their rows with the reason
in ``error``); 2 bad input: one line on stderr naming the file and what was expected, nothing
written (a missing or another task's run folder, a truncated or foreign best.pt / face_tracks.pt /
gallery file, a gallery file of another run, an empty gallery, and under ``--strict`` the first
unreadable image); 130 interrupted. ``run`` and ``check-data`` say their own under ``--help``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from facecom_utils.cli.inputs import (EXIT_SKIPPED, EXIT_USAGE, CliError, collect_images, gallery_images,
                                      show_data_warnings, user_errors)
from facecom_utils.cli.options import add_parameter_options, split_presets, subcommand
from facecom_utils.common.progress import lines_to

__all__ = ["main", "build_parser", "CliError", "collect_images", "gallery_images", "EXIT_SKIPPED", "EXIT_USAGE"]

_RUN_CODES = (("0", "every notebook ran"), ("1", "a notebook failed (named on stderr)"),
              ("2", "bad arguments (one line on stderr)"), ("130", "interrupted"))
_TRAIN_CODES = (("0", "trained; metrics.json written"), ("2", "bad preset or parameter (one line on stderr)"),
                ("130", "interrupted"))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_run(args: argparse.Namespace) -> int:
    """``facecom run``: the runner, given ``--preset`` names as names and ``--preset`` files as files."""
    from facecom_utils.reporting.runner import run_from_args

    args.preset, files = split_presets(args.preset)
    args.parameters_file = [*files, *args.parameters_file]
    return run_from_args(args)


def cmd_train(args: argparse.Namespace) -> int:
    """``train-gender`` / ``train-recognition`` (torchrun-aware; see facecom_utils.cli.launch)."""
    from facecom_utils.cli.launch import LaunchError, train_from_args

    try:
        return train_from_args(args.command, args)
    except LaunchError as exc:
        raise CliError(str(exc)) from None


def _register_run_and_train(sub: argparse._SubParsersAction) -> None:
    from facecom_utils.cli.launch import add_train_arguments
    from facecom_utils.reporting.runner import add_run_arguments

    p = subcommand(sub, "run", "run notebooks 01-04 with papermill and write reports/<run>/",
                   ["facecom run --preset facecom_cpu --data-root data/facecom --name cpu",
                    "facecom run --notebooks 03,04 -p epochs 2",
                    "facecom run --preset facecom_cpu --name reference --publish docs/reference-run"], _RUN_CODES,
                   description="Run notebooks 01-04 with papermill and write reports/<run>/ (HTML, index.html, "
                               "summary.json).", conflict_handler="resolve")
    add_run_arguments(p)
    add_parameter_options(p, "each chosen notebook")  # replaces the runner's spellings (old ones kept as aliases)
    p.set_defaults(func=cmd_run)
    for name, task, stem in (("train-gender", "a Task A gender classifier", "02_gender_classification"),
                             ("train-recognition", "a Task B face embedder", "03_arcface_recognition")):
        text = f"train {task} from a preset (runs under torchrun too)"
        p = subcommand(sub, name, text, [f"facecom {name} --preset facecom_cpu -p epochs 3 --output-dir runs/{stem}",
                                         f"torchrun --nproc_per_node=4 $(which facecom) {name} --preset facecom_gpu"],
                       _TRAIN_CODES)
        add_train_arguments(p)
        p.set_defaults(func=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    """The ``facecom`` argument parser: one subcommand per task, each with an example and its exit codes."""
    from facecom_utils.cli import data_commands, gender_commands, recognition_commands

    # facecom_utils.__version__: the package root is loaded before any of its modules (read, not imported here)
    version = sys.modules[__name__.split(".")[0]].__version__

    parser = _Parser(prog="facecom", description="FACECOM: notebooks, reports and trained models.",
                     epilog="`facecom COMMAND --help` shows an example and the exit codes of each command.")
    parser.add_argument("--version", action="version", version=f"facecom {version}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _register_run_and_train(sub)
    gender_commands.register(sub)
    recognition_commands.register(sub)
    data_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``facecom`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_USAGE
    try:
        with warnings.catch_warnings(), lines_to(sys.stderr):  # stdout is the command's data (CSV, --json)
            show_data_warnings(args.command)
            return int(args.func(args) or 0)
    except user_errors() as exc:
        message = str(exc).strip().splitlines()
        print(f"facecom {args.command}: error: {message[0] if message else type(exc).__name__}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"facecom {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
