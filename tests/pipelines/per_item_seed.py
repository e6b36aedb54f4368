"""An RNG made per item from the worker's seed and the index,
`np.random.default_rng([get_worker_info().seed, index])`: a deterministic function of
(worker seed, index).

Not flagged without persistent workers (`make`, `flip`): the worker seed changes every epoch.
Flagged with persistent_workers=True (`persistent`, `flip_persistent`): the worker seed is fixed
for the run, so each item gets at most one augmentation per worker for the whole run.

A flip alone is two outcomes per item and each item's repeated loads are one draw, so the flip
variants have 32 images (judged with --samples 64); on 8 they are inconclusive either way."""

import numpy as np
import torch
from _common import ImageSet, crop_flip
from torch.utils.data import DataLoader, get_worker_info


class PerItem(ImageSet):
    def __init__(self, crop: bool) -> None:
        super().__init__(8 if crop else 32)
        self.crop = crop

    def __getitem__(self, i: int):
        info = get_worker_info()
        seed = info.seed if info is not None else torch.initial_seed()
        rng = np.random.default_rng([seed, i])
        dy, dx = rng.integers(0, 9, size=2) if self.crop else (4, 4)
        return crop_flip(self.x[i], int(dy), int(dx), bool(rng.random() < 0.5)), 0


def _loader(crop: bool, persistent: bool) -> DataLoader:
    return DataLoader(PerItem(crop), batch_size=4, shuffle=True, num_workers=2,
                      persistent_workers=persistent)


def make() -> DataLoader:
    return _loader(crop=True, persistent=False)


def persistent() -> DataLoader:
    return _loader(crop=True, persistent=True)


def flip() -> DataLoader:
    return _loader(crop=False, persistent=False)


def flip_persistent() -> DataLoader:
    return _loader(crop=False, persistent=True)
