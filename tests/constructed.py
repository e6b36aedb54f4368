"""Hand-made modules whose behaviour follows from their weights, so that a test's premise holds
on every CPU, thread count and kernel choice instead of on one machine's rounding of a trained
model."""

from __future__ import annotations

import torch
from torch import nn


class Bump(nn.Module):
    """Two classes; class 1 (the wrong one for y = 0) wins only in a thin band of mean pixel
    value around `centre`: `height - width·(mean − centre)²`. Sign steps overshoot the band, so an
    iterate can be fooled while the next one is not."""

    def __init__(self, centre: float, height: float, width: float = 1000.0) -> None:
        super().__init__()
        self.centre, self.height, self.width = centre, height, width
        self.dummy = nn.Parameter(torch.zeros(1))  # attacks switch parameter gradients off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean(dim=(1, 2, 3))
        wrong = self.height - self.width * (z - self.centre) ** 2 + 0 * self.dummy
        return torch.stack([torch.zeros_like(wrong), wrong], dim=1)


class Ramp(nn.Module):
    """Two classes; class 1 (the wrong one for y = 0) wins once the mean pixel value exceeds
    `threshold`. Every pixel's gradient has the sign of the mean's, so PGD walks straight up."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.dummy = nn.Parameter(torch.zeros(1))  # attacks switch parameter gradients off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wrong = 100 * (x.mean(dim=(1, 2, 3)) - self.threshold) + 0 * self.dummy
        return torch.stack([torch.zeros_like(wrong), wrong], dim=1)


def escaping_bump(clean: float, eps: float) -> Bump:
    """A Bump fooled near `clean + eps` only (band clean + 0.6·eps .. clean + 1.2·eps), with its
    peak below that corner. Every pixel's gradient has the sign of the mean's, so a Linf step of
    2·eps from anywhere in the ball lands on a corner of it: PGD started near `clean` goes up to
    clean + eps (fooled, past the peak), down to clean − eps (not fooled), up again, and so on.
    Logits stay within about 40 of each other on the ball, so the gradient never underflows."""
    return Bump(centre=clean + 0.9 * eps, height=0.9, width=10.0 / eps**2)
