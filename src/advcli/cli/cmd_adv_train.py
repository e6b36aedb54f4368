"""`advcli adv-train`: adversarial training (PGD, FGSM, FGSM-RS, N-FGSM; PGD-AT, TRADES, MART, AWP;
online or from a static set).
The options it shares with `advcli train` are declared in cli/train_options.py; its own
defaults are those of `ThreatModel` and `AdvOptions`."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

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
from advcli.config import Norm, parse_choice, parse_eps, parse_fraction
from advcli.train.adversarial import AdvOptions, KeepEpoch, OnOverfit, ThreatModel, TrainAttack, run_adv_train
from advcli.train.objectives import (
    DEFAULT_AWP_GAMMA,
    DEFAULT_AWP_WARMUP,
    DEFAULT_BETA,
    ObjectiveName,
    ObjectiveOptions,
)

THREAT = ThreatModel()
ADV = AdvOptions()
OBJ = ObjectiveOptions()


def adv_options(opts: dict[str, Any]) -> AdvOptions:
    """adv-train's own options checked at the boundary (closed sets -> their enums' values)."""
    threat = ThreatModel(
        norm=parse_choice(Norm, opts["norm"], name="norm"),
        eps=None if opts["eps"] is None else parse_eps(opts["eps"], name="eps", allow_zero=False),
        attack=parse_choice(TrainAttack, opts["attack"], name="training attack").value,
        steps=int(opts["steps"]),
        step_size=parse_eps(opts["step_size"], name="step size", allow_zero=False) if opts["step_size"] else None,
        restarts=int(opts["restarts"]),
        noise=parse_eps(opts["noise"], name="noise", allow_zero=True) if opts["noise"] else None,
        fraction=parse_fraction(opts["fraction"], name="fraction"),
    )
    on_overfit = opts["on_overfit"]
    return AdvOptions(
        threat=threat,
        adv_data=opts["adv_data"],
        val_every=int(opts["val_every"]),
        val_pgd_steps=int(opts["val_pgd_steps"]),
        keep=parse_choice(KeepEpoch, opts["keep"], name="--keep").value,
        on_overfit=None if on_overfit is None else parse_choice(OnOverfit, on_overfit, name="--on-overfit").value,
        objective=ObjectiveOptions(
            objective=parse_choice(ObjectiveName, opts["objective"], name="--objective").value,
            beta=None if opts["beta"] is None else float(opts["beta"]),
            awp=float(opts["awp"]),
            awp_warmup=None if opts["awp_warmup"] is None else int(opts["awp_warmup"]),
            awp_steps=int(opts["awp_steps"]),
        ),
    )


@handle_errors
def adv_train(
    ctx: typer.Context,
    out: Out = "robust.safetensors",
    norm: Annotated[str, typer.Option("--norm", help="Threat model: linf or l2.")] = THREAT.norm.value,
    eps: Annotated[str | None, typer.Option("--eps", help="Radius of the threat model in pixel units of [0, 1] images, e.g. 8/255 (linf) or 0.5 (l2). Required unless --adv-data.")] = THREAT.eps,
    attack: Annotated[str, typer.Option("--attack", help="Training attack: pgd, fgsm, fgsm-rs (random start, step 1.25·eps) or n-fgsm (training only: uniform noise of --noise, then a step of --step-size, no projection onto eps, so perturbations reach 3·eps by default; de Jorge et al. 2022).")] = THREAT.attack,
    steps: Annotated[int, typer.Option("--steps", min=1, help="PGD iterations per batch (count; Madry et al.: 7).")] = THREAT.steps,
    step_size: Annotated[str | None, typer.Option("--step-size", help="PGD/FGSM-RS/N-FGSM step in pixel units, e.g. 2/255. Default: 2.5·eps/steps for PGD, 1.25·eps for FGSM-RS, eps for N-FGSM.")] = THREAT.step_size,
    restarts: Annotated[int, typer.Option("--restarts", min=1, help="Random restarts of the training attack, the worst case kept (count).")] = THREAT.restarts,
    noise: Annotated[str | None, typer.Option("--noise", help="n-fgsm only: half-width of the uniform noise box around each training image, in pixel units of [0, 1] images, e.g. 16/255. Default: 2·eps.")] = THREAT.noise,
    fraction: Annotated[str, typer.Option("--fraction", help="Adversarial share f of each batch in [0, 1]: the last f·B examples are attacked; loss (1-f)·CE(clean) + f·CE(adv).")] = str(THREAT.fraction),
    objective: Annotated[str, typer.Option("--objective", help="Outer loss: pgd-at (CE on the attacked share of the batch, Madry et al.), trades (CE(f(x), y) + beta·KL(p(x) || p(x')), x' maximising the KL; Zhang et al. 2019) or mart (boosted CE on x' + beta·KL·(1 - p_y(x)); Wang et al. 2020). trades and mart attack every example (no --fraction).")] = OBJ.objective,
    beta: Annotated[float | None, typer.Option("--beta", help=f"trades/mart: weight of the KL term (reference scripts: {DEFAULT_BETA:g}; the default).")] = OBJ.beta,
    awp: Annotated[float, typer.Option("--awp", min=0.0, metavar="GAMMA", help=f"Adversarial weight perturbation (Wu et al. 2020) with any objective: before each update the conv/linear weights move by GAMMA·||w|| per layer up the loss gradient; the update's gradient is taken there and the weights are restored before the step. 0 = off; the TRADES-AWP reference uses {DEFAULT_AWP_GAMMA:g}.")] = OBJ.awp,
    awp_warmup: Annotated[int | None, typer.Option("--awp-warmup", min=0, help=f"Epochs trained without AWP before it starts (default {DEFAULT_AWP_WARMUP}: the reference's --awp-warmup 10, which counts epochs from 1).")] = OBJ.awp_warmup,
    awp_steps: Annotated[int, typer.Option("--awp-steps", min=1, help="Ascent steps of the weight perturbation (count): 1 is the reference's one step; K > 1 takes K steps of GAMMA·||w|| each, projected back to the GAMMA·||w|| ball per layer (the paper's multi-step form, about K-1 more forward/backward passes per update).")] = OBJ.awp_steps,
    adv_data: Annotated[str | None, typer.Option("--adv-data", help="Static adversarial training set from `advcli attack --split train`: train on its 1:1 union with the clean images, no online attack (the attack, validation and overfitting options are then refused).")] = ADV.adv_data,
    val_every: Annotated[int, typer.Option("--val-every", min=0, help=f"Every K epochs measure clean and fp32 PGD accuracy on the first {ADV.val_n} images of the --val-split set (epochs; 0 = never).")] = ADV.val_every,
    val_pgd_steps: Annotated[int, typer.Option("--val-pgd-steps", min=1, help="PGD iterations of the validation attack (count).")] = ADV.val_pgd_steps,
    keep: Annotated[str, typer.Option("--keep", help="last: the final epoch; best: the epoch with the best robust validation accuracy (needs --val-every).")] = ADV.keep,
    on_overfit: Annotated[str | None, typer.Option("--on-overfit", help="Catastrophic-overfitting check (PGD vs FGSM accuracy on a training batch after every epoch): warn, stop or off. Default: warn for fgsm/fgsm-rs/n-fgsm training, off for pgd.")] = ADV.on_overfit,
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
    """Adversarial training: the train loop plus an attack on the last --fraction of every batch
    (or, with --objective trades/mart, on every example), optionally with --awp.

    Example: advcli adv-train --norm linf --eps 8/255 --attack pgd --steps 7 --fraction 1.0 --out robust.safetensors
    TRADES (reference script): advcli adv-train --objective trades --beta 6 --eps 0.031 --steps 10 --step-size 0.007
    """
    opts = resolve_options(ctx, locals())
    run_training(opts, "advcli adv-train", partial(run_adv_train, train_options(opts), adv_options(opts)))
