"""advcli speed and memory benchmarks (issue #9). Every number printed is a ratio measured in ONE
run, side by side, so that a shared or noisy machine slows both sides alike.

    .venv/bin/python benchmarks/run.py                           # everything, default sizes (`make bench`)
    .venv/bin/python benchmarks/run.py --only pgd-step,eval-pgd --repeats 9
    .venv/bin/python benchmarks/run.py --malloc default          # without the allocator tuning the CLI does
    .venv/bin/python benchmarks/run.py --size smoke --no-cache   # seconds; what the smoke test runs

Benchmarks (name: what is divided by what; target):
  pgd-step    one PGD step (attack.perturb with k steps, / k) / one forward pass (no_grad, eval
              mode), same model and batch; input gradient only                            <= 2.1
  adv-train   adv-train time per batch (the real `fit` loop with PGD-k) /
              (k-step PGD on a batch + one training step on a batch)                      <= 1.05
  eval-pgd    eval's clean + PGD-10 throughput / torchattacks PGD (clean pass, attack, final pass)
              on the same model, examples, eps, step size and steps                        >= 1.3
  augment     `device` augmentation images/s / `fixed` mode with 2 DataLoader workers     >= 10
  autoattack  eval's AutoAttack entry / pyautoattack called directly on the same model,
              points and seed (version custom, apgd-ce); a time ratio                      <= 1.05
  memory      peak memory of adv-train per batch size (a process per size: peak heap RSS
              on the CPU, torch.cuda.max_memory_allocated on a GPU)                        report
  options     adv-train step time with --channels-last / --amp bf16 / both, vs neither     report
  compile     training step time with --compile (torch.compile) vs eager, and the
              compilation time of the first step                                            report

How a ratio is measured: every side gets one untimed warm-up call; then the sides run
interleaved in ABBA order (A B, B A, A B, ...), `--repeats` times; the ratio of each pair is
taken, and the MEDIAN of the pair ratios is the result (their range is shown). Each side's
wall time is shown as mean ± std; "cpu" is the same ratio in this process's CPU time, which
a busy machine disturbs less (when the two agree, the load did not bias the result).
Exit status is 0 even when a target is missed (timings are noisy); `--strict` exits 1 then.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advcli.attacks import AttackSpec, build_attack
from advcli.attacks.base import Attack
from advcli.checkpoint import load_checkpoint
from advcli.config import Norm, parse_eps
from advcli.data import ImageData, test_subset, to_float
from advcli.data.loaders import train_batches
from advcli.data.synthetic import CLASSES, make_synthetic
from advcli.device import resolve_device, tune_allocator
from advcli.io import atomic_write_bytes, atomic_write_text
from advcli.models import build_model
from advcli.progress import NullReporter
from advcli.stages.adv_train import AdvOptions, AttackPerturber, ThreatModel, adv_fit
from advcli.stages.train import TrainOptions, batch_loss

BENCHMARKS = ("pgd-step", "adv-train", "eval-pgd", "augment", "autoattack", "memory", "options", "compile")
EPS = parse_eps("8/255")


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is; `default` takes about 5 minutes on 2 busy CPU cores."""

    archs: tuple[str, ...] = ("tiny-cnn", "small-cnn")  # pgd-step; the first one runs the rest
    batch: int = 128  # pgd-step (first arch), adv-train, eval-pgd, augment, options
    small_batch: int = 64  # pgd-step for the later archs (they are slower)
    repeats: int = 7  # interleaved pairs per ratio (augment, autoattack, options: half of it)
    pgd_k: int = 5  # steps per timed PGD call in pgd-step
    adv_steps: int = 5  # PGD-k of adv-train, options and memory
    adv_batches: int = 3  # timed batches per adv-train round (one more runs untimed first)
    rounds: int = 7  # adv-train rounds (one `fit` call each)
    eval_n: int = 256  # eval-pgd examples
    aa_n: int = 16  # autoattack examples
    aug_n: int = 10_000  # augment: images per epoch
    mem_batches: tuple[int, ...] = (32, 128, 512)
    n_train: int = 4_000  # synthetic training images
    n_test: int = 1_000  # synthetic test images
    model_epochs: int = 2  # the adversarially trained eval model (eval-pgd, autoattack)
    model_n_train: int = 3_000
    model_steps: int = 2


SIZES = {
    "default": Sizes(),
    "smoke": Sizes(
        archs=("tiny-cnn",), batch=8, small_batch=8, repeats=2, pgd_k=2, adv_steps=1, adv_batches=2,
        rounds=1, eval_n=16, aa_n=2, aug_n=256, mem_batches=(8,), n_train=256, n_test=64,
        model_epochs=1, model_n_train=32, model_steps=1,
    ),
}


# --------------------------------------------------------------------------- measuring


@dataclass
class Ratio:
    """One printed result: a ratio (or a reported number) with its target."""

    bench: str
    label: str
    value: float
    target: str | None = None  # "<= 2.1", ">= 10" or None (report only)
    detail: str = ""
    spread: tuple[float, float] | None = None  # min and max of the pair ratios
    cpu: float | None = None  # the same ratio in process CPU time

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "report"
        op, bound = self.target.split()
        ok = self.value <= float(bound) if op == "<=" else self.value >= float(bound)
        return "PASS" if ok else "FAIL"


@dataclass
class Timing:
    """Per side, per timed call: wall seconds, process CPU seconds, minor page faults."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    faults: dict[str, list[int]]


@dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    data: ImageData
    tmp: Path
    results: list[Ratio] = field(default_factory=list)
    eval_model: nn.Module | None = None

    def sync(self) -> None:
        # CUDA runs asynchronously: a clock read needs the queue drained first.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def info(message: str) -> None:
    """Progress and diagnostics go to stderr; stdout carries the results."""
    print(message, file=sys.stderr, flush=True)


def interleaved(ctx: Context, sides: dict[str, Callable[[], Any]], repeats: int, warmup: bool = True) -> Timing:
    """Time each side: one untimed warm-up call each, then `repeats` rounds in ABBA order."""
    if warmup:
        for fn in sides.values():
            fn()
    names = list(sides)
    t = Timing({n: [] for n in names}, {n: [] for n in names}, {n: [] for n in names})
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            ctx.sync()
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            c0, w0 = time.process_time(), time.perf_counter()
            sides[name]()
            ctx.sync()
            t.wall[name].append(time.perf_counter() - w0)
            t.cpu[name].append(time.process_time() - c0)
            t.faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return t


def pair_ratio(num: list[float], den: list[float]) -> tuple[float, tuple[float, float]]:
    """Median of the per-pair ratios (robust to load bursts), and their range."""
    ratios = [a / b for a, b in zip(num, den, strict=True)]
    return statistics.median(ratios), (min(ratios), max(ratios))


def compare(t: Timing, num: str, den: str) -> dict[str, Any]:
    """The Ratio fields for `num / den` of a Timing (wall median, spread, CPU median)."""
    value, spread = pair_ratio(t.wall[num], t.wall[den])
    return {"value": value, "spread": spread, "cpu": pair_ratio(t.cpu[num], t.cpu[den])[0]}


def ms(values: list[float], scale: float = 1e3, unit: str = "ms") -> str:
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f} {unit}"


def emit(ctx: Context, r: Ratio) -> None:
    ctx.results.append(r)
    cpu = f"cpu {r.cpu:.2f}" if r.cpu is not None else ""
    spread = f"pairs {r.spread[0]:.2f}-{r.spread[1]:.2f}" if r.spread else ""
    target = f"target {r.target}" if r.target else "report only"
    print(f"  {r.label:<62} {r.value:7.2f}  {cpu:<9} {spread:<16} {target:<15} {r.verdict}")
    for line in r.detail.splitlines():
        print(f"      {line}")
    sys.stdout.flush()


# --------------------------------------------------------------------------- process set-up


def tune_malloc() -> bool:
    """The allocator change advcli's CLI makes at start-up (see advcli.device.tune_allocator)."""
    return tune_allocator()


# --------------------------------------------------------------------------- data and models


def synthetic_data(sizes: Sizes) -> ImageData:
    """A smaller draw of the built-in `synthetic` dataset (same generator and seeds)."""
    xtr, ytr = make_synthetic(sizes.n_train, seed=0)
    xte, yte = make_synthetic(sizes.n_test, seed=1)
    x = torch.from_numpy(xtr).float()
    mean = (x.mean(dim=(0, 2, 3)) / 255).tolist()
    std = (x.std(dim=(0, 2, 3)) / 255).tolist()
    return ImageData(
        "synthetic", list(CLASSES), torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
        torch.from_numpy(yte), mean=[round(v, 6) for v in mean], std=[round(v, 6) for v in std],
    )


def fresh_model(ctx: Context, arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, ctx.data.num_classes, ctx.data.mean, ctx.data.std).to(ctx.device)


def batch_of(ctx: Context, n: int, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    x, y = ctx.data.split(split)
    return to_float(x[:n]).to(ctx.device), y[:n].to(ctx.device)


def pgd(steps: int) -> Attack:
    return build_attack(AttackSpec(name="pgd", norm=Norm.linf, eps=EPS, steps=steps))


def small_test(data: ImageData, n: int) -> ImageData:
    """The same data with a short test split: `fit` evaluates it after every epoch."""
    return replace(data, test_x=data.test_x[:n], test_y=data.test_y[:n])


def eval_model(ctx: Context) -> nn.Module:
    """An adversarially trained model (the kind `eval` is for), trained once and cached.

    Its clean accuracy decides how many examples eval's PGD may skip, so it is printed with
    the eval-pgd ratio. Trained with --amp bf16 --channels-last to save time; evaluated in fp32.
    """
    if ctx.eval_model is not None:
        return ctx.eval_model
    s = ctx.sizes
    arch = s.archs[0]
    recipe = (
        f"v1 {arch} synthetic n_train={s.n_train} model_n_train={s.model_n_train} epochs={s.model_epochs} "
        f"pgd-{s.model_steps} eps={EPS.text} bs=128 lr=0.1 seed=0"
    )
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    cached = Path(ctx.args.cache_dir) / f"{arch}-adv-{key}.safetensors"
    if not ctx.args.no_cache and cached.is_file():
        info(f"eval model: cached {cached}")
    else:
        out = ctx.tmp / "eval-model.safetensors"
        info(f"eval model: adversarially training {arch} ({recipe}) ...")
        t0 = time.perf_counter()
        adv_fit(
            TrainOptions(
                arch=arch, epochs=s.model_epochs, batch_size=128, lr=0.1, n_train=s.model_n_train,
                augment="device", amp="bf16", channels_last=True, out=str(out),
            ),
            AdvOptions(threat=ThreatModel(norm=Norm.linf, eps=EPS, attack="pgd", steps=s.model_steps)),
            small_test(ctx.data, 64), ctx.device,
        )
        info(f"eval model: trained in {time.perf_counter() - t0:.0f} s")
        if ctx.args.no_cache:
            cached = out
        else:
            atomic_write_bytes(cached, out.read_bytes())
    ctx.eval_model = load_checkpoint(cached, ctx.device).model
    return ctx.eval_model


@contextlib.contextmanager
def quiet_autoattack() -> Iterator[None]:
    """pyautoattack logs to "auto-attack"; keep its lines out of the benchmark output."""
    logger = logging.getLogger("auto-attack")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    logger.handlers = [logging.NullHandler()]
    logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers = saved[2]


# --------------------------------------------------------------------------- 1. pgd-step


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


def bench_pgd_step(ctx: Context) -> None:
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


# --------------------------------------------------------------------------- 2. adv-train


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


def train_step_fn(ctx: Context, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  perturber: Any = None, amp: str = "none", channels_last: bool = False) -> Callable[[], None]:
    """One optimiser step exactly as `fit` makes it (batch_loss, backward, SGD step)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator(device=ctx.device).manual_seed(0)

    def step() -> None:
        model.train()
        loss, _, _ = batch_loss(model, x, y, perturber=perturber, generator=gen, device=ctx.device,
                                amp=amp, channels_last=channels_last)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_adv_train(ctx: Context) -> None:
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


# --------------------------------------------------------------------------- 3. eval-pgd


def bench_eval_pgd(ctx: Context) -> None:
    import torchattacks

    from advcli.stages.evaluate import pgd_entry, predict_flags

    s = ctx.sizes
    model = eval_model(ctx)
    idx = test_subset(ctx.data.test_y, s.eval_n, seed=0)
    x, y = to_float(ctx.data.test_x[idx]), ctx.data.test_y[idx].long()
    steps, b = 10, s.batch
    alpha = 2.5 * EPS.value / steps  # advcli's default step size, given to torchattacks explicitly
    out: dict[str, float] = {}

    def ours(model: nn.Module = model, key: str = "ours") -> None:
        clean = predict_flags(model, x, y, b, ctx.device)
        entry = pgd_entry(model, x, y, clean, norm=Norm.linf, eps=EPS, steps=steps, restarts=1, step_size=None,
                          batch_size=b, seed=0, device=ctx.device, reporter=NullReporter())
        out["clean"], out[key] = float(clean.mean()), entry.accuracy

    def theirs() -> None:
        attack = torchattacks.PGD(model, eps=EPS.value, alpha=alpha, steps=steps, random_start=True)
        robust = 0
        for i in range(0, len(y), b):
            xb, yb = x[i:i + b].to(ctx.device), y[i:i + b].to(ctx.device)
            with torch.no_grad():
                (model(xb).argmax(1) == yb).sum()  # clean accuracy, as eval reports it too
            x_adv = attack(xb, yb)
            with torch.no_grad():
                robust += int((model(x_adv).argmax(1) == yb).sum())
        out["theirs"] = robust / len(y)

    reps = s.repeats
    info(f"eval-pgd: {s.archs[0]} (adversarially trained), {len(y)} examples, batch {b}, PGD-{steps}, "
         f"{reps} repeats")
    # eval's PGD entry converts the model to channels_last itself (measured faster on the CPU).
    t = interleaved(ctx, {"ours": ours, "torchattacks": theirs}, reps)
    acc = out["clean"]
    r = compare(t, "torchattacks", "ours")
    emit(ctx, Ratio(
        "eval-pgd", f"[3] eval PGD-10 throughput / torchattacks PGD ({s.archs[0]}, n={len(y)})", target=">= 1.3",
        detail=f"eval {ms(t.wall['ours'], 1, 's')} vs torchattacks {ms(t.wall['torchattacks'], 1, 's')}; "
               f"clean accuracy {100 * acc:.1f}%: eval attacks only those, a skip bound of 1/acc = "
               f"{1 / max(acc, 1e-9):.2f}\nrobust accuracy: eval {100 * out['ours']:.1f}%, torchattacks "
               f"{100 * out['theirs']:.1f}% (different random starts: equal up to noise)", **r,
    ))


# --------------------------------------------------------------------------- 4. augment


def bench_augment(ctx: Context) -> None:
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


# --------------------------------------------------------------------------- 5. autoattack


def bench_autoattack(ctx: Context) -> None:
    from pyautoattack import AutoAttack

    from advcli.stages.evaluate import autoattack_entry, predict_flags

    s = ctx.sizes
    model = eval_model(ctx)
    out: dict[str, float] = {}

    def sides(n: int) -> dict[str, Callable[[], None]]:
        idx = test_subset(ctx.data.test_y, n, seed=0)
        x, y = to_float(ctx.data.test_x[idx]), ctx.data.test_y[idx].long()

        def ours() -> None:
            clean = predict_flags(model, x, y, n, ctx.device)
            entry = autoattack_entry(model, x, y, clean, norm=Norm.linf, eps=EPS, version="custom",
                                     attacks=["apgd-ce"], batch_size=n, seed=0, device=ctx.device,
                                     reporter=NullReporter())
            out["ours"] = entry.accuracy

        def direct() -> None:
            model.eval()
            adversary = AutoAttack(model, attacks=["apgd-ce"], device=ctx.device, eps=EPS.value, norm="Linf",
                                   seed=0, version="custom")
            xd, yd = x.to(ctx.device), y.to(ctx.device)
            _, y_pred = adversary.run_standard_evaluation(xd, yd, batch_size=n)
            out["direct"] = float((y_pred.to(yd.device) == yd).float().mean())

        return {"eval": ours, "direct": direct}

    reps = max(1, s.repeats // 2)
    info(f"autoattack: {s.archs[0]} (adversarially trained), {s.aa_n} examples, custom apgd-ce, {reps} repeats")
    with quiet_autoattack():
        for fn in sides(2).values():  # warm-up on 2 points: a full AutoAttack run is long
            fn()
        t = interleaved(ctx, sides(s.aa_n), reps, warmup=False)
    emit(ctx, Ratio(
        "autoattack", f"[5] eval --autoattack time / pyautoattack directly (n={s.aa_n})", target="<= 1.05",
        detail=f"eval {ms(t.wall['eval'], 1, 's')} vs direct {ms(t.wall['direct'], 1, 's')}; robust accuracy "
               f"eval {100 * out['ours']:.1f}% vs direct {100 * out['direct']:.1f}%", **compare(t, "eval", "direct"),
    ))


# --------------------------------------------------------------------------- 6. memory


def _status_kib() -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                out[key] = int(rest.split()[0])
    return out


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux: `5` > /proc/self/clear_refs); return the heap
    (anonymous) RSS now, in MiB."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status_kib().get("RssAnon", 0) / 1024


def peak_heap_rss() -> float:
    """Peak heap RSS in MiB since the last reset: the peak RSS minus the file-backed pages.

    Library code paged in during the run (a new oneDNN kernel, say) is file RSS, not the
    run's memory; file pages are read at the end, when they are at their largest."""
    st = _status_kib()
    peak = st.get("VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return (peak - st.get("RssFile", 0) - st.get("RssShmem", 0)) / 1024


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: a warm-up batch of 2, then an adv-train epoch of one batch of size b;
    prints the peak memory above the post-warm-up baseline as JSON."""
    device = resolve_device(args.device)
    b, arch, k = args.memory_child, args.arch, args.adv_steps
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    data = ImageData("random", list(CLASSES), x, y, x[:16], y[:16], mean=[0.5] * 3, std=[0.25] * 3)

    def train(batch: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            adv_fit(
                TrainOptions(arch=arch, epochs=1, batch_size=batch, n_train=batch, lr=0.01, augment="device",
                             out=f"{tmp}/m.safetensors"),
                AdvOptions(threat=ThreatModel(norm=Norm.linf, eps=EPS, attack="pgd", steps=k)),
                data, device,
            )

    train(2)  # warm-up: lazy imports, kernel code and allocator pools are not the batch's memory
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base_mib = reset_peak_rss()
    train(b)
    peak_mib = peak_heap_rss()
    result = {"batch": b, "heap_peak_mib": peak_mib, "heap_delta_mib": peak_mib - base_mib}
    if device.type == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(json.dumps(result))


def bench_memory(ctx: Context) -> None:
    s = ctx.sizes
    arch, k = s.archs[0], s.adv_steps
    info(f"memory: adv-train {arch} PGD-{k}, batch sizes {', '.join(map(str, s.mem_batches))} (a process each)")
    rows = []
    for b in s.mem_batches:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(b), "--arch", arch,
               "--adv-steps", str(k), "--device", str(ctx.device), "--threads", str(ctx.args.threads),
               "--malloc", ctx.args.malloc]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child for batch {b} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    key = "cuda_peak_mib" if "cuda_peak_mib" in rows[0] else "heap_delta_mib"
    what = "CUDA peak allocated" if key == "cuda_peak_mib" else "peak heap RSS growth during the batch"
    for row in rows:
        per = f"; {row[key] / row['batch']:.2f} MiB per example" if row[key] > 0 else ""
        emit(ctx, Ratio(
            "memory", f"[6] adv-train peak memory, batch {row['batch']} (MiB)", row[key],
            detail=f"{what}; process peak heap {row['heap_peak_mib']:.0f} MiB{per}",
        ))


# --------------------------------------------------------------------------- options


def bench_options(ctx: Context) -> None:
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


def bench_compile(ctx: Context) -> None:
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


RUNNERS: dict[str, Callable[[Context], None]] = {
    "pgd-step": bench_pgd_step,
    "adv-train": bench_adv_train,
    "eval-pgd": bench_eval_pgd,
    "augment": bench_augment,
    "autoattack": bench_autoattack,
    "memory": bench_memory,
    "options": bench_options,
    "compile": bench_compile,
}


# --------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "python": platform.python_version(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default=",".join(BENCHMARKS),
                   help=f"comma-separated benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    p.add_argument("--size", choices=sorted(SIZES), default="default", help="preset sizes (default: default)")
    p.add_argument("--archs", help="comma-separated models for pgd-step; the first also runs the others")
    p.add_argument("--batch-size", type=int, help="batch size of pgd-step, adv-train, eval-pgd, augment, options")
    p.add_argument("--repeats", type=int, help="interleaved pairs per ratio")
    p.add_argument("--eval-n", type=int, help="examples for eval-pgd")
    p.add_argument("--aa-n", type=int, help="examples for autoattack")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared machine two threads wait for each other at\n"
                        "every op and the timings measure the scheduler; 0 = torch's own choice)")
    p.add_argument("--malloc", choices=("default", "tuned"), default="tuned",
                   help="tuned: keep freed memory in the process (glibc mallopt; see tune_malloc)")
    p.add_argument("--cache-dir", default=str(Path(os.environ.get("ADVCLI_CACHE", Path.home() / ".cache/advcli"))
                                              / "bench"), help="where the trained eval model is cached")
    p.add_argument("--no-cache", action="store_true", help="train the eval model afresh and do not cache it")
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--arch", default="tiny-cnn", help=argparse.SUPPRESS)
    p.add_argument("--adv-steps", type=int, default=5, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve_sizes(args: argparse.Namespace) -> Sizes:
    over: dict[str, Any] = {}
    if args.archs:
        over["archs"] = tuple(a.strip() for a in args.archs.split(",") if a.strip())
    if args.batch_size:
        over["batch"] = args.batch_size
    for name in ("repeats", "eval_n", "aa_n"):
        if getattr(args, name):
            over[name] = getattr(args, name)
    return replace(SIZES[args.size], **over)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.malloc == "tuned" and not tune_malloc():
        info("--malloc tuned: glibc's mallopt is not available here; running with the default allocator")
    if args.memory_child:
        memory_child(args)
        return 0
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; valid values: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    sizes = resolve_sizes(args)
    device = resolve_device(args.device)
    t_start = time.perf_counter()
    env = machine()
    print(f"advcli benchmarks: size {args.size}, device {device}, {env['cpu']}, {env['cores']} cores, "
          f"torch {env['torch']} ({env['threads']} threads), malloc {args.malloc}, "
          f"load average {env['load_avg_1m']} at start")
    print("ratio = median over interleaved (ABBA) pairs after a warm-up; cpu = the same in process CPU time; "
          "times: mean ± std")
    tmp = Path(tempfile.mkdtemp(prefix="advcli-bench-"))
    try:
        ctx = Context(args, sizes, device, synthetic_data(sizes), tmp)
        for name in chosen:
            t0 = time.perf_counter()
            RUNNERS[name](ctx)
            info(f"{name}: {time.perf_counter() - t0:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t_start
    load_end = round(os.getloadavg()[0], 2)
    targeted = [r for r in ctx.results if r.target]
    missed = [r for r in targeted if r.verdict == "FAIL"]
    print(f"summary: {len(targeted) - len(missed)}/{len(targeted)} targets met in {total:.0f} s "
          f"(load average {load_end} at the end)"
          + (f"; missed: {', '.join(r.label.split(' (')[0] for r in missed)}" if missed else ""))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps({
            "machine": env | {"load_avg_1m_end": load_end, "device": str(device), "malloc": args.malloc},
            "size": args.size, "sizes": asdict(sizes), "seconds": round(total, 1),
            "results": [asdict(r) | {"verdict": r.verdict} for r in ctx.results],
        }, indent=2) + "\n")
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
