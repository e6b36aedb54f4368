"""Fast gradient sign method (Goodfellow et al. 2015, "Explaining and harnessing adversarial
examples").

- Input range [0, 1]; norm `linf`: x + eps·sign(∇ₓ loss) (the classic FGSM), or `l2`:
  x + eps·∇ₓ loss/‖∇ₓ loss‖₂ (the fast gradient method); then clamped to [0, 1], which keeps
  it inside the eps-ball.
- One step from the clean image, no randomness. Targeted: descends the target's loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from advcli.attacks.base import Attack, input_grad, project, steepest_step
from advcli.config import Norm


class FGSM(Attack):
    name = "fgsm"

    def __init__(self, norm: Norm, eps: float, targeted: bool = False) -> None:
        self.norm = norm
        self.eps = float(eps)
        self.targeted = targeted

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "norm": self.norm.value,
            "eps": self.eps,
            "steps": 1,
            "step_size": self.eps,
            "restarts": 1,
            "targeted": self.targeted,
        }

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        grad, _ = input_grad(model, x, y, self.targeted)
        return project(x + self.eps * steepest_step(grad, self.norm), x, self.norm, self.eps)
