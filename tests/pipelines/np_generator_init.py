"""Flagged: a NumPy Generator made in __init__ is copied into every worker (and re-copied every
epoch when workers are not persistent)."""

import numpy as np
from _common import crop_flip, images
from torch.utils.data import Dataset


class Augmented(Dataset):
    def __init__(self) -> None:
        self.x = images()
        self.rng = np.random.default_rng()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        dy, dx = self.rng.integers(0, 9, size=2)
        return crop_flip(self.x[i], int(dy), int(dx), bool(self.rng.random() < 0.5)), 0


def make() -> Dataset:
    return Augmented()
