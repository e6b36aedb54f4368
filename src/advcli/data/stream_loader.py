"""Training batches from a streamed split (`LazyImages`): `train_batches`' path for lazy data.

The epoch's permutation and rank sharding are `loaders.epoch_order`'s, as for in-memory data.
DataLoader workers decode the items; each item's transform depends only on (seed, epoch, item):
- `fixed` / `device`: RandomResizedCrop + flip drawn from a `torch.Generator` seeded by
  `advcli.rng` (stream `item_augment`, the item's index in the rank word): the same pixels for an
  item whatever its batch, worker, worker count or rank, so a mid-epoch resume just starts
  `skip` batches later in the permutation and is bit-identical;
- `none`: the evaluation transform (resize + centre crop);
- `buggy`: the same crop and flip drawn from the global NumPy RNG, under `loaders`' buggy worker
  init (every worker restores the parent's NumPy state): the seeding bug check-loader finds.

Unreadable images come back from the workers as `_Bad` records, not exceptions, so the main
process raises one DataError line naming the file (a worker's exception would arrive wrapped in
its traceback), or with skip_bad drops them from their batch and records them on the split.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from advcli.config import Augment
from advcli.data.stream import LazyImages
from advcli.data.transforms import eval_view, torch_uniform, train_view
from advcli.device import release_allocator
from advcli.errors import DataError
from advcli.rng import Stream, stream_generator


@dataclass
class _Bad:
    name: str
    reason: str


def item_view(x: LazyImages, i: int, mode: Augment, seed: int, epoch: int) -> torch.Tensor:
    """Item i of x as training sees it in this epoch (decoded, transformed: uint8 [3,R,R])."""
    img = x.load(i)
    r = x.image_size
    if mode is Augment.none:
        return eval_view(img, r)
    if mode is Augment.buggy:
        return train_view(img, r, lambda: float(np.random.random_sample()))
    return train_view(img, r, torch_uniform(stream_generator(seed, epoch, i, Stream.item_augment)))


class StreamItems(Dataset):
    """Position k of this rank's epoch order -> (image, label), or a `_Bad` record."""

    def __init__(self, x: LazyImages, y: torch.Tensor, order: torch.Tensor, mode: Augment, seed: int,
                 epoch: int) -> None:
        self.x, self.y, self.order, self.mode, self.seed, self.epoch = x, y, order, mode, seed, epoch

    def __len__(self) -> int:
        return len(self.order)

    def set_epoch(self, epoch: int) -> None:
        """The DistributedSampler convention, for a loader kept across epochs."""
        self.epoch = epoch

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor] | _Bad:
        i = int(self.order[k])
        try:
            return item_view(self.x, i, self.mode, self.seed, self.epoch), self.y[i]
        except DataError as exc:
            return _Bad(self.x.name(i), str(exc))


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, list[_Bad]]:
    good = [it for it in items if not isinstance(it, _Bad)]
    bad = [it for it in items if isinstance(it, _Bad)]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), bad
    return torch.stack([g[0] for g in good]), torch.stack([g[1] for g in good]), bad


def _worker_start(worker_id: int, then=None) -> None:
    # A decoding worker allocates images of every size: its memory must not grow with the images
    # it has decoded (see release_allocator).
    release_allocator()
    if then is not None:
        then(worker_id)


def stream_loader(
    x: LazyImages, y: torch.Tensor, order: torch.Tensor, *, mode: Augment, batch_size: int, workers: int,
    seed: int, epoch: int, rank: int, pin_memory: bool = False, worker_init=None,
) -> DataLoader:
    """The DataLoader over `order` (positions into x, this rank's, already cut for skip/drop_last)."""
    return DataLoader(
        StreamItems(x, y, order, mode, seed, epoch),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=partial(_worker_start, then=worker_init) if workers > 0 else None,
        generator=stream_generator(seed, epoch, rank, Stream.loader_workers),
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
    )


def stream_batches(
    x: LazyImages, y: torch.Tensor, order: torch.Tensor, *, mode: Augment, batch_size: int, workers: int,
    seed: int, epoch: int, device: torch.device, rank: int, skip: int, drop_last: bool,
    buggy_init=None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x float [0,1], y) on device for this rank's `order`, from batch `skip` on."""
    from advcli.data.datasets import to_float

    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    order = order[skip * batch_size : stop]
    init = None
    if mode is Augment.buggy:
        init = partial(buggy_init, np.random.get_state())
    loader = stream_loader(x, y, order, mode=mode, batch_size=batch_size, workers=workers, seed=seed,
                           epoch=epoch, rank=rank, pin_memory=device.type == "cuda", worker_init=init)
    for xb, yb, bad in loader:
        if bad:
            if not x.skip_bad:
                raise DataError(bad[0].reason)
            x.bad.update((b.name, b.reason) for b in bad)
            if len(yb) == 0:
                continue
        yield to_float(xb.to(device, non_blocking=True)), yb.to(device, non_blocking=True)

