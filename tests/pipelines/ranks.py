"""DDP seeding. `same_seed` (flagged with --ranks 2): every rank calls torch.manual_seed(0), so
every rank's DataLoader draws the same worker seeds. `seed_plus_rank` (not flagged): seed + rank,
the rank read from the RANK variable torchrun sets. `rank_argument`: the rank passed as rank=."""

import os

import torch
from global_rngs import Augmented
from torch.utils.data import DataLoader


def same_seed() -> DataLoader:
    torch.manual_seed(0)
    return DataLoader(Augmented(), batch_size=4, shuffle=True, num_workers=2)


def seed_plus_rank() -> DataLoader:
    torch.manual_seed(0 + int(os.environ["RANK"]))
    return DataLoader(Augmented(), batch_size=4, shuffle=True, num_workers=2)


def rank_argument(rank: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(1000 + rank)
    return DataLoader(Augmented(), batch_size=4, shuffle=True, num_workers=2, generator=g)
