"""The CIFAR-standard augmentation (random crop with 4-pixel zero padding + horizontal flip),
in two implementations:

- `NumpyAugmentDataset`: per-sample, drawing from the *global* NumPy RNG inside DataLoader
  workers (the setting of the PyTorch+NumPy seeding bug; `loaders.py` decides how workers are
  seeded: `buggy` or `fixed`);
- `device_augment`: batched tensor ops on the training device with an explicit
  `torch.Generator` (mode `device`; no workers, no shared RNG state to get wrong).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

PAD = 4


def numpy_crop_flip(img: np.ndarray) -> np.ndarray:
    """Random crop (pad 4) + flip of one uint8 CHW image, using the global np.random."""
    c, h, w = img.shape
    dy, dx = np.random.randint(0, 2 * PAD + 1, size=2)
    flip = np.random.rand() < 0.5
    padded = np.zeros((c, h + 2 * PAD, w + 2 * PAD), dtype=img.dtype)
    padded[:, PAD : PAD + h, PAD : PAD + w] = img
    out = padded[:, dy : dy + h, dx : dx + w]
    if flip:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


class NumpyAugmentDataset(Dataset):
    """uint8 images [N,3,H,W] + labels; each item is freshly augmented with global np.random."""

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, augment: bool = True) -> None:
        self.x = x_uint8.numpy() if isinstance(x_uint8, torch.Tensor) else x_uint8
        self.y = y
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = numpy_crop_flip(self.x[i]) if self.augment else self.x[i]
        return torch.from_numpy(np.ascontiguousarray(img)), self.y[i]


def device_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Batched random crop (pad 4) + flip; `generator` lives on x's device."""
    n, _, h, w = x.shape
    dev = x.device
    shifts = torch.randint(0, 2 * PAD + 1, (2, n), generator=generator, device=dev)
    flips = torch.rand(n, generator=generator, device=dev) < 0.5
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    # Gather the crop with index arithmetic: one op for the whole batch, no Python loop.
    rows = (shifts[0].view(n, 1) + torch.arange(h, device=dev).view(1, h))  # [n, h]
    cols = (shifts[1].view(n, 1) + torch.arange(w, device=dev).view(1, w))  # [n, w]
    cols = torch.where(flips.view(n, 1), cols.flip(1), cols)
    idx_r = rows.view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * PAD)
    out = padded.gather(2, idx_r)
    idx_c = cols.view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return out.gather(3, idx_c)
