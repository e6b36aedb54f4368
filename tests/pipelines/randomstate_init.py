"""Flagged: a NumPy RandomState made in __init__ (the same bug with the legacy API)."""

import numpy as np
from _common import crop_flip, images
from torch.utils.data import Dataset


class Augmented(Dataset):
    def __init__(self) -> None:
        self.x = images()
        self.rs = np.random.RandomState()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        dy, dx = self.rs.randint(0, 9, size=2)
        return crop_flip(self.x[i], int(dy), int(dx), bool(self.rs.rand() < 0.5)), 0


def make() -> Dataset:
    return Augmented()
