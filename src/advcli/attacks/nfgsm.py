"""N-FGSM (de Jorge, Bibi, Volpi, Sanyal, Torr, Rogez & Dokania 2022, "Make some noise:
reliable and efficient single-step adversarial training"): a training-only attack.

- Input range [0, 1]; norm `linf` only (the paper's setting).
- Add uniform noise from the box [-noise, noise] (default 2·eps, the paper's k = 2), keep the
  image in [0, 1], then take one signed-gradient step of `step_size` (default eps) from that
  noisy point, and clamp to [0, 1] again. There is NO projection onto the eps-ball: the
  perturbation can reach noise + step_size (3·eps with the defaults). The paper's point is that
  this larger, noisier perturbation avoids catastrophic overfitting at single-step cost, where
  FGSM-RS with a large step collapses.
- Outside the attack contract of `advcli.attacks.base` ("inside the eps-ball"), so it is never
  an evaluation attack: `build_attack` refuses it (`advcli attack`, `landscape`, the audit) and
  only `build_training_attack` (`advcli adv-train --attack n-fgsm`) builds it. The rest of the
  contract holds: eval mode and no parameter gradients during the attack, the random draws
  from `generator`, the result detached and inside [0, 1].
- `eps` is still the threat model's radius: the defaults scale with it, and it is what the
  checkpoint's threat model, validation and the overfitting check use.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from advcli.attacks.base import (
    Attack,
    AttackRun,
    as_norm,
    clamp_box,
    input_grad,
    random_start,
    score,
)
from advcli.config import Norm
from advcli.errors import UsageError

# The paper's defaults, in units of eps.
NOISE = 2.0
STEP = 1.0


class NFGSM(Attack):
    name = "n-fgsm"

    def __init__(
        self,
        norm: Norm | str,
        eps: float,
        step_size: float | None = None,
        noise: float | None = None,
        targeted: bool = False,
    ) -> None:
        self.norm = as_norm(norm)
        if self.norm is not Norm.linf:
            raise UsageError("n-fgsm is defined for linf (de Jorge et al. 2022); for l2 use fgsm-rs or pgd")
        self.eps = float(eps)
        self.step_size = STEP * self.eps if step_size is None else float(step_size)
        self.noise = NOISE * self.eps if noise is None else float(noise)
        if self.noise < 0 or self.step_size <= 0:
            raise UsageError(f"n-fgsm needs noise >= 0 and a step size > 0, got {self.noise} and {self.step_size}")
        self.targeted = bool(targeted)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "norm": self.norm.value,
            "eps": self.eps,
            "noise": self.noise,
            "steps": 1,
            "step_size": self.step_size,
            "restarts": 1,
            "targeted": self.targeted,
            "keep": "last",
            "max_perturbation": self.noise + self.step_size,  # Linf; no projection onto eps
        }

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        noisy = random_start(x, Norm.linf, self.noise, generator)
        grad, _, _ = input_grad(model, noisy, y, self.targeted)
        return clamp_box(noisy + self.step_size * grad.sign())

    def _run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> AttackRun:
        kept = score(model, self._perturb(model, x, y, generator), y, self.targeted)
        return AttackRun(kept.x, kept.fooled)
