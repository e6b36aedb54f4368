"""Projected gradient descent (Madry et al. 2018, "Towards deep learning models resistant to
adversarial attacks"), for the Linf and the L2 ball.

- Input range [0, 1]; norm `linf` (steps along sign(grad)) or `l2` (steps along grad/‖grad‖₂).
- Start: a random point of the eps-ball (see `base.random_start`), clamped to [0, 1].
- `steps` iterations (default 10) of size `step_size` (default 2.5·eps/steps), each followed by
  the projection onto the eps-ball and onto [0, 1]; the last iterate is the result.
- `restarts` (default 1) independent random starts; per example the worst case for the model
  is kept (a success beats a failure, then the higher loss).
- Loss: cross-entropy of the true label (raised), or of the target label (lowered) when
  targeted. The loss is summed over the batch, so an example's attack does not depend on
  which batch it is in.

The hot loop computes only the input gradient (`torch.autograd.grad` w.r.t. the input; the
parameters do not require grad during the attack) and never synchronises with the host.
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


class PGD(Attack):
    name = "pgd"

    def __init__(
        self,
        norm: Norm,
        eps: float,
        steps: int = 10,
        step_size: float | None = None,
        restarts: int = 1,
        targeted: bool = False,
        random_init: bool = True,
    ) -> None:
        self.norm = norm
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = 2.5 * self.eps / self.steps if step_size is None else float(step_size)
        self.restarts = int(restarts)
        self.targeted = targeted
        # Off only for reference comparisons and tests; attacks in advcli always start randomly.
        self.random_init = random_init

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "norm": self.norm.value,
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.step_size,
            "restarts": self.restarts,
            "targeted": self.targeted,
            "random_start": self.random_init,
        }

    def _one_run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        x_adv = random_start(x, self.norm, self.eps, generator) if self.random_init else x.clone()
        for _ in range(self.steps):
            grad, _ = input_grad(model, x_adv, y, self.targeted)
            x_adv = project(x_adv + self.step_size * steepest_step(grad, self.norm), x, self.norm, self.eps)
        return x_adv

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        x_adv = self._one_run(model, x, y, generator)
        if self.restarts == 1:
            return x_adv
        best = score(model, x_adv, y, self.targeted)
        for _ in range(self.restarts - 1):
            best = keep_worst(best, score(model, self._one_run(model, x, y, generator), y, self.targeted))
        return best[0]
