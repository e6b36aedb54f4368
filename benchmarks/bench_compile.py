"""Benchmark `compile`: training step time with --compile (torch.compile) vs eager, and the
compilation time of the first step (report only).
"""

from __future__ import annotations

import time

import torch
from harness import Context, Ratio, batch_of, compare, emit, fresh_model, info, interleaved, ms, train_step_fn

NAME = "compile"


def run(ctx: Context) -> None:
    """--compile: a training step of torch.compile(model) vs the eager model (report only)."""
    s = ctx.sizes
    arch, b = s.archs[0], s.batch
    x, y = batch_of(ctx, b, "train")
    eager = fresh_model(ctx, arch)
    compiled = torch.compile(fresh_model(ctx, arch))
    info(f"compile: {arch} training step (batch {b}), torch.compile vs eager; compiling first")
    step = train_step_fn(ctx, compiled, x, y)
    t0 = time.perf_counter()
    step()
    ctx.sync()
    first = time.perf_counter() - t0
    sides = {"eager": train_step_fn(ctx, eager, x, y), "compiled": step}
    t = interleaved(ctx, sides, s.repeats)
    emit(ctx, Ratio(
        "compile", f"    speed-up of a training step with --compile ({arch}, batch {b})",
        detail=f"{ms(t.wall['compiled'])} vs eager {ms(t.wall['eager'])}; first compiled step "
        f"(compilation) {first:.1f} s", **compare(t, "eager", "compiled"),
    ))
