"""Spatially transformed adversarial examples, stAdv (Xiao et al. 2018, "Spatially transformed
adversarial examples", ICLR).

The image is not perturbed additively: every output pixel is *resampled* from the clean image
at a displaced position, x_adv = warp(x, f). Pixels change only through the flow f.

- Input range [0, 1]. The warp is bilinear interpolation (`torch.nn.functional.grid_sample`,
  `align_corners=True`, border padding), so x_adv is a convex combination of clean pixels and
  stays in [0, 1] by construction (a final clamp only removes float rounding).
- Flow field f: shape [N, 2, H, W] in **pixels**; channel 0 is the horizontal displacement
  (along the width), channel 1 the vertical one. Output pixel (i, j) samples the clean image at
  row i + f[1, i, j], column j + f[0, i, j]. Zero flow is the identity.
- Loss, minimised per example (Xiao et al. eq. 2-4):
  L_adv + τ·L_flow, where L_adv is the C&W margin with κ = 0,
  untargeted max(Z_y − max_{k≠y} Z_k, 0), targeted max(max_{k≠t} Z_k − Z_t, 0), and
  L_flow = Σ_p Σ_{q ∈ N(p)} sqrt(‖f(p) − f(q)‖² + 1e-8) over the 4-neighbours q of every pixel
  p (each neighbouring pair therefore counts twice, as in the paper). τ default 0.05.
- Bound: `bound` is the largest allowed displacement of any single pixel, as a Euclidean
  radius in pixels: sqrt(f_x(p)² + f_y(p)²) ≤ bound for every p, enforced by projecting each
  pixel's flow vector back onto that disc after every optimiser step. `bound=None` leaves the
  flow unbounded (the original paper, which relies on τ alone).
  The loss-landscape paper (Prabhu et al.) reports a "radius 0.3/64" without units. Read in
  `grid_sample`'s normalised coordinates (the image spans [−1, 1]), that radius is
  0.3/64 · (W − 1)/2 pixels = 0.0727 px for 32×32 images; read as a fraction of the image side
  it is 0.3/64 · 32 = 0.15 px. Pass the pixel value you mean as `bound`.
- Optimiser: Adam (not the paper's L-BFGS: Adam works per element, so each example in a batch
  is optimised independently of the others), `steps` iterations (default 100), learning rate
  `step_size` in pixels (default 2.5·bound/steps; 0.01 px when unbounded), zero initial flow.
- Result: per example the smoothest successful flow seen over the iterations; for examples
  never fooled, the last flow. Every iterate is checked (the last one too), so `run`'s `fooled`
  means "some iterate fooled the model", as under `first-success` (its `keep` record reads
  "smoothest-success").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advcli.attacks.base import Attack, AttackRun, attack_mode, check_inputs, clamp_box, fooled


@dataclass
class StAdvResult:
    x_adv: torch.Tensor
    flow: torch.Tensor  # [N, 2, H, W] in pixels, (horizontal, vertical)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of x at (row + flow[:, 1], column + flow[:, 0]), edge pixels repeated
    outside the image. Differentiable in both x and the flow."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    # Pixel positions -> grid_sample's [-1, 1] coordinates (align_corners=True: -1 and 1 are the
    # centres of the first and last pixels).
    gx = (cols + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (rows + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def flow_smoothness(flow: torch.Tensor) -> torch.Tensor:
    """Xiao et al.'s L_flow per example (each neighbouring pair counted twice, as in the paper)."""
    dx = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    dy = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    horiz = (dx.pow(2).sum(dim=1) + 1e-8).sqrt().sum(dim=(1, 2))
    vert = (dy.pow(2).sum(dim=1) + 1e-8).sqrt().sum(dim=(1, 2))
    return 2.0 * (horiz + vert)


def margin_loss(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """C&W margin with κ = 0 (zero once the example is fooled)."""
    own = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    margin = others - own if targeted else own - others
    return margin.clamp_min(0.0)


def project_flow(flow: torch.Tensor, bound: float) -> torch.Tensor:
    """Each pixel's displacement vector back onto the disc of radius `bound` (pixels)."""
    radius = flow.pow(2).sum(dim=1, keepdim=True).sqrt()
    return flow * (bound / radius.clamp_min(1e-12)).clamp(max=1.0)


class StAdv(Attack):
    name = "stadv"

    def __init__(
        self,
        tau: float = 0.05,
        bound: float | None = None,
        steps: int = 100,
        step_size: float | None = None,
        targeted: bool = False,
    ) -> None:
        self.tau = float(tau)
        self.bound = None if bound is None else float(bound)
        self.steps = int(steps)
        if step_size is not None:
            self.step_size = float(step_size)
        elif self.bound is not None:
            self.step_size = 2.5 * self.bound / self.steps
        else:
            self.step_size = 0.01
        self.targeted = targeted

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tau": self.tau,
            "bound": self.bound,
            "bound_units": "pixels (per-pixel flow radius)",
            "steps": self.steps,
            "step_size": self.step_size,
            "optimizer": "adam",
            "restarts": 1,
            "targeted": self.targeted,
            "keep": "smoothest-success",
        }

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> StAdvResult:
        """Like `perturb`, and also returns the flow that made x_adv."""
        check_inputs(x, y)
        x = x.detach()
        y = y.detach().to(x.device)
        with attack_mode(model):
            flow, _ = self._optimise(model, x, y)
        return StAdvResult(x_adv=clamp_box(warp(x, flow)).detach(), flow=flow.detach())

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        # Deterministic (zero initial flow): the generator is not needed.
        return clamp_box(warp(x, self._optimise(model, x, y)[0]))

    def _run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> AttackRun:
        flow, found = self._optimise(model, x, y)
        return AttackRun(clamp_box(warp(x, flow)), found)

    def _optimise(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept flow, and per example whether some iterate fooled the model."""
        n, _, h, w = x.shape
        flow = torch.zeros(n, 2, h, w, device=x.device, dtype=x.dtype, requires_grad=True)
        opt = torch.optim.Adam([flow], lr=self.step_size)
        best_flow = torch.zeros_like(flow, requires_grad=False)
        best_smooth = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for step in range(self.steps + 1):
            logits = model(warp(x, flow))
            smooth = flow_smoothness(flow)
            with torch.no_grad():
                # Track the iterate just evaluated (the last pass only evaluates).
                better = fooled(logits, y, self.targeted) & (smooth < best_smooth)
                best_flow = torch.where(better[:, None, None, None], flow, best_flow)
                best_smooth = torch.where(better, smooth, best_smooth)
                found |= better
            if step == self.steps:
                break
            loss = margin_loss(logits, y, self.targeted) + self.tau * smooth
            (flow.grad,) = torch.autograd.grad(loss.sum(), flow)
            opt.step()
            if self.bound is not None:
                with torch.no_grad():
                    flow.copy_(project_flow(flow, self.bound))
        return torch.where(found[:, None, None, None], best_flow, flow.detach()), found
