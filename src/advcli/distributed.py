"""Multi-process runs under torchrun (DistributedDataParallel).

`torchrun --nproc-per-node N -m advcli train ...` sets RANK/WORLD_SIZE/LOCAL_RANK; `setup()`
then joins the process group (nccl on GPUs, gloo on CPU) and pins each rank to its GPU. Every
rank seeds its augmentation and training-attack random starts with its own rank (see
`advcli.rng`), so ranks never share those streams; only rank 0 writes files and draws progress
bars.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; returns the rank's device."""
    info = env_info()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if current().enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def all_gather_cat(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's tensor (same shape on all ranks), in rank order."""
    info = current()
    if not info.enabled:
        return [t]
    out = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t)
    return out


def my_batches(n_batches: int) -> range:
    """The batch numbers this rank handles: every world_size-th, starting at its rank."""
    info = current()
    return range(info.rank, n_batches, info.world_size)


def gather_flags(values: np.ndarray) -> np.ndarray:
    """Merge per-rank results where each position was filled by exactly one rank (others -1)."""
    if not current().enabled:
        return values
    t = torch.from_numpy(values.astype(np.int64))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.numpy()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
