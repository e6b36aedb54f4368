"""A wrap for `advcli audit --wrap`: the model's softmax probabilities instead of its logits
(a network whose last layer is a softmax). Attacks built for logits get a weaker loss;
pyautoattack's `check_range_output` flags it, and the audit's gradients check warns."""

import torch
from torch import nn


class Probabilities(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def wrap(model: nn.Module) -> nn.Module:
    return Probabilities(model)
