"""The landscape stage: filter-normalised loss landscapes of one or more models on one subset.

- `LandscapeSettings`: the grid, BatchNorm mode, flatness radius, Hessian switch, batch size.
- `compute_landscape` (pure): one model -> `ModelLandscape` (grid of loss/accuracy, centre
  point, flatness numbers). The model's parameters, buffers, modes and memory layout are
  restored exactly afterwards, even when it raises.
- `run_landscape` (pure): several labelled models on the same grid, data and direction seed.
- `build_document` / `write_document` / `read_document`: the YAML file, schema
  `advcli.landscape/1`. Grid arrays: `loss`/`accuracy` are lists over `grid.x` (dim 1) or lists
  of rows (dim 2: row j is y = grid.y[j], column i is x = grid.x[i]). `flatness:` maps each
  checkpoint label to its numbers (read by `advcli compare`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from advcli.errors import UsageError
from advcli.io import atomic_write_text, plain, read_yaml_document
from advcli.landscape.directions import Direction, filter_normalize
from advcli.landscape.flatness import Flatness, hessian_top_eigenvalue, loss_increase
from advcli.landscape.fold import fold_batchnorm, fold_direction
from advcli.landscape.grid import (
    BNMode,
    PointEvaluator,
    PointValue,
    evaluate_grid,
    fast_layout,
    make_batches,
)
from advcli.progress import NullReporter, Reporter

SCHEMA = "advcli.landscape/1"


@dataclass
class LandscapeSettings:
    """What to compute. Coordinates are in units of the filter-normalised directions."""

    dim: int = 1
    lo: float = -1.0
    hi: float = 1.0
    points: int = 51
    include_bias_bn: bool = False
    bn: BNMode = BNMode.eval
    radius: float = 0.1
    hessian: bool = False
    hessian_iterations: int = 20
    batch_size: int = 128
    attack_seed: int = 0
    # Evaluate a BatchNorm-folded copy where that computes the same function (faster).
    fold_bn: bool = True

    def check(self) -> None:
        if self.dim not in (1, 2):
            raise UsageError(f"--dim must be 1 or 2, got {self.dim}")
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or self.lo >= self.hi:
            raise UsageError(f"--range must be LO:HI with LO < HI, got {self.lo}:{self.hi}")
        if self.points < 2:
            raise UsageError(f"--points must be >= 2, got {self.points}")
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise UsageError(f"--radius must be a number > 0, got {self.radius}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.hessian_iterations < 1:
            raise UsageError(f"--hessian-iters must be >= 1, got {self.hessian_iterations}")

    def coords(self) -> list[float]:
        """`points` evenly spaced values over [lo, hi]; one within rounding of 0 is exactly 0."""
        values = np.linspace(self.lo, self.hi, self.points)
        tiny = 1e-9 * (self.hi - self.lo)
        return [0.0 if abs(v) < tiny else float(v) for v in values]


@dataclass
class ModelLandscape:
    label: str
    loss: np.ndarray  # [points] or [points_y, points_x]
    accuracy: np.ndarray
    center: PointValue
    flatness: Flatness
    time_s: float


@dataclass
class LandscapeResult:
    dim: int
    x: list[float]
    y: list[float] | None
    models: list[ModelLandscape] = field(default_factory=list)
    time_s: float = 0.0


def compute_landscape(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    raw_directions: Sequence[Direction],
    settings: LandscapeSettings,
    *,
    device: torch.device,
    attack: Any = None,
    bn_x: torch.Tensor | None = None,
    label: str = "model",
    reporter: Reporter | None = None,
) -> ModelLandscape:
    """The landscape of one model (already on `device`).

    `x`, `y`: the subset (clean images, or fixed adversarial examples); `attack`: recompute this
    attack at every point; `bn_x`: clean images for `BNMode.recompute` (default: `x`).
    """
    settings.check()
    if len(raw_directions) < settings.dim:
        raise UsageError(
            f"{settings.dim} directions are needed but only {len(raw_directions)} were given"
        )
    rep = reporter or NullReporter()
    start = time.perf_counter()
    coords = settings.coords()
    batches = make_batches(x, y, settings.batch_size, device)
    bn_batches = None
    if bn_x is not None:
        # Labels are not used to re-estimate statistics.
        no_labels = torch.zeros(len(bn_x), dtype=torch.int64)
        bn_batches = make_batches(bn_x, no_labels, settings.batch_size, device)
    with fast_layout(model, device):
        directions = [
            filter_normalize(d, model, include_bias_bn=settings.include_bias_bn)
            for d in raw_directions[: settings.dim]
        ]
        # Same function, fewer passes: evaluate a BatchNorm-folded copy when only conv/linear
        # weights move and the statistics are frozen (see advcli.landscape.fold).
        folded = None
        if settings.fold_bn and settings.bn is BNMode.eval and not settings.include_bias_bn:
            folded = fold_batchnorm(model)
        if folded is not None:
            eval_model = folded.model
            directions = [fold_direction(d, folded) for d in directions]
        else:
            eval_model = model
        with PointEvaluator(
            eval_model,
            directions,
            batches,
            bn=settings.bn,
            bn_batches=bn_batches,
            attack=attack,
            attack_seed=settings.attack_seed,
        ) as ev:
            ev.set_point([0.0] * settings.dim)
            center = ev.evaluate()
            grid = evaluate_grid(
                ev,
                coords,
                coords if settings.dim == 2 else None,
                reporter=rep,
                description=f"landscape {label}",
            )
            flat = loss_increase(ev, settings.radius, center_loss=center.loss)
            if settings.hessian:
                ev.set_point([0.0] * settings.dim)
                if settings.bn is BNMode.recompute:
                    ev.recompute_bn()
                # With an attack, the curvature is that of the loss on the centre's
                # adversarial examples, held fixed. The Hessian is taken in the model's own
                # parameters (never the folded ones: folding changes the parametrisation).
                inputs = ev.inputs()
                rep.log(f"{label}: top Hessian eigenvalue by power iteration")
                est = hessian_top_eigenvalue(
                    model, inputs, iterations=settings.hessian_iterations,
                    seed=settings.attack_seed,
                )
                flat.hessian_top_eigenvalue = est.eigenvalue
                flat.hessian_iterations = est.iterations
                flat.hessian_converged = est.converged
                if not est.converged:
                    rep.log(
                        f"{label}: power iteration did not converge in {est.iterations} "
                        "iterations; raise --hessian-iters for a firmer number"
                    )
    return ModelLandscape(
        label=label,
        loss=grid.loss,
        accuracy=grid.accuracy,
        center=center,
        flatness=flat,
        time_s=time.perf_counter() - start,
    )


def run_landscape(
    models: Sequence[tuple[str, nn.Module]],
    x: torch.Tensor,
    y: torch.Tensor,
    directions_for: Callable[[nn.Module], Sequence[Direction]],
    settings: LandscapeSettings,
    *,
    device: torch.device,
    attack: Any = None,
    bn_x: torch.Tensor | None = None,
    reporter: Reporter | None = None,
) -> LandscapeResult:
    """Landscapes of several labelled models on the same grid and data; `directions_for(model)`
    gives each model its raw directions (same seed or file -> same directions)."""
    settings.check()
    start = time.perf_counter()
    coords = settings.coords()
    result = LandscapeResult(
        dim=settings.dim, x=coords, y=list(coords) if settings.dim == 2 else None
    )
    for label, model in models:
        result.models.append(
            compute_landscape(
                model, x, y, directions_for(model), settings, device=device, attack=attack,
                bn_x=bn_x, label=label, reporter=reporter,
            )
        )
    result.time_s = time.perf_counter() - start
    return result


def _floats(a: np.ndarray) -> list[Any]:
    return [float(v) for v in a] if a.ndim == 1 else [_floats(row) for row in a]


def build_document(
    result: LandscapeResult,
    settings: LandscapeSettings,
    *,
    checkpoints: Sequence[dict[str, Any]],
    directions: dict[str, Any],
    data: dict[str, Any],
    provenance: dict[str, Any],
    outputs: dict[str, str | None],
) -> dict[str, Any]:
    """The `advcli.landscape/1` mapping (plain YAML types only); `checkpoints[i]` describes
    `result.models[i]`."""
    entries = []
    for info, m in zip(checkpoints, result.models, strict=True):
        entries.append(
            {
                "label": m.label,
                **info,
                "center": {"loss": m.center.loss, "accuracy": m.center.accuracy},
                "loss": _floats(m.loss),
                "accuracy": _floats(m.accuracy),
                "time_s": round(m.time_s, 3),
            }
        )
    return plain({
        "schema": SCHEMA,
        "dim": result.dim,
        "grid": {
            "x": result.x,
            "y": result.y,
            "range": [settings.lo, settings.hi],
            "points": settings.points,
        },
        "directions": {
            **directions,
            "normalization": "filter",
            "include_bias_bn": settings.include_bias_bn,
            "count": result.dim,
        },
        "data": data,
        "bn": settings.bn.value,
        "batch_size": settings.batch_size,
        "checkpoints": entries,
        "flatness": {m.label: m.flatness.as_dict() for m in result.models},
        "time_s": round(result.time_s, 3),
        "provenance": provenance,
        "outputs": outputs,
    })


def write_document(path: str | Path, doc: dict[str, Any]) -> Path:
    return atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))


def read_document(path: str | Path) -> dict[str, Any]:
    """Read a landscape YAML file and check its schema."""
    return read_yaml_document(path, what="landscape file", schema=SCHEMA, make_hint="make one with `advcli landscape`")
