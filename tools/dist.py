"""Distributed set-up in one place (docs/method.md §11): torchrun, one GPU, or the CPU."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def usable_cpus():
    """The CPUs this process may run on (its affinity where the platform tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpus_per_process(limit=None):
    """This process's share of the usable CPUs among torchrun's processes on this machine
    (``LOCAL_WORLD_SIZE``), at least 1 and at most ``limit``: the default number of worker
    processes of the stages."""
    share = max(1, usable_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return share if limit is None else min(limit, share)


def init_distributed(device="auto"):
    """Start the process group when launched by torchrun; pick this process's device.

    ``device``: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def barrier(info):
    if info.distributed:
        dist.barrier()


def shutdown(info):
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(items, info):
    """This rank's share of ``items`` (every world_size-th one), for inference stages."""
    return items[info.rank::info.world_size]
