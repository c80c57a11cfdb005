"""Data parallelism through torchrun / accelerate launch: the process group, and
inference sharded across processes with results gathered on rank 0."""

from __future__ import annotations

import os

import numpy as np

from tunelab.core.runs import RunDirectory


def init_distributed(device_type: str) -> tuple[int, int]:
    """Join the process group torchrun/accelerate prepared; returns (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if device_type == "cuda":
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def broadcast_object(value, rank: int, world: int):
    if world <= 1:
        return value
    import torch.distributed as dist

    holder = [value if rank == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def shard(n: int, rank: int, world: int) -> np.ndarray:
    """This process's share of ``range(n)``: every world-th index from ``rank``."""
    return np.arange(rank, n, world)


def gather_to_zero(value, rank: int, world: int) -> list | None:
    """Every process's ``value``, as a list on rank 0 (None elsewhere)."""
    if world <= 1:
        return [value]
    import torch.distributed as dist

    gathered = [None] * world if rank == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def rank_zero_run_directory(make, rank: int, world: int):
    """Rank 0 makes the run directory (``make()``); every process gets its path."""
    from pathlib import Path

    made = make() if rank == 0 else None
    path = broadcast_object(str(made.path) if made is not None else None, rank, world)
    return made if made is not None else RunDirectory(Path(path))
