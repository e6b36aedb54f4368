"""Benchmark `objectives`: the cost of one adv-train update under TRADES, MART and AWP relative
to PGD-AT, same model, batch and inner steps (report only). An epoch is steps_per_epoch such
updates for every objective (TRADES and MART attack every example, as PGD-AT with --fraction 1
does), plus the same end-of-epoch measurements, so this ratio is the per-epoch cost of the
objective's training part.

Each side is the loop's own update (`train.loop.train_epoch`'s body): the adversarial part,
the objective's outer loss, under `--awp` the weight perturbation around the gradient, SGD step.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from harness import EPS, Context, Ratio, batch_of, compare, emit, fresh_model, info, interleaved, ms, pgd

from advcli.attacks.trades import TradesKL
from advcli.config import Norm
from advcli.train.adversarial import AttackPerturber
from advcli.train.loop import adversarial_part, mixed_cross_entropy, model_forward
from advcli.train.objectives import AWP, DEFAULT_AWP_GAMMA, DEFAULT_BETA, objective_fn

NAME = "objectives"


def update_fn(ctx: Context, arch: str, x: torch.Tensor, y: torch.Tensor, objective: str, k: int,
              awp: bool) -> Callable[[], None]:
    model = fresh_model(ctx, arch)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    attack = TradesKL(Norm.linf, EPS.value, steps=k) if objective == "trades" else pgd(k)
    perturber = AttackPerturber(attack, 1.0)
    outer = objective_fn(objective, DEFAULT_BETA) or mixed_cross_entropy
    perturbation = AWP(DEFAULT_AWP_GAMMA, 0) if awp else None
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    forward = model_forward(model, ctx.device)

    def step() -> None:
        model.train()
        x_adv, n_clean = adversarial_part(model, x, y, perturber=perturber, generator=gen, device=ctx.device)
        opt.zero_grad(set_to_none=True)
        around = (perturbation.around(model, lambda: outer(forward, x, x_adv, y, n_clean).loss)
                  if perturbation is not None else nullcontext())
        with around:
            outer(forward, x, x_adv, y, n_clean).loss.backward()
        opt.step()

    return step


def run(ctx: Context) -> None:
    s = ctx.sizes
    arch, b, k = s.archs[0], s.batch, s.adv_steps
    x, y = batch_of(ctx, b, "train")
    sides = {
        "pgd-at": update_fn(ctx, arch, x, y, "pgd-at", k, awp=False),
        "trades": update_fn(ctx, arch, x, y, "trades", k, awp=False),
        "mart": update_fn(ctx, arch, x, y, "mart", k, awp=False),
        "pgd-at+awp": update_fn(ctx, arch, x, y, "pgd-at", k, awp=True),
        "trades+awp": update_fn(ctx, arch, x, y, "trades", k, awp=True),
    }
    reps = max(1, s.repeats // 2)
    info(f"objectives: one adv-train update ({arch}, batch {b}, {k} inner steps) per objective, {reps} repeats")
    t = interleaved(ctx, sides, reps)
    for name in list(sides)[1:]:
        emit(ctx, Ratio(
            "objectives", f"    cost of an update with {name} / pgd-at",
            detail=f"{ms(t.wall[name])} vs pgd-at {ms(t.wall['pgd-at'])}", **compare(t, name, "pgd-at"),
        ))
