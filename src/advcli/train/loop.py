# Over 500 lines: one training loop read top to bottom; split planned.
"""The one training loop. Standard training and adversarial training are the same loop; the
latter passes a `BatchPerturber` that replaces the last `fraction` of every batch by adversarial
examples before the update (see train/adversarial.py), and may pass the outer loss (`Objective`:
TRADES, MART) and a perturbation of the weights around each gradient (`WeightPerturbation`:
AWP) as function parameters (train/objectives.py).

In the shape of a torchtune recipe: `setup` (model, optimizer, data on the device), `train_epoch`
(one pass of updates -> `EpochStats`), `measure_epoch` (test/validation accuracy and the epoch
hooks), the state saved after every epoch and, with `--save-every`, inside epochs
(`train/state.py`), `finish` (checkpoint and history file). With `--ema` the loop also
keeps a running average of the weights (`train/weight_average.py`): it is what is measured,
kept and written; the optimizer updates the raw weights. `fit` strings them together.
Two seams for what watches a run: step hooks are called after every optimizer step with a
`StepStats` (device tensors, no host sync), end hooks after every epoch with its final
`EpochStats`.

Determinism: every epoch's data order, augmentation and attack random starts are drawn from
their own streams seeded by (seed, epoch, rank, purpose) (`advcli.rng`), the learning rate is
a function of the global step, and the state saved holds everything else that changes during a
run (weights, optimizer, generators, the epoch's metric sums), so `--resume` after a kill at
any moment ends bit-identical to an uninterrupted run (on a GPU, with deterministic
algorithms). `--resume` with no state and no checkpoint starts from scratch, so a preemptible
job's script can always pass it.
"""

from __future__ import annotations

import enum
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advcli import distributed
from advcli.attacks.base import full_precision
from advcli.config import Augment, Schedule, parse_choice
from advcli.data import ImageData, load_dataset
from advcli.data.for_checkpoint import is_lazy, recorded_view, skipped_files
from advcli.data.loaders import train_batches
from advcli.data.subsets import train_subset
from advcli.data.view import DataView
from advcli.errors import CheckpointError, TrainingDiverged, UsageError
from advcli.models import Classifier, build_model
from advcli.models.checkpoint import LoadedCheckpoint, load_checkpoint, model_metadata, save_checkpoint
from advcli.progress import NullReporter, Reporter
from advcli.rng import Stream, stream_generator, stream_seed
from advcli.train.history import history_path_for, write_history
from advcli.train.metrics_log import RunWatch
from advcli.train.state import (
    EpochPosition,
    EpochStats,
    SaveEvery,
    TrainState,
    load_state,
    read_state_header,
    resume_state_path,
    save_state,
    state_path_for,
    stop_after_step,
)
from advcli.train.weight_average import WeightAverage


class Precision(str, enum.Enum):
    """--amp: the precision of the training forward pass and of the training attack."""

    none = "none"
    bf16 = "bf16"
    fp16 = "fp16"


@dataclass
class TrainOptions:
    """Resolved options of `advcli train` (adv-train adds a threat model on top). The defaults
    here are the commands' defaults (cli/train_options.py reads them)."""

    arch: str = "tiny-cnn"
    dataset: str = "synthetic"
    data_dir: str = "./data"
    download: bool = False
    stream: str = "auto"  # --stream auto|on|off
    image_size: int | None = None  # --image-size PX of streamed data (None: the streamed default, 224)
    skip_bad: bool = False
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True  # --nesterov/--no-nesterov (plain momentum: the TRADES/MART/AWP reference scripts)
    decay_all: bool = False  # --decay-all: weight decay on biases and norm layers too (the reference scripts)
    schedule: str = "onecycle"
    augment: str = "device"
    workers: int = 0
    seed: int = 0
    label_smoothing: float = 0.0
    val_split: int = 0
    n_train: int | None = None
    test_every: int = 1  # --test-every K: the per-epoch test/validation pass every K epochs (0: the last only)
    channels_last: bool = False
    amp: str = "none"
    compile: bool = False
    sync_bn: bool = False
    ema: float | None = None
    save_every: str | None = None
    out: str = "model.safetensors"
    label: str | None = None
    init_from: str | None = None


@dataclass
class StepStats:
    """One optimizer step, as step hooks see it. The tensors stay on the training device:
    reading one is a host sync, so a hook that logs them converts many at once."""

    epoch: int  # 1-based, as in EpochStats
    step: int  # optimizer steps done in the run, this one included
    lr: float
    loss: torch.Tensor  # the batch's training loss (0-dim)
    n_adv: int  # adversarial examples in the batch
    adv_correct: torch.Tensor  # how many of them the model got right (before this update)
    started: float  # time.perf_counter() when the step began


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[EpochStats]
    test_accuracy: float
    seconds: float
    resumed_from_epoch: int = 0
    notes: list[str] = field(default_factory=list)


class BatchPerturber(Protocol):
    """Makes the adversarial part of a batch (attack in eval mode; the loop restores train mode)."""

    fraction: float

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor: ...


@dataclass
class BatchLoss:
    """A batch's training loss and what the epoch metrics count: `logits` of `labels`, the
    first `n_clean` rows clean, the rest adversarial; `terms` are per-batch sums over examples of
    an objective's parts (e.g. TRADES' KL), logged as `train_<name>` epoch means."""

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    n_clean: int
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


# The model's forward pass as the loop runs it (channels-last, autocast, fp32 logits).
Forward = Callable[[torch.Tensor], torch.Tensor]
# The outer loss: (forward, x, x_adv, y, n_clean) -> BatchLoss, where x is the clean batch and
# x_adv the adversarial version of its last len(y) - n_clean examples. None: `mixed_cross_entropy`
# (PGD-AT); adv-train's other objectives are in train/objectives.py.
Objective = Callable[[Forward, torch.Tensor, torch.Tensor, torch.Tensor, int], BatchLoss]


class WeightPerturbation(Protocol):
    """A perturbation of the weights around each update's gradient (AWP, train/objectives.py)."""

    def applies(self, epoch: int) -> bool:
        """Whether it runs in this (0-based) epoch."""
        ...

    def around(self, model: nn.Module, loss_at: Callable[[], torch.Tensor]) -> AbstractContextManager[None]:
        """Perturb `model`'s weights (from the gradient of `loss_at()`) inside the block; the
        weights are back, bit for bit, when it ends."""
        ...


@dataclass
class EpochEnd:
    """What an epoch hook sees once an epoch's updates are done."""

    model: nn.Module  # the model the checkpoint of this epoch holds (what eval would test)
    raw: nn.Module  # the weights the optimizer updates (the same module unless weights are averaged)
    stats: EpochStats  # this epoch's record so far (`epoch` is 1-based)
    history: Sequence[EpochStats]  # the earlier epochs' final records (restored by --resume)


# Called after each epoch's updates; returns extra metrics for the history and may raise
# StopTraining (catastrophic-overfitting stop). Hooks keep no state of their own between
# epochs: what they remember comes from `history`, so a resumed run's hooks decide alike.
EpochHook = Callable[[EpochEnd], dict[str, float]]
# Called after every optimizer step.
StepHook = Callable[[StepStats], None]
# Called once an epoch's record is final (after the state is saved).
EndHook = Callable[[EpochStats], None]


class StopTraining(Exception):
    """Raised by an epoch hook to end training early (the reason goes into the notes)."""


def lr_at(step: int, total: int, base_lr: float, schedule: str) -> float:
    """Learning rate at a global step: a pure function, so resume needs no scheduler state."""
    s = Schedule(schedule)
    frac = step / max(total, 1)
    if s is Schedule.constant:
        return base_lr
    if s is Schedule.cosine:
        return base_lr * 0.5 * (1 + math.cos(math.pi * frac))
    if s is Schedule.step:  # /10 at 50% and 75% of training (Madry et al., Rice et al.)
        return base_lr * (0.1 ** (int(frac >= 0.5) + int(frac >= 0.75)))
    # onecycle: linear warm-up for 20% of the steps, then linear decay to 0.
    return base_lr * (frac / 0.2 if frac < 0.2 else max(0.0, (1 - frac) / 0.8))


def autocast(device: torch.device, amp: str | Precision) -> torch.autocast:
    """Mixed precision for the model's forward pass: none | bf16 | fp16 (fp16 only on CUDA)."""
    p = parse_choice(Precision, amp, name="--amp")
    if p is Precision.fp16 and device.type != "cuda":
        raise UsageError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    dtype = torch.float16 if p is Precision.fp16 else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=p is not Precision.none)


def evaluate_accuracy(
    model: nn.Module,
    x_uint8: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    batch_size: int = 500,
) -> float:
    """Clean accuracy in eval mode (no augmentation), in fp32 whatever --amp trains in: the
    history's accuracies are measurements, comparable with `advcli eval`'s."""
    was_training = model.training
    model.eval()
    info = distributed.current()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        # Under torchrun each rank takes every world_size-th batch; the counts are summed.
        for start in range(info.rank * batch_size, len(y), batch_size * info.world_size):
            xb = x_uint8[start : start + batch_size].to(device)
            xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()
            with full_precision(device):
                logits = model(xb)
            correct += (logits.argmax(1) == y[start : start + batch_size].to(device)).sum()
    distributed.all_reduce_sum(correct)
    model.train(was_training)
    return float(correct) / max(len(y), 1)


def model_forward(model: nn.Module, device: torch.device, amp: str = "none", channels_last: bool = False) -> Forward:
    """`model`'s training forward pass: channels-last input if asked, autocast, fp32 logits."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            return model(x).float()

    return forward


def mixed_cross_entropy(
    forward: Forward, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, n_clean: int,
    label_smoothing: float = 0.0, fraction: float | None = None,
) -> BatchLoss:
    """PGD-AT's outer loss: the clean first `n_clean` examples and the adversarial rest go
    through the model as ONE batch (BatchNorm sees both); loss (1-f)·CE(clean) + f·CE(adv) with
    f = `fraction` (--fraction; default the adversarial share of the batch). Without adversarial
    examples it is standard training's CE."""
    b = len(y)
    xb = torch.cat([x[:n_clean], x_adv]) if 0 < n_clean < b else (x if n_clean == b else x_adv)
    logits = forward(xb)
    if 0 < n_clean < b:
        f = (b - n_clean) / b if fraction is None else fraction
        loss_clean = F.cross_entropy(logits[:n_clean], y[:n_clean], label_smoothing=label_smoothing)
        loss_adv = F.cross_entropy(logits[n_clean:], y[n_clean:], label_smoothing=label_smoothing)
        loss = (1 - f) * loss_clean + f * loss_adv
    else:
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    return BatchLoss(loss, logits, y, n_clean)


def adversarial_part(
    model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, *, perturber: BatchPerturber | None,
    generator: torch.Generator | None, device: torch.device, amp: str = "none",
) -> tuple[torch.Tensor, int]:
    """(x_adv, n_clean): the perturber's adversarial examples for the last `fraction` of the
    batch (attack in eval mode; the model is back in train mode afterwards); x_adv is empty
    without a perturber (or f = 0)."""
    fraction = perturber.fraction if perturber is not None else 0.0
    n_clean = len(yb) - int(round(fraction * len(yb)))
    if n_clean == len(yb):
        return xb[:0], n_clean
    with autocast(device, amp):
        x_adv = perturber.perturb(model, xb[n_clean:], yb[n_clean:], generator)  # type: ignore[union-attr]
    model.train()
    return x_adv, n_clean


def batch_loss(
    model: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    *,
    perturber: BatchPerturber | None,
    generator: torch.Generator | None,
    device: torch.device,
    amp: str = "none",
    label_smoothing: float = 0.0,
    channels_last: bool = False,
    attack_model: nn.Module | None = None,
    objective: Objective | None = None,
) -> BatchLoss:
    """One training batch: the adversarial part (`adversarial_part`), then the outer loss
    (`objective`, by default `mixed_cross_entropy`: with a perturber of fraction f the first
    (1-f)·B examples stay clean and the rest are adversarial; without a perturber, or f = 0,
    exactly standard training). `attack_model` is the unwrapped module when `model` is a
    DistributedDataParallel wrapper (the attack needs input gradients only, no gradient sync)."""
    x_adv, n_clean = adversarial_part(attack_model or model, xb, yb, perturber=perturber, generator=generator,
                                      device=device, amp=amp)
    forward = model_forward(model, device, amp, channels_last)
    if objective is None:
        fraction = perturber.fraction if perturber is not None else None
        return mixed_cross_entropy(forward, xb, x_adv, yb, n_clean, label_smoothing, fraction)
    return objective(forward, xb, x_adv, yb, n_clean)


@dataclass
class Setup:
    """What the loop works with, built once by `setup`."""

    model: Classifier  # the weights that are saved (never wrapped)
    train_model: nn.Module  # what the updates run: `model`, or its DDP / compiled wrapper
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 loss scaling (CUDA only)
    x: torch.Tensor  # training images: on the device for --augment none/device
    y: torch.Tensor
    steps_per_epoch: int
    total_steps: int
    parent_sha256: str | None = None
    ema: WeightAverage | None = None  # --ema: the running average of `model`

    @property
    def kept(self) -> nn.Module:
        """The model that is tested, validated, kept and written: the average under --ema."""
        return self.ema.model if self.ema is not None else self.model


def setup(
    opts: TrainOptions, data: ImageData, device: torch.device,
    train_x: torch.Tensor | None = None, train_y: torch.Tensor | None = None,
    init: LoadedCheckpoint | None = None,
) -> Setup:
    """Check the options, seed the global RNGs, build the model (or start from `--init-from`:
    `init` when the caller read it already), wrap it for torchrun/--compile, and build the
    optimizer. `train_x/train_y` replace the training set (already cut to --n-train by the
    caller); otherwise it is `data`'s, cut to --n-train."""
    info = distributed.current()
    if opts.epochs < 1 or opts.batch_size < 1:
        raise UsageError("--epochs and --batch-size must be at least 1")
    if opts.lr <= 0:
        raise UsageError(f"--lr must be > 0, got {opts.lr}")
    autocast(device, opts.amp)  # an unknown or unavailable --amp fails here, before any work
    if train_x is None or train_y is None:
        x, y = data.train_x, data.train_y
        if opts.n_train:
            keep = train_subset(y, opts.n_train)
            # A streamed training set is cut as a view: nothing is decoded here.
            x, y = (x.take(keep) if is_lazy(x) else x[keep]), y[keep]
    else:
        x, y = train_x, train_y

    torch.manual_seed(stream_seed(opts.seed, 0, 0, Stream.init))
    np.random.seed(stream_seed(opts.seed, 0, 0, Stream.numpy_global) % 2**32)
    random.seed(stream_seed(opts.seed, 0, 0, Stream.python_global))
    model: Classifier = build_model(opts.arch, data.num_classes, data.mean, data.std)
    parent_sha = None
    parent = init if init is not None else load_init(opts)
    if parent is not None:
        if int(parent.meta["num_classes"]) != data.num_classes:
            raise UsageError(
                f"--init-from {opts.init_from!r} has {parent.meta['num_classes']} classes, but {data.name} "
                f"has {data.num_classes}; pass the --dataset it was trained on"
            )
        model.load_state_dict(parent.model.state_dict())
        parent_sha = parent.sha256
    model.to(device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    train_model: nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        if opts.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[assignment]
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if opts.compile:
        # The training forward/backward is compiled; attacks run the eager model (they flip
        # eval mode and requires_grad, which would make the compiled graph recompile).
        train_model = torch.compile(train_model)
    opt = torch.optim.SGD(
        param_groups(model, opts.weight_decay, decay_all=opts.decay_all),
        lr=opts.lr, momentum=opts.momentum, nesterov=opts.nesterov and opts.momentum > 0,
    )
    # fp16 needs loss scaling (CUDA only); bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler("cuda") if (opts.amp == "fp16" and device.type == "cuda") else None
    # In-memory images go to the device once; streamed ones are decoded batch by batch by
    # train_batches' DataLoader workers.
    on_device = Augment(opts.augment) in (Augment.none, Augment.device) and not is_lazy(x)
    # --batch-size is per rank: the global batch is batch_size x world_size.
    steps_per_epoch = math.ceil((len(y) // info.world_size) / opts.batch_size)
    return Setup(
        model=model, train_model=train_model, opt=opt, scaler=scaler,
        x=x.to(device) if on_device else x, y=y.to(device) if on_device else y,
        steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * opts.epochs, parent_sha256=parent_sha,
        ema=WeightAverage(model, opts.ema) if opts.ema is not None else None,
    )


def param_groups(model: nn.Module, weight_decay: float, *, decay_all: bool) -> list[dict[str, object]]:
    """SGD's parameter groups: weight decay on the conv/linear weights only (biases and
    BatchNorm's scale and shift are left alone), or on every parameter with `decay_all`, as
    reference scripts that hand `model.parameters()` to SGD do (the second group is then
    empty: the optimizer state's layout is the same either way)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 and not decay_all else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _EpochSums:
    """Loss and correct-count sums of an epoch, the clean and adversarial parts apart (device
    tensors: no host sync until the epoch ends)."""

    def __init__(self, device: torch.device) -> None:
        self.loss = {part: torch.zeros((), device=device) for part in ("clean", "adv")}
        self.correct = {part: torch.zeros((), device=device, dtype=torch.int64) for part in ("clean", "adv")}
        self.count = {"clean": 0, "adv": 0}
        self.terms: dict[str, torch.Tensor] = {}  # an objective's parts (BatchLoss.terms), summed
        self.device = device

    def add(self, logits: torch.Tensor, y: torch.Tensor, n_clean: int,
            terms: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Add a batch (first `n_clean` clean); returns the adversarial part's correct count."""
        with torch.no_grad():
            for name, value in (terms or {}).items():
                self.terms[name] = self.terms.get(name, torch.zeros((), device=self.device)) + value.detach()
            hits = logits.argmax(1) == y
            adv_correct = hits[n_clean:].sum()
            for part, sl in (("clean", slice(None, n_clean)), ("adv", slice(n_clean, None))):
                if len(y[sl]):
                    self.correct[part] += hits[sl].sum()
                    self.loss[part] += F.cross_entropy(logits[sl], y[sl], reduction="sum")
                    self.count[part] += len(y[sl])
        return adv_correct

    def state(self) -> dict[str, torch.Tensor]:
        """This rank's sums so far (a mid-epoch save)."""
        counts = torch.tensor([self.count["clean"], self.count["adv"]], device=self.loss["clean"].device)
        return {"counts": counts, **{f"loss.{k}": v.clone() for k, v in self.loss.items()},
                **{f"correct.{k}": v.clone() for k, v in self.correct.items()},
                **{f"term.{k}": v.clone() for k, v in self.terms.items()}}

    def load(self, saved: dict[str, torch.Tensor]) -> None:
        """Continue from `state()`'s sums (the epoch's metrics then add up in the same order
        as in an uninterrupted run)."""
        for part in ("clean", "adv"):
            self.loss[part] += saved[f"loss.{part}"].to(self.loss[part].device)
            self.correct[part] += saved[f"correct.{part}"].to(self.correct[part].device)
        self.count["clean"], self.count["adv"] = (int(c) for c in saved["counts"])
        for key, value in saved.items():
            if key.startswith("term."):
                self.terms[key[5:]] = torch.zeros((), device=self.device) + value.to(self.device)

    def stats(self, epoch: int, lr: float, adversarial: bool) -> EpochStats:
        """The epoch's training metrics, summed over torchrun ranks."""
        counts = torch.tensor([self.count["clean"], self.count["adv"]], device=self.loss["clean"].device)
        for t in (*self.loss.values(), *self.correct.values(), *self.terms.values(), counts):
            distributed.all_reduce_sum(t)
        n = {"clean": int(counts[0]), "adv": int(counts[1])}
        # A part with no examples (the clean part under --fraction 1) was not measured: None,
        # written as null, not NaN (which YAML and JSON readers handle each their own way).
        mean = {f"{part}_{kind}": float(total[part]) / n[part] if n[part] else None
                for part in n for kind, total in (("loss", self.loss), ("accuracy", self.correct))}
        main = "clean" if n["clean"] else "adv"  # every example attacked: report the adversarial part
        loss, acc = mean[f"{main}_loss"], mean[f"{main}_accuracy"]
        stats = EpochStats(epoch=epoch, lr=lr, train_loss=math.nan if loss is None else loss,
                           train_accuracy=math.nan if acc is None else acc)
        if adversarial:
            stats.extra.update(mean)
        # An objective's terms are per attacked example (TRADES/MART attack every example).
        stats.extra.update({f"train_{k}": float(v) / max(n["adv"], 1) for k, v in self.terms.items()})
        return stats


def train_epoch(
    s: Setup, opts: TrainOptions, epoch: int, device: torch.device, *,
    perturber: BatchPerturber | None = None, step_hooks: Sequence[StepHook] = (), reporter: Reporter | None = None,
    start: EpochPosition | None = None, save_every: SaveEvery | None = None,
    save: Callable[[EpochPosition], None] | None = None,
    objective: Objective | None = None, weight_perturbation: WeightPerturbation | None = None,
) -> EpochStats:
    """One pass of updates over the training set (epoch 0-based) -> its training metrics.
    `objective` is the outer loss (None: PGD-AT's `mixed_cross_entropy`); `weight_perturbation`
    (AWP) perturbs the weights around each gradient in the epochs it applies to.

    `start` (a mid-epoch state) continues the epoch after its last trained batch; with
    `save_every`, `save` is given the position whenever a mid-epoch save is due."""
    info = distributed.current()
    reporter = reporter or NullReporter()
    s.train_model.train()
    sums = _EpochSums(device)
    attack_gen = stream_generator(opts.seed, epoch, info.rank, Stream.train_attack, device)
    first, started_epoch = 0, time.perf_counter()
    if start is not None:
        first, started_epoch = start.batches, started_epoch - start.seconds
        sums.load({k: v[info.rank] for k, v in start.sums.items()})
        attack_gen.set_state(start.attack_rng[info.rank].clone())  # set_state wants its own storage
    batches = train_batches(
        s.x, s.y, augment=Augment(opts.augment), batch_size=opts.batch_size, workers=opts.workers,
        seed=opts.seed, epoch=epoch, device=device, rank=info.rank, world_size=info.world_size, skip=first,
    )
    # The first step (1-based, of the run) whose loss is not finite, -1 while all are; a device
    # tensor, read once an epoch and before a mid-epoch save (no host sync per step).
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    reporter.start(f"epoch {epoch + 1}/{opts.epochs}", s.steps_per_epoch)
    if first:
        reporter.advance(first)
    for i, (xb, yb) in enumerate(batches, start=first):
        started = time.perf_counter()
        step = epoch * s.steps_per_epoch + i
        lr = lr_at(step, s.total_steps, opts.lr, opts.schedule)
        for g in s.opt.param_groups:
            g["lr"] = lr
        x_adv, n_clean = adversarial_part(s.model, xb, yb, perturber=perturber, generator=attack_gen,
                                          device=device, amp=opts.amp)
        outer = objective or partial(mixed_cross_entropy, label_smoothing=opts.label_smoothing,
                                     fraction=perturber.fraction if perturber is not None else None)
        s.opt.zero_grad(set_to_none=True)
        # AWP: the gradient is taken at the perturbed weights, which are restored before the step.
        around = nullcontext()
        if weight_perturbation is not None and weight_perturbation.applies(epoch):
            eager = model_forward(s.model, device, opts.amp, opts.channels_last)  # no DDP sync, not compiled
            around = weight_perturbation.around(s.model, partial(_loss_of, outer, eager, xb, x_adv, yb, n_clean))
        with around:
            bl = outer(model_forward(s.train_model, device, opts.amp, opts.channels_last), xb, x_adv, yb, n_clean)
            (s.scaler.scale(bl.loss) if s.scaler is not None else bl.loss).backward()
        if s.scaler is not None:
            s.scaler.step(s.opt)
            s.scaler.update()
        else:
            s.opt.step()
        if s.ema is not None:
            s.ema.update(s.model)
        with torch.no_grad():
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(bl.loss.detach()), step + 1, first_bad)
        adv_correct = sums.add(bl.logits.detach(), bl.labels, bl.n_clean, bl.terms)
        for hook in step_hooks:
            hook(StepStats(epoch + 1, step + 1, lr, bl.loss.detach(), len(bl.labels) - bl.n_clean, adv_correct,
                           started))
        reporter.advance()
        # The epoch's last step is followed by the end-of-epoch save instead.
        if save and save_every and i + 1 < s.steps_per_epoch and save_every.due(step + 1, device):
            check_finite(first_bad, epoch)
            save(EpochPosition(epoch, i + 1, {k: _by_rank(v, device) for k, v in sums.state().items()},
                               _by_rank(attack_gen.get_state(), device), round(time.perf_counter() - started_epoch, 3)))
        stop_after_step(step + 1)
    reporter.finish()
    check_finite(first_bad, epoch)
    end_lr = lr_at((epoch + 1) * s.steps_per_epoch, s.total_steps, opts.lr, opts.schedule)
    return sums.stats(epoch + 1, end_lr, adversarial=perturber is not None)


def check_finite(first_bad: torch.Tensor, epoch: int) -> None:
    """Raise TrainingDiverged when a step's loss was not finite on any torchrun rank (`first_bad`:
    that step, 1-based, or -1), before anything of the epoch is saved: the state file keeps the
    last good save."""
    if int(distributed.all_reduce_sum((first_bad >= 0).to(torch.int64))) == 0:  # the one host sync
        return
    step = int(first_bad)
    where = f"step {step}" if step >= 0 else "a step on another rank"
    raise TrainingDiverged(
        f"training diverged: the loss was NaN or infinite at {where} (epoch {epoch + 1}); stopped with nothing of "
        "that epoch saved (no checkpoint; a training state from an earlier save is kept as it was). "
        "Lower --lr (or --beta), or try --amp none"
    )


def _loss_of(objective: Objective, *args: object) -> torch.Tensor:
    return objective(*args).loss  # type: ignore[arg-type]


def _by_rank(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every torchrun rank's `t`, stacked in rank order on the CPU (what rank 0 saves)."""
    return torch.stack([r.cpu() for r in distributed.all_gather_cat(t.to(device))])


def measure_epoch(
    model: nn.Module, stats: EpochStats, data: ImageData, device: torch.device,
    epoch_hooks: Sequence[EpochHook] = (), *, history: Sequence[EpochStats] = (), raw: nn.Module | None = None,
    test: bool = True,
) -> str | None:
    """Fill in the hooks' metrics and the epoch's test/validation accuracy (of `model`), the
    latter when `test` or when a hook stops the run here (the checkpoint's epoch is always
    measured; otherwise left None); returns the reason to stop when a hook raised StopTraining."""
    stop = None
    for hook in epoch_hooks:
        try:
            stats.extra.update(hook(EpochEnd(model, raw or model, stats, history)))
        except StopTraining as exc:
            stop = str(exc)
    if test or stop:
        stats.test_accuracy = evaluate_accuracy(model, data.test_x, data.test_y, device)
        if data.val_x is not None and data.val_y is not None:
            stats.val_accuracy = evaluate_accuracy(model, data.val_x, data.val_y, device)
    return stop


def test_due(epoch: int, opts: TrainOptions) -> bool:
    """Whether 1-based `epoch` gets the test/validation pass: every `--test-every` K epochs and
    always the last."""
    return epoch == opts.epochs or (opts.test_every > 0 and epoch % opts.test_every == 0)


def load_init(opts: TrainOptions) -> LoadedCheckpoint | None:
    """The `--init-from` checkpoint (None without it), its arch checked against `--arch`."""
    if not opts.init_from:
        return None
    try:
        parent = load_checkpoint(opts.init_from)
    except CheckpointError as exc:
        raise CheckpointError(f"--init-from: {exc}") from exc
    if parent.meta["arch"] != model_arch(opts.arch):
        raise UsageError(f"--init-from {opts.init_from!r} is a {parent.meta['arch']}, but this run builds "
                         f"{opts.arch}; pass --arch {parent.meta['arch']}")
    return parent


def read_inputs(opts: TrainOptions, *, resume: bool) -> LoadedCheckpoint | None:
    """Read the files a run starts from before its dataset is loaded, so that a bad one costs a
    second: the `--resume` state's header and the `--init-from` checkpoint (returned, for `fit`)."""
    if resume:
        state = resume_state_path(opts.out)
        if state is not None:
            read_state_header(state)
    return load_init(opts)


def training_view(opts: TrainOptions) -> DataView:
    return DataView(stream=opts.stream, image_size=opts.image_size, skip_bad=opts.skip_bad)


def load_training_data(opts: TrainOptions) -> ImageData:
    """The dataset the options name, read as --stream/--image-size/--skip-bad say, with its
    --val-split held out."""
    return load_dataset(opts.dataset, opts.data_dir, opts.download, opts.seed, val_split=opts.val_split,
                        **training_view(opts).load_kwargs(opts.dataset))


def run_train(
    opts: TrainOptions, device: torch.device, *, resume: bool = False, reporter: Reporter | None = None,
    step_hooks: list[StepHook] | None = None, end_hooks: list[EndHook] | None = None,
    tensorboard: str | None = None,
) -> TrainResult:
    """`advcli train`: load the dataset, then `fit`, watched (see `watched`)."""
    init = read_inputs(opts, resume=resume)
    with watched(opts, tensorboard) as watch:
        return fit(opts, load_training_data(opts), device, resume=resume, reporter=reporter, init=init,
                   step_hooks=[*(step_hooks or []), watch.on_step], end_hooks=[*(end_hooks or []), watch.on_epoch])


def watched(opts: TrainOptions, tensorboard: str | None = None) -> RunWatch:
    """What a command's run writes as it goes (rank 0): NAME.metrics.jsonl, NAME.history.png
    after every epoch and, with `tensorboard`, TensorBoard events (advcli.train.metrics_log)."""
    label = opts.label or Path(opts.out).name.removesuffix(".safetensors")
    return RunWatch(opts.out, label=label, tensorboard=tensorboard, enabled=distributed.current().is_main)


def fit(
    opts: TrainOptions,
    data: ImageData,
    device: torch.device,
    *,
    perturber: BatchPerturber | None = None,
    epoch_hooks: list[EpochHook] | None = None,
    step_hooks: list[StepHook] | None = None,
    end_hooks: list[EndHook] | None = None,
    extra_meta: dict[str, object] | None = None,
    train_x: torch.Tensor | None = None,
    train_y: torch.Tensor | None = None,
    resume: bool = False,
    reporter: Reporter | None = None,
    keep_best: str | None = None,
    init: LoadedCheckpoint | None = None,
    objective: Objective | None = None,
    weight_perturbation: WeightPerturbation | None = None,
) -> TrainResult:
    """Train `opts.arch` on `data` and write the checkpoint (+ state and history files).

    `train_x/train_y` override the training set (e.g. the 1:1 clean + static adversarial
    union). `keep_best` names a history metric (e.g. "val_robust_accuracy"): the checkpoint
    written is then the epoch with its highest value instead of the last epoch. `init`: the
    `--init-from` checkpoint when the caller read it already (`read_inputs`).
    """
    t0 = time.perf_counter()
    info = distributed.current()
    reporter = (reporter or NullReporter()) if info.is_main else NullReporter()
    s = setup(opts, data, device, train_x, train_y, init=init)
    notes: list[str] = []
    state_path = state_path_for(opts.out)
    config = resume_config(opts, extra_meta, data)
    state = TrainState(config=config)
    if resume and resume_state_path(opts.out) is None:
        notes.append(f"--resume: no training state or checkpoint at {opts.out!r} yet: started from scratch")
        reporter.log(notes[-1])
    elif resume:
        state = load_state(state_path, s.model, s.opt, scaler=s.scaler, ema=s.ema, config=config)
        where = f"epoch {state.epoch + 1}, step {state.position.batches}" if state.position else f"epoch {state.epoch}"
        reporter.log(f"resuming {'inside' if state.position else 'after'} {where} from {state_path}")
        before = (state.saved_config or {}).get("epochs", opts.epochs)
        if before != opts.epochs:
            notes.append(f"--epochs {opts.epochs} on resume (saved with {before}): the learning-rate "
                         f"schedule now spans {opts.epochs} epochs")
            reporter.log(notes[-1])
    start_epoch, position = state.epoch, state.position
    save_every = SaveEvery.parse(opts.save_every)
    timer = _CompileTimer(device) if opts.compile else None
    step_hooks = [*(step_hooks or []), *([timer] if timer else [])]

    def save(at: EpochPosition | None = None) -> None:
        state.position = at
        if info.enabled:  # each rank's BatchNorm statistics: its training attack runs on them
            state.rank_buffers = {k: _by_rank(b, device) for k, b in s.model.named_buffers()}
            if s.ema is not None:
                state.rank_buffers.update({f"ema.{k}": _by_rank(b, device) for k, b in s.ema.model.named_buffers()})
        if info.is_main:
            save_state(state_path, s.model, s.opt, state, s.scaler, ema=s.ema)
        distributed.barrier()
        if save_every is not None:
            save_every.saved()

    for epoch in range(start_epoch, opts.epochs):
        started = time.perf_counter() - (position.seconds if position else 0.0)
        stats = train_epoch(s, opts, epoch, device, perturber=perturber, step_hooks=step_hooks, reporter=reporter,
                            start=position, save_every=save_every, save=save, objective=objective,
                            weight_perturbation=weight_perturbation)
        position = None
        stop = measure_epoch(s.kept, stats, data, device, epoch_hooks or [], history=state.history,
                             raw=s.model, test=test_due(epoch + 1, opts))
        stats.seconds = round(time.perf_counter() - started, 3)
        state.record(stats, s.kept, keep_best)
        save()
        reporter.log(_epoch_line(stats))
        skipped = skipped_files(data)
        if skipped:
            reporter.log(f"epoch {stats.epoch}: skipped {skipped} undecodable files so far (--skip-bad)")
        for hook in end_hooks or []:
            hook(stats)
        if stop:
            notes.append(stop)
            reporter.log(stop)
            break
    if skipped_files(data):
        notes.append(f"--skip-bad: skipped {skipped_files(data)} undecodable training files")
    if timer is not None and timer.note():
        notes.append(timer.note())
        reporter.log(timer.note())
    test_accuracy = finish(s, opts, data, device, state, keep_best=keep_best, extra_meta=extra_meta, notes=notes)
    return TrainResult(
        checkpoint=Path(opts.out), history=state.history, test_accuracy=test_accuracy,
        seconds=time.perf_counter() - t0, resumed_from_epoch=start_epoch, notes=notes,
    )


# Options that do not change a run's numbers: a resume may change them.
_RUN_ONLY = ("out", "label", "data_dir", "download", "save_every", "skip_bad", "test_every")
# The options of how the images are read: compared as the view they resolved to (`data`).
_VIEW = ("stream", "image_size")
# Recorded for --resume only when they differ from these: the optimizer of every state saved
# before the options existed, so those states still resume.
_RECORDED_IF_NOT = {"nesterov": True, "decay_all": False}


def resume_config(
    opts: TrainOptions, extra_meta: dict[str, object] | None, data: ImageData | None = None
) -> dict[str, object]:
    """What a run's numbers depend on, as the state records it and `--resume` compares it: the
    options, adv-train's threat model, the torchrun world size and, for a streamed dataset, the
    view it resolved to (absent for in-memory data, as in states saved before streaming, so
    those still resume; `--stream auto` resolving otherwise on another machine is refused)."""
    config: dict[str, object] = {k: v for k, v in asdict(opts).items() if k not in _RUN_ONLY + _VIEW
                                 and (k not in _RECORDED_IF_NOT or v != _RECORDED_IF_NOT[k])}
    if data is not None and data.streamed:
        config.update(recorded_view(data))
    threat = (extra_meta or {}).get("threat_model")
    if isinstance(threat, dict):
        config.update(threat)
    config["world_size"] = distributed.current().world_size
    return config


def finish(
    s: Setup, opts: TrainOptions, data: ImageData, device: torch.device, state: TrainState, *,
    keep_best: str | None = None, extra_meta: dict[str, object] | None = None, notes: list[str] | None = None,
) -> float:
    """Write the checkpoint (the last epoch, or the best one under `keep_best`; under --ema the
    weight average) and the history file; returns the checkpoint's test accuracy."""
    info = distributed.current()
    model = s.kept
    test_accuracy = state.history[-1].test_accuracy if state.history else None
    if test_accuracy is None:  # no epoch, or a resume with fewer --epochs ended at a skipped one
        test_accuracy = evaluate_accuracy(model, data.test_x, data.test_y, device)
        if state.history:
            state.history[-1].test_accuracy = test_accuracy
    if keep_best and state.best_weights is not None:
        model.load_state_dict(state.best_weights)
        test_accuracy = evaluate_accuracy(model, data.test_x, data.test_y, device)
        if notes is not None:
            notes.append(f"kept epoch {state.best_epoch} (best {keep_best} = {state.best_score:.4f})")
    meta = model_metadata(
        arch=model_arch(opts.arch),
        num_classes=data.num_classes,
        dataset=data.name,
        mean=data.mean,
        std=data.std,
        input_shape=data.input_shape,
        # The view resolved (`auto` -> on/off, the size): eval and the others rebuild it.
        config={**asdict(opts), **recorded_view(data)},
        seed=opts.seed,
        label=opts.label or Path(opts.out).name.removesuffix(".safetensors"),
        metrics={"test_accuracy": test_accuracy, "epochs_run": len(state.history),
                 "train_seconds": round(sum(h.seconds for h in state.history), 3)},
        history=[h.as_dict() for h in state.history],
        parent_sha256=s.parent_sha256,
        threat_model=None,
        classes=data.classes,
        weight_average={"decay": s.ema.decay, "updates": s.ema.updates} if s.ema is not None else None,
        distributed={"world_size": info.world_size, "global_batch_size": opts.batch_size * info.world_size}
        if info.enabled else None,
    )
    meta.update(extra_meta or {})
    if opts.channels_last:
        model.to(memory_format=torch.contiguous_format)
    if info.is_main:
        save_checkpoint(opts.out, model, meta)
        write_history(history_path_for(opts.out), opts.out, [h.as_dict() for h in state.history])
    distributed.barrier()
    return test_accuracy


class _CompileTimer:
    """A step hook for --compile: the first steps' durations (the first includes compilation)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: list[float] = []

    def __call__(self, step: StepStats) -> None:
        if len(self.seconds) < 6:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds.append(time.perf_counter() - step.started)

    def note(self) -> str | None:
        if len(self.seconds) < 2:
            return None
        first, *later = self.seconds
        return (f"--compile: the first step took {first:.1f} s (compilation included), "
                f"later steps {1e3 * statistics.median(later):.0f} ms (median of {len(later)})")


def model_arch(name: str) -> str:
    from advcli.models import resolve_arch

    return resolve_arch(name)


def _epoch_line(s: EpochStats) -> str:
    parts = [f"epoch {s.epoch}", f"loss {s.train_loss:.4f}", f"train {100 * s.train_accuracy:.2f}%"]
    if s.extra.get("adv_accuracy") is not None:
        parts.append(f"adv {100 * s.extra['adv_accuracy']:.2f}%")
    if s.val_accuracy is not None:
        parts.append(f"val {100 * s.val_accuracy:.2f}%")
    for k, v in s.extra.items():
        if k.startswith("val_") and isinstance(v, float):
            parts.append(f"{k} {100 * v:.2f}%")
    if s.test_accuracy is not None:
        parts.append(f"test {100 * s.test_accuracy:.2f}%")
    parts.append(f"{s.seconds:.1f}s")
    return "  ".join(parts)
