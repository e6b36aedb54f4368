"""Not flagged: crop and flip drawn from torch's global RNG, which PyTorch seeds per worker and
per epoch (base seed + worker id)."""

import torch
from _common import ImageSet, crop_flip
from torch.utils.data import Dataset


class Augmented(ImageSet):
    def __getitem__(self, i: int):
        dy, dx, flip = torch.randint(0, 9, (3,)).tolist()
        return crop_flip(self.x[i], dy, dx, flip % 2 == 1), 0


def make() -> Dataset:
    return Augmented()
