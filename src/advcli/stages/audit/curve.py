"""Check 1, the robustness curve: accuracy under PGD over an eps sweep from 0 to far past the
threat model, each eps warm-started from the previous eps's adversarial examples.

- The sweep: eps/4, eps/2, eps, 2·eps, ... up to the radius from which every image can reach
  any other: 0.5 for Linf (the ball around any image in [0, 1] holds mid-grey) and sqrt(C·H·W)
  for L2 (the diagonal of the image box).
- Each eps starts from the previous eps's kept images (they lie inside the larger ball), and
  takes `curve_steps` PGD steps of 2.5·eps/steps on the margin loss (best other logit minus the
  label's, as in Carlini & Wagner 2017). Not cross-entropy: far from the data, where large-eps
  steps land, an honest model is so confident that softmax saturates and the cross-entropy
  gradient underflows to zero; the margin keeps a gradient wherever the logits have one
  (saturation is checks 2 and 6's business). As in `advcli eval`'s first-success rule, the
  start counts as an iterate and the first misclassified iterate is kept, so the attack itself
  never gives back a point it had.
- Each eps's verdict is a fresh forward pass over the kept images, in other batches than the
  attack's. Since a smaller ball lies inside a larger one, an example fooled at some eps but
  robust at a larger one is a verdict that does not hold up when asked again: outputs that
  change between passes (a random defence) or with the batch (batch statistics, a detector).
- The floor: at the largest eps every example can be moved to the constant image (mid-grey),
  so accuracy can be at most the share of examples whose label is the model's class for that
  image. Examples still robust there although mid-grey is misclassified are gradient masking.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from advcli.audit_file import CheckResult
from advcli.config import Eps, Norm
from advcli.models.layout import input_layout, model_layout
from advcli.stages.audit.context import AuditContext, accuracy, margin, stream_seed
from advcli.stages.audit.limits import CheckName, judge

GREY = 0.5


def top_radius(norm: Norm, shape: tuple[int, ...]) -> Eps:
    """The radius from which any image can reach any other (and the constant image)."""
    if norm is Norm.linf:
        return Eps(GREY, "0.5")
    value = math.sqrt(math.prod(shape))
    return Eps(value, f"{value:.4g}")


def eps_grid(norm: Norm, eps: Eps, shape: tuple[int, ...]) -> list[Eps]:
    """eps/4, eps/2, eps, 2·eps, ... below the top radius, then the top radius itself (or eps,
    when the threat model is already that large)."""
    top = top_radius(norm, shape)
    if eps.value >= top.value:
        top = eps
    num, den = None, None
    if "/" in eps.text:  # keep the paper's notation: 8/255 -> 2/255, 4/255, ..., 64/255
        a, b = eps.text.split("/", 1)
        num, den = Fraction(a.strip()), b.strip()
    grid: list[Eps] = []
    factor = Fraction(1, 4)
    while eps.value * factor < top.value - 1e-12:
        value = eps.value * float(factor)
        text = f"{float(num * factor):g}/{den}" if num is not None else f"{value:.4g}"
        grid.append(Eps(value, text))
        factor *= 2
    return grid + [top]


def warm_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, *, norm: Norm, eps: float,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD on the margin from `start` (inside the eps-ball around x): (kept images, fooled).

    An example leaves the batch at its first misclassified iterate, the start included, so
    warm starts that still fool the model cost one forward-backward pass, not `steps`.
    """
    from advcli.attacks.base import project, steepest_step

    alpha = 2.5 * eps / steps
    cur = start.detach().clone()
    fooled = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    active = torch.arange(len(y), device=x.device)
    for _ in range(steps):
        xa = cur[active].requires_grad_(True)
        logits = model(xa)
        (grad,) = torch.autograd.grad(-margin(logits.float(), y[active]).sum(), xa)
        hit = logits.argmax(1) != y[active]  # the iterate, checked on its own gradient pass
        fooled[active[hit]] = True
        active, grad = active[~hit], grad[~hit]
        if not len(active):
            return cur, fooled
        cur[active] = project(cur[active] + alpha * steepest_step(grad, norm), x[active], norm, eps)
    with torch.no_grad():
        fooled[active] = model(cur[active]).argmax(1) != y[active]
    return cur, fooled


def run(ctx: AuditContext) -> CheckResult:
    from advcli.attacks.base import attack_mode, random_start

    t0 = time.perf_counter()
    shape = tuple(ctx.x.shape[1:])
    grid = eps_grid(ctx.norm, ctx.eps, shape)
    todo = np.flatnonzero(ctx.clean)
    bs, steps = ctx.opts.batch_size, ctx.opts.curve_steps
    robust = np.zeros((len(grid) + 1, ctx.n), dtype=bool)
    robust[0] = ctx.clean
    attack_fooled = np.zeros((len(grid), ctx.n), dtype=bool)
    y = ctx.y.numpy()
    kept = ctx.x.clone()
    ctx.reporter.start(f"curve: pgd-{steps} at {len(grid)} eps, warm-started", total=len(grid) * len(todo))
    try:
        with attack_mode(ctx.model), model_layout(ctx.model, ctx.channels_last):
            for k, e in enumerate(grid):
                for b, start in enumerate(range(0, len(todo), bs)):
                    idx = torch.from_numpy(todo[start:start + bs])
                    xb = input_layout(ctx.x[idx].to(ctx.device), ctx.channels_last)
                    yb = ctx.y[idx].to(ctx.device)
                    if k == 0:
                        g = torch.Generator().manual_seed(stream_seed(ctx.opts.seed, 11, b))
                        x0 = random_start(xb, ctx.norm, e.value, g)
                    else:
                        x0 = input_layout(kept[idx].to(ctx.device), ctx.channels_last)
                    x_adv, fooled = warm_pgd(ctx.model, xb, yb, x0, norm=ctx.norm, eps=e.value, steps=steps)
                    kept[idx] = x_adv.float().cpu().contiguous()
                    attack_fooled[k, idx.numpy()] = fooled.cpu().numpy()
                    ctx.reporter.advance(len(idx))
                robust[k + 1] = ctx.predict(ctx.model, kept) == y
        with torch.no_grad():
            grey = torch.full((1, *shape), GREY, device=ctx.device)
            grey_class = int(ctx.model(grey).argmax(1)[0])
    finally:
        ctx.reporter.finish()
    robust[1:] &= ctx.clean
    at_threat = next(k for k, e in enumerate(grid) if e.value == ctx.eps.value) + 1
    ctx.whitebox[f"curve pgd-{steps} (warm start)"] = robust[at_threat] & ~attack_fooled[at_threat - 1]

    fooled_before = np.logical_or.accumulate(~robust, axis=0)
    non_monotone = (robust[1:] & fooled_before[:-1]).any(0)
    floor_flags = y == grey_class
    above_floor = robust[-1] & ~floor_flags
    values = {"non_monotone": int(non_monotone.sum()), "above_floor": int(above_floor.sum())}
    findings, status = judge(CheckName.curve, values, ctx.n)

    points = [{"eps": 0.0, "eps_text": "0", "accuracy": accuracy(robust[0]), "robust": int(robust[0].sum())}]
    points += [{"eps": e.value, "eps_text": e.text, "accuracy": accuracy(robust[k + 1]),
                "robust": int(robust[k + 1].sum())} for k, e in enumerate(grid)]
    floor = accuracy(floor_flags)
    measured = (f"accuracy {100 * points[0]['accuracy']:.1f}% at 0 -> {100 * points[at_threat]['accuracy']:.1f}% "
                f"at {ctx.eps.text} -> {100 * points[-1]['accuracy']:.1f}% at {grid[-1].text} "
                f"(floor {100 * floor:.1f}%); non-monotone {values['non_monotone']}, "
                f"above the floor {values['above_floor']}")
    advice = []
    if values["non_monotone"]:
        advice.append("examples fooled at a smaller eps count as robust at a larger one when asked "
                      "again: the model's outputs change between passes or with the batch (check 6); "
                      "evaluate with EoT and judge each example more than once")
    if values["above_floor"]:
        advice.append(f"accuracy at {grid[-1].text} stays above the constant-image floor: the "
                      "curve flattens, gradients are masked; attack with BPDA and black-box attacks")
    return CheckResult(
        check=CheckName.curve.value, title="", status=status.value, measured=measured,
        advice="; ".join(advice) or "nothing to do: the curve falls to the floor and its verdicts hold",
        findings=findings,
        numbers={"n": ctx.n, "steps": steps, "step_size": "2.5*eps/steps", "loss": "margin", "points": points,
                 "attack_disagrees": int((attack_fooled & robust[1:]).sum()),
                 "floor": {"image": f"constant {GREY}", "class": grey_class, "accuracy": floor},
                 "threat_eps_index": at_threat, **values},
        time_s=time.perf_counter() - t0,
    )
