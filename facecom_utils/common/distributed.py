"""Where this process stands in a torch.distributed run: the one place that asks.

Data (the samplers of :mod:`facecom_utils.data.datasets`, the cache's build), training and the task
pipelines all shard or gate work by rank; they call :func:`distributed_info`, which is ``(0, 1)`` in
an ordinary process, so the same code runs alone and under ``torchrun``.
"""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["distributed_info"]


def distributed_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the torch.distributed process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1

