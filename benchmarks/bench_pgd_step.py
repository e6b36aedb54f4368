"""Benchmark [1] `pgd-step`: one PGD step (attack.perturb with k steps, / k) / one forward pass
(no_grad, eval mode), same model and batch; input gradient only. Target <= 2.1.

A naive step that also computes weight gradients (`naive_pgd`) is shown for reference.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from harness import EPS, Context, Ratio, batch_of, compare, emit, fresh_model, info, interleaved, ms, pgd
from torch import nn

NAME = "pgd-step"


def naive_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """PGD as often written: `loss.backward()` with the parameters still requiring gradients,
    so every step also computes (and accumulates) weight gradients. Reference only."""
    eps, alpha = EPS.value, 2.5 * EPS.value / steps
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        F.cross_entropy(model(x_adv), y, reduction="sum").backward()
        assert x_adv.grad is not None
        x_adv = x_adv + alpha * x_adv.grad.sign()
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
    model.zero_grad(set_to_none=True)
    return x_adv.detach()


def run(ctx: Context) -> None:
    s = ctx.sizes
    k = s.pgd_k
    for i, arch in enumerate(s.archs):
        b = s.batch if i == 0 else s.small_batch
        model = fresh_model(ctx, arch).eval()
        x, y = batch_of(ctx, b)
        attack = pgd(k)
        gen = torch.Generator(device=ctx.device).manual_seed(0)

        def forward(model: nn.Module = model, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                for _ in range(k):
                    model(x)

        sides: dict[str, Callable[[], Any]] = {
            "pgd": lambda a=attack, m=model, x=x, y=y, g=gen: a.perturb(m, x, y, g),
            "forward": forward,
        }
        if i == 0:
            sides["naive"] = lambda m=model, x=x, y=y: naive_pgd(m, x, y, k)
        info(f"pgd-step: {arch}, batch {b}, {k} steps per call, {s.repeats} repeats")
        t = interleaved(ctx, sides, s.repeats)
        r = compare(t, "pgd", "forward")
        faults = statistics.median(t.faults["pgd"]) / k
        emit(ctx, Ratio(
            "pgd-step", f"[1] PGD step / forward pass ({arch}, batch {b})", target="<= 2.1",
            detail=f"PGD step {ms([v / k for v in t.wall['pgd']])}, forward {ms([v / k for v in t.wall['forward']])}; "
                   f"{faults:,.0f} minor page faults per PGD step", **r,
        ))
        if "naive" in t.wall:
            naive = compare(t, "naive", "forward")
            emit(ctx, Ratio(
                "pgd-step", f"    reference: step with weight gradients / forward ({arch})",
                detail=f"naive step {ms([v / k for v in t.wall['naive']])}; advcli's step is "
                       f"{100 * (1 - r['value'] / naive['value']):.0f}% cheaper", **naive,
            ))
