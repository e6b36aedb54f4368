"""Benchmark [4] `augment`: `device` augmentation images/s / `fixed` mode with 2 DataLoader
workers. Target >= 10.
"""

from __future__ import annotations

import resource
import statistics
from collections.abc import Callable

from harness import Context, Ratio, compare, emit, info, interleaved, ms

from advcli.data.loaders import train_batches

NAME = "augment"


def run(ctx: Context) -> None:
    s = ctx.sizes
    reps = -(-s.aug_n // len(ctx.data.train_y))  # tile the training set up to aug_n images
    x = ctx.data.train_x.repeat(reps, 1, 1, 1)[: s.aug_n]
    y = ctx.data.train_y.repeat(reps)[: s.aug_n]
    n = len(y)
    x_dev, y_dev = x.to(ctx.device), y.to(ctx.device)
    epoch = [0]
    children_cpu: dict[str, list[float]] = {"device": [], "fixed": []}

    def run(mode: str, workers: int) -> Callable[[], None]:
        def go() -> None:
            epoch[0] += 1
            ch = resource.getrusage(resource.RUSAGE_CHILDREN)
            src = (x_dev, y_dev) if mode == "device" else (x, y)
            for xb, _ in train_batches(*src, augment=mode, batch_size=s.batch, workers=workers, seed=0,
                                       epoch=epoch[0], device=ctx.device):
                xb.sum()  # touch the batch, as a training step would
            # Non-persistent workers have exited (and been waited for) at the end of the epoch.
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            children_cpu[mode].append(after.ru_utime + after.ru_stime - ch.ru_utime - ch.ru_stime)
        return go

    rounds = max(1, s.repeats // 2)
    info(f"augment: {n} images per epoch, batch {s.batch}, {rounds} repeats")
    t = interleaved(ctx, {"device": run("device", 0), "fixed": run("fixed", 2)}, rounds)
    r = compare(t, "fixed", "device")
    # CPU per image, workers included: what each mode costs the machine, whatever the parallelism.
    cpu_dev = statistics.fmean(t.cpu["device"]) + statistics.fmean(children_cpu["device"][-rounds:])
    cpu_fix = statistics.fmean(t.cpu["fixed"]) + statistics.fmean(children_cpu["fixed"][-rounds:])
    r["cpu"] = None
    rate = lambda v: f"{n / statistics.fmean(v):,.0f} images/s"  # noqa: E731
    emit(ctx, Ratio(
        "augment", f"[4] device augmentation / fixed with 2 workers ({n} images)", target=">= 10",
        detail=f"device {rate(t.wall['device'])} ({ms(t.wall['device'])} per epoch); fixed {rate(t.wall['fixed'])} "
               f"({ms(t.wall['fixed'])} per epoch, worker start-up included)\nCPU seconds per image, workers "
               f"included: fixed / device = {cpu_fix / max(cpu_dev, 1e-9):.1f}", **r,
    ))
