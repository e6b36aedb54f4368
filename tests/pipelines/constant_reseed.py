"""Flagged: worker_init_fns that re-seed NumPy with a constant.

`make`: the same constant in every worker (duplicated across workers AND repeated every epoch);
`make_per_worker`: seed + worker_id (workers differ, but every epoch repeats the last)."""

import numpy as np
from global_rngs import Augmented
from torch.utils.data import DataLoader

SEED = 1234


def _same_seed(worker_id: int) -> None:
    np.random.seed(SEED)


def _seed_plus_worker_id(worker_id: int) -> None:
    np.random.seed(SEED + worker_id)


def make() -> DataLoader:
    return DataLoader(Augmented(), batch_size=4, shuffle=True, num_workers=2,
                      worker_init_fn=_same_seed)


def make_per_worker() -> DataLoader:
    return DataLoader(Augmented(), batch_size=4, shuffle=True, num_workers=2,
                      worker_init_fn=_seed_plus_worker_id)
