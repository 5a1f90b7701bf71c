"""Options every ``facecom`` subcommand spells the same way, and the help text they share.

* the run folder: the first positional argument of every command that uses a trained model
  (``RUN_DIR``: a run folder, or its ``checkpoints/best.pt``);
* ``--preset NAME|FILE`` (a named preset, ``params/<notebook>/NAME.yml``, or a YAML file),
  ``-f/--parameters-file FILE`` and ``-p/--param NAME VALUE`` (alias ``--parameter``) for ``run``
  and ``train-*`` alike;
* ``-o/--out``, ``--batch-size``, ``--device``, ``--strict`` for the batch commands;
* an epilog with an example and the exit codes under every subcommand's ``--help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from facecom_utils.cli.inputs import CliError
from facecom_utils.cli.runs import expected_run

__all__ = ["EXIT_CODES", "add_batch_options", "add_parameter_options", "add_run_argument", "epilog",
           "preset_paths", "split_presets", "subcommand"]

#: The exit codes of the model and data commands (``run`` and ``check-data`` say their own).
EXIT_CODES = (
    ("0", "done"),
    ("1", "done, but some unreadable images were skipped (a warning names each; the summary line is last)"),
    ("2", "bad input: one line on stderr names the file and what was expected; nothing was written"),
    ("130", "interrupted"),
)
_YAML = (".yml", ".yaml")


def epilog(examples: Sequence[str], codes: Sequence[tuple[str, str]] = EXIT_CODES) -> str:
    """The ``--help`` epilog: examples, then the exit codes."""
    lines = ["example:" if len(examples) == 1 else "examples:", *(f"  {e}" for e in examples), "", "exit codes:"]
    lines += [f"  {code:<4} {text}" for code, text in codes]
    return "\n".join(lines)


def subcommand(sub: argparse._SubParsersAction, name: str, help_text: str, examples: Sequence[str],
               codes: Sequence[tuple[str, str]] = EXIT_CODES, description: str | None = None,
               **kwargs: object) -> argparse.ArgumentParser:
    """A subparser with its description, example and exit codes (newlines kept in the epilog)."""
    return sub.add_parser(name, help=help_text, description=description or help_text,
                          epilog=epilog(examples, codes), formatter_class=argparse.RawDescriptionHelpFormatter,
                          **kwargs)


def add_run_argument(parser: argparse.ArgumentParser, task: str) -> None:
    """The first positional argument of every model command: the run folder (or its best.pt)."""
    parser.add_argument("run", metavar="RUN_DIR",
                        help=f"{expected_run(task)}; a run folder runs its headline track, a best.pt alone "
                             "the FACECOM-only model")


def add_batch_options(parser: argparse.ArgumentParser, out_help: str, out_required: bool = False) -> None:
    """``-o/--out``, ``--batch-size``, ``--device`` and ``--strict``."""
    parser.add_argument("-o", "--out", default=None, required=out_required, help=out_help)
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: %(default)s)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first unreadable image (exit 2, nothing written) instead of skipping it")


def add_evaluation_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    """What ``evaluate-gender`` and ``evaluate-recognition`` share: the run, the data root, the split, the output.

    Args:
        parser: The subcommand's parser.
        task: ``"gender"`` (reads ``Task_A/<split>/``) or ``"recognition"`` (``Task_B/<split>/``).
    """
    add_run_argument(parser, task)
    folder = "Task_A" if task == "gender" else "Task_B"
    parser.add_argument("data_root", help=f"folder in FACECOM layout (holding {folder}/<split>/)")
    parser.add_argument("--split", default="val", help="split to evaluate (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print every metric as JSON instead of a table")
    add_batch_options(parser, "also write the metrics as JSON to this file")


def add_parameter_options(parser: argparse.ArgumentParser, where: str) -> None:
    """``--preset``, ``-f/--parameters-file``, ``-p/--param`` (alias ``--parameter``): each later one wins.

    Args:
        parser: The subcommand's parser.
        where: Which notebooks' presets a name means (for the help text).
    """
    parser.add_argument("--preset", action="append", default=[], metavar="NAME|FILE",
                        help=f"a named preset (params/<notebook>/NAME.yml of {where}, e.g. facecom_cpu) or a "
                             "YAML file; repeatable: named presets apply first, then files, later ones win")
    parser.add_argument("-f", "--parameters-file", action="append", default=[], metavar="FILE",
                        help="a YAML parameter file, applied after the presets; repeatable")
    parser.add_argument("-p", "--param", "--parameter", dest="parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"),
                        help="override one parameter, last (typed like papermill: 3, 0.1, True, None, [1, 2])")


def split_presets(presets: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--preset`` values as ``(names, files)``: a value ending in .yml/.yaml, holding a folder, or naming an
    existing file is a file; anything else a preset name.

    Raises:
        CliError: A preset file that does not exist.
    """
    names: list[str] = []
    files: list[str] = []
    for value in presets:
        path = Path(value).expanduser()
        if path.suffix.lower() in _YAML or path.is_file() or len(path.parts) > 1:
            if not path.is_file():
                raise CliError(f"{value}: preset file not found (--preset takes a preset name or a YAML file)")
            files.append(str(path))
        else:
            names.append(value)
    return names, files


def preset_paths(presets: Sequence[str], files: Sequence[str], notebooks: str | Sequence[str] | None) -> list[str]:
    """The YAML files of named presets (for the chosen notebooks), then of ``--preset`` files and ``-f`` files.

    The order is the runner's: named presets, then files, each in the order given.

    Raises:
        CliError: A file that does not exist, or a name no chosen notebook has.
    """
    from facecom_utils.reporting.runner import RunError, preset_files

    names, preset_file_paths = split_presets(presets)
    out: list[str] = []
    for name in names:
        try:
            out += [str(p) for p in preset_files(name, notebooks)]
        except RunError as err:
            raise CliError(str(err)) from None
    for value in [*preset_file_paths, *files]:
        if not Path(value).expanduser().is_file():
            raise CliError(f"{value}: parameter file not found")
        out.append(str(Path(value).expanduser()))
    return out
