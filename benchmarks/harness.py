"""The shared harness of advcli's benchmarks (run by `benchmarks/run.py`, one file per benchmark).

- sizes: `Sizes` and the presets in `SIZES` (default, smoke);
- measuring: `interleaved` times the sides of a ratio in ABBA order after a warm-up, `compare`
  turns a `Timing` into the median of the pair ratios (`pair_ratio`) and its CPU-time twin,
  `emit` prints one `Ratio` line with its target and verdict and keeps it for the summary;
- data and models every benchmark shares: the synthetic data, fresh models, a PGD attack, the
  training step exactly as `fit` makes it, and the adversarially trained model that eval-pgd
  and autoattack measure (trained once, cached).
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advcli.attacks import AttackSpec, build_attack
from advcli.attacks.base import Attack
from advcli.config import Norm, parse_eps
from advcli.data import ImageData, to_float
from advcli.data.synthetic import CLASSES, make_synthetic
from advcli.device import tune_allocator
from advcli.io import atomic_write_bytes
from advcli.models import build_model
from advcli.models.checkpoint import load_checkpoint
from advcli.train.adversarial import AdvOptions, ThreatModel, adv_fit
from advcli.train.loop import TrainOptions, batch_loss

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


def train_step_fn(ctx: Context, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  perturber: Any = None, amp: str = "none", channels_last: bool = False) -> Callable[[], None]:
    """One optimiser step exactly as `fit` makes it (batch_loss, backward, SGD step)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator(device=ctx.device).manual_seed(0)

    def step() -> None:
        model.train()
        loss = batch_loss(model, x, y, perturber=perturber, generator=gen, device=ctx.device,
                          amp=amp, channels_last=channels_last).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step
