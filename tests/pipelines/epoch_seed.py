"""An RNG made per item from (index, epoch), the epoch set by the training loop through
`set_epoch` (the DistributedSampler convention), without persistent workers.

`make` (clean, with a note): ignores the run's seed, so two runs with different seeds get
identical augmentations. `with_run_seed` (clean, no note): the run's seed (torch's initial seed
when the dataset is built) is mixed in. `persistent` (flagged as frozen): with
persistent_workers=True, set_epoch reaches only the main process's copy of the dataset, so the
workers see epoch 0 for ever."""

import numpy as np
import torch
from _common import ImageSet, crop_flip
from torch.utils.data import DataLoader


class EpochSeeded(ImageSet):
    def __init__(self, run_seed: int | None) -> None:
        super().__init__()
        self.run_seed = run_seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int):
        key = [i, self.epoch] if self.run_seed is None else [self.run_seed, i, self.epoch]
        rng = np.random.default_rng(key)
        dy, dx = rng.integers(0, 9, size=2)
        return crop_flip(self.x[i], int(dy), int(dx), bool(rng.random() < 0.5)), 0


def make() -> DataLoader:
    return DataLoader(EpochSeeded(None), batch_size=4, shuffle=True, num_workers=2)


def with_run_seed() -> DataLoader:
    return DataLoader(EpochSeeded(torch.initial_seed()), batch_size=4, shuffle=True, num_workers=2)


def persistent() -> DataLoader:
    return DataLoader(EpochSeeded(None), batch_size=4, shuffle=True, num_workers=2,
                      persistent_workers=True)
