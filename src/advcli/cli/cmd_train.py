"""`advcli train`: standard training; shares its options with `advcli adv-train`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from advcli import distributed
from advcli.cli import render
from advcli.cli.common import CONFIG_HELP, DEVICE_HELP, handle_errors, resolve_options
from advcli.config import Augment, Schedule, parse_choice
from advcli.data import load_dataset
from advcli.device import resolve_device
from advcli.models import resolve_arch
from advcli.stages.train import TrainOptions, TrainResult, fit

ARCH_HELP = "Model: tiny-cnn, small-cnn, simplenet, resnet18, resnet50, preact-resnet18, resnet32, wrn-28-10, wrn-34-10."
DATASET_HELP = "synthetic (built in, no files), cifar10, cifar100, svhn (torchvision, under --data-dir), or folder:PATH (image tree or .zip with train/<class>/ and test/<class>/)."
AUGMENT_HELP = "Random crop (pad 4) + flip: none; buggy (NumPy in workers, pre-1.9 PyTorch seeding bug); fixed (NumPy, each worker seeded per epoch); device (batched tensor ops on the training device)."

# Options shared by train and adv-train (adv-train declares the same names).
Arch = typer.Option("tiny-cnn", "--arch", help=ARCH_HELP)
Dataset = typer.Option("synthetic", "--dataset", help=DATASET_HELP)
DataDir = typer.Option("./data", "--data-dir", help="Folder of torchvision datasets (cifar10/cifar100/svhn).")
Download = typer.Option(False, "--download/--no-download", help="Let torchvision download a missing dataset.")
Epochs = typer.Option(10, "--epochs", min=1, help="Passes over the training set.")
BatchSize = typer.Option(128, "--batch-size", min=1, help="Examples per optimizer step.")
Lr = typer.Option(0.1, "--lr", help="Peak learning rate (SGD with Nesterov momentum).")
Momentum = typer.Option(0.9, "--momentum", min=0.0, help="SGD momentum.")
WeightDecay = typer.Option(5e-4, "--weight-decay", min=0.0, help="L2 weight decay on conv/linear weights (not biases or BatchNorm).")
ScheduleOpt = typer.Option("onecycle", "--schedule", help="Learning-rate schedule per step: onecycle (20% warm-up, linear decay), cosine, step (/10 at 50% and 75%), constant.")
AugmentOpt = typer.Option("device", "--augment", help=AUGMENT_HELP)
Workers = typer.Option(0, "--workers", min=0, help="DataLoader worker processes (buggy/fixed modes).")
Seed = typer.Option(0, "--seed", help="Seed of initialisation, data order, augmentation and attacks.")
Device = typer.Option("auto", "--device", help=DEVICE_HELP)
ValSplit = typer.Option(0, "--val-split", min=0, help="Hold out N training images (seeded, stratified) as a validation set; never the test set.")
NTrain = typer.Option(None, "--n-train", min=1, help="Train on N of the training images (quick runs): class-balanced and the same N images for every --seed.")
LabelSmoothing = typer.Option(0.0, "--label-smoothing", min=0.0, max=1.0, help="Cross-entropy label smoothing.")
ChannelsLast = typer.Option(False, "--channels-last/--no-channels-last", help="NHWC memory format (faster convolutions on many CPUs and GPUs).")
Amp = typer.Option("none", "--amp", help="Mixed precision of the forward pass: none, bf16 (CPUs with AMX/AVX512-BF16 and GPUs), fp16 (CUDA, with loss scaling).")
Compile = typer.Option(False, "--compile/--no-compile", help="torch.compile the training forward/backward (off by default; the first step pays the compilation, reported in seconds; attacks stay eager).")
SyncBn = typer.Option(False, "--sync-bn/--no-sync-bn", help="Under torchrun: synchronise BatchNorm statistics across ranks (SyncBatchNorm).")
Label = typer.Option(None, "--label", help="Short name of this model in compare tables (default: the output file name).")
Resume = typer.Option(False, "--resume", help="Continue from the training state saved beside --out after the last completed epoch.")
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bars.")
Config = typer.Option(None, "--config", help=CONFIG_HELP)


def train_options(opts: dict[str, Any]) -> TrainOptions:
    """Validate the shared options at the boundary (closed sets -> enums)."""
    return TrainOptions(
        arch=resolve_arch(opts["arch"]),
        dataset=str(opts["dataset"]),
        epochs=int(opts["epochs"]),
        batch_size=int(opts["batch_size"]),
        lr=float(opts["lr"]),
        momentum=float(opts["momentum"]),
        weight_decay=float(opts["weight_decay"]),
        schedule=parse_choice(Schedule, opts["schedule"], name="schedule").value,
        augment=parse_choice(Augment, opts["augment"], name="augment mode").value,
        workers=int(opts["workers"]),
        seed=int(opts["seed"]),
        label_smoothing=float(opts["label_smoothing"]),
        val_split=int(opts["val_split"] or 0),
        n_train=opts["n_train"],
        channels_last=bool(opts["channels_last"]),
        amp=str(opts["amp"]).lower(),
        compile=bool(opts.get("compile", False)),
        sync_bn=bool(opts.get("sync_bn", False)),
        out=str(opts["out"]),
        label=opts["label"],
        init_from=opts.get("init_from"),
    )


def render_result(result: TrainResult, title: str = "advcli train") -> None:
    last = result.history[-1] if result.history else None
    rows = [
        ("checkpoint", str(result.checkpoint)),
        ("epochs", str(len(result.history))),
        ("test accuracy", f"{100 * result.test_accuracy:.2f}%"),
        ("time", f"{result.seconds:.1f} s"),
    ]
    if last is not None and "adv_accuracy" in last.extra:
        rows.insert(3, ("train adv accuracy (last epoch)", f"{100 * last.extra['adv_accuracy']:.2f}%"))
    for note in result.notes:
        rows.append(("note", note))
    render.out.print(render.table(title, ["", "value"], rows))


@handle_errors
def train(
    ctx: typer.Context,
    out: Path = typer.Option(Path("model.safetensors"), "--out", "-o", help="Checkpoint to write (safetensors); its .history.yaml and .state.safetensors go beside it."),
    arch: str = Arch,
    dataset: str = Dataset,
    data_dir: str = DataDir,
    download: bool = Download,
    epochs: int = Epochs,
    batch_size: int = BatchSize,
    lr: float = Lr,
    momentum: float = Momentum,
    weight_decay: float = WeightDecay,
    schedule: str = ScheduleOpt,
    augment: str = AugmentOpt,
    workers: int = Workers,
    seed: int = Seed,
    device: str = Device,
    val_split: int = ValSplit,
    n_train: int | None = NTrain,
    label_smoothing: float = LabelSmoothing,
    channels_last: bool = ChannelsLast,
    amp: str = Amp,
    compile: bool = Compile,
    sync_bn: bool = SyncBn,
    label: str | None = Label,
    resume: bool = Resume,
    quiet: bool = Quiet,
    config: Path | None = Config,
) -> None:
    """Train a model with standard (clean) training; writes a self-describing checkpoint.

    Example: advcli train --arch small-cnn --dataset folder:../shared/data/cifar10-jpeg.zip --epochs 10 --out clean.safetensors
    """
    opts = resolve_options(ctx, locals())
    topts = train_options(opts)
    info, dev = distributed.setup(resolve_device(opts["device"]))
    try:
        data = load_dataset(topts.dataset, opts["data_dir"], bool(opts["download"]), topts.seed, val_split=topts.val_split)
        reporter = render.RichReporter(quiet=bool(opts["quiet"]) or not info.is_main)
        result = fit(topts, data, dev, resume=bool(opts["resume"]), reporter=reporter)
        if info.is_main:
            render_result(result)
    finally:
        distributed.cleanup()
