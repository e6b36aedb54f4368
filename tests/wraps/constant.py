"""Wraps for `advcli eval/attack --wrap` tests, whose numbers the wrapper dictates.

- `wrap`: logits that always say class 0, whatever the image. They stay on the autograd graph
  (the model's output times zero), so attacks see a zero gradient rather than none: clean
  accuracy is the share of label 0, and no attack can change a prediction.
- `shift`: on an image on the 8-bit grid (every clean image) the logits are rolled by one
  class, so every clean prediction is wrong; off the grid (any random start) they are the
  model's own, mostly right. Robust flags must still be False everywhere: robust implies
  clean-correct.
"""

import torch
from torch import nn


class ConstantClass0(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        logits = torch.zeros_like(out)
        logits[:, 0] = 10.0
        return out * 0 + logits


class ShiftOnGrid(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        on_grid = ((x * 255 - torch.round(x * 255)).abs() < 1e-3).flatten(1).all(1)
        return torch.where(on_grid[:, None], out.roll(1, dims=1), out)


def wrap(model: nn.Module) -> nn.Module:
    return ConstantClass0(model)


def shift(model: nn.Module) -> nn.Module:
    return ShiftOnGrid(model)
