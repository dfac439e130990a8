"""Distributed data parallel through ``torchrun``: process-group set-up from its environment variables.

``torchrun --nproc_per_node N [--nnodes M --rdzv_endpoint host:port] -m medvl3d.cli train CONFIG`` sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed`
reads them and joins the group with ``nccl`` on CUDA and ``gloo`` on CPU. Without them it is a no-op
and training runs in one process. Every collective and barrier waits at most ``train.dist_timeout_min``
(default 60 minutes, instead of NCCL's 10), so rank 0 may preprocess a cache or evaluate alone for that
long while the other ranks wait.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from medvl3d.device import resolve_device

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "resolve_device", "all_reduce_mean"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, local rank on its node, world size, and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only rank 0 logs, writes checkpoints and shows a progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_min: float = 60.0) -> DistInfo:
    """Join the torchrun process group if its environment variables are set; else a single process.

    Args:
        device: ``auto`` or a torch device string (see :func:`resolve_device`).
        timeout_min: how long any collective or barrier of the group may wait for the other ranks.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(minutes=timeout_min)
        )
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev)


def cleanup_distributed() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over all ranks (identity in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value
