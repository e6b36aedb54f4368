"""Flatness numbers of a minimum.

- Loss increase at radius r: L(θ₀ ± r·dₖ) − L(θ₀) for each filter-normalised direction dₖ and
  both signs; reported as the mean and the max over those 2·K values. Because the directions
  are filter-normalised, r is relative: r = 0.1 moves every filter by 10% of its own norm, so the
  number is comparable between networks whose weights have different scales.
- Direction seeds: one random direction (or two, for a 2-D landscape) is one draw; its number
  varies from draw to draw. `pool_seeds` combines the numbers of several seeds' directions
  (each measured by `loss_increase`): every increase, the mean and max over all of them, and per
  seed the mean increase (`seed_means`, the samples a claim is tested on) with their spread
  (sample sd, min and max). Equal directions per seed, so the pooled mean is the mean of the
  seed means.
- Top Hessian eigenvalue: power iteration on Hessian-vector products (double back-propagation)
  of the mean cross-entropy over the subset, with respect to every parameter, BatchNorm in eval
  mode. Power iteration finds the eigenvalue of largest magnitude; at a minimum that is the
  largest (positive) curvature.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advcli.landscape.grid import Batch, PointEvaluator
from advcli.rng import Stream, stream_generator


@dataclass
class Flatness:
    radius: float
    center_loss: float
    increases: list[float]  # +r·d₁, −r·d₁, +r·d₂, −r·d₂, ... (seed after seed)
    increase_mean: float
    increase_max: float
    # Per direction seed (`pool_seeds`): the seeds, each seed's mean increase, their spread.
    seeds: list[int] | None = None
    seed_means: list[float] | None = None
    seed_sd: float | None = None  # sample sd (ddof 1); None for one seed
    seed_min: float | None = None
    seed_max: float | None = None
    hessian_top_eigenvalue: float | None = None
    hessian_iterations: int | None = None
    hessian_converged: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def loss_increase(
    evaluator: PointEvaluator, radius: float, *, center_loss: float | None = None
) -> Flatness:
    """Loss increase at `radius` along each of the evaluator's directions, both signs.

    The weights are left at the last point evaluated; the caller restores them.
    """
    k = evaluator.n_directions
    if center_loss is None:
        evaluator.set_point([0.0] * k)
        center_loss = evaluator.evaluate().loss
    increases: list[float] = []
    for i in range(k):
        for sign in (1.0, -1.0):
            coeffs = [0.0] * k
            coeffs[i] = sign * float(radius)
            evaluator.set_point(coeffs)
            increases.append(evaluator.evaluate().loss - center_loss)
    return Flatness(
        radius=float(radius),
        center_loss=float(center_loss),
        increases=increases,
        increase_mean=sum(increases) / len(increases),
        increase_max=max(increases),
    )


def pool_seeds(parts: Sequence[Flatness], seeds: Sequence[int] | None = None) -> Flatness:
    """One `Flatness` from the numbers along several seeds' directions (`parts[k]` measured
    along seed `seeds[k]`'s directions, same radius and centre)."""
    if not parts:
        raise ValueError("pool_seeds needs the numbers of at least one seed")
    if seeds is not None and len(seeds) != len(parts):
        raise ValueError(f"{len(parts)} seeds' numbers but {len(seeds)} seeds")
    if len({p.radius for p in parts}) > 1 or len({len(p.increases) for p in parts}) > 1:
        raise ValueError("every seed must be measured at one radius along as many directions")
    increases = [v for p in parts for v in p.increases]
    means = [p.increase_mean for p in parts]
    return replace(
        parts[0],
        increases=increases,
        increase_mean=sum(increases) / len(increases),
        increase_max=max(increases),
        seeds=None if seeds is None else [int(s) for s in seeds],
        seed_means=means,
        seed_sd=statistics.stdev(means) if len(means) > 1 else None,
        seed_min=min(means),
        seed_max=max(means),
    )


@dataclass(frozen=True)
class HessianEstimate:
    eigenvalue: float
    iterations: int
    converged: bool


def _hvp(
    model: nn.Module, params: list[nn.Parameter], batches: Sequence[Batch], n: int,
    v: list[torch.Tensor],
) -> list[torch.Tensor]:
    """H·v for the mean cross-entropy over all batches (summed batch by batch)."""
    out = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        loss = F.cross_entropy(model(x), y, reduction="sum") / n
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * vi).sum() for g, vi in zip(grads, v, strict=True))
        for o, h in zip(out, torch.autograd.grad(dot, params), strict=True):
            o.add_(h)
    return out


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((s.double() * t.double()).sum() for s, t in zip(a, b, strict=True))


def _norm(vs: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in vs))


def hessian_top_eigenvalue(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    iterations: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
) -> HessianEstimate:
    """Largest-magnitude eigenvalue of the loss Hessian by power iteration.

    Stops when the estimate changes by less than `tol` (relative) between iterations, or after
    `iterations`. The model's modes and parameters' `requires_grad` flags are restored.
    """
    params = list(model.parameters())
    n = sum(int(y.shape[0]) for _, y in batches)
    flags = [p.requires_grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    gen = stream_generator(int(seed), 0, 0, Stream.hessian)
    v = [torch.randn(tuple(p.shape), generator=gen).to(p) for p in params]
    scale = _norm(v)
    v = [t / scale.to(t.dtype) for t in v]
    eig, prev, done, converged = 0.0, None, 0, False
    # `done` counts the iterations run, for the report.
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for it in range(1, iterations + 1):
                done = it
                hv = _hvp(model, params, batches, n, v)
                eig = float(_dot(hv, v))
                size = _norm(hv)
                if float(size) == 0.0:
                    converged = True
                    break
                v = [h / size.to(h.dtype) for h in hv]
                if prev is not None and abs(eig - prev) <= tol * max(abs(eig), 1e-12):
                    converged = True
                    break
                prev = eig
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
    return HessianEstimate(eigenvalue=eig, iterations=done, converged=converged)
