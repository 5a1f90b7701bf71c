"""Where this process stands in a torch.distributed run: the one place that asks.

Data (the samplers of :mod:`facecom_utils.data.datasets`, the cache's build), training and the task
pipelines all shard or gate work by rank; they call :func:`distributed_info`, which is ``(0, 1)`` in
an ordinary process, so the same code runs alone and under ``torchrun``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch.distributed as dist

__all__ = ["alone", "distributed_info", "then_on_rank_zero"]

_ALONE: list[bool] = []


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Within the block this process runs as a one-process run, ``(0, 1)``, whatever the process group.

    For work that rank 0 does after a distributed training, while the other ranks have finished: the
    face-model tracks, whose glare expert trains through :func:`~facecom_utils.train.fit.fit` (which
    would otherwise wrap it in DistributedDataParallel and wait for ranks that are gone).
    """
    _ALONE.append(True)
    try:
        yield
    finally:
        _ALONE.pop()


def distributed_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the torch.distributed process group, ``(0, 1)`` without one or inside
    :func:`alone`."""
    if _ALONE:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1



def then_on_rank_zero(stages: Callable[[Any], tuple[Any, Any]], tracks: Callable[[Any, Any, Any], Any],
                      config: Any) -> Any:
    """A task's training in one call: ``stages(config)`` on every rank gives ``(splits, run)``, then
    ``tracks(config, splits, run)`` on rank 0 only, as a one-process run (:func:`alone`: the other ranks are
    done, and a network the tracks fit must not wait for them). Returns ``run``."""
    splits, run = stages(config)
    if distributed_info()[0] == 0:
        with alone():
            tracks(config, splits, run)
    return run
