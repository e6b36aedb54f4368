"""FGSM with a random start (Wong, Rice & Kolter 2020, "Fast is better than free: revisiting
adversarial training").

- Input range [0, 1]; norm `linf` (the paper's setting) or `l2` (same recipe with the L2 ball
  and a normalised-gradient step).
- Start at a random point of the eps-ball (clamped to [0, 1]), take one step of size
  α = `step_size` (default 1.25·eps, the paper's choice), project onto the eps-ball and [0, 1].
- `restarts` > 1 repeats from new random starts and keeps the worst case per example.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from advcli.attacks.base import (
    Attack,
    input_grad,
    keep_worst,
    project,
    random_start,
    score,
    steepest_step,
)
from advcli.config import Norm


class FGSMRandomStart(Attack):
    name = "fgsm-rs"

    def __init__(
        self,
        norm: Norm,
        eps: float,
        step_size: float | None = None,
        restarts: int = 1,
        targeted: bool = False,
    ) -> None:
        self.norm = norm
        self.eps = float(eps)
        self.step_size = 1.25 * self.eps if step_size is None else float(step_size)
        self.restarts = int(restarts)
        self.targeted = targeted

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "norm": self.norm.value,
            "eps": self.eps,
            "steps": 1,
            "step_size": self.step_size,
            "restarts": self.restarts,
            "targeted": self.targeted,
        }

    def _one_run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        x0 = random_start(x, self.norm, self.eps, generator)
        grad, _ = input_grad(model, x0, y, self.targeted)
        return project(x0 + self.step_size * steepest_step(grad, self.norm), x, self.norm, self.eps)

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        x_adv = self._one_run(model, x, y, generator)
        if self.restarts == 1:
            return x_adv
        best = score(model, x_adv, y, self.targeted)
        for _ in range(self.restarts - 1):
            cand = score(model, self._one_run(model, x, y, generator), y, self.targeted)
            best = keep_worst(best, cand)
        return best[0]
