"""Flagged: a torch.Generator made in __init__ (seeded from entropy, still copied per worker)."""

import torch
from _common import crop_flip, images
from torch.utils.data import Dataset


class Augmented(Dataset):
    def __init__(self) -> None:
        self.x = images()
        self.g = torch.Generator()
        self.g.seed()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        dy, dx, flip = torch.randint(0, 9, (3,), generator=self.g).tolist()
        return crop_flip(self.x[i], dy, dx, flip % 2 == 1), 0


def make() -> Dataset:
    return Augmented()
