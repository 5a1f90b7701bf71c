"""``facecom make-demo`` and ``facecom split``: datasets in FACECOM layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from facecom_utils.cli.inputs import CliError
from facecom_utils.cli.options import subcommand

__all__ = ["cmd_make_demo", "cmd_split", "register"]

_WRITE_CODES = (("0", "written (the folder is printed)"), ("2", "bad input: one line on stderr; nothing written"),
                ("130", "interrupted"))


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


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``make-demo`` and ``split``."""
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

