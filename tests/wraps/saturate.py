"""A masking defence for `advcli audit --wrap`: saturated softmax (logits scaled by 1,000, like
a defensively distilled network deployed at temperature 1; Carlini & Wagner 2016).

The decisions are the model's own, but softmax of the scaled logits is exactly one-hot in
float32 wherever the margin exceeds about 0.02: the cross-entropy gradient vanishes, so PGD and
FGSM on cross-entropy stall, while a margin loss (APGD-DLR, scale-invariant) is unaffected.
Expected audit: fails `convergence` (APGD-DLR breaks what PGD-10 did not); `gradients` warns
that cross-entropy saturates (the margin still has a gradient, so gradients as such are not
missing); the curve passes, since its margin loss is scale-invariant too.
"""

import torch
from torch import nn


class Saturate(nn.Module):
    def __init__(self, model: nn.Module, scale: float = 1000.0) -> None:
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


def wrap(model: nn.Module) -> nn.Module:
    return Saturate(model)
