"""A masking defence for `advcli audit --wrap`: input quantisation to the 8-bit grid.

`torch.round` has a zero derivative everywhere, so the input gradient of the wrapped model is
exactly zero: gradient attacks cannot move (only their random start perturbs the image), while
an attack on the unwrapped model transfers unchanged (a perturbation survives rounding). Clean
images are already on the grid, so clean accuracy is the model's own.
Expected audit: fails `gradients` (zero gradient), `curve` (flat above the floor), `transfer`
(BPDA: the unwrapped model's examples break it), and `black-box` when Square has points to try.
"""

import torch
from torch import nn


class Quantize(nn.Module):
    def __init__(self, model: nn.Module, levels: int = 255) -> None:
        super().__init__()
        self.model = model
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)


def wrap(model: nn.Module) -> nn.Module:
    return Quantize(model)
