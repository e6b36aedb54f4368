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

This module owns: `AttackSpec` (what to run), the `Attack` base class, the eval-mode/no-grad
context, the per-example objective, and the Linf/L2 ball and [0, 1] box projections with
random starts in the balls.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advcli.config import Eps, Norm
from advcli.errors import UsageError


class AttackName(str, enum.Enum):
    fgsm = "fgsm"
    fgsm_rs = "fgsm-rs"
    pgd = "pgd"
    stadv = "stadv"


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


class Attack(abc.ABC):
    """Base class: `perturb` enforces the contract, subclasses implement `_perturb`."""

    name: str = ""

    @abc.abstractmethod
    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor: ...

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


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the duration; both restored per module/param.

    Restoring each module's own flag (not just `model.train(old)`) keeps mixed states intact,
    e.g. a fine-tuning setup that freezes BatchNorm statistics.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed objective w.r.t. the input only, and the per-example objective.

    The sum (not the mean) makes each example's gradient independent of the batch size.
    """
    x_adv = x_adv.detach().requires_grad_(True)
    loss = objective(model(x_adv), y, targeted)
    (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return grad, loss.detach()


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
    delta = project_linf(delta, eps) if norm is Norm.linf else project_l2(delta, eps)
    return clamp_box(x + delta)


def normalize_l2(g: torch.Tensor) -> torch.Tensor:
    norms = g.reshape(g.shape[0], -1).norm(p=2, dim=1)
    return g / _per_example(norms.clamp_min(1e-12))


def steepest_step(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The unit-size steepest-ascent direction for the norm: sign (Linf) or grad/‖grad‖₂ (L2)."""
    return grad.sign() if norm is Norm.linf else normalize_l2(grad)


def random_start(x: torch.Tensor, norm: Norm, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """A random point of the eps-ball around x, clamped to [0, 1].

    Linf: uniform in the cube. L2: a Gaussian direction scaled to radius eps·U(0, 1) (the
    convention of torchattacks' PGDL2, so a reference with the same seed draws the same start).
    Draws happen on the generator's device, so a CPU generator gives the same start on any device.
    """
    where = generator.device if generator is not None else x.device
    if norm is Norm.linf:
        delta = torch.empty(x.shape, device=where).uniform_(-eps, eps, generator=generator)
    else:
        delta = torch.empty(x.shape, device=where).normal_(generator=generator)
        norms = delta.reshape(x.shape[0], -1).norm(p=2, dim=1)
        radius = torch.empty(x.shape[0], device=where).uniform_(0.0, 1.0, generator=generator)
        delta = delta * _per_example(radius / norms.clamp_min(1e-12) * eps)
    return clamp_box(x + delta.to(device=x.device, dtype=x.dtype))


def score(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, targeted: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A candidate for `keep_worst`: (x_adv, success, objective), without a gradient."""
    with torch.no_grad():
        logits = model(x_adv)
    return x_adv, fooled(logits, y, targeted), objective(logits, y, targeted)


def keep_worst(
    best: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    new: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge two candidate batches (x_adv, success, objective), per example the worse for the
    model: a success beats a failure; between equals, the higher objective wins. Ties keep
    `best`, so adding restarts can never make the model look better."""
    bx, bs, bl = best
    nx, ns, nl = new
    better = (ns & ~bs) | ((ns == bs) & (nl > bl))
    return (
        torch.where(_per_example(better), nx, bx),
        torch.where(better, ns, bs),
        torch.where(better, nl, bl),
    )
