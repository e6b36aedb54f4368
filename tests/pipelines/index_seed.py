"""Flagged as frozen: an RNG seeded by the index alone, so every image gets the same crop and flip
in every epoch, worker and run. One callable per way of writing it (NumPy Generator, NumPy
RandomState, `default_rng` imported by name, torch.Generator, random.Random); outputs alone look
like a pipeline without augmentation, so the check must see the random-number calls."""

import random

import numpy as np
import torch
from _common import ImageSet, crop_flip
from numpy.random import default_rng
from torch.utils.data import Dataset


def _numpy(i: int):
    rng = np.random.default_rng(i)
    dy, dx = rng.integers(0, 9, size=2)
    return int(dy), int(dx), bool(rng.random() < 0.5)


def _randomstate(i: int):
    rs = np.random.RandomState(i)
    dy, dx = rs.randint(0, 9, size=2)
    return int(dy), int(dx), bool(rs.rand() < 0.5)


def _imported(i: int):
    rng = default_rng(i)
    dy, dx = rng.integers(0, 9, size=2)
    return int(dy), int(dx), bool(rng.random() < 0.5)


def _torch(i: int):
    g = torch.Generator().manual_seed(i)
    dy, dx, flip = torch.randint(0, 9, (3,), generator=g).tolist()
    return dy, dx, flip % 2 == 1


def _pyrandom(i: int):
    r = random.Random(i)
    return r.randint(0, 8), r.randint(0, 8), r.random() < 0.5


class Frozen(ImageSet):
    def __init__(self, draw) -> None:
        super().__init__()
        self.draw = draw

    def __getitem__(self, i: int):
        dy, dx, flip = self.draw(i)
        return crop_flip(self.x[i], dy, dx, flip), 0


def numpy_generator() -> Dataset:
    return Frozen(_numpy)


def numpy_randomstate() -> Dataset:
    return Frozen(_randomstate)


def numpy_imported() -> Dataset:
    return Frozen(_imported)


def torch_generator() -> Dataset:
    return Frozen(_torch)


def python_random() -> Dataset:
    return Frozen(_pyrandom)
