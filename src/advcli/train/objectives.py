"""adv-train's training objectives and adversarial weight perturbation: the outer losses the
one training loop (`train.loop`) minimises, as the papers define them and their reference
codes compute them. Each loss is a function `(forward, x, x_adv, y, n_clean) -> BatchLoss`
(`train.loop.Objective`); `forward` is the model's training forward pass (train mode: each
call normalises its batch with its own BatchNorm statistics, as the reference codes' separate
calls do).

- **pgd-at** (Madry et al. 2018): CE on the adversarial examples, mixed with clean CE by
  `--fraction`: `train.loop.mixed_cross_entropy`, today's behaviour.
- **trades** (Zhang et al. 2019; reference: yaodongyu/TRADES, `trades.py`):
  CE(f(x), y) + β · KL(p(x) ‖ p(x′)), the KL summed over classes and averaged over the batch
  (the reference's `KLDivLoss(size_average=False)` divided by the batch size). x′ maximises that
  KL (`advcli.attacks.trades`). Following the code: the clean softmax p(x) is NOT detached in
  the outer loss (the gradient of the KL flows through both predictions; the paper's formula
  leaves it open, and the released models were trained so). The reference calls the model twice
  on x (once for the CE, once for the KL); in train mode both calls give the same outputs, so
  advcli reuses one: the loss and its gradient are the same, only the BatchNorm running
  statistics see the clean batch once instead of twice. β default 6 (the reference script).
- **mart** (Wang et al. 2020; reference: YisenWang/MART, `mart.py`): the boosted CE on x′,
  CE(f(x′), y) − log(1 − p′_k) with k the strongest wrong class of p′ = p(x′), plus
  β · KL(p(x) ‖ p(x′)) · (1 − p_y(x)), the KL summed over classes, weighted per example and
  averaged over the batch; nothing detached. Following the code, the logs carry its
  stabilisers: log(1.0001 − p′_k + 1e-12), log(p′ + 1e-12) inside the KL, and the weight
  1.0000001 − p_y(x) (so an example the model is sure of keeps a tiny weight); they move the
  loss by about 1e-4 and keep it finite when p′_k → 1. Unlike the reference, log p(x) comes
  from log_softmax rather than F.kl_div's xlogy (`attacks.trades.kl_from_logits`), in TRADES'
  loss too: on current torch the latter's gradient is NaN where p_c(x) underflows to 0, which
  the quick recipe's MART reached within its first epoch (logits 120 apart), training on NaN.
  x′ comes from adv-train's training attack (--attack, default PGD on CE with advcli's
  uniform random start in the eps-ball); the reference's PGD starts at x + 0.001·N(0, 1)
  instead. advcli keeps one inner attack for PGD-AT and MART so that a comparison of the two
  isolates the outer loss. β default 6.
- **AWP** (`--awp GAMMA`, Wu, Xia & Wang 2020; reference: csdongxian/AWP, `utils_awp.py`),
  with any objective: before each update, one ascent step on the weights maximises the
  objective's own loss at the same (x, x′): per layer l (weights of dimension > 1: conv and
  linear; biases and BatchNorm excluded, as in the reference) v_l = γ · ‖w_l‖ · g_l / ‖g_l‖ with
  g the loss gradient. The update's gradient is taken at w + v; the weights are then put back
  to w (copied, so bit for bit) before the optimizer step. The reference restores after the
  step, so its weight decay acts on w + v; here the optimizer sees only the raw weights (the
  difference is lr · weight_decay · v per step). The ascent's forward passes run in train mode
  (batch statistics, as the reference's proxy model) and leave the BatchNorm running statistics
  untouched (saved and restored, as the reference's separate proxy does). Under torchrun the
  ascent gradient is summed over ranks, so every rank applies the same v. γ default 5e-3 and
  AWP off for the first 9 epochs (`--awp-warmup 9`): the reference TRADES-AWP script's
  `--awp-gamma 0.005 --awp-warmup 10`, which counts epochs from 1 and tests `epoch >= 10`.
  Its state is a function of the epoch: `--resume` needs nothing more than the options.
  `--awp-steps K` (default 1, the reference's one step) runs the paper's multi-step form: K
  ascent steps, each v_l ← Π(v_l + γ · ‖w_l‖ · g_l / ‖g_l‖) with g the gradient at w + v and Π
  the projection onto the layer's ball ‖v_l‖ ≤ γ · ‖w_l‖ (‖w_l‖ of the unperturbed weights). The
  step size is the paper's η = γ, so the first step is the one-step perturbation exactly and K = 1
  is the reference bit for bit; later steps turn v along the sphere toward a higher loss.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from advcli import distributed
from advcli.attacks.trades import kl_from_logits, kl_to_clean
from advcli.train.loop import BatchLoss, Forward, Objective

DEFAULT_BETA = 6.0  # TRADES' and MART's reference scripts
DEFAULT_AWP_GAMMA = 5e-3  # TRADES-AWP's reference script
DEFAULT_AWP_WARMUP = 9  # epochs without AWP (see the module docstring)
_AWP_EPS = 1e-20  # keeps ‖g_l‖ = 0 from dividing by zero, as the reference's EPS


class ObjectiveName(str, enum.Enum):
    pgd_at = "pgd-at"
    trades = "trades"
    mart = "mart"


def trades_loss(forward: Forward, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, n_clean: int,
                *, beta: float) -> BatchLoss:
    """CE(f(x), y) + β · mean over the batch of KL(p(x) ‖ p(x′)); every example attacked."""
    logits, logits_adv = forward(x), forward(x_adv)
    kl = kl_to_clean(logits_adv, logits)
    ce = F.cross_entropy(logits, y)
    loss = ce + beta * kl.mean()
    return BatchLoss(loss, torch.cat([logits, logits_adv]), torch.cat([y, y]), len(y),
                     {"kl": kl.sum(), "objective": loss * len(y)})


def strongest_wrong_class(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example, the most probable class other than the label."""
    return probs.scatter(1, y[:, None], -1.0).argmax(1)


def mart_loss(forward: Forward, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, n_clean: int,
              *, beta: float) -> BatchLoss:
    """Boosted CE on x′ + β · mean over the batch of KL(p(x) ‖ p(x′)) · (1 − p_y(x))."""
    logits, logits_adv = forward(x), forward(x_adv)
    p, p_adv = F.softmax(logits, dim=1), F.softmax(logits_adv, dim=1)
    k = strongest_wrong_class(p_adv, y)
    boost = -torch.log(1.0001 - p_adv.gather(1, k[:, None]).squeeze(1) + 1e-12)
    boosted_ce = F.cross_entropy(logits_adv, y) + boost.mean()
    kl = kl_from_logits(logits, torch.log(p_adv + 1e-12))
    weighted = kl * (1.0000001 - p.gather(1, y[:, None]).squeeze(1))
    loss = boosted_ce + beta * weighted.mean()
    return BatchLoss(loss, torch.cat([logits, logits_adv]), torch.cat([y, y]), len(y),
                     {"kl": weighted.sum(), "objective": loss * len(y)})


def objective_fn(name: ObjectiveName | str, beta: float) -> Objective | None:
    """The outer loss of an objective (None: PGD-AT's, `train.loop.mixed_cross_entropy`)."""
    name = ObjectiveName(name)
    if name is ObjectiveName.trades:
        return partial(trades_loss, beta=beta)
    if name is ObjectiveName.mart:
        return partial(mart_loss, beta=beta)
    return None


def perturbed_layers(model: nn.Module) -> list[nn.Parameter]:
    """The weights AWP perturbs: trainable conv/linear weights (dimension > 1)."""
    return [p for name, p in model.named_parameters() if p.ndim > 1 and name.endswith("weight") and p.requires_grad]


def awp_direction(model: nn.Module, loss: torch.Tensor, gamma: float,
                  norms: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """v_l = γ · ‖w_l‖ · g_l / ‖g_l‖ for each perturbed layer (g: the gradient of `loss`, summed
    over torchrun ranks so that every rank perturbs alike; ‖w_l‖: `norms`, default the current
    weights')."""
    layers = perturbed_layers(model)
    grads = torch.autograd.grad(loss, layers)
    if norms is None:
        norms = [w.detach().float().norm() for w in layers]
    out = []
    for w, g, norm in zip(layers, grads, norms, strict=True):
        g = distributed.all_reduce_sum(g.detach().float())
        out.append((gamma * norm / (g.norm() + _AWP_EPS) * g).to(w.dtype))
    return out


def _project(v: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """v scaled into the ball ‖v‖ ≤ radius (unchanged inside it; no host sync)."""
    scale = (radius / v.float().norm().clamp_min(_AWP_EPS)).clamp(max=1.0)
    return (v.float() * scale).to(v.dtype)


@dataclass
class AWP:
    """`train.loop.WeightPerturbation` for adversarial weight perturbation."""

    gamma: float = DEFAULT_AWP_GAMMA
    warmup: int = DEFAULT_AWP_WARMUP
    steps: int = 1

    def applies(self, epoch: int) -> bool:
        return epoch >= self.warmup

    def perturbation(self, model: nn.Module, loss_at: Callable[[], torch.Tensor],
                     originals: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """v, one tensor per perturbed layer: `steps` projected ascent steps from v = 0, each
        from the gradient of `loss_at()` at w + v (`originals`: a copy of w the caller already
        holds). The weights are w again on return."""
        layers = perturbed_layers(model)
        if originals is None:
            originals = [w.detach().clone() for w in layers]
        norms = [w.float().norm() for w in originals]
        v = awp_direction(model, loss_at(), self.gamma, norms)
        if self.steps == 1:
            return v
        try:
            for _ in range(self.steps - 1):
                with torch.no_grad():
                    for w, w0, d in zip(layers, originals, v, strict=True):
                        w.copy_(w0).add_(d)
                step = awp_direction(model, loss_at(), self.gamma, norms)
                v = [_project(a + b, self.gamma * n) for a, b, n in zip(v, step, norms, strict=True)]
        finally:
            _copy_into(layers, originals)
        return v

    @contextmanager
    def around(self, model: nn.Module, loss_at: Callable[[], torch.Tensor]) -> Iterator[None]:
        buffers = [b.detach().clone() for b in model.buffers()]
        layers = perturbed_layers(model)
        originals = [w.detach().clone() for w in layers]
        v = self.perturbation(model, loss_at, originals)
        _copy_into(list(model.buffers()), buffers)
        try:
            with torch.no_grad():
                for w, d in zip(layers, v, strict=True):
                    w.add_(d)
            yield
        finally:
            _copy_into(layers, originals)


def _copy_into(targets: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    """Put `values` back into `targets` in place, bit for bit."""
    with torch.no_grad():
        for t, value in zip(targets, values, strict=True):
            t.copy_(value)


@dataclass
class ObjectiveOptions:
    """adv-train's --objective, --beta, --awp, --awp-warmup and --awp-steps (None: the documented
    default)."""

    objective: str = ObjectiveName.pgd_at.value
    beta: float | None = None
    awp: float = 0.0
    awp_warmup: int | None = None
    awp_steps: int = 1

    def given(self) -> list[str]:
        """The options set away from their defaults (what a static --adv-data run refuses)."""
        d = ObjectiveOptions()
        return [flag for flag, now, default in (
            ("--objective", self.objective, d.objective), ("--beta", self.beta, d.beta),
            ("--awp", self.awp, d.awp), ("--awp-warmup", self.awp_warmup, d.awp_warmup),
            ("--awp-steps", self.awp_steps, d.awp_steps)) if now != default]


@dataclass
class ResolvedObjective:
    name: ObjectiveName
    beta: float | None
    loss: Objective | None
    awp: AWP | None

    def metadata(self) -> dict[str, object]:
        """What checkpoints and the resume config record; empty for PGD-AT without AWP (the
        objective of every checkpoint written before these options existed)."""
        if self.name is ObjectiveName.pgd_at and self.awp is None:
            return {}
        meta: dict[str, object] = {"objective": self.name.value, "beta": self.beta,
                                   "awp_gamma": self.awp.gamma if self.awp else 0.0,
                                   "awp_warmup": self.awp.warmup if self.awp else None}
        if self.awp is not None and self.awp.steps != 1:  # absent: one step (checkpoints before --awp-steps)
            meta["awp_steps"] = self.awp.steps
        return meta


def resolve_objective(o: ObjectiveOptions, *, attack: str, restarts: int, fraction: float,
                      label_smoothing: float) -> ResolvedObjective:
    """Check the objective options against the rest of adv-train's and resolve the defaults;
    every invalid combination is a UsageError naming the options."""
    from advcli.config import parse_choice
    from advcli.errors import UsageError

    name = parse_choice(ObjectiveName, o.objective, name="--objective")
    if name is ObjectiveName.pgd_at and o.beta is not None:
        raise UsageError("--beta weighs the KL term of --objective trades or mart; pgd-at has none: drop --beta")
    if o.beta is not None and o.beta < 0:
        raise UsageError(f"--beta must be >= 0, got {o.beta}")
    if o.awp < 0:
        raise UsageError(f"--awp (the relative weight perturbation gamma) must be >= 0, got {o.awp}")
    if o.awp_warmup is not None and o.awp == 0:
        raise UsageError("--awp-warmup is the number of epochs before AWP starts: give --awp GAMMA too, "
                         "e.g. --awp 5e-3")
    if o.awp_warmup is not None and o.awp_warmup < 0:
        raise UsageError(f"--awp-warmup must be >= 0 epochs, got {o.awp_warmup}")
    if o.awp_steps < 1:
        raise UsageError(f"--awp-steps must be >= 1, got {o.awp_steps}")
    if o.awp_steps != 1 and o.awp == 0:
        raise UsageError("--awp-steps is the number of ascent steps of the weight perturbation: give --awp GAMMA too, "
                         "e.g. --awp 5e-3")
    if name is not ObjectiveName.pgd_at:
        if fraction != 1.0:
            raise UsageError(
                f"--fraction mixes clean and adversarial cross-entropy, which is PGD-AT's loss; {name.value}'s loss "
                "has its own clean term on every example (weighted by --beta): drop --fraction")
        if label_smoothing:
            raise UsageError(f"{name.value}'s loss is defined with plain cross-entropy: drop --label-smoothing")
    if name is ObjectiveName.trades and (attack != "pgd" or restarts != 1):
        raise UsageError(
            "trades runs its own inner attack (maximising the KL to the clean prediction, from one start): "
            "drop --attack and --restarts; --steps and --step-size set it")
    beta = (DEFAULT_BETA if o.beta is None else float(o.beta)) if name is not ObjectiveName.pgd_at else None
    awp = AWP(float(o.awp), DEFAULT_AWP_WARMUP if o.awp_warmup is None else int(o.awp_warmup),
              int(o.awp_steps)) if o.awp else None
    return ResolvedObjective(name, beta, objective_fn(name, beta or 0.0), awp)
