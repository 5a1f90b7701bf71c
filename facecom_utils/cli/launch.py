"""``facecom train-gender`` / ``facecom train-recognition``: train from a preset, in one process or under torchrun.

::

    facecom train-gender --preset facecom_cpu [-p epochs 3] [--output-dir DIR]
    torchrun --nproc_per_node=4 -m facecom_utils.cli.launch train-gender --preset facecom_gpu
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=HOST:29500 $(which facecom) train-recognition --preset facecom_gpu

Under torchrun (``WORLD_SIZE`` > 1 in the environment) the process group is initialised here
(NCCL on CUDA, gloo otherwise; each process takes ``cuda:LOCAL_RANK``) and the ordinary task
functions run unchanged: :func:`facecom_utils.train.fit.fit` wraps the model in
DistributedDataParallel, both samplers shard the epoch across processes
(:class:`~facecom_utils.data.datasets.DistributedWeightedSampler` for class/identity-balanced
sampling, ``DistributedSampler`` for plain shuffling), only rank 0 evaluates and writes
checkpoints and ``metrics.json`` -- the same results contract as a one-process run. The commands run
:func:`~facecom_utils.gender.tracks.train_gender_with_tracks` / :func:`~facecom_utils.recognition.face_tracks.train_recognition_with_tracks`:
the stages notebooks 02 / 03 run cell by cell, face-model tracks (rank 0) and headline included, so a preset
gives the same run folder both ways (tests/test_presets.py compares them).

Presets are the notebooks' papermill parameter files (``params/<notebook>/<preset>.yml``), written
against the notebook's own defaults, which are the config's defaults too (:mod:`facecom_utils.train.config`):
``train-gender --preset NAME`` (or the file, ``--preset FILE`` / ``-f FILE``, as for ``facecom run``)
trains what notebook 02 trains with that preset. A file of the task's notebook, or the task's section of another
file (``"02"`` for Task A, ``"03"`` for Task B), must only hold config fields; flat keys of other files
apply where the task's config has that field.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["TASKS", "add_train_arguments", "build_config", "init_distributed", "main", "train_from_args"]

# command -> (module of the train function, config class as "module:Name", train function, preset section);
# imported when used (torch is heavy). The train functions compute what notebooks 02 / 03 compute, face-model
# tracks and headline included.
TASKS: dict[str, tuple[str, str, str, str]] = {
    "train-gender": ("facecom_utils.gender.tracks", "facecom_utils.gender.pipeline:GenderConfig",
                     "train_gender_with_tracks", "02"),
    "train-recognition": ("facecom_utils.recognition.face_tracks", "facecom_utils.recognition.config:RecognitionConfig",
                          "train_recognition_with_tracks", "03"),
}


def _task(command: str) -> tuple[type, Any, str]:
    """``(config class, train function, preset section)`` of a command."""
    module_name, config_ref, train_name, section = TASKS[command]
    config_module, _, config_name = config_ref.partition(":")
    config_cls = getattr(importlib.import_module(config_module), config_name)
    return config_cls, getattr(importlib.import_module(module_name), train_name), section


class LaunchError(ValueError):
    """A bad preset or parameter (reported as one line by the CLI)."""


def init_distributed() -> bool:
    """Initialises torch.distributed from torchrun's environment; True if this call did it.

    Nothing happens in a plain process (no ``WORLD_SIZE`` > 1) or when a group already exists.
    """
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and os.environ.get("FACECOM_DIST_BACKEND", "") != "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return True


def build_config(command: str, presets: Sequence[str | Path], params: Sequence[Sequence[str]] = (),
                 **overrides: Any) -> Any:
    """The task's config dataclass from presets (merged in order), ``-p NAME VALUE`` pairs and overrides.

    Raises:
        LaunchError: A section or ``-p`` key that is not a field of the config (named).
    """
    from facecom_utils.reporting.runner import NOTEBOOKS, load_presets, parse_value

    config_cls, _, section = _task(command)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    try:
        merged = load_presets(presets) if presets else {}
    except Exception as err:  # RunError: the message names the file
        raise LaunchError(str(err)) from None
    values = {k: v for k, v in merged.items() if k in fields}  # (notebook sections are not fields)
    own = {**(merged.get(section) or {}), **(merged.get(NOTEBOOKS[section]) or {})}
    others = [k for k in merged if k in NOTEBOOKS.values() and k != NOTEBOOKS[section]]
    if others and not own:
        raise LaunchError(f"the preset is for notebook {others[0]}, not for {command} "
                          f"(which trains what {NOTEBOOKS[section]} trains)")
    bad = sorted(set(own) - fields)
    if bad:
        raise LaunchError(f"preset section {section!r}: unknown parameter(s) {', '.join(bad)} for {config_cls.__name__}")
    values.update(own)
    for name, text in params:
        if name not in fields:
            raise LaunchError(f"-p {name}: not a parameter of {config_cls.__name__} "
                              f"(known: {', '.join(sorted(fields))})")
        values[name] = parse_value(text)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(values.get("crop_scale"), list):
        values["crop_scale"] = tuple(values["crop_scale"])
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as err:  # a bad value: the dataclass names it
        raise LaunchError(f"{config_cls.__name__}: {err}") from None


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``facecom train-gender`` / ``train-recognition``: the options ``run`` shares
    (:func:`~facecom_utils.cli.options.add_parameter_options`), then ``--data-root``, ``--output-dir`` (the run
    folder) and ``--json``."""
    from facecom_utils.cli.options import add_parameter_options

    add_parameter_options(parser, "the task's notebook")
    parser.add_argument("--data-root", default=None, help="override the preset's data_root")
    parser.add_argument("--output-dir", default=None, help="override the preset's output_dir (the run folder)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON (rank 0)")


def preset_files_of(command: str, args: argparse.Namespace) -> list[str]:
    """The YAML files of ``--preset`` (names of the task's notebook, or files) and ``-f``, in order.

    Raises:
        LaunchError: An unknown preset name or a missing file.
    """
    from facecom_utils.cli.inputs import CliError
    from facecom_utils.cli.options import preset_paths

    try:
        return preset_paths(args.preset, args.parameters_file, TASKS[command][3])
    except CliError as err:
        raise LaunchError(str(err)) from None


def train_from_args(command: str, args: argparse.Namespace) -> int:
    """Runs one training command (under torchrun: in every process); rank 0 prints a summary."""
    config = build_config(command, preset_files_of(command, args), args.parameter, data_root=args.data_root,
                          output_dir=args.output_dir)
    started = init_distributed()
    import torch.distributed as dist

    try:
        run = _task(command)[1](config)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if rank == 0:
            written = Path(config.output_dir) / "metrics.json"  # the tracks stage put the headline on top
            metrics = json.loads(written.read_text()) if written.is_file() else (getattr(run, "metrics", {}) or {})
            if args.json:
                print(json.dumps(metrics, indent=2, default=str))
            else:
                keys = [k for k in ("balanced_accuracy", "roc_auc", "top1", "strict_top1", "threshold",
                                    "best_epoch", "train_seconds") if isinstance(metrics.get(k), (int, float))]
                summary = ", ".join(f"{k}={metrics[k]:.4g}" for k in keys)
                print(f"{command}: {config.output_dir}/metrics.json written ({summary})")
    finally:
        if started:
            dist.destroy_process_group()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m facecom_utils.cli.launch train-gender|train-recognition ...`` (what torchrun can run)."""
    parser = argparse.ArgumentParser(prog="python -m facecom_utils.cli.launch", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in TASKS:
        add_train_arguments(sub.add_parser(command))
    args = parser.parse_args(argv)
    try:
        return train_from_args(args.command, args)
    except LaunchError as err:
        print(f"facecom {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
