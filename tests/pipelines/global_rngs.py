"""Not flagged: global `np.random` and `random`, which PyTorch >= 1.9 seeds per worker and epoch.

Also the base of two worker_init_fn cases (constant_reseed.py) and the DDP cases (ranks.py)."""

import random

import numpy as np
from _common import crop_flip, images
from torch.utils.data import Dataset


class Augmented(Dataset):
    def __init__(self) -> None:
        self.x = images()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        dy, dx = np.random.randint(0, 9, size=2)
        return crop_flip(self.x[i], int(dy), int(dx), random.random() < 0.5), 0


def make() -> Dataset:
    return Augmented()
