"""Low-entropy augmentation: a horizontal flip alone (two outcomes per load).

`shared` (flagged): the flip drawn from a NumPy Generator made in __init__;
`independent` (not flagged): the flip drawn from the global np.random."""

import numpy as np
from _common import images
from torch.utils.data import Dataset


class Flip(Dataset):
    def __init__(self, rng: np.random.Generator | None) -> None:
        self.x = images()
        self.rng = rng

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        u = self.rng.random() if self.rng is not None else np.random.rand()
        return (self.x[i].flip(-1) if u < 0.5 else self.x[i]), 0


def shared() -> Dataset:
    return Flip(np.random.default_rng())


def independent() -> Dataset:
    return Flip(None)
