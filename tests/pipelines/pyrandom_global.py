"""Not flagged: crop and flip drawn from Python's global `random`, which PyTorch seeds per worker
and per epoch."""

import random

from _common import ImageSet, crop_flip
from torch.utils.data import Dataset


class Augmented(ImageSet):
    def __getitem__(self, i: int):
        return crop_flip(self.x[i], random.randint(0, 8), random.randint(0, 8), random.random() < 0.5), 0


def make() -> Dataset:
    return Augmented()
