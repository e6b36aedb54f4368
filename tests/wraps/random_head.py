"""A wrap with a freshly initialised layer, for the tests that user code is built reproducibly.

- `wrap`: the model's logits plus those of a random linear head on the image (default
  `nn.Linear` init, drawn from torch's global generator when the wrap is built). The head moves
  predictions, so the numbers depend on its weights: two runs agree only because user code is
  built with torch seeded to 0.
- `ADVCLI_TEST_WRAP_DRAWS=K` (tests only) draws K random numbers before the head is built: the
  same file (same sha256) builds other weights, which only the recorded weights_sha256 tells.
"""

import os

import torch
from torch import nn


class RandomHead(nn.Module):
    def __init__(self, model: nn.Module, num_classes: int = 10) -> None:
        super().__init__()
        self.model = model
        self.head = nn.Linear(3 * 32 * 32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.head(x.flatten(1))


def wrap(model: nn.Module) -> nn.Module:
    torch.rand(int(os.environ.get("ADVCLI_TEST_WRAP_DRAWS", "0")))
    return RandomHead(model)
