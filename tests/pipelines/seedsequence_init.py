"""Not flagged: the Generator made in __init__ is replaced in every worker by one seeded through a
SeedSequence of the worker's own torch seed (new per worker and per epoch)."""

import numpy as np
from np_generator_init import Augmented
from torch.utils.data import DataLoader, get_worker_info


def _init(worker_id: int) -> None:
    info = get_worker_info()
    ss = np.random.SeedSequence(info.seed)
    info.dataset.rng = np.random.default_rng(ss)
    np.random.seed(ss.generate_state(4))


def make() -> DataLoader:
    return DataLoader(Augmented(), batch_size=4, shuffle=True, num_workers=2, worker_init_fn=_init)
