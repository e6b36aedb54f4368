"""TRADES' inner maximisation (Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan 2019, "Theoretically
principled trade-off between robustness and accuracy"): a training attack that maximises
KL(p(x) ‖ p(x′)), the divergence of the model's prediction at x′ from its clean prediction,
instead of the cross-entropy of the label.

- Input range [0, 1]; norm `linf` (signed steps, the reference script's setting) or `l2`
  (normalised-gradient steps).
- Start at x + 0.001·N(0, 1) (Gaussian draws from `generator`), projected onto the eps-ball and
  [0, 1]; then `steps` steps of `step_size` (default 2.5·eps/steps, as advcli's PGD), each
  followed by the projection onto the eps-ball and [0, 1]. The reference script: eps 0.031,
  10 steps of 0.007 (`advcli adv-train --objective trades --eps 0.031 --steps 10 --step-size 0.007`).
- The KL is summed over the batch, as in the reference code (its `KLDivLoss(size_average=False)`),
  so an example's attack does not depend on the batch; p(x) is a constant of the attack.
- Differences from the reference code, both at most the 0.001-scale noise: the reference feeds
  the model the raw noisy start (it may leave [0, 1] by the noise), advcli projects the start,
  since its models only ever see images in the box; the L2 variant steps along grad/‖grad‖₂
  and projects, where the reference runs SGD on the perturbation with step 2·eps/steps and
  renormalises (the same step direction).
- The attack contract of `advcli.attacks.base` holds (eval mode, no parameter gradients, the
  result detached, inside the eps-ball and the box). It keeps its last iterate: a training
  attack; `run` scores that iterate with the label's cross-entropy for the `fooled` flag.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advcli.attacks.base import Attack, AttackRun, as_norm, project, score, steepest_step
from advcli.config import Norm

START_STD = 0.001  # the reference code's start: x + 0.001·N(0, 1)


def kl_from_logits(logits_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p ‖ q) = Σ_c p_c (log p_c − log q_c), summed over classes, with p =
    softmax(`logits_p`) and log p from log_softmax: finite, with a finite gradient, where p_c
    underflows to 0 (logits more than ~104 apart in fp32). `F.kl_div(log_q, p)` with a p that
    carries a gradient computes p·log p by xlogy, whose backward is 0/0 = NaN at p_c = 0 (torch
    >= 1.13; older torch, the reference codes' era, masked it to 0): one such example turns every
    weight into NaN. The value is the same up to fp32 rounding."""
    logits_p = logits_p.float()
    return (F.softmax(logits_p, dim=1) * (F.log_softmax(logits_p, dim=1) - log_q)).sum(1)


def kl_to_clean(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p(x) ‖ p(x′)) from the clean and adversarial logits, summed over classes."""
    return kl_from_logits(logits_clean, F.log_softmax(logits_adv.float(), dim=1))


class TradesKL(Attack):
    name = "trades-kl"

    def __init__(self, norm: Norm | str, eps: float, steps: int = 10, step_size: float | None = None) -> None:
        self.norm = as_norm(norm)
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = 2.5 * self.eps / self.steps if step_size is None else float(step_size)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "norm": self.norm.value, "eps": self.eps, "steps": self.steps,
                "step_size": self.step_size, "restarts": 1, "start_std": START_STD, "keep": "last"}

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        with torch.no_grad():
            logits_clean = model(x).float()
        where = generator.device if generator is not None else x.device
        noise = torch.empty(x.shape, device=where).normal_(generator=generator).to(device=x.device, dtype=x.dtype)
        x_adv = project(x + START_STD * noise, x, self.norm, self.eps)
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(kl_to_clean(model(x_adv), logits_clean).sum(), x_adv)
            x_adv = project(x_adv.detach() + self.step_size * steepest_step(grad, self.norm), x, self.norm, self.eps)
        return x_adv

    def _run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> AttackRun:
        kept = score(model, self._perturb(model, x, y, generator), y, False)
        return AttackRun(kept.x, kept.fooled)
