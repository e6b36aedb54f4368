"""Adversarial training: `train.loop.fit` plus a batch perturbation step.

- Online (Madry et al.; Stutz's article): each batch's last `fraction` is replaced by
  PGD/FGSM/FGSM-RS/N-FGSM examples computed with the model in eval mode (BatchNorm statistics
  untouched); the update then sees clean and adversarial examples as one batch. N-FGSM
  (de Jorge et al. 2022) is a training-only attack: its perturbations exceed eps by design
  (noise 2·eps plus a step of eps, no projection), so it is built by `build_training_attack`
  and refused as an evaluation attack; validation and the overfitting check stay within eps.
- Objectives (`--objective pgd-at|trades|mart`, `--beta`; `--awp GAMMA` with any of them):
  the outer loss and the adversarial weight perturbation of `train/objectives.py`, passed to
  the loop as functions. TRADES replaces the training attack by its own (`attacks/trades.py`);
  TRADES and MART attack every example (`--fraction` is PGD-AT's and refused with them).
- Static (the loss-landscape paper's "augmented dataset"): `--adv-data` from
  `advcli attack --split train`; training runs on the 1:1 union of those adversarial images and
  the clean images they were made from, with no attack during training. `--n-train N` keeps N
  clean/adversarial pairs. The options of online training (the attack, validation, the
  overfitting check) are rejected with a static set rather than ignored.
- Validation (`--val-every K`): clean and PGD accuracy on the held-out validation split;
  `--keep best` keeps the epoch with the best robust validation accuracy (Rice et al. 2020).
  The validation PGD is an evaluation: eval mode, fp32 even under `--amp` (a bf16 attack is
  weaker and would pick the epoch), and an example is robust only if it is correct clean and at
  every iterate (`keep=first-success`). The training attack runs at the AMP precision and keeps
  its last iterate.
- Catastrophic overfitting (FGSM-RS; Wong et al. 2020): after every epoch, PGD and FGSM
  accuracy on a fixed training batch; overfitting is declared when the PGD accuracy falls below
  half of its best so far while FGSM accuracy exceeds it by more than 20 points (both measured
  like the validation PGD: eval mode, fp32, first-success). On by default
  (`warn`) for FGSM/FGSM-RS training; `--on-overfit warn|stop` runs it for PGD training too.
- Weight averaging (`--ema DECAY`, `train/weight_average.py`): validation, `--keep best` and
  the checkpoint use the averaged weights; the overfitting check attacks the raw weights, whose
  collapse the slowly moving average would show late or not at all.

The validation and overfitting checks draw their random starts from streams that are the same
on every torchrun rank and in every epoch (`advcli.rng`): all ranks reach the same decision, and
epochs are compared on the same starts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advcli.attacks import AttackSpec, build_attack
from advcli.attacks.base import Attack, Keep
from advcli.attacks.registry import build_training_attack
from advcli.attacks.trades import TradesKL
from advcli.config import Eps, Norm, parse_choice
from advcli.data import ImageData, to_float
from advcli.data.subsets import train_subset
from advcli.errors import DataError, UsageError
from advcli.formats.advset import AdvSet, load_adv_set
from advcli.io import sha256_file
from advcli.models.checkpoint import LoadedCheckpoint
from advcli.progress import NullReporter, Reporter
from advcli.rng import Stream, stream_generator
from advcli.train.loop import (
    EndHook,
    EpochEnd,
    StepHook,
    StopTraining,
    TrainOptions,
    TrainResult,
    fit,
    load_training_data,
    read_inputs,
    watched,
)
from advcli.train.objectives import ObjectiveName, ObjectiveOptions, resolve_objective


class TrainAttack(str, enum.Enum):
    pgd = "pgd"
    fgsm = "fgsm"
    fgsm_rs = "fgsm-rs"
    n_fgsm = "n-fgsm"  # training only: perturbations beyond eps (advcli.attacks.nfgsm)


class KeepEpoch(str, enum.Enum):
    last = "last"
    best = "best"


class OnOverfit(str, enum.Enum):
    warn = "warn"
    stop = "stop"
    off = "off"


@dataclass
class ThreatModel:
    """The online training attack (its defaults are `adv-train`'s option defaults)."""

    norm: Norm = Norm.linf
    eps: Eps | None = None
    attack: str = TrainAttack.pgd.value
    steps: int | None = 7
    step_size: Eps | None = None
    restarts: int = 1
    fraction: float = 1.0
    noise: Eps | None = None  # n-fgsm's noise half-width (None: 2·eps)


@dataclass
class AdvOptions:
    threat: ThreatModel = field(default_factory=ThreatModel)
    adv_data: str | None = None
    val_every: int = 0
    val_pgd_steps: int = 10
    val_n: int = 1000
    keep: str = KeepEpoch.last.value
    # None: `warn` for single-step training (FGSM, FGSM-RS, N-FGSM), `off` for PGD (where
    # overfitting is not expected).
    on_overfit: str | None = None
    # --objective, --beta, --awp, --awp-warmup (train/objectives.py).
    objective: ObjectiveOptions = field(default_factory=ObjectiveOptions)


class AttackPerturber:
    """`BatchPerturber` for online adversarial training."""

    def __init__(self, attack: Attack, fraction: float, amp: str = "none") -> None:
        self.attack = attack
        self.fraction = fraction
        self.amp = amp

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.attack.perturb(model, x, y, generator)


def _spec(t: ThreatModel, **override: Any) -> AttackSpec:
    name = override.pop("name", t.attack)
    fields = dict(
        name=name, norm=t.norm, eps=t.eps,
        steps=None if name in ("fgsm", "fgsm-rs", "n-fgsm") else t.steps,
        step_size=None if name == "fgsm" else t.step_size,
        restarts=t.restarts,
        noise=t.noise if name == "n-fgsm" else None,
    )
    fields.update(override)
    return AttackSpec(**fields)


def threat_metadata(t: ThreatModel, attack: Attack) -> dict[str, Any]:
    d = attack.describe()
    return {
        "norm": t.norm.value,
        "eps": float(t.eps.value) if t.eps else None,
        "eps_text": t.eps.text if t.eps else None,
        "attack": d.get("name") or t.attack,  # the training attack as built (trades-kl under --objective trades)
        "steps": int(d.get("steps", 1)),
        "step_size": float(d.get("step_size", d.get("eps", 0.0))),
        "restarts": int(d.get("restarts", 1)),
        "fraction": float(t.fraction),
        **({"noise": float(d["noise"])} if "noise" in d else {}),
    }


def load_static_set(adv_path: str | Path) -> AdvSet:
    """`--adv-data`: a fixed adversarial set of training images (read before the dataset is)."""
    adv = load_adv_set(adv_path)
    if adv.split != "train":
        raise UsageError(
            f"--adv-data {str(adv_path)!r} was made from the {adv.split!r} split; training needs "
            "`advcli attack --split train`"
        )
    return adv


def static_union(
    data: ImageData, adv_set: AdvSet | str | Path, n_pairs: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The 1:1 union of a fixed adversarial set (or its path) and the clean training images it
    was made from.

    Returns float images [2N,3,H,W] (clean first, then adversarial), labels and the set's
    metadata. The clean half is taken at the set's own source indices, so the mix is exactly 1:1.
    `n_pairs` keeps that many clean/adversarial pairs (class-balanced, `train_subset`), so a
    subset never splits a pair.
    """
    adv = adv_set if isinstance(adv_set, AdvSet) else load_static_set(adv_set)
    meta = adv.meta
    idx, x_adv, y_adv = adv.index, adv.x_adv, adv.y
    if int(idx.max()) >= len(data.train_y) or not torch.equal(data.train_y[idx], y_adv):
        raise DataError(
            f"--adv-data {str(adv.path)!r} does not match this training set (indices or labels differ); "
            "was it made with the same --dataset and --val-split?"
        )
    if list(x_adv.shape[1:]) != data.input_shape:
        raise DataError(f"--adv-data {str(adv.path)!r} holds images of shape {list(x_adv.shape[1:])} but "
                        f"{data.name} has {data.input_shape}; was it made with the same --dataset?")
    if n_pairs:
        keep = train_subset(y_adv, n_pairs)
        idx, x_adv, y_adv = idx[keep], x_adv[keep], y_adv[keep]
    x = torch.cat([to_float(data.train_x[idx]), x_adv])
    y = torch.cat([data.train_y[idx], y_adv])
    return x, y, meta


def robust_correct(
    model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """How many examples are robust: correct clean and at every iterate of `attack` (built with
    `keep=first-success`). An evaluation: eval mode, and fp32 whatever --amp is (no autocast)."""
    fooled = attack.run(model, x, y, generator).fooled
    was = model.training
    model.eval()
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
    model.train(was)
    return (clean_ok & ~fooled).sum()


def _val_hook(t: ThreatModel, data: ImageData, device: torch.device, every: int, steps: int, n: int, seed: int):
    assert data.val_x is not None and data.val_y is not None
    xv, yv = to_float(data.val_x[:n]).to(device), data.val_y[:n].to(device)
    pgd = build_attack(_spec(t, name="pgd", steps=steps, step_size=None, restarts=1, keep=Keep.first_success))

    def hook(end: EpochEnd) -> dict[str, float]:
        if end.stats.epoch % every:
            return {}
        g = stream_generator(seed, 0, 0, Stream.val_attack, device)
        correct = sum(robust_correct(end.model, pgd, xv[s : s + 250], yv[s : s + 250], g)
                      for s in range(0, len(yv), 250))
        return {"val_robust_accuracy": float(correct) / len(yv)}

    return hook


def _overfit_hook(t: ThreatModel, data: ImageData, device: torch.device, action: OnOverfit, reporter: Reporter,
                  seed: int):
    xb, yb = to_float(data.train_x[:256]).to(device), data.train_y[:256].to(device)
    pgd = build_attack(_spec(t, name="pgd", steps=10, step_size=None, restarts=1, keep=Keep.first_success))
    fgsm = build_attack(_spec(t, name="fgsm", steps=None, step_size=None, restarts=1, keep=Keep.first_success))

    def acc(model: nn.Module, attack: Attack) -> float:
        g = stream_generator(seed, 0, 0, Stream.overfit_attack, device)
        return float(robust_correct(model, attack, xb, yb, g)) / len(yb)

    def hook(end: EpochEnd) -> dict[str, float]:
        # The raw weights: an average of them lags behind, and can hide, a collapse of the
        # weights being trained. The best so far comes from the history, which --resume restores.
        a_pgd, a_fgsm = acc(end.raw, pgd), acc(end.raw, fgsm)
        best = max((h.extra.get("train_batch_pgd_accuracy", 0.0) for h in end.history), default=0.0)
        collapsed = best > 0 and a_pgd < 0.5 * best and a_fgsm - a_pgd > 0.2
        out = {"train_batch_pgd_accuracy": a_pgd, "train_batch_fgsm_accuracy": a_fgsm}
        if collapsed:
            msg = (
                f"catastrophic overfitting at epoch {end.stats.epoch}: PGD accuracy on a training batch fell to "
                f"{100 * a_pgd:.1f}% (best {100 * best:.1f}%) while FGSM accuracy is {100 * a_fgsm:.1f}%"
            )
            if action is OnOverfit.stop:
                end.stats.extra.update(out)
                raise StopTraining(msg + "; stopped (--on-overfit stop)")
            reporter.log("warning: " + msg + "; consider --attack pgd, a smaller step size or --on-overfit stop")
        return out

    return hook


def check_static_options(adv: AdvOptions) -> None:
    """With a static set there is no online attack, validation or overfitting check: reject
    their options instead of ignoring them (a non-default value counts as given)."""
    given = [f"--{f.name.replace('_', '-')}" for f in fields(ThreatModel)
             if getattr(adv.threat, f.name) != getattr(ThreatModel(), f.name)]
    if adv.val_every:
        given.append("--val-every")
    if parse_choice(KeepEpoch, adv.keep, name="--keep") is KeepEpoch.best:
        given.append("--keep best")
    if adv.on_overfit is not None:
        given.append("--on-overfit")
    given += adv.objective.given()
    if given:
        raise UsageError(
            f"--adv-data trains on a fixed set, with no online attack, validation or overfitting check: "
            f"drop {', '.join(given)}"
        )


def run_adv_train(
    opts: TrainOptions, adv: AdvOptions, device: torch.device, *, resume: bool = False,
    reporter: Reporter | None = None, step_hooks: list[StepHook] | None = None, end_hooks: list[EndHook] | None = None,
    tensorboard: str | None = None,
) -> TrainResult:
    """`advcli adv-train`: read the input files, load the dataset, then `adv_fit`, watched
    (train.loop.watched)."""
    init = read_inputs(opts, resume=resume)
    static = None
    if adv.adv_data:
        check_static_options(adv)
        static = load_static_set(adv.adv_data)
    with watched(opts, tensorboard) as watch:
        return adv_fit(opts, adv, load_training_data(opts), device, resume=resume, reporter=reporter,
                       init=init, static=static, step_hooks=[*(step_hooks or []), watch.on_step],
                       end_hooks=[*(end_hooks or []), watch.on_epoch])


def adv_fit(
    opts: TrainOptions,
    adv: AdvOptions,
    data: ImageData,
    device: torch.device,
    *,
    resume: bool = False,
    reporter: Reporter | None = None,
    step_hooks: list[StepHook] | None = None,
    end_hooks: list[EndHook] | None = None,
    init: LoadedCheckpoint | None = None,
    static: AdvSet | None = None,
) -> TrainResult:
    """`fit` with the batch perturbation of `adv` (or on the static set `adv.adv_data`, or
    `static` when the caller read it already); `step_hooks`/`end_hooks` and `init` (the
    `--init-from` checkpoint, read already) are passed through to `fit`."""
    reporter = reporter or NullReporter()
    watch = {"step_hooks": step_hooks, "end_hooks": end_hooks}
    t = adv.threat
    if adv.adv_data:
        check_static_options(adv)
        x_tr, y_tr, set_meta = static_union(data, static or adv.adv_data, n_pairs=opts.n_train)
        attack_info = set_meta.get("attack") or {}
        threat = {
            "norm": attack_info.get("norm"), "eps": attack_info.get("eps"), "eps_text": attack_info.get("eps_text"),
            "attack": f"static:{attack_info.get('name', 'unknown')}", "steps": attack_info.get("steps"),
            "step_size": attack_info.get("step_size"), "fraction": 0.5,
            "adv_data": str(adv.adv_data), "adv_data_sha256": sha256_file(adv.adv_data),
        }
        return fit(
            opts, data, device, train_x=x_tr, train_y=y_tr, resume=resume, reporter=reporter, init=init,
            extra_meta={"threat_model": threat}, **watch,
        )

    if not 0.0 <= t.fraction <= 1.0:
        raise UsageError(f"--fraction must be between 0 and 1, got {t.fraction}")
    keep = parse_choice(KeepEpoch, adv.keep, name="--keep")
    attack_name = parse_choice(TrainAttack, t.attack, name="training attack")
    default_action = OnOverfit.off if attack_name is TrainAttack.pgd else OnOverfit.warn
    on_overfit = parse_choice(OnOverfit, adv.on_overfit or default_action, name="--on-overfit")
    if (adv.val_every or keep is KeepEpoch.best) and data.val_x is None:
        raise UsageError("--val-every/--keep best need a validation split: pass --val-split N (never the test set)")
    if keep is KeepEpoch.best and not adv.val_every:
        raise UsageError("--keep best needs --val-every K to measure robust validation accuracy")
    if t.eps is None:
        raise UsageError("adv-train needs --eps, e.g. --eps 8/255 (linf) or --eps 0.5 (l2)")
    if t.noise is not None and attack_name is not TrainAttack.n_fgsm:
        raise UsageError(f"--noise is n-fgsm's noise box; drop it for --attack {attack_name.value}")
    objective = resolve_objective(adv.objective, attack=attack_name.value, restarts=t.restarts, fraction=t.fraction,
                                  label_smoothing=opts.label_smoothing)
    attack = (TradesKL(t.norm, t.eps.value, t.steps or 10, t.step_size.value if t.step_size else None)
              if objective.name is ObjectiveName.trades else build_training_attack(_spec(t)))
    perturber = AttackPerturber(attack, t.fraction, opts.amp)
    hooks = []
    if adv.val_every:
        hooks.append(_val_hook(t, data, device, adv.val_every, adv.val_pgd_steps, adv.val_n, opts.seed))
    if on_overfit is not OnOverfit.off:
        hooks.append(_overfit_hook(t, data, device, on_overfit, reporter, opts.seed))
    return fit(
        opts, data, device, perturber=perturber if t.fraction > 0 else None, epoch_hooks=hooks,
        resume=resume, reporter=reporter, init=init,
        keep_best="val_robust_accuracy" if keep is KeepEpoch.best else None,
        extra_meta={"threat_model": {**threat_metadata(t, attack), **objective.metadata()}},
        objective=objective.loss, weight_perturbation=objective.awp, **watch,
    )
