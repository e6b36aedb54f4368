"""Shared bits of the test pipelines: a few fixed images, a crop (pad 4) + flip by parameters, and
a dataset of those images whose subclasses only say how they draw the parameters.

Each pipeline module draws the parameters its own way; that is what check-loader judges.
"""

import torch
from torch.utils.data import Dataset

PAD = 4
SIZE = 16


def images(n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.rand(n, 3, SIZE, SIZE, generator=g)


def crop_flip(img: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    padded = torch.nn.functional.pad(img, (PAD, PAD, PAD, PAD))
    out = padded[:, dy : dy + SIZE, dx : dx + SIZE]
    return out.flip(-1) if flip else out


class ImageSet(Dataset):
    """The fixed images; a subclass's __getitem__ draws the crop and flip."""

    def __init__(self, n: int = 8) -> None:
        self.x = images(n)

    def __len__(self) -> int:
        return len(self.x)
