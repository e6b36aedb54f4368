"""What `advcli train` and `advcli adv-train` share: their options, declared once, the check
of those options at the boundary, and the one run function both commands end in.

Each shared option is an `Annotated` type (the flag and its help, with units). Its default is
the field of the same name of `TrainOptions` (the training options) or `RunOptions` (how the
command runs), so every default is written once, in a dataclass. Python needs each command to
list its own parameters; tests/train/test_train.py checks that the two lists agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from advcli import distributed
from advcli.cli import render
from advcli.cli.common import (
    CONFIG_HELP,
    DEVICE_HELP,
    data_view,
    image_size_option,
    skip_bad_option,
    stream_option,
)
from advcli.config import Augment, Schedule, parse_choice
from advcli.device import resolve_device
from advcli.models import resolve_arch
from advcli.train.loop import Precision, TrainOptions, TrainResult
from advcli.train.metrics_log import TENSORBOARD_HINT, require_tensorboard
from advcli.train.state import SaveEvery
from advcli.train.weight_average import check_decay


@dataclass(frozen=True)
class RunOptions:
    """The options of how a training command runs (not part of the training config)."""

    device: str = "auto"
    resume: bool = False
    quiet: bool = False
    config: Path | None = None
    tensorboard: str | None = None


TRAIN = TrainOptions()
RUN = RunOptions()

Out = Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors); its .history.yaml, .state.safetensors (for --resume), .metrics.jsonl (per-step and per-epoch metrics, appended as it runs) and .history.png (redrawn every epoch) go beside it.")]
Arch = Annotated[str, typer.Option("--arch", help="Model: tiny-cnn, small-cnn, simplenet, resnet18, resnet50, preact-resnet18, resnet32, wrn-28-10, wrn-34-10, resnet9 (a CPU-fast ResNet-9 of width 16; resnet9-wN for width N, 4-128), torchvision:NAME (an ImageNet model from torchvision.models by its exact name, e.g. torchvision:resnet50, torchvision:wide_resnet50_2).")]
Dataset = Annotated[str, typer.Option("--dataset", help="synthetic (built in, no files), cifar10, cifar100, svhn (torchvision, under --data-dir), or folder:PATH (image tree or .zip with train/<class>/ and test/<class>/).")]
DataDir = Annotated[str, typer.Option("--data-dir", help="Folder of the torchvision datasets (cifar10, cifar100, svhn).")]
Download = Annotated[bool, typer.Option("--download/--no-download", help="Let torchvision download a missing dataset into --data-dir.")]
Stream = Annotated[str, stream_option("auto")]
ImageSize = Annotated[int | None, image_size_option("224 for streamed data")]
SkipBad = Annotated[bool, skip_bad_option(" per epoch and noted in the result")]
Epochs = Annotated[int, typer.Option("--epochs", min=1, help="Passes over the training set (count).")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Examples per optimizer step, per torchrun rank (count).")]
Lr = Annotated[float, typer.Option("--lr", help="Peak learning rate of SGD (dimensionless).")]
Momentum = Annotated[float, typer.Option("--momentum", min=0.0, help="SGD momentum (dimensionless, 0 = plain SGD).")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", min=0.0, help="L2 weight decay coefficient on conv/linear weights, not on biases or BatchNorm unless --decay-all (dimensionless).")]
Nesterov = Annotated[bool, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum (default), or the plain momentum SGD of the TRADES, MART and AWP reference scripts.")]
DecayAll = Annotated[bool, typer.Option("--decay-all/--no-decay-all", help="Apply --weight-decay to every parameter, biases and BatchNorm's scale and shift too, as reference scripts that hand model.parameters() to SGD do (TRADES, MART, AWP). Default: conv/linear weights only.")]
LrSchedule = Annotated[str, typer.Option("--schedule", help="Learning rate per step: onecycle (20% linear warm-up, then linear decay to 0), cosine, step (/10 at 50% and 75% of the steps), constant.")]
AugmentMode = Annotated[str, typer.Option("--augment", help="Random crop (pad 4 pixels) + horizontal flip: none; buggy (NumPy in workers, the pre-1.9 PyTorch seeding bug); fixed (NumPy, each worker seeded per epoch); device (batched tensor ops on the training device).")]
Workers = Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes for --augment buggy/fixed (count).")]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Seed of the initialisation, data order, augmentation and attack random starts (each from its own stream).")]
TestEvery = Annotated[int, typer.Option("--test-every", min=0, help="Measure the test accuracy (and the clean --val-split accuracy) every K epochs and after the last one (epochs; 0 = after the last only). Each is an fp32 pass over the whole split (on 2 CPU cores about 10 % of a full CIFAR-10 epoch of the speed run's ResNet-9, more with --n-train), which 0 gives back. Training is the same for every K.")]
ValSplit = Annotated[int, typer.Option("--val-split", min=0, help="Hold out N training images (seeded, class-balanced) as a validation set; never the test set (count, 0 = none).")]
NTrain = Annotated[int | None, typer.Option("--n-train", min=1, help="Train on N of the training images (count; class-balanced and the same N for every --seed; with adv-train --adv-data, N clean/adversarial pairs). Default: all.")]
LabelSmoothing = Annotated[float, typer.Option("--label-smoothing", min=0.0, max=1.0, help="Cross-entropy label smoothing (fraction of the target mass spread over the classes).")]
ChannelsLast = Annotated[bool, typer.Option("--channels-last/--no-channels-last", help="NHWC memory format (faster convolutions on many CPUs and GPUs).")]
Amp = Annotated[str, typer.Option("--amp", help="Precision of the training forward pass and training attack: none (fp32), bf16 (CPUs with AMX/AVX512-BF16, GPUs), fp16 (CUDA, with loss scaling). The per-epoch test/validation accuracy and the evaluation attacks (adv-train's validation PGD) always run in fp32.")]
Compile = Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the training forward/backward (the first step pays the compilation, reported in seconds; attacks stay eager).")]
SyncBn = Annotated[bool, typer.Option("--sync-bn/--no-sync-bn", help="Under torchrun: synchronise BatchNorm statistics across ranks (SyncBatchNorm).")]
Label = Annotated[str | None, typer.Option("--label", help="Short name of this model in compare tables. Default: the --out file name.")]
InitFrom = Annotated[str | None, typer.Option("--init-from", help="Start from this checkpoint's weights instead of a fresh initialisation (fine-tuning); same --arch and class count.")]
Device = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the training state saved beside --out (after an epoch, or inside one with --save-every), bit-identical to an uninterrupted run; with neither a state nor a checkpoint at --out, start from scratch (a job script can always pass it). Refused when --out exists without a state, or when an option that changes the numbers differs from the saved run's (--epochs may change: the run is extended or shortened).")]
Ema = Annotated[float | None, typer.Option("--ema", metavar="DECAY", help="Keep an exponential moving average of the weights and BatchNorm statistics, updated after every optimizer step with decay min(DECAY, t/(t+9)) at step t (dimensionless, e.g. 0.999; averages over about 1/(1-DECAY) steps). Test/validation accuracy, --keep best and the checkpoint use the average; the catastrophic-overfitting check the trained weights. Default: off.")]
SaveEveryOpt = Annotated[str | None, typer.Option("--save-every", help="Also save the training state inside epochs: every N optimizer steps (e.g. 200) or every N seconds/minutes/hours of wall time (e.g. 90s, 10m, 1h), so a kill loses at most that much work. Default: after every epoch only.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Config = Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)]
Tensorboard = Annotated[str | None, typer.Option("--tensorboard", metavar="DIR", help=f"Also write TensorBoard event files into the folder DIR: per-step loss, learning rate and attack success rate (fraction of the batch's adversarial examples misclassified), per-epoch metrics, all against the optimizer step. Needs the optional extra: {TENSORBOARD_HINT}.")]


def train_options(opts: dict[str, Any]) -> TrainOptions:
    """The shared options checked at the boundary (closed sets -> their enums' values)."""
    return TrainOptions(
        arch=resolve_arch(opts["arch"]),
        dataset=str(opts["dataset"]),
        data_dir=str(opts["data_dir"]),
        download=bool(opts["download"]),
        **_view(opts),
        epochs=int(opts["epochs"]),
        batch_size=int(opts["batch_size"]),
        lr=float(opts["lr"]),
        momentum=float(opts["momentum"]),
        weight_decay=float(opts["weight_decay"]),
        nesterov=bool(opts["nesterov"]),
        decay_all=bool(opts["decay_all"]),
        schedule=parse_choice(Schedule, opts["schedule"], name="schedule").value,
        augment=parse_choice(Augment, opts["augment"], name="augment mode").value,
        workers=int(opts["workers"]),
        seed=int(opts["seed"]),
        label_smoothing=float(opts["label_smoothing"]),
        val_split=int(opts["val_split"] or 0),
        test_every=int(opts["test_every"]),
        n_train=None if opts["n_train"] is None else int(opts["n_train"]),
        channels_last=bool(opts["channels_last"]),
        amp=parse_choice(Precision, opts["amp"], name="--amp").value,
        compile=bool(opts["compile"]),
        sync_bn=bool(opts["sync_bn"]),
        ema=None if opts["ema"] is None else check_decay(float(opts["ema"])),
        save_every=_save_every(opts["save_every"]),
        out=str(opts["out"]),
        label=opts["label"],
        init_from=opts["init_from"],
    )


def _view(opts: dict[str, Any]) -> dict[str, Any]:
    """--stream, --image-size, --skip-bad, checked against --dataset now (exit 2 before loading)."""
    view = data_view({**opts, "stream": opts["stream"] or "auto"})
    view.load_kwargs(str(opts["dataset"]))
    return {"stream": view.stream, "image_size": view.image_size, "skip_bad": view.skip_bad}


def _save_every(text: str | None) -> str | None:
    """--save-every checked here (exit 2 on a bad value) and kept as given."""
    return None if SaveEvery.parse(text) is None else str(text).strip()


def run_training(opts: dict[str, Any], title: str, call: Callable[..., TrainResult]) -> None:
    """The end of both commands: join torchrun's process group, make the one stage call
    `call(device, resume=, reporter=, tensorboard=)`, render its result on rank 0."""
    if opts["tensorboard"]:
        require_tensorboard()  # a missing extra fails now, not after loading the data
    info, device = distributed.setup(resolve_device(opts["device"]))
    try:
        reporter = render.RichReporter(quiet=bool(opts["quiet"]) or not info.is_main)
        result = call(device, resume=bool(opts["resume"]), reporter=reporter, tensorboard=opts["tensorboard"])
    finally:
        distributed.cleanup()
    if info.is_main:
        render_result(result, title)


def render_result(result: TrainResult, title: str) -> None:
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
