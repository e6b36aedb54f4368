"""Loss and accuracy of a model moved along directions, at one point or over a grid.

`PointEvaluator` owns the moving: `set_point(c)` writes θ = θ₀ + Σₖ cₖ·dₖ into the model's
parameters in place (under no_grad, into the existing storage: nothing is re-allocated per
point, and c = 0 reproduces θ₀ bit for bit), and `evaluate()` measures the mean cross-entropy
and the accuracy on a fixed subset that was batched and moved to the device once.

Data (`DataKind`):
- `clean`: the subset's images;
- `fixed`: fixed adversarial examples (e.g. from an `advcli attack` set). They were made against
  one model, so away from the centre they are transfer examples;
- `attack`: an attack is recomputed against the moved model at every point (the adversarial
  loss landscape). Its random starts use a generator reseeded identically at every point, so the
  grid is not noisier than the attack itself.

BatchNorm (`BNMode`):
- `eval` (default): BatchNorm in eval mode with the statistics stored in the checkpoint;
- `recompute`: at every point the running statistics are reset and re-estimated from the clean
  images of the subset (BatchNorm layers alone in train mode, momentum None = the average of the
  per-batch statistics, no gradients), then the model is evaluated in eval mode with them. This
  removes the loss jump that comes from stale statistics when the weights move; it costs one more
  forward pass over the subset per point.
`restore()` (also on leaving the `with` block) writes back every parameter and buffer exactly.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advcli.models.layout import input_layout, model_layout
from advcli.progress import NullReporter, Reporter

Batch = tuple[torch.Tensor, torch.Tensor]
Direction = dict[str, torch.Tensor]


class BNMode(str, enum.Enum):
    eval = "eval"
    recompute = "recompute"


class DataKind(str, enum.Enum):
    clean = "clean"
    fixed = "fixed"
    attack = "attack"


@dataclass(frozen=True)
class PointValue:
    loss: float  # mean cross-entropy over the subset
    accuracy: float  # fraction in [0, 1]


def make_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device,
    channels_last: bool | None = None,
) -> list[Batch]:
    """Split the subset into batches once, on the device, in the layout `fast_layout` runs
    the model in (`channels_last`: None = the fast one for the device)."""
    cl = use_fast_layout(device, channels_last)
    out = []
    for i in range(0, len(y), batch_size):
        xb = x[i : i + batch_size].to(device=device, dtype=torch.float32)
        out.append((input_layout(xb, cl), y[i : i + batch_size].to(device)))
    return out


def use_fast_layout(device: torch.device, channels_last: bool | None) -> bool:
    """Whether the landscape runs in channels_last: as asked, else on the CPU only."""
    if channels_last is not None:
        return bool(channels_last)
    # oneDNN convolutions on the CPU run ~1.5-2x faster in channels_last; on CUDA in fp32 the
    # layout matters little and the default keeps every kernel on its well-trodden path.
    return device.type == "cpu"


@contextmanager
def fast_layout(model: nn.Module, device: torch.device,
                channels_last: bool | None = None) -> Iterator[nn.Module]:
    """The model in the layout `make_batches` chose; its own layout restored after."""
    with model_layout(model, use_fast_layout(device, channels_last)):
        yield model


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class PointEvaluator:
    """Moves `model` along normalised `directions` and evaluates it on `batches`.

    `batches` are the subset (clean images, or fixed adversarial examples for `DataKind.fixed`);
    `attack` (an `advcli.attacks.Attack`) is run on them at every point when given. Use as a
    context manager, or call `restore()`.
    """

    def __init__(
        self,
        model: nn.Module,
        directions: Sequence[Direction],
        batches: Sequence[Batch],
        *,
        bn: BNMode = BNMode.eval,
        bn_batches: Sequence[Batch] | None = None,
        attack: Any = None,
        attack_seed: int = 0,
    ) -> None:
        if not batches:
            raise ValueError("no batches to evaluate")
        self.model = model
        self.batches = list(batches)
        self.n = sum(int(y.shape[0]) for _, y in self.batches)
        self.bn = BNMode(bn)
        self.bn_batches = list(bn_batches) if bn_batches is not None else self.batches
        self.attack = attack
        self.attack_seed = int(attack_seed)
        self.n_directions = len(directions)
        self._snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._modes = [(m, m.training) for m in model.modules()]
        # Only parameters that some direction moves are rewritten at each point.
        self._active: list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]] = []
        for name, p in model.named_parameters():
            ds = [d[name] if bool(d[name].any()) else None for d in directions]
            if any(d is not None for d in ds):
                self._active.append((p, p.detach().clone(), ds))

    def __enter__(self) -> PointEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def set_point(self, coeffs: Sequence[float]) -> None:
        """θ = θ₀ + Σₖ coeffs[k]·dₖ, written in place."""
        if len(coeffs) != self.n_directions:
            raise ValueError(f"expected {self.n_directions} coefficients, got {len(coeffs)}")
        with torch.no_grad():
            for p, base, ds in self._active:
                p.copy_(base)
                for c, d in zip(coeffs, ds, strict=True):
                    if d is not None and c != 0.0:
                        p.add_(d, alpha=float(c))

    def recompute_bn(self) -> None:
        """Re-estimate BatchNorm running statistics at the current point (see module doc)."""
        layers = _bn_layers(self.model)
        if not layers:
            return
        momenta = [m.momentum for m in layers]
        self.model.eval()
        try:
            for m in layers:
                m.reset_running_stats()
                m.momentum = None
                m.train()
            with torch.no_grad():
                for x, _ in self.bn_batches:
                    self.model(x)
        finally:
            for m, mom in zip(layers, momenta, strict=True):
                m.momentum = mom
            self.model.eval()

    def inputs(self) -> list[Batch]:
        """The batches evaluated at the current point (adversarial ones when attacking)."""
        if self.attack is None:
            return self.batches
        out = []
        for i, (x, y) in enumerate(self.batches):
            # One fixed stream per batch, the same at every point of the grid.
            gen = torch.Generator(device="cpu").manual_seed(self.attack_seed * 100_003 + i)
            out.append((self.attack.perturb(self.model, x, y, generator=gen), y))
        return out

    def evaluate(self) -> PointValue:
        """Mean cross-entropy and accuracy at the current point."""
        if self.bn is BNMode.recompute:
            self.recompute_bn()
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = 0
        for x, y in self.inputs():
            with torch.no_grad():
                logits = self.model(x)
                loss_sum += F.cross_entropy(logits, y, reduction="sum").double().cpu()
                correct += int((logits.argmax(dim=1) == y).sum())
        return PointValue(loss=float(loss_sum) / self.n, accuracy=correct / self.n)

    def restore(self) -> None:
        """Every parameter and buffer back to its value at construction; modes too."""
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.copy_(self._snapshot[k])
        for m, mode in self._modes:
            m.training = mode


@dataclass
class GridValues:
    """Loss and accuracy over the grid: shape [len(x)] (1-D) or [len(y), len(x)] (2-D: rows
    follow y, columns follow x, as matplotlib's contour expects)."""

    loss: np.ndarray
    accuracy: np.ndarray


def evaluate_grid(
    evaluator: PointEvaluator,
    xs: Sequence[float],
    ys: Sequence[float] | None = None,
    *,
    reporter: Reporter | None = None,
    description: str = "landscape",
) -> GridValues:
    """Evaluate every grid point (1-D when `ys` is None); the weights are left at the last point
    (call `evaluator.restore()` or use the `with` block)."""
    rep = reporter or NullReporter()
    rows = [None] if ys is None else list(ys)
    loss = np.empty((len(rows), len(xs)), dtype=np.float64)
    acc = np.empty_like(loss)
    rep.start(description, len(rows) * len(xs))
    try:
        for j, b in enumerate(rows):
            for i, a in enumerate(xs):
                evaluator.set_point((a,) if b is None else (a, b))
                value = evaluator.evaluate()
                loss[j, i], acc[j, i] = value.loss, value.accuracy
                rep.advance(1)
    finally:
        rep.finish()
    if ys is None:
        return GridValues(loss=loss[0], accuracy=acc[0])
    return GridValues(loss=loss, accuracy=acc)
