"""``facecom make-demo``, ``facecom split`` and ``facecom check-data``: datasets in FACECOM layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facecom_utils.cli.inputs import EXIT_SKIPPED, CliError
from facecom_utils.cli.options import subcommand

__all__ = ["CHECK_DATA_EXIT_CODES", "cmd_check_data", "cmd_make_demo", "cmd_split", "register"]

_WRITE_CODES = (("0", "written (the folder is printed)"), ("2", "bad input: one line on stderr; nothing written"),
                ("130", "interrupted"))
CHECK_DATA_EXIT_CODES = (
    ("0", "no error (warnings and notes may be printed, e.g. no val split)"),
    ("1", "errors in the data: bad layout, unreadable images, identities in both train and val"),
    ("2", "ROOT is not a folder holding Task_A/ or Task_B/ (one line on stderr)"),
    ("130", "interrupted"),
)


def cmd_make_demo(args: argparse.Namespace) -> int:
    """Writes the synthetic demo dataset."""
    from facecom_utils.data.demo import make_demo_dataset

    root = make_demo_dataset(args.root, seed=args.seed, train_identities=args.train_identities,
                             val_identities=args.val_identities, clean_per_identity=args.clean_per_identity,
                             image_size=args.image_size, overwrite=args.overwrite)
    print(root)
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    """An identity-disjoint train/val copy (symlinks) of a FACECOM training split."""
    from facecom_utils.data.splits import split_by_identity

    src = Path(args.src_root).expanduser()
    if not src.is_dir():
        raise CliError(f"{src}: source root not found (expected a folder holding Task_A/train and/or Task_B/train)")
    dst = split_by_identity(src, args.dst_root, val_fraction=args.val_fraction, seed=args.seed, overwrite=args.overwrite)
    print(dst)
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    """The check-data report on stdout; exit 1 when it holds an error."""
    from facecom_utils.cli.check_data import check_data

    report = check_data(args.root, duplicates=not args.no_duplicates)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return EXIT_SKIPPED if report.errors else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``make-demo``, ``split`` and ``check-data``."""
    p = subcommand(sub, "make-demo", "write the synthetic demo dataset (FACECOM layout)",
                   ["facecom make-demo /tmp/demo --train-identities 20 --val-identities 5"], _WRITE_CODES)
    p.add_argument("root", help="folder to write (new, empty, or an earlier demo with --overwrite)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-identities", type=int, default=60)
    p.add_argument("--val-identities", type=int, default=20)
    p.add_argument("--clean-per-identity", type=int, default=2)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo dataset in ROOT")
    p.set_defaults(func=cmd_make_demo)

    p = subcommand(sub, "split", "identity-disjoint train/val copy (symlinks) of a FACECOM training split",
                   ["facecom split data/facecom data/facecom_split --val-fraction 0.2"], _WRITE_CODES)
    p.add_argument("src_root", help="FACECOM root with Task_A/train and/or Task_B/train")
    p.add_argument("dst_root", help="where to write the new root")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_split)

    p = subcommand(sub, "check-data", "check a FACECOM folder: layout, counts, unreadable files, train/val leakage",
                   ["facecom check-data data/facecom", "facecom check-data data/facecom --json > check.json"],
                   CHECK_DATA_EXIT_CODES)
    p.add_argument("root", metavar="ROOT", help="folder holding Task_A/ and Task_B/ (train, and val when there is one)")
    p.add_argument("--json", action="store_true", help="print the findings and counts as JSON")
    p.add_argument("--no-duplicates", action="store_true", help="skip the near-duplicate search across train and val")
    p.set_defaults(func=cmd_check_data)
