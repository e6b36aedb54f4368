"""A fast worst-case evaluation: APGD-CE, then targeted APGD on the k most promising targets
chosen by MALT, on the points still standing. Not AutoAttack, and never named so: its result
entries say `apgd-ce+malt-t{k}`.

- APGD-CE: Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
  of diverse parameter-free attacks"; the authors' `pyautoattack.autopgd_base.APGDAttack`,
  cross-entropy loss, 100 iterations, 1 restart (standard AutoAttack's settings).
- MALT targeting: Melamed, Yehudai & Shamir, "MALT Powers Up Adversarial Attacks" (NeurIPS 2024,
  arXiv 2407.02240). AutoAttack's APGD-T attacks the 9 classes with the highest logits in turn;
  MALT ranks the wrong classes by a linearised distance to their decision boundary instead,
  (f_y − f_t) / ‖∇ₓ(f_y − f_t)‖_*, with ‖·‖_* the dual norm of the threat model (L1 for Linf, L2
  for L2), computed at the clean image over the `candidates` wrong classes with the highest
  logits (default 9: every wrong class of CIFAR-10), and attacks only the `targets` (default 3)
  classes with the smallest distance. A class with a small logit gap but a steep gap gradient
  is where a small perturbation crosses, and logit rank alone does not find it.
- The targeted attack is `pyautoattack.autopgd_base.APGDAttack_targeted` (targeted DLR loss,
  100 iterations, 1 restart), subclassed only where the target is chosen (`MaltTargetedAPGD`);
  its iterate loop, step-size schedule and loss are the package's. With fewer than 4 classes the
  targeted DLR loss is undefined and targeted cross-entropy is used.
- Points: a clean-misclassified point is not attacked; APGD-CE attacks the rest; the targeted
  stage attacks only the points APGD-CE did not break. Each stage's output is judged by a
  forward pass of the model, as AutoAttack judges its attacks, and a point once broken keeps
  the image that broke it (worst case kept).
- Threat models: Linf and L2, inputs in [0, 1], eps in [0, 1] pixel units; fp32 (the caller
  disables autocast); the model in eval mode with no parameter gradients, both restored.
- Randomness: the package re-seeds torch's global generator with `seed` inside each attack;
  that is confined here with `torch.random.fork_rng`, so the caller's streams are untouched.

Why: on a model without gradient masking, standard AutoAttack's FAB-T and Square rarely break a
point APGD-CE and APGD-T left standing, and APGD-T spends most of its time on 9 targets; MALT
reports matching AutoAttack's successes at about a fifth of its time. Where gradients are
masked this evaluation is as blind as any gradient attack: that is what `advcli audit` (and the
black-box Square inside standard AutoAttack) is for.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from torch import nn

from advcli.attacks.base import attack_mode, check_inputs
from advcli.config import Eps, Norm, parse_choice, parse_eps
from advcli.errors import UsageError
from advcli.progress import NullReporter, Reporter

ITERATIONS = 100  # per attack and target (standard AutoAttack's APGD)
TARGETS = 3  # k: target classes attacked per point
CANDIDATES = 9  # wrong classes ranked by the linearised margin (AutoAttack's APGD-T count)
_AA_NORM = {Norm.linf: "Linf", Norm.l2: "L2"}


def evaluation_name(targets: int = TARGETS) -> str:
    """What result entries and compare columns call this evaluation: exactly what ran."""
    return f"apgd-ce+malt-t{targets}"


@dataclass
class FastWorstCaseResult:
    x_adv: torch.Tensor  # on x's device; the image that broke each broken point, else x
    robust_flags: torch.Tensor  # bool [N]: correct clean and after both stages
    broken: dict[str, int] = field(default_factory=dict)  # points each stage broke first
    attacks: list[str] = field(default_factory=list)  # the stages, in order
    warnings: list[str] = field(default_factory=list)  # the package's checks (zero gradients)


class MaltTargetedAPGD(APGDAttack_targeted):
    """The package's targeted APGD with the targets given per point (MALT's choice), instead of
    the k-th largest logit at the clean image. `perturb(x, y, targets)`: `targets` is [N, k],
    column j the j-th target of each point; a point leaves once it is misclassified."""

    def perturb(self, x: torch.Tensor, y: torch.Tensor | None = None, x_init: Any = None,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        if y is None or targets is None:
            raise UsageError("MaltTargetedAPGD.perturb needs the labels and the targets per point")
        self.init_hyperparam(x)
        x = x.detach().clone().float().to(self.device)
        y = y.detach().clone().long().to(self.device)
        targets = targets.to(self.device)
        with torch.no_grad():
            standing = self.model(x).argmax(1) == y
        adv = x.clone()
        torch.random.manual_seed(self.seed)
        for j in range(targets.shape[1]):
            for _ in range(self.n_restarts):
                idx = standing.nonzero().squeeze(1)
                if not len(idx):
                    return adv
                self.y_target = targets[idx, j]
                _, still, _, x_broken = self.attack_single_run(x[idx], y[idx])
                hit = idx[~still.bool()]
                standing[hit] = False
                adv[hit] = x_broken[~still.bool()]
        return adv


def malt_targets(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm, *,
                 targets: int = TARGETS, candidates: int = CANDIDATES) -> torch.Tensor:
    """[N, k] target classes, per point the k wrong classes (among the `candidates` with the
    highest logits) with the smallest linearised margin (f_y − f_t) / ‖∇ₓ(f_y − f_t)‖_*,
    smallest first; ‖·‖_* is the dual norm (L1 for Linf, L2 for L2). One forward pass and one
    input-gradient pass per candidate."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        wrong = logits.detach().scatter(1, y[:, None], float("-inf"))
        cand = wrong.topk(min(candidates, logits.shape[1] - 1), dim=1).indices
        true = logits.gather(1, y[:, None]).squeeze(1)
        scores = []
        for j in range(cand.shape[1]):
            gap = true - logits.gather(1, cand[:, j:j + 1]).squeeze(1)
            # Summed: each point's gradient is its own (eval mode, no cross-example terms).
            (grad,) = torch.autograd.grad(gap.sum(), x, retain_graph=j + 1 < cand.shape[1])
            flat = grad.flatten(1)
            dual = flat.abs().sum(1) if norm is Norm.linf else flat.norm(dim=1)
            scores.append(gap.detach() / dual.clamp_min(1e-12))
    order = torch.stack(scores, dim=1).argsort(dim=1)[:, :min(targets, cand.shape[1])]
    return cand.gather(1, order)


def run_fast_worst_case(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Norm | str,
    eps: Eps | float | str,
    *,
    targets: int = TARGETS,
    candidates: int = CANDIDATES,
    iterations: int = ITERATIONS,
    batch_size: int = 256,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> FastWorstCaseResult:
    """APGD-CE, then MALT-targeted APGD on the points it left standing; x float NCHW in [0, 1],
    the model on its own device. `robust_flags` are clean-correct AND unbroken by both."""
    reporter = reporter or NullReporter()
    norm = parse_choice(Norm, norm, name="norm")
    eps_value = parse_eps(eps, name="eps").value
    for name, value in (("targets", targets), ("candidates", candidates), ("iterations", iterations),
                        ("batch size", batch_size)):
        if value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    check_inputs(x, y)
    device = next((p.device for p in model.parameters()), x.device)
    xd = x.detach().float().contiguous().to(device)
    yd = y.detach().long().to(device)
    n = len(yd)
    stages = ["apgd-ce", f"malt-t{targets}"]
    broken = dict.fromkeys(stages, 0)
    fork = [device.index or 0] if device.type == "cuda" else []
    with contextlib.ExitStack() as stack:
        stack.enter_context(attack_mode(model))
        stack.enter_context(torch.random.fork_rng(devices=fork))
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        with torch.no_grad():
            standing = torch.cat([model(xd[i:i + batch_size]).argmax(1) == yd[i:i + batch_size]
                                  for i in range(0, n, batch_size)]) if n else yd.bool()
        num_classes = _num_classes(model, xd[:1]) if n else 2
        x_adv = xd.clone()
        untargeted = APGDAttack(model, n_iter=iterations, norm=_AA_NORM[norm], n_restarts=1,
                                eps=eps_value, seed=seed, loss="ce", device=device)
        targeted = MaltTargetedAPGD(model, n_iter=iterations, norm=_AA_NORM[norm], n_restarts=1,
                                    eps=eps_value, seed=seed, device=device)
        if num_classes < 4:
            targeted.loss = "ce-targeted"  # the targeted DLR loss reads the 4th-largest logit
        reporter.start(f"{evaluation_name(targets)} {norm.value} eps={eps_value:.5g}", total=len(stages))
        try:
            for stage in stages:
                idx = standing.nonzero().squeeze(1)
                for i in range(0, len(idx), batch_size):
                    part = idx[i:i + batch_size]
                    xb, yb = xd[part], yd[part]
                    if stage == "apgd-ce":
                        out = untargeted.perturb(xb, yb)
                    else:
                        chosen = malt_targets(model, xb, yb, norm, targets=targets, candidates=candidates)
                        out = targeted.perturb(xb, yb, targets=chosen)
                    with torch.no_grad():
                        hit = model(out).argmax(1) != yb
                    standing[part[hit]] = False
                    x_adv[part[hit]] = out[hit].detach()
                    broken[stage] += int(hit.sum())
                reporter.log(f"{evaluation_name(targets)}: robust accuracy after {stage} "
                             f"{100 * float(standing.float().mean()) if n else 0.0:.2f}%")
                reporter.advance(1)
        finally:
            reporter.finish()
    notes = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    return FastWorstCaseResult(x_adv=x_adv.detach().to(x.device), robust_flags=standing.to(x.device),
                               broken=broken, attacks=stages, warnings=notes)


def _num_classes(model: nn.Module, probe: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(probe).shape[1])
