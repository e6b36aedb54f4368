"""The attack contract shared by every attack, and the geometry they all use.

Contract (`Attack.perturb(model, x, y, generator=None) -> x_adv`):
- `x` is a float NCHW batch in [0, 1] (pixel space: normalisation lives inside the model);
- untargeted attacks raise the loss of the true labels `y`; targeted attacks
  (`AttackSpec.targeted=True`) read `y` as the *target* classes and lower their loss;
- during the attack the model is in eval mode and no parameter needs a gradient (only the
  input gradient is computed); each module's mode and each parameter's `requires_grad` are
  restored afterwards, even when the attack raises;
- random starts draw from `generator` (a `torch.Generator`, on any device; the draws are moved
  to x's device), or from torch's default generator when it is None;
- the result is detached, inside the eps-ball of the attack's norm around x and inside [0, 1].

Which iterate an Lp attack (FGSM, FGSM-RS, PGD) keeps is its `keep` rule (`Keep`):
- `last`: the final iterate of each restart, restarts merged by `keep_worst`. What training
  uses: no check of the iterates, so no extra work per step.
- `first-success`: the first iterate that fools the model (the starting point, random or the
  clean image, counts as an iterate; restarts are searched in order), else the iterate with the
  highest objective. Every iterate is checked on the logits of its own gradient pass, and the
  final one with one forward pass, so an example fooled at any step of any restart is never
  reported as robust. What `eval` and `attack` use to measure robustness. A fooled example
  leaves the batch (its kept image is final), so later steps cost only the examples standing.
`Attack.run` returns the kept images with a per-example `fooled` flag (the model's verdict on
the kept image, taken during the attack); under `first-success` it is "some iterate fooled it".

This module owns: `AttackSpec` (what to run), `Keep`, the `Attack` base class and `LpAttack`
(the iterate loop FGSM, FGSM-RS and PGD share), the eval-mode/no-grad context, the per-example
objective, and the Linf/L2 ball and [0, 1] box projections with random starts in the balls.
"""

from __future__ import annotations

import abc
import contextlib
import enum
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advcli.config import Eps, Norm, parse_choice
from advcli.errors import UsageError
from advcli.models.layout import attack_mode  # the attack contract: eval mode, no parameter gradients, restored


class AttackName(str, enum.Enum):
    fgsm = "fgsm"
    fgsm_rs = "fgsm-rs"
    pgd = "pgd"
    stadv = "stadv"
    n_fgsm = "n-fgsm"  # training only (perturbations exceed eps): `build_attack` refuses it


# What `build_attack` accepts: the names an evaluating command lists as valid.
EVAL_ATTACKS = tuple(a for a in AttackName if a is not AttackName.n_fgsm)


class Keep(str, enum.Enum):
    """Which iterate an Lp attack returns (see the module docstring)."""

    first_success = "first-success"
    last = "last"


# What a robust flag means under each rule (the `keep` of an attack record); written next to
# the numbers it qualifies. stAdv's own rule is "smoothest-success" (see `advcli.attacks.stadv`).
ROBUST_RULES = {
    Keep.first_success.value: "robust = correct on the clean image and on every iterate of every "
    "restart (random start and final iterate included); the image kept is the first misclassified "
    "iterate, else the highest-loss one",
    Keep.last.value: "robust = correct on the clean image and on the final iterate (restarts: the "
    "worst by success, then loss); earlier iterates are not checked, which can overstate robustness",
    "smoothest-success": "robust = correct on the clean image and on every iterate; the image kept "
    "is the one with the smoothest flow that fooled the model, else the last",
}


def as_norm(norm: Norm | str) -> Norm:
    """The norm as the enum: a string such as "linf" must never be read as "not Linf"."""
    return parse_choice(Norm, norm, name="norm")


@dataclass(frozen=True)
class AttackSpec:
    """What to run. `build_attack(spec)` checks it and resolves the defaults.

    - `eps`: radius of the Linf/L2 ball (fgsm, fgsm-rs, pgd); unused by stadv.
    - `steps`: iterations (pgd default 10, stadv default 100; fgsm/fgsm-rs take one step).
    - `step_size`: pgd default 2.5·eps/steps; fgsm-rs default 1.25·eps; stadv: Adam learning
      rate in pixels, default 2.5·bound/steps (0.01 px when the flow is unbounded).
    - `restarts`: random restarts (pgd, fgsm-rs), keeping the worst case per example.
    - `targeted`: `y` passed to `perturb` holds the target classes.
    - `tau`, `bound`: stadv's flow-smoothness weight and the per-pixel flow radius in pixels
      (None = unbounded, as in Xiao et al.); see `advcli.attacks.stadv`.
    - `noise`: n-fgsm's uniform noise half-width (default 2·eps; see `advcli.attacks.nfgsm`).
    - `keep`: which iterate fgsm/fgsm-rs/pgd return, `Keep` (None = `last`, training's rule;
      measure robustness with `first-success`). stadv keeps its smoothest fooling flow, which
      `first-success` accepts and `last` does not describe.
    """

    name: AttackName | str = AttackName.pgd
    norm: Norm | str = Norm.linf
    eps: Eps | float | str | None = None
    steps: int | None = None
    step_size: Eps | float | str | None = None
    restarts: int = 1
    targeted: bool = False
    tau: float = 0.05
    bound: Eps | float | str | None = None
    keep: Keep | str | None = None
    noise: Eps | float | str | None = None


@dataclass
class AttackRun:
    """What `Attack.run` returns: the kept images and, per example, whether they fool the model
    (misclassified, or classified as the target when targeted), as seen during the attack."""

    x_adv: torch.Tensor
    fooled: torch.Tensor  # bool [N], on x's device


class Attack(abc.ABC):
    """Base class: `perturb` enforces the contract, subclasses implement `_perturb`."""

    name: str = ""

    @abc.abstractmethod
    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor: ...

    @abc.abstractmethod
    def _run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> AttackRun: ...

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """The resolved parameters, for result files and metadata (plain JSON types)."""

    def perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Adversarial examples for the batch (x float NCHW in [0, 1], y int64 labels)."""
        check_inputs(x, y)
        x = x.detach()
        y = y.detach().to(x.device)
        with attack_mode(model):
            x_adv = self._perturb(model, x, y, generator)
        return x_adv.detach()

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> AttackRun:
        """Like `perturb`, and also whether each kept image fools the model: the robustness
        verdict without another forward pass (see `Keep`)."""
        check_inputs(x, y)
        x = x.detach()
        y = y.detach().to(x.device)
        with attack_mode(model):
            result = self._run(model, x, y, generator)
        return AttackRun(result.x_adv.detach(), result.fooled.detach())


def check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    """One cheap host sync per call (never per step): bad inputs are a clear error."""
    if not x.is_floating_point() or x.dim() != 4:
        raise UsageError(
            f"attack inputs must be float NCHW images in [0, 1], got {x.dtype} of shape "
            f"{tuple(x.shape)}; convert uint8 images with advcli.data.to_float"
        )
    if y.shape != x.shape[:1]:
        raise UsageError(f"labels of shape {tuple(y.shape)} do not match {x.shape[0]} images")
    if x.numel() and bool((x.min() < 0) | (x.max() > 1)):
        raise UsageError("attack inputs must lie in [0, 1]; normalisation belongs inside the model")


def full_precision(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """fp32 inside an autocast region: measurements of robustness never run in bf16/fp16 (a
    lower-precision attack is weaker and its verdicts noisier)."""
    return torch.autocast(torch.device(device).type, enabled=False)


# ---- objective and gradient --------------------------------------------------------------


def objective(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per-example loss the attack *maximises*: CE(y), or −CE(target) when targeted."""
    ce = F.cross_entropy(logits, y, reduction="none")
    return -ce if targeted else ce


def fooled(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per-example success: misclassified (untargeted) or classified as the target."""
    pred = logits.argmax(dim=1)
    return pred.eq(y) if targeted else pred.ne(y)


def input_grad(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, targeted: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of the summed objective w.r.t. the input only, the per-example objective, and
    the logits (so that checking the iterate costs no forward pass of its own).

    The sum (not the mean) makes each example's gradient independent of the batch size.
    """
    x_adv = x_adv.detach().requires_grad_(True)
    logits = model(x_adv)
    loss = objective(logits, y, targeted)
    (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return grad, loss.detach(), logits.detach()


# ---- norms, projections, random starts -----------------------------------------------------


def _per_example(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def lp_norms(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example (Linf, L2) norms of a perturbation batch."""
    flat = delta.reshape(delta.shape[0], -1)
    return flat.abs().amax(dim=1), flat.norm(p=2, dim=1)


def clamp_box(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, 1.0)


def project_linf(delta: torch.Tensor, eps: float) -> torch.Tensor:
    return delta.clamp(-eps, eps)


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale each example's delta back onto the L2 ball when it lies outside."""
    norms = delta.reshape(delta.shape[0], -1).norm(p=2, dim=1)
    factor = (eps / norms.clamp_min(1e-12)).clamp(max=1.0)
    return delta * _per_example(factor)


def project(x_adv: torch.Tensor, x: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """Onto the eps-ball around x, then onto [0, 1].

    The box clamp only moves coordinates towards x (x is inside the box), so it never leaves
    the ball: the result is in both sets.
    """
    delta = x_adv - x
    delta = project_linf(delta, eps) if as_norm(norm) is Norm.linf else project_l2(delta, eps)
    return clamp_box(x + delta)


def normalize_l2(g: torch.Tensor) -> torch.Tensor:
    norms = g.reshape(g.shape[0], -1).norm(p=2, dim=1)
    return g / _per_example(norms.clamp_min(1e-12))


def steepest_step(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The unit-size steepest-ascent direction for the norm: sign (Linf) or grad/‖grad‖₂ (L2)."""
    return grad.sign() if as_norm(norm) is Norm.linf else normalize_l2(grad)


def random_start(x: torch.Tensor, norm: Norm, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """A random point of the eps-ball around x, clamped to [0, 1].

    Linf: uniform in the cube. L2: a Gaussian direction scaled to radius eps·U(0, 1) (the
    convention of torchattacks' PGDL2, so a reference with the same seed draws the same start).
    Draws happen on the generator's device, so a CPU generator gives the same start on any device.
    """
    where = generator.device if generator is not None else x.device
    if as_norm(norm) is Norm.linf:
        delta = torch.empty(x.shape, device=where).uniform_(-eps, eps, generator=generator)
    else:
        delta = torch.empty(x.shape, device=where).normal_(generator=generator)
        norms = delta.reshape(x.shape[0], -1).norm(p=2, dim=1)
        radius = torch.empty(x.shape[0], device=where).uniform_(0.0, 1.0, generator=generator)
        delta = delta * _per_example(radius / norms.clamp_min(1e-12) * eps)
    return clamp_box(x + delta.to(device=x.device, dtype=x.dtype))


@dataclass
class Kept:
    """Per example, the candidate an attack keeps: the image, whether it fooled the model, and
    its objective (the loss the attack maximises)."""

    x: torch.Tensor
    fooled: torch.Tensor
    loss: torch.Tensor


def score(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, targeted: bool) -> Kept:
    """A candidate for `keep_worst`/`keep_first_success`, from one forward pass (no gradient)."""
    with torch.no_grad():
        logits = model(x_adv)
    return Kept(x_adv, fooled(logits, y, targeted), objective(logits, y, targeted))


def keep_worst(best: Kept, new: Kept) -> Kept:
    """Merge two candidate batches, per example the worse for the model: a success beats a
    failure; between equals, the higher objective wins. Ties keep `best`, so adding restarts can
    never make the model look better."""
    better = (new.fooled & ~best.fooled) | ((new.fooled == best.fooled) & (new.loss > best.loss))
    return Kept(
        torch.where(_per_example(better), new.x, best.x),
        torch.where(better, new.fooled, best.fooled),
        torch.where(better, new.loss, best.loss),
    )


def keep_first_success(best: Kept | None, new: Kept) -> Kept:
    """`first-success`: once an example is fooled its image stays; until then a fooling
    candidate, else a higher objective, replaces it. `fooled` becomes "any candidate so far"."""
    if best is None:
        return new
    take = ~best.fooled & (new.fooled | (new.loss > best.loss))
    return Kept(
        torch.where(_per_example(take), new.x, best.x),
        best.fooled | new.fooled,
        torch.where(take, new.loss, best.loss),
    )


def _rows(kept: Kept, which: torch.Tensor) -> Kept:
    return Kept(kept.x[which], kept.fooled[which], kept.loss[which])


def _put_rows(into: Kept, idx: torch.Tensor, rows: Kept) -> None:
    into.x[idx], into.fooled[idx], into.loss[idx] = rows.x, rows.fooled, rows.loss


class LpAttack(Attack):
    """The loop FGSM, FGSM-RS and PGD share: from a start (random in the ball, or x itself),
    `steps` steepest-ascent steps of `step_size`, each projected onto the eps-ball and [0, 1];
    `restarts` independent runs; the kept iterate chosen by `keep`."""

    # `first-success` stops attacking an example once it is fooled; False runs every example
    # through every step (the reference the early exit is tested and benchmarked against).
    early_exit: bool = True

    def __init__(
        self,
        norm: Norm | str,
        eps: float,
        *,
        steps: int,
        step_size: float,
        restarts: int,
        targeted: bool,
        random_init: bool,
        keep: Keep | str | None,
    ) -> None:
        self.norm = as_norm(norm)
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = float(step_size)
        self.restarts = int(restarts)
        self.targeted = bool(targeted)
        self.random_init = random_init
        self.keep = Keep.last if keep is None else parse_choice(Keep, keep, name="keep")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "norm": self.norm.value,
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.step_size,
            "restarts": self.restarts,
            "targeted": self.targeted,
            "keep": self.keep.value,
        }

    def _one_run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None,
        track: bool = False,
    ) -> tuple[torch.Tensor, Kept | None]:
        """One run from a start: the last iterate and, when `track`, the `first-success` choice
        among the others (each checked on the logits of its gradient pass)."""
        x_adv = random_start(x, self.norm, self.eps, generator) if self.random_init else x
        kept: Kept | None = None
        for _ in range(self.steps):
            grad, loss, logits = input_grad(model, x_adv, y, self.targeted)
            if track:
                kept = keep_first_success(kept, Kept(x_adv, fooled(logits, y, self.targeted), loss))
            x_adv = project(x_adv + self.step_size * steepest_step(grad, self.norm), x, self.norm, self.eps)
        return x_adv, kept

    def _run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> AttackRun:
        if self.keep is Keep.first_success and self.early_exit:
            return self._run_until_fooled(model, x, y, generator)
        best: Kept | None = None
        for _ in range(self.restarts):
            last, kept = self._one_run(model, x, y, generator, track=self.keep is Keep.first_success)
            new = score(model, last, y, self.targeted)  # the final iterate has no gradient pass
            if self.keep is Keep.first_success:
                best = keep_first_success(best if kept is None else keep_first_success(best, kept), new)
            else:
                best = new if best is None else keep_worst(best, new)
        assert best is not None  # restarts >= 1
        return AttackRun(best.x, best.fooled)

    def _run_until_fooled(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> AttackRun:
        """`first-success` with early exit: an example leaves the batch at its first fooling
        iterate, whose image is final, so each step costs in proportion to the examples still
        standing. The result is the loop above's: every random start is drawn for the whole
        batch (the generator advances as it always did), and an example's iterates depend on
        its own row only (the summed objective, per-example projections, eval-mode BatchNorm),
        so in exact arithmetic they do not depend on who left. Float kernels may round a
        smaller batch differently in the last bits."""
        n = x.shape[0]
        if n == 0:
            return AttackRun(x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device))
        best: Kept | None = None  # every row, written when an example leaves or a restart ends
        for _ in range(self.restarts):
            start = random_start(x, self.norm, self.eps, generator) if self.random_init else x
            if best is None:
                idx, cur = torch.arange(n, device=x.device), None
            else:
                idx = (~best.fooled).nonzero().squeeze(1)
                cur = _rows(best, idx)
            # `cur`: the kept candidate of the examples still attacked, row for row with `idx`.
            x0, y0, x_adv = x[idx], y[idx], start[idx]
            for step in range(self.steps + 1):
                if not len(idx):
                    break
                if step < self.steps:
                    grad, loss, logits = input_grad(model, x_adv, y0, self.targeted)
                    hit = fooled(logits, y0, self.targeted)
                    candidate = Kept(x_adv, hit, loss)
                else:  # the final iterate has no gradient pass
                    candidate = score(model, x_adv, y0, self.targeted)
                cur = keep_first_success(cur, candidate)
                if best is None:
                    best = Kept(torch.empty_like(x_adv), torch.zeros_like(hit), torch.empty_like(loss))
                if step == self.steps:
                    break
                x_adv = project(x_adv + self.step_size * steepest_step(grad, self.norm), x0, self.norm, self.eps)
                if bool(hit.any()):
                    _put_rows(best, idx[hit], _rows(cur, hit))
                    stay = ~hit
                    idx, x0, y0, x_adv, cur = idx[stay], x0[stay], y0[stay], x_adv[stay], _rows(cur, stay)
            if cur is not None and len(idx):
                _put_rows(best, idx, cur)
        assert best is not None  # restarts >= 1 and steps >= 1: the first start saw every example
        return AttackRun(best.x, best.fooled)

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        if self.keep is Keep.last and self.restarts == 1:
            # Training's path: the last iterate, with no forward pass beyond the steps.
            return self._one_run(model, x, y, generator)[0]
        return self._run(model, x, y, generator).x_adv
