"""Flagged: the classic bug, global `np.random` in workers that all start from the parent's NumPy
state. PyTorch < 1.9 forked workers with the parent's state and never re-seeded NumPy; today's
PyTorch re-seeds it per worker, so the worker_init_fn here puts the parent's state back, as the
old fork did (the state captured when the DataLoader is built, restored in every worker of
every epoch)."""

from functools import partial

import numpy as np
from _common import ImageSet, crop_flip
from torch.utils.data import DataLoader


class Augmented(ImageSet):
    def __getitem__(self, i: int):
        dy, dx = np.random.randint(0, 9, size=2)
        return crop_flip(self.x[i], int(dy), int(dx), bool(np.random.rand() < 0.5)), 0


def _as_forked(parent_state: tuple, worker_id: int) -> None:
    np.random.set_state(parent_state)


def make() -> DataLoader:
    return DataLoader(Augmented(), batch_size=4, shuffle=True, num_workers=2,
                      worker_init_fn=partial(_as_forked, np.random.get_state()))
