"""The one training loop. Standard training and adversarial training are the same loop; the
latter passes a `BatchPerturber` that replaces the last `fraction` of every batch by adversarial
examples before the update (see stages/adv_train.py).

Determinism: every epoch's data order, augmentation and attack random starts are drawn from
their own streams seeded by (seed, epoch, rank, purpose) (`advcli.rng`), the learning rate is
a function of the global step, and the training state (weights, optimizer buffers, epoch,
history, RNG states) is saved after every epoch, so `--resume` after a kill ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advcli import distributed
from advcli.checkpoint import (
    load_checkpoint,
    load_tensors,
    model_metadata,
    save_checkpoint,
    save_tensors,
)
from advcli.config import Augment, Schedule
from advcli.data import ImageData
from advcli.data.datasets import train_subset
from advcli.data.loaders import train_batches
from advcli.errors import CheckpointError, UsageError
from advcli.io import atomic_write_text, sha256_file
from advcli.models import Classifier, build_model
from advcli.progress import NullReporter, Reporter
from advcli.rng import Stream, stream_generator, stream_seed


@dataclass
class TrainOptions:
    """Resolved options of `advcli train` (adv-train adds a threat model on top)."""

    arch: str = "tiny-cnn"
    dataset: str = "synthetic"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    augment: str = "device"
    workers: int = 0
    seed: int = 0
    label_smoothing: float = 0.0
    val_split: int = 0
    n_train: int | None = None
    channels_last: bool = False
    amp: str = "none"
    compile: bool = False
    sync_bn: bool = False
    out: str = "model.safetensors"
    label: str | None = None
    init_from: str | None = None


@dataclass
class EpochStats:
    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float
    val_accuracy: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return {k: v for k, v in d.items() if v is not None}


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


# Called after each epoch with (model, epoch, stats); returns extra metrics for the history and
# may raise StopTraining (catastrophic-overfitting stop) or set "keep_score" for --keep best.
EpochHook = Callable[[nn.Module, int, EpochStats], dict[str, float]]


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


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """Mixed precision for the model's forward pass: none | bf16 | fp16 (fp16 only on CUDA)."""
    if amp not in ("none", "bf16", "fp16"):
        raise UsageError(f"unknown --amp {amp!r}; valid values: none, bf16, fp16")
    if amp == "fp16" and device.type != "cuda":
        raise UsageError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "none")


def evaluate_accuracy(
    model: nn.Module,
    x_uint8: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    batch_size: int = 500,
    amp: str = "none",
) -> float:
    """Clean accuracy in eval mode (no augmentation)."""
    was_training = model.training
    model.eval()
    info = distributed.current()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        # Under torchrun each rank takes every world_size-th batch; the counts are summed.
        for start in range(info.rank * batch_size, len(y), batch_size * info.world_size):
            xb = x_uint8[start : start + batch_size].to(device)
            xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()
            with autocast(device, amp):
                logits = model(xb)
            correct += (logits.argmax(1) == y[start : start + batch_size].to(device)).sum()
    distributed.all_reduce_sum(correct)
    model.train(was_training)
    return float(correct) / max(len(y), 1)


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
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One training batch: (loss, logits, n_clean).

    With a perturber of fraction f, the first (1-f)·B examples stay clean and the rest are
    replaced by adversarial examples (attack in eval mode; the model is back in train mode
    before the update); both parts go through the model as ONE batch, so BatchNorm sees both,
    and the loss is (1-f)·CE(clean) + f·CE(adv). Without a perturber (or f = 0) this is
    exactly standard training. `attack_model` is the unwrapped module when `model` is a
    DistributedDataParallel wrapper (the attack needs input gradients only, no gradient sync).
    """
    b = len(yb)
    fraction = perturber.fraction if perturber is not None else 0.0
    n_adv = int(round(fraction * b))
    n_clean = b - n_adv
    if n_adv:
        with autocast(device, amp):
            x_adv = perturber.perturb(attack_model or model, xb[n_clean:], yb[n_clean:], generator)  # type: ignore[union-attr]
        model.train()
        xb = torch.cat([xb[:n_clean], x_adv]) if n_clean else x_adv
    if channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    with autocast(device, amp):
        logits = model(xb)
    logits = logits.float()
    if 0 < n_adv < b:
        loss_clean = F.cross_entropy(logits[:n_clean], yb[:n_clean], label_smoothing=label_smoothing)
        loss_adv = F.cross_entropy(logits[n_clean:], yb[n_clean:], label_smoothing=label_smoothing)
        loss = (1 - fraction) * loss_clean + fraction * loss_adv
    else:
        loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
    return loss, logits, n_clean


def state_path_for(out: str | Path) -> Path:
    p = Path(out)
    return p.with_name(p.name.removesuffix(".safetensors") + ".state.safetensors")


def history_path_for(out: str | Path) -> Path:
    p = Path(out)
    return p.with_name(p.name.removesuffix(".safetensors") + ".history.yaml")


def _save_state(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    epoch: int,
    history: list[EpochStats],
    meta: dict[str, Any],
    best_state: dict[str, torch.Tensor] | None = None,
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in (best_state or {}).items()})
    for i, st in opt.state_dict()["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{i}.{name}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    np_state = np.random.get_state()
    tensors["rng.numpy_keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    save_tensors(
        path,
        tensors,
        {
            "schema": "advcli.train-state/1",
            "epoch": epoch,
            "history": [h.as_dict() for h in history],
            "numpy_pos": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python_random": repr(random.getstate()),
            **meta,
        },
    )


def _load_state(
    path: Path, model: nn.Module, opt: torch.optim.Optimizer
) -> tuple[int, list[dict[str, Any]], dict[str, Any], dict[str, torch.Tensor] | None]:
    tensors, meta = load_tensors(path)
    if meta.get("schema") != "advcli.train-state/1":
        raise CheckpointError(f"{str(path)!r} is not an advcli training-state file")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    sd = opt.state_dict()
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            sd["state"].setdefault(int(i), {})[name] = value
    opt.load_state_dict(sd)
    torch.set_rng_state(tensors["rng.torch"])
    pos, has_gauss, cached = meta["numpy_pos"]
    np.random.set_state(("MT19937", tensors["rng.numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return int(meta["epoch"]), list(meta.get("history", [])), meta, best


def _stats_from_dict(d: dict[str, Any]) -> EpochStats:
    known = {"epoch", "lr", "train_loss", "train_accuracy", "test_accuracy", "seconds", "val_accuracy"}
    return EpochStats(
        **{k: d.get(k) for k in known if k != "val_accuracy"},  # type: ignore[arg-type]
        val_accuracy=d.get("val_accuracy"),
        extra={k: v for k, v in d.items() if k not in known},
    )


def fit(
    opts: TrainOptions,
    data: ImageData,
    device: torch.device,
    *,
    perturber: BatchPerturber | None = None,
    epoch_hooks: list[EpochHook] | None = None,
    extra_meta: dict[str, Any] | None = None,
    train_x: torch.Tensor | None = None,
    train_y: torch.Tensor | None = None,
    resume: bool = False,
    reporter: Reporter | None = None,
    keep_best: str | None = None,
) -> TrainResult:
    """Train `opts.arch` on `data` and write the checkpoint (+ state and history files).

    `train_x/train_y` override the training set (e.g. the 1:1 clean + static adversarial
    union). `keep_best` names a history metric (e.g. "val_robust_accuracy"): the checkpoint
    written is then the epoch with its highest value instead of the last epoch.
    """
    info = distributed.current()
    reporter = (reporter or NullReporter()) if info.is_main else NullReporter()
    t0 = time.perf_counter()
    if opts.epochs < 1 or opts.batch_size < 1:
        raise UsageError("--epochs and --batch-size must be at least 1")
    if opts.lr <= 0:
        raise UsageError(f"--lr must be > 0, got {opts.lr}")
    if train_x is None or train_y is None:
        x_tr, y_tr = data.train_x, data.train_y
        if opts.n_train:
            keep = train_subset(y_tr, opts.n_train)
            x_tr, y_tr = x_tr[keep], y_tr[keep]
    else:  # the caller's own set (e.g. clean/adversarial pairs), already cut to --n-train
        x_tr, y_tr = train_x, train_y

    torch.manual_seed(stream_seed(opts.seed, 0, 0, Stream.init))
    np.random.seed(stream_seed(opts.seed, 0, 0, Stream.numpy_global) % 2**32)
    random.seed(stream_seed(opts.seed, 0, 0, Stream.python_global))
    model: Classifier = build_model(opts.arch, data.num_classes, data.mean, data.std)
    parent_sha = None
    if opts.init_from:
        parent = load_checkpoint(opts.init_from)
        if parent.meta["arch"] != model_arch(opts.arch) or int(parent.meta["num_classes"]) != data.num_classes:
            raise UsageError(
                f"--init-from {opts.init_from!r} is a {parent.meta['arch']} with {parent.meta['num_classes']} "
                f"classes, but this run builds {opts.arch} for {data.num_classes}; pass --arch {parent.meta['arch']}"
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
    step_seconds: list[float] = []
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=opts.lr, momentum=opts.momentum, nesterov=opts.momentum > 0,
    )
    # fp16 needs loss scaling (CUDA only); bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler("cuda") if (opts.amp == "fp16" and device.type == "cuda") else None
    # --batch-size is per rank: the global batch is batch_size x world_size.
    steps_per_epoch = math.ceil((len(y_tr) // info.world_size) / opts.batch_size)
    total_steps = steps_per_epoch * opts.epochs

    state_file = state_path_for(opts.out)
    history: list[EpochStats] = []
    start_epoch = 0
    best_score, best_epoch = -math.inf, None
    best_state: dict[str, torch.Tensor] | None = None
    if resume:
        if not state_file.is_file():
            raise UsageError(f"--resume: no training state {str(state_file)!r}; run without --resume first")
        start_epoch, hist, state_meta, best_state = _load_state(state_file, model, opt)
        history = [_stats_from_dict(h) for h in hist]
        if state_meta.get("best_epoch") is not None:
            best_epoch, best_score = int(state_meta["best_epoch"]), float(state_meta["best_score"])
        reporter.log(f"resuming after epoch {start_epoch} from {state_file}")

    x_tr_dev = x_tr.to(device) if opts.augment in ("none", "device") else x_tr
    y_tr_dev = y_tr.to(device) if opts.augment in ("none", "device") else y_tr
    notes: list[str] = []
    for epoch in range(start_epoch, opts.epochs):
        te = time.perf_counter()
        train_model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        adv_loss_sum = torch.zeros((), device=device)
        adv_correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = n_adv_seen = 0
        attack_gen = stream_generator(opts.seed, epoch, info.rank, Stream.train_attack, device)
        reporter.start(f"epoch {epoch + 1}/{opts.epochs}", steps_per_epoch)
        batches = train_batches(
            x_tr_dev, y_tr_dev, augment=Augment(opts.augment), batch_size=opts.batch_size,
            workers=opts.workers, seed=opts.seed, epoch=epoch, device=device,
            rank=info.rank, world_size=info.world_size,
        )
        for i, (xb, yb) in enumerate(batches):
            ts = time.perf_counter() if opts.compile and len(step_seconds) < 6 else None
            step = epoch * steps_per_epoch + i
            lr = lr_at(step, total_steps, opts.lr, opts.schedule)
            for g in opt.param_groups:
                g["lr"] = lr
            loss, logits, n_clean = batch_loss(
                train_model, xb, yb, perturber=perturber, generator=attack_gen, device=device,
                amp=opts.amp, label_smoothing=opts.label_smoothing, channels_last=opts.channels_last,
                attack_model=model,
            )
            n_adv = len(yb) - n_clean
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            with torch.no_grad():
                hits = logits.argmax(1) == yb
                if n_adv:
                    adv_correct += hits[n_clean:].sum()
                    adv_loss_sum += F.cross_entropy(logits[n_clean:], yb[n_clean:], reduction="sum")
                if n_clean:
                    correct += hits[:n_clean].sum()
                    loss_sum += F.cross_entropy(logits[:n_clean], yb[:n_clean], reduction="sum")
            seen += n_clean
            n_adv_seen += n_adv
            if ts is not None:
                step_seconds.append(_synced_seconds(device, ts))
            reporter.advance()
        reporter.finish()
        if info.enabled:
            counts = torch.tensor([seen, n_adv_seen], device=device)
            for t in (loss_sum, correct, adv_loss_sum, adv_correct, counts):
                distributed.all_reduce_sum(t)
            seen, n_adv_seen = int(counts[0]), int(counts[1])
        stats = EpochStats(
            epoch=epoch + 1,
            lr=lr_at((epoch + 1) * steps_per_epoch, total_steps, opts.lr, opts.schedule),
            train_loss=float(loss_sum) / max(seen, 1) if seen else float(adv_loss_sum) / max(n_adv_seen, 1),
            train_accuracy=float(correct) / max(seen, 1) if seen else float(adv_correct) / max(n_adv_seen, 1),
            test_accuracy=evaluate_accuracy(model, data.test_x, data.test_y, device, amp=opts.amp),
            seconds=0.0,
        )
        if perturber is not None:
            stats.extra.update(
                clean_loss=float(loss_sum) / max(seen, 1) if seen else float("nan"),
                clean_accuracy=float(correct) / max(seen, 1) if seen else float("nan"),
                adv_loss=float(adv_loss_sum) / max(n_adv_seen, 1) if n_adv_seen else float("nan"),
                adv_accuracy=float(adv_correct) / max(n_adv_seen, 1) if n_adv_seen else float("nan"),
            )
        if data.val_x is not None and data.val_y is not None:
            stats.val_accuracy = evaluate_accuracy(model, data.val_x, data.val_y, device, amp=opts.amp)
        stop_reason = None
        for hook in epoch_hooks or []:
            try:
                stats.extra.update(hook(model, epoch, stats))
            except StopTraining as exc:
                stop_reason = str(exc)
        stats.seconds = round(time.perf_counter() - te, 3)
        history.append(stats)
        reporter.log(_epoch_line(stats))
        if keep_best:
            score = stats.as_dict().get(keep_best)
            if score is not None and score > best_score:
                best_score, best_epoch = score, stats.epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if info.is_main:
            _save_state(
                state_file, model, opt, epoch + 1, history,
                {"best_epoch": best_epoch, "best_score": best_score if best_epoch else None}, best_state,
            )
        distributed.barrier()
        if stop_reason:
            notes.append(stop_reason)
            reporter.log(stop_reason)
            break

    if len(step_seconds) >= 2:
        first, *later = step_seconds
        note = (f"--compile: the first step took {first:.1f} s (compilation included), "
                f"later steps {1e3 * statistics.median(later):.0f} ms (median of {len(later)})")
        notes.append(note)
        reporter.log(note)
    final_acc = (
        history[-1].test_accuracy
        if history
        else evaluate_accuracy(model, data.test_x, data.test_y, device, amp=opts.amp)
    )
    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
        final_acc = evaluate_accuracy(model, data.test_x, data.test_y, device, amp=opts.amp)
        notes.append(f"kept epoch {best_epoch} (best {keep_best} = {best_score:.4f})")
    meta = model_metadata(
        arch=model_arch(opts.arch),
        num_classes=data.num_classes,
        dataset=data.name,
        mean=data.mean,
        std=data.std,
        input_shape=data.input_shape,
        config=asdict(opts),
        seed=opts.seed,
        label=opts.label or Path(opts.out).name.removesuffix(".safetensors"),
        metrics={"test_accuracy": final_acc, "epochs_run": len(history)},
        history=[h.as_dict() for h in history],
        parent_sha256=parent_sha,
        threat_model=None,
        classes=data.classes,
        distributed={"world_size": info.world_size, "global_batch_size": opts.batch_size * info.world_size}
        if info.enabled else None,
    )
    meta.update(extra_meta or {})
    if opts.channels_last:
        model.to(memory_format=torch.contiguous_format)
    ckpt = Path(opts.out)
    if info.is_main:
        save_checkpoint(ckpt, model, meta)
        import yaml

        atomic_write_text(
            history_path_for(opts.out),
            yaml.safe_dump(
                {"schema": "advcli.history/1", "checkpoint": str(ckpt), "sha256": sha256_file(ckpt),
                 "history": [h.as_dict() for h in history]},
                sort_keys=False,
            ),
        )
    distributed.barrier()
    return TrainResult(
        checkpoint=ckpt, history=history, test_accuracy=final_acc,
        seconds=time.perf_counter() - t0, resumed_from_epoch=start_epoch, notes=notes,
    )


def _synced_seconds(device: torch.device, since: float) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - since


def model_arch(name: str) -> str:
    from advcli.models import resolve_arch

    return resolve_arch(name)


def _epoch_line(s: EpochStats) -> str:
    parts = [f"epoch {s.epoch}", f"loss {s.train_loss:.4f}", f"train {100 * s.train_accuracy:.2f}%"]
    if "adv_accuracy" in s.extra:
        parts.append(f"adv {100 * s.extra['adv_accuracy']:.2f}%")
    if s.val_accuracy is not None:
        parts.append(f"val {100 * s.val_accuracy:.2f}%")
    for k, v in s.extra.items():
        if k.startswith("val_") and isinstance(v, float):
            parts.append(f"{k} {100 * v:.2f}%")
    parts += [f"test {100 * s.test_accuracy:.2f}%", f"{s.seconds:.1f}s"]
    return "  ".join(parts)
