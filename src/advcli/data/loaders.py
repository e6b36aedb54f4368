"""Training batches for each `--augment` mode, seeded so that every epoch is a pure function of
(seed, epoch, rank): runs are deterministic and `--resume` needs no data-loader state (a
mid-epoch resume replays the epoch's first batches, `skip`, through the same pipeline without
yielding them). The data order and the augmentation draw from separate streams (`advcli.rng`),
so an image's crop does not depend on where the permutation put it.

- `none` / `device`: the decoded uint8 tensors stay on the training device; batches are index
  slices; `device` augments each batch with a `torch.Generator` (no workers).
- `buggy` / `fixed`: a DataLoader with `workers` processes over `NumpyAugmentDataset`.
  `buggy` reproduces the pre-1.9 PyTorch behaviour on today's PyTorch: each worker restores the
  parent's NumPy state at start-up, so all workers draw the same "random" numbers, and since the
  parent never advances its state, every epoch repeats the last. `fixed` seeds NumPy in each
  worker from the worker's own torch seed, which differs per worker and per epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info

from advcli.config import Augment
from advcli.data.augment import NumpyAugmentDataset, device_augment
from advcli.data.datasets import to_float
from advcli.data.stream import LazyImages
from advcli.data.stream_loader import stream_batches
from advcli.rng import Stream, stream_generator, stream_seed


def _buggy_init(parent_state: tuple, worker_id: int) -> None:
    np.random.set_state(parent_state)


def _fixed_init(worker_id: int) -> None:
    info = get_worker_info()
    assert info is not None
    np.random.seed(info.seed % 2**32)


def worker_loader(
    x_uint8: torch.Tensor,
    y: torch.Tensor,
    mode: str | Augment,
    batch_size: int,
    workers: int,
    seed: int,
    epoch: int,
    *,
    shuffle: bool = True,
    persistent_workers: bool = False,
    rank: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """The DataLoader for mode buggy|fixed for one epoch (see module docstring)."""
    mode = Augment(mode)
    if mode not in (Augment.buggy, Augment.fixed):
        raise ValueError(f"worker_loader serves buggy/fixed, not {mode.value}")
    dataset = NumpyAugmentDataset(x_uint8, y)
    init = partial(_buggy_init, np.random.get_state()) if mode is Augment.buggy else _fixed_init
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        worker_init_fn=init if workers > 0 else None,
        generator=stream_generator(seed, epoch, rank, Stream.loader_workers),
        persistent_workers=persistent_workers and workers > 0,
        drop_last=drop_last,
    )


def train_batches(
    x_uint8: torch.Tensor | LazyImages,
    y: torch.Tensor,
    *,
    augment: str | Augment,
    batch_size: int,
    workers: int,
    seed: int,
    epoch: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    skip: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x float [0,1] on device, y on device) batches for one epoch.

    With world_size > 1 each rank takes a disjoint strided shard of the epoch's permutation
    (the DistributedSampler rule), and augmentation is seeded per rank. The first `skip`
    batches are made (augmentation included: the random streams advance as in a full epoch)
    but not yielded, so the rest are those an uninterrupted epoch yields after them.

    A streamed split (`LazyImages`) is decoded by `workers` DataLoader processes with each
    item's transform seeded by (seed, epoch, item) (`stream_loader`); `skip` then starts later
    in the same order, decoding nothing it does not yield.
    """
    mode = Augment(augment)
    n = len(y)
    # Rank 0's stream on every rank: the ranks shard one common permutation.
    perm = torch.randperm(n, generator=stream_generator(seed, epoch, 0, Stream.shuffle))
    if world_size > 1:
        per_rank = n // world_size
        perm = perm[rank : per_rank * world_size : world_size]
    if mode is Augment.buggy:
        # A script that seeds NumPy once at start and never draws in the parent: the workers
        # (or, with workers=0, the main process) restart from this same state every epoch.
        np.random.seed(stream_seed(seed, 0, 0, Stream.buggy_numpy) % 2**32)
    if isinstance(x_uint8, LazyImages):
        yield from stream_batches(
            x_uint8, y, perm, mode=mode, batch_size=batch_size, workers=workers, seed=seed, epoch=epoch,
            device=device, rank=rank, skip=skip, drop_last=drop_last, buggy_init=_buggy_init,
        )
        return
    if mode in (Augment.buggy, Augment.fixed):
        xs, ys = x_uint8[perm], y[perm]
        loader = worker_loader(
            xs, ys, mode, batch_size, workers, seed, epoch, shuffle=False, rank=rank, drop_last=drop_last
        )
        if mode is Augment.fixed and workers == 0:
            np.random.seed(stream_seed(seed, epoch, rank, Stream.augment) % 2**32)
        for k, (xb, yb) in enumerate(loader):
            if k < skip:
                continue
            yield to_float(xb.to(device, non_blocking=True)), yb.to(device, non_blocking=True)
        return
    gen = stream_generator(seed, epoch, rank, Stream.augment, device) if mode is Augment.device else None
    x_dev = x_uint8 if x_uint8.device == device else x_uint8.to(device)
    y_dev = y if y.device == device else y.to(device)
    perm = perm.to(device)
    stop = n - (n % batch_size) if drop_last else len(perm)
    for k, start in enumerate(range(0, min(stop, len(perm)), batch_size)):
        idx = perm[start : start + batch_size]
        if k < skip and gen is None:
            continue
        xb = to_float(x_dev[idx])
        if gen is not None:
            xb = device_augment(xb, gen)
        if k >= skip:
            yield xb, y_dev[idx]
