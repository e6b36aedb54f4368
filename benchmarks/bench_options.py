"""Benchmark `options`: adv-train step time with --channels-last / --amp bf16 / both, vs neither
(report only).
"""

from __future__ import annotations

import torch
from harness import Context, Ratio, batch_of, compare, emit, fresh_model, info, interleaved, ms, pgd, train_step_fn

from advcli.train.adversarial import AttackPerturber

NAME = "options"


def run(ctx: Context) -> None:
    s = ctx.sizes
    arch, b, k = s.archs[0], s.batch, s.adv_steps
    x, y = batch_of(ctx, b, "train")
    configs = {"fp32": ("none", False), "channels-last": ("none", True), "bf16": ("bf16", False),
               "bf16+channels-last": ("bf16", True)}
    if ctx.device.type == "cuda":
        configs["fp16"] = ("fp16", False)
    sides = {}
    for name, (amp, cl) in configs.items():
        model = fresh_model(ctx, arch)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        perturber = AttackPerturber(pgd(k), 1.0, amp)
        sides[name] = train_step_fn(ctx, model, x, y, perturber=perturber, amp=amp, channels_last=cl)
    reps = max(1, s.repeats // 2)
    info(f"options: adv-train step ({arch}, batch {b}, PGD-{k}) under --channels-last / --amp, {reps} repeats")
    t = interleaved(ctx, sides, reps)
    for name in list(configs)[1:]:
        emit(ctx, Ratio(
            "options", f"    speed-up of the adv-train step with {name}",
            detail=f"{ms(t.wall[name])} vs fp32 {ms(t.wall['fp32'])}", **compare(t, "fp32", name),
        ))
