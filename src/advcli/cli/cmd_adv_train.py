"""`advcli adv-train`: adversarial training (PGD, FGSM, FGSM-RS; online or from a static set)."""

from __future__ import annotations

from pathlib import Path

import typer

from advcli import distributed
from advcli.cli import render
from advcli.cli.cmd_train import (
    Amp,
    Arch,
    AugmentOpt,
    BatchSize,
    ChannelsLast,
    Compile,
    Config,
    DataDir,
    Dataset,
    Device,
    Download,
    Epochs,
    Label,
    LabelSmoothing,
    Lr,
    Momentum,
    NTrain,
    Quiet,
    Resume,
    ScheduleOpt,
    Seed,
    SyncBn,
    ValSplit,
    WeightDecay,
    Workers,
    render_result,
    train_options,
)
from advcli.cli.common import handle_errors, resolve_options
from advcli.config import Norm, parse_choice, parse_eps, parse_fraction
from advcli.data import load_dataset
from advcli.device import resolve_device
from advcli.errors import UsageError
from advcli.stages.adv_train import AdvOptions, ThreatModel, adv_fit


@handle_errors
def adv_train(
    ctx: typer.Context,
    out: Path = typer.Option(Path("robust.safetensors"), "--out", "-o", help="Checkpoint to write (safetensors)."),
    norm: str = typer.Option("linf", "--norm", help="Threat model: linf or l2."),
    eps: str = typer.Option(None, "--eps", help="Radius of the threat model in pixel units of [0,1] images, e.g. 8/255 (linf) or 0.5 (l2). Required unless --adv-data."),
    attack: str = typer.Option("pgd", "--attack", help="Training attack: pgd, fgsm or fgsm-rs (random start, step 1.25·eps)."),
    steps: int = typer.Option(7, "--steps", min=1, help="PGD iterations per batch (Madry: 7 for training)."),
    step_size: str = typer.Option(None, "--step-size", help="PGD/FGSM-RS step, e.g. 2/255 (default: 2.5·eps/steps for PGD, 1.25·eps for FGSM-RS)."),
    restarts: int = typer.Option(1, "--restarts", min=1, help="Random restarts of the training attack (worst case kept)."),
    fraction: str = typer.Option("1.0", "--fraction", help="Adversarial share f of each batch in [0,1]: the last f·B examples are attacked; loss (1-f)·CE(clean) + f·CE(adv)."),
    init_from: str = typer.Option(None, "--init-from", help="Start from this checkpoint's weights (fine-tuning, e.g. of a clean model)."),
    adv_data: str = typer.Option(None, "--adv-data", help="Static adversarial training set from `advcli attack --split train`: train on its 1:1 union with the clean images, no online attack."),
    val_every: int = typer.Option(0, "--val-every", min=0, help="Every K epochs measure clean and PGD accuracy on the --val-split set (0 = never)."),
    val_pgd_steps: int = typer.Option(10, "--val-pgd-steps", min=1, help="PGD iterations of the validation attack."),
    keep: str = typer.Option("last", "--keep", help="last: the final epoch; best: the epoch with the best robust validation accuracy (needs --val-every)."),
    on_overfit: str = typer.Option(None, "--on-overfit", help="Catastrophic-overfitting check (PGD vs FGSM accuracy on a training batch after every epoch): warn, stop or off (default: warn for fgsm/fgsm-rs training, off for pgd)."),
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
    """Adversarial training: the train loop plus an attack on the last --fraction of every batch.

    Example: advcli adv-train --norm linf --eps 8/255 --attack pgd --steps 7 --fraction 1.0 --out robust.safetensors
    """
    opts = resolve_options(ctx, locals())
    topts = train_options(opts)
    atk = str(opts["attack"]).lower()
    if atk not in ("pgd", "fgsm", "fgsm-rs"):
        raise UsageError(f"unknown training attack {opts['attack']!r}; valid values: pgd, fgsm, fgsm-rs")
    threat = ThreatModel(
        norm=parse_choice(Norm, opts["norm"], name="norm"),
        eps=parse_eps(opts["eps"], name="eps", allow_zero=False) if opts["eps"] is not None else None,
        attack=atk,
        steps=int(opts["steps"]),
        step_size=parse_eps(opts["step_size"], name="step size", allow_zero=False) if opts["step_size"] else None,
        restarts=int(opts["restarts"]),
        fraction=parse_fraction(opts["fraction"], name="fraction"),
    )
    adv = AdvOptions(
        threat=threat, adv_data=opts["adv_data"], val_every=int(opts["val_every"]),
        val_pgd_steps=int(opts["val_pgd_steps"]), keep=str(opts["keep"]), on_overfit=opts["on_overfit"],
    )
    info, dev = distributed.setup(resolve_device(opts["device"]))
    try:
        data = load_dataset(topts.dataset, opts["data_dir"], bool(opts["download"]), topts.seed, val_split=topts.val_split)
        reporter = render.RichReporter(quiet=bool(opts["quiet"]) or not info.is_main)
        result = adv_fit(topts, adv, data, dev, resume=bool(opts["resume"]), reporter=reporter)
        if info.is_main:
            render_result(result, "advcli adv-train")
    finally:
        distributed.cleanup()
