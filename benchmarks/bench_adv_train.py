"""Benchmark [2] `adv-train`: adv-train time per batch (the real `fit` loop with PGD-k) /
(k-step PGD on a batch + one training step on a batch). Target <= 1.05.
"""

from __future__ import annotations

import resource
import statistics
import time

import torch
from harness import (
    EPS,
    Context,
    Ratio,
    batch_of,
    emit,
    fresh_model,
    info,
    interleaved,
    ms,
    pair_ratio,
    pgd,
    small_test,
    train_step_fn,
)

from advcli.config import Norm
from advcli.train.adversarial import AdvOptions, ThreatModel, adv_fit
from advcli.train.loop import TrainOptions

NAME = "adv-train"


class BatchClock:
    """A `Reporter` that times `fit`'s batches: from the end of the first batch (warm-up) to
    the end of the last, per batch: wall seconds, CPU seconds, minor page faults."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.first: tuple[float, float, int] | None = None
        self.last = (0.0, 0.0, 0)
        self.batches = 0

    def start(self, description: str, total: int | None) -> None:
        self.first, self.batches = None, 0

    def advance(self, n: int = 1) -> None:
        self.batches += n
        if self.first is None:
            self.ctx.sync()  # once, at the warm-up boundary; the hot loop itself is not disturbed
            self.first = self._now()

    def finish(self) -> None:
        self.ctx.sync()
        self.last = self._now()

    @staticmethod
    def _now() -> tuple[float, float, int]:
        return time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def log(self, message: str) -> None:
        pass

    def per_batch(self) -> tuple[float, float, float]:
        assert self.first is not None and self.batches > 1
        n = self.batches - 1
        return tuple((b - a) / n for a, b in zip(self.first, self.last, strict=True))  # type: ignore[return-value]


def run(ctx: Context) -> None:
    s = ctx.sizes
    arch, b, k, m = s.archs[0], s.batch, s.adv_steps, s.adv_batches
    data = small_test(ctx.data, 64)
    opts = TrainOptions(arch=arch, epochs=1, batch_size=b, lr=0.01, n_train=(m + 1) * b, augment="device",
                        out=str(ctx.tmp / "adv-train.safetensors"))
    adv = AdvOptions(threat=ThreatModel(norm=Norm.linf, eps=EPS, attack="pgd", steps=k))
    model = fresh_model(ctx, arch)
    x, y = batch_of(ctx, b, "train")
    attack = pgd(k)
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    sides = {"attack": lambda: attack.perturb(model, x, y, gen), "train": train_step_fn(ctx, model, x, y)}

    def fit_round() -> tuple[float, float, float]:
        clock = BatchClock(ctx)
        adv_fit(opts, adv, data, ctx.device, reporter=clock)  # type: ignore[arg-type]
        return clock.per_batch()

    def parts_round() -> tuple[float, float, float]:
        t = interleaved(ctx, sides, m, warmup=False)
        return tuple(statistics.fmean(v["attack"]) + statistics.fmean(v["train"])  # type: ignore[return-value]
                     for v in (t.wall, t.cpu, t.faults))

    info(f"adv-train: {arch}, batch {b}, PGD-{k}, {s.rounds} rounds of {m} timed batches")
    fit_round()  # warm-up
    for fn in sides.values():
        fn()
    fits: list[tuple[float, float, float]] = []
    parts: list[tuple[float, float, float]] = []
    for r in range(s.rounds):
        if r % 2 == 0:
            fits.append(fit_round())
            parts.append(parts_round())
        else:
            parts.append(parts_round())
            fits.append(fit_round())
    value, spread = pair_ratio([f[0] for f in fits], [p[0] for p in parts])
    cpu, _ = pair_ratio([f[1] for f in fits], [p[1] for p in parts])
    emit(ctx, Ratio(
        "adv-train", f"[2] adv-train batch / (PGD-{k} + train step) ({arch}, batch {b})", value, "<= 1.05",
        f"fit batch {ms([f[0] for f in fits])}; PGD-{k} + train step {ms([p[0] for p in parts])}; minor page "
        f"faults per batch: fit {statistics.median(f[2] for f in fits):,.0f}, parts "
        f"{statistics.median(p[2] for p in parts):,.0f}", spread, cpu,
    ))
