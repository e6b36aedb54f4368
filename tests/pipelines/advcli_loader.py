"""advcli's own worker_loader returned as a user pipeline (a DataLoader): check-loader must use
its worker_init_fn and generator as given. `buggy` is flagged, `fixed` is not."""

import torch
from torch.utils.data import DataLoader

from advcli.data.loaders import worker_loader


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (8, 3, 16, 16), generator=g, dtype=torch.uint8)
    return x, torch.zeros(8, dtype=torch.int64)


def buggy() -> DataLoader:
    return worker_loader(*_data(), "buggy", batch_size=4, workers=2, seed=0, epoch=0)


def fixed() -> DataLoader:
    return worker_loader(*_data(), "fixed", batch_size=4, workers=2, seed=0, epoch=0)
