"""`advcli train`: standard training; its options are declared in cli/train_options.py and
shared with `advcli adv-train`."""

from __future__ import annotations

from functools import partial

import typer

from advcli.cli.common import handle_errors, resolve_options
from advcli.cli.train_options import (
    RUN,
    TRAIN,
    Amp,
    Arch,
    AugmentMode,
    BatchSize,
    ChannelsLast,
    Compile,
    Config,
    DataDir,
    Dataset,
    DecayAll,
    Device,
    Download,
    Ema,
    Epochs,
    ImageSize,
    InitFrom,
    Label,
    LabelSmoothing,
    Lr,
    LrSchedule,
    Momentum,
    Nesterov,
    NTrain,
    Out,
    Quiet,
    Resume,
    SaveEveryOpt,
    Seed,
    SkipBad,
    Stream,
    SyncBn,
    Tensorboard,
    TestEvery,
    ValSplit,
    WeightDecay,
    Workers,
    run_training,
    train_options,
)
from advcli.train.loop import run_train


@handle_errors
def train(
    ctx: typer.Context,
    out: Out = TRAIN.out,
    arch: Arch = TRAIN.arch,
    dataset: Dataset = TRAIN.dataset,
    data_dir: DataDir = TRAIN.data_dir,
    download: Download = TRAIN.download,
    stream: Stream = TRAIN.stream,
    image_size: ImageSize = TRAIN.image_size,
    skip_bad: SkipBad = TRAIN.skip_bad,
    epochs: Epochs = TRAIN.epochs,
    batch_size: BatchSize = TRAIN.batch_size,
    lr: Lr = TRAIN.lr,
    momentum: Momentum = TRAIN.momentum,
    weight_decay: WeightDecay = TRAIN.weight_decay,
    nesterov: Nesterov = TRAIN.nesterov,
    decay_all: DecayAll = TRAIN.decay_all,
    schedule: LrSchedule = TRAIN.schedule,
    augment: AugmentMode = TRAIN.augment,
    workers: Workers = TRAIN.workers,
    seed: Seed = TRAIN.seed,
    val_split: ValSplit = TRAIN.val_split,
    test_every: TestEvery = TRAIN.test_every,
    n_train: NTrain = TRAIN.n_train,
    label_smoothing: LabelSmoothing = TRAIN.label_smoothing,
    channels_last: ChannelsLast = TRAIN.channels_last,
    amp: Amp = TRAIN.amp,
    compile: Compile = TRAIN.compile,
    sync_bn: SyncBn = TRAIN.sync_bn,
    ema: Ema = TRAIN.ema,
    save_every: SaveEveryOpt = TRAIN.save_every,
    label: Label = TRAIN.label,
    init_from: InitFrom = TRAIN.init_from,
    device: Device = RUN.device,
    resume: Resume = RUN.resume,
    quiet: Quiet = RUN.quiet,
    config: Config = RUN.config,
    tensorboard: Tensorboard = RUN.tensorboard,
) -> None:
    """Train a model with standard (clean) training; writes a self-describing checkpoint.

    Example: advcli train --arch small-cnn --dataset folder:../shared/data/cifar10-jpeg.zip --epochs 10 --out clean.safetensors
    """
    opts = resolve_options(ctx, locals())
    run_training(opts, "advcli train", partial(run_train, train_options(opts)))
