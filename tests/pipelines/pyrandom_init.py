"""Flagged: a `random.Random` made in __init__."""

import random

from _common import crop_flip, images
from torch.utils.data import Dataset


class Augmented(Dataset):
    def __init__(self) -> None:
        self.x = images()
        self.random = random.Random()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        r = self.random
        return crop_flip(self.x[i], r.randint(0, 8), r.randint(0, 8), r.random() < 0.5), 0


def make() -> Dataset:
    return Augmented()
