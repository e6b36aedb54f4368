"""Not flagged: the common fix, a worker_init_fn that seeds NumPy from torch.initial_seed(), which
in a worker is the worker's own seed (new per worker and per epoch)."""

import numpy as np
import torch
from global_rngs import Augmented
from torch.utils.data import DataLoader


def _seed_numpy(worker_id: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)


def make() -> DataLoader:
    return DataLoader(Augmented(), batch_size=4, shuffle=True, num_workers=2,
                      worker_init_fn=_seed_numpy)
