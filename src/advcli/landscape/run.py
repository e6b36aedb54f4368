# Over 500 lines: the landscape stage and its file; the file moves out, planned.
"""The landscape stage: filter-normalised loss landscapes of one or more checkpoints on one subset.

- `LandscapeOptions` / `LandscapeSettings`: the resolved options of `advcli landscape`; the
  settings say what to compute (grid, BatchNorm mode, flatness radius, Hessian switch, batch
  size), the options on which data and along which directions.
- `run_landscape(checkpoints, opts, device, reporter)`: the command's one stage call. It loads
  the checkpoints and their dataset (`advcli.data.for_checkpoint`), chooses the subset (the
  first n test images in advcli's fixed order, or the first n of a fixed adversarial set read by
  `advcli.formats.advset`), reads or draws the raw directions, computes every landscape and returns a
  `LandscapeRun` with the provenance of all of it. It writes nothing: `write_landscape` writes
  the new directions file, the picture and the YAML file, all or nothing.
- `compute_landscape` (pure): one model -> `ModelLandscape` (grid of loss/accuracy, centre
  point, flatness numbers). The model's parameters, buffers, modes and memory layout are
  restored exactly afterwards, even when it raises.
- `compute_landscapes` (pure): several labelled models on the same grid, data and directions.
- Flatness seeds (`--flatness-seeds K`): one direction draw gives a noisy flatness number, so
  the flatness is also measured along the directions of seeds s+1 … s+K−1 (s: the grid's seed,
  the directions file's when one is read), at the centre and at ±r only: 2·dim more points per
  seed, no grid. The grid and the picture keep the first seed. Every checkpoint gets the same
  seeds (filter-normalised against its own weights), so models can be compared seed by seed.
- `build_document` / `write_document` / `read_document`: the YAML file, schema
  `advcli.landscape/1`. Grid arrays: `loss`/`accuracy` are lists over `grid.x` (dim 1) or lists
  of rows (dim 2: row j is y = grid.y[j], column i is x = grid.x[i]). `flatness:` maps each
  checkpoint label to its numbers (read by `advcli compare`): radius, center_loss, increases
  (seed after seed), increase_mean and increase_max over all seeds, and per seed `seeds`,
  `seed_means` with their spread `seed_sd` (null for one seed), `seed_min`, `seed_max`. Files
  written before flatness seeds lack the per-seed keys: they hold one seed,
  `directions.seed`; `directions.flatness_seeds` lists the seeds of newer files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from advcli.attacks import Attack, AttackSpec, Keep, attack_record, build_attack
from advcli.data import ImageData, test_subset, to_float
from advcli.data.for_checkpoint import dataset_for_checkpoints, drop_undecodable, skipped_line, view_record
from advcli.data.subsets import FileList, Subset, subset_record
from advcli.data.view import DataView
from advcli.errors import UsageError
from advcli.formats.advset import AdvSet, AdvSetError, load_adv_set
from advcli.formats.results import index_sha256, trained_with_text
from advcli.io import all_or_nothing, atomic_write_text, plain, read_yaml_document, sha256_file
from advcli.landscape.directions import (
    Direction,
    check_compatible,
    filter_normalize,
    gaussian_directions,
    load_directions,
    save_directions,
)
from advcli.landscape.flatness import Flatness, hessian_top_eigenvalue, loss_increase, pool_seeds
from advcli.landscape.fold import fold_batchnorm, fold_direction
from advcli.landscape.grid import (
    BNMode,
    DataKind,
    PointEvaluator,
    PointValue,
    evaluate_grid,
    fast_layout,
    make_batches,
    use_fast_layout,
)
from advcli.models.checkpoint import LoadedCheckpoint, load_checkpoint
from advcli.models.registry import outside_arch
from advcli.models.user import check_logits, load_target
from advcli.progress import NullReporter, Reporter
from advcli.provenance import provenance

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
    channels_last: bool | None = None  # NHWC model and inputs; None = on the CPU only

    def layout(self, device: torch.device) -> bool:
        """Whether the landscape runs in channels_last on `device`."""
        return use_fast_layout(device, self.channels_last)

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
    more_directions: Sequence[Sequence[Direction]] = (),
    seeds: Sequence[int] | None = None,
) -> ModelLandscape:
    """The landscape of one model (already on `device`).

    `x`, `y`: the subset (clean images, or fixed adversarial examples); `attack`: recompute this
    attack at every point; `bn_x`: clean images for `BNMode.recompute` (default: `x`).
    `more_directions`: raw directions of further seeds, measured for flatness only (centre and
    ±r); `seeds`: the seed of `raw_directions` and of each of those, recorded in the flatness.
    """
    settings.check()
    for raw in (raw_directions, *more_directions):
        if len(raw) < settings.dim:
            raise UsageError(
                f"{settings.dim} directions are needed but only {len(raw)} were given"
            )
    if seeds is not None and len(seeds) != 1 + len(more_directions):
        raise ValueError(f"{len(seeds)} seeds for {1 + len(more_directions)} direction sets")
    rep = reporter or NullReporter()
    start = time.perf_counter()
    coords = settings.coords()
    cl = settings.layout(device)
    batches = make_batches(x, y, settings.batch_size, device, cl)
    bn_batches = None
    if bn_x is not None:
        # Labels are not used to re-estimate statistics.
        no_labels = torch.zeros(len(bn_x), dtype=torch.int64)
        bn_batches = make_batches(bn_x, no_labels, settings.batch_size, device, cl)
    with fast_layout(model, device, cl):
        # Same function, fewer passes: evaluate a BatchNorm-folded copy when only conv/linear
        # weights move and the statistics are frozen (see advcli.landscape.fold).
        folded = None
        if settings.fold_bn and settings.bn is BNMode.eval and not settings.include_bias_bn:
            folded = fold_batchnorm(model)
        eval_model = model if folded is None else folded.model

        def evaluator(raw: Sequence[Direction]) -> PointEvaluator:
            directions = [
                filter_normalize(d, model, include_bias_bn=settings.include_bias_bn)
                for d in raw[: settings.dim]
            ]
            if folded is not None:
                directions = [fold_direction(d, folded) for d in directions]
            return PointEvaluator(
                eval_model,
                directions,
                batches,
                bn=settings.bn,
                bn_batches=bn_batches,
                attack=attack,
                attack_seed=settings.attack_seed,
            )

        with evaluator(raw_directions) as ev:
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
        # The centre does not depend on the directions: each further seed costs 2·dim points.
        parts = [flat]
        if more_directions:
            rep.start(f"flatness {label}, {len(more_directions)} more seeds", len(more_directions))
            try:
                for raw in more_directions:
                    with evaluator(raw) as ev:
                        parts.append(loss_increase(ev, settings.radius, center_loss=center.loss))
                    rep.advance(1)
            finally:
                rep.finish()
        flat = pool_seeds(parts, seeds)
    return ModelLandscape(
        label=label,
        loss=grid.loss,
        accuracy=grid.accuracy,
        center=center,
        flatness=flat,
        time_s=time.perf_counter() - start,
    )


def compute_landscapes(
    models: Sequence[tuple[str, nn.Module]],
    x: torch.Tensor,
    y: torch.Tensor,
    directions_for: Callable[[nn.Module], Sequence[Sequence[Direction]]],
    settings: LandscapeSettings,
    *,
    device: torch.device,
    attack: Any = None,
    bn_x: torch.Tensor | None = None,
    reporter: Reporter | None = None,
    seeds: Sequence[int] | None = None,
) -> LandscapeResult:
    """Landscapes of several labelled models on the same grid and data; `directions_for(model)`
    gives each model its raw directions, one set per direction seed `seeds[k]` (the first draws
    the grid, the others are measured for flatness only; same seed or file -> same
    directions)."""
    settings.check()
    start = time.perf_counter()
    coords = settings.coords()
    result = LandscapeResult(
        dim=settings.dim, x=coords, y=list(coords) if settings.dim == 2 else None
    )
    for label, model in models:
        first, *more = directions_for(model)
        result.models.append(
            compute_landscape(
                model, x, y, first, settings, device=device, attack=attack,
                bn_x=bn_x, label=label, reporter=reporter, more_directions=more, seeds=seeds,
            )
        )
    result.time_s = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------- the stage


@dataclass
class LandscapeOptions:
    """Resolved options of `advcli landscape` (checked by the command, see cli/cmd_landscape)."""

    settings: LandscapeSettings = field(default_factory=LandscapeSettings)
    data: str = "clean"  # --data: "clean" or the name of the attack (pgd, fgsm, fgsm-rs, stadv)
    attack: AttackSpec | None = None  # recompute this attack at every point
    adv_data: Path | None = None  # fixed adversarial examples instead of clean test images
    n: int = 1000
    subset: Subset | FileList = Subset.stratified  # how --n picks the clean test examples
    seed: int = 0  # the subset's order (the attack's starts: settings.attack_seed)
    directions_seed: int = 0
    directions: Path | None = None  # raw directions file: read when it exists, else written
    flatness_seeds: int = 1  # flatness along the seeds s, s+1, ..., s+K-1 (K = this count)
    dataset: str | None = None
    data_dir: str | None = None
    view: DataView = field(default_factory=DataView)  # --stream, --image-size, --skip-bad
    model_dir: str | None = None  # weights folder of robustbench:NAME checkpoints
    model: str | None = None  # --model FILE.py:CALLABLE (each checkpoint, if any, holds its weights)
    wrap: str | None = None  # --wrap FILE.py:CALLABLE around each loaded model


@dataclass
class LandscapeRun:
    """What `run_landscape` computed, and what the YAML file records about where it came from."""

    result: LandscapeResult
    settings: LandscapeSettings
    checkpoints: list[dict[str, Any]]  # one record per model, in `result.models`' order
    data: dict[str, Any]
    directions: dict[str, Any]
    provenance: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    # Directions drawn for a --directions file that does not exist yet. `write_landscape` writes
    # them together with the other outputs, so a run that fails leaves no file behind.
    new_directions: list[Direction] | None = None
    new_directions_meta: dict[str, Any] = field(default_factory=dict)
    directions_path: Path | None = None


@dataclass
class _Subset:
    x: torch.Tensor
    y: torch.Tensor
    bn_x: torch.Tensor | None  # clean images for --bn recompute on fixed adversarial examples
    attack: Any
    record: dict[str, Any]
    num_classes: int | None = None  # the dataset's, where the subset was drawn from it


def _load_checkpoint(path: str | Path, opts: LandscapeOptions, device: torch.device) -> LoadedCheckpoint:
    from advcli.models.robustbench.zoo import is_zoo_spec

    if is_zoo_spec(path):
        from advcli.models.robustbench.imports import load_zoo_checkpoint

        return load_zoo_checkpoint(path, dataset=opts.dataset, model_dir=opts.model_dir, device=device)
    return load_checkpoint(path, device)


def checkpoint_labels(loaded: Sequence[LoadedCheckpoint]) -> list[str]:
    """Each checkpoint's label (metadata, else the file stem), made unique with #2, #3, ..."""
    labels: list[str] = []
    for c in loaded:
        base = str(c.meta.get("label") or Path(c.path).name.removesuffix(".safetensors"))
        label, k = base, 2
        while label in labels:
            label, k = f"{base}#{k}", k + 1
        labels.append(label)
    return labels


def _images(
    loaded: Sequence[LoadedCheckpoint], opts: LandscapeOptions, dataset: str | None, data: Any
) -> ImageData:
    if data is not None:
        return data
    return dataset_for_checkpoints(
        [c.meta for c in loaded], names=[str(c.path) for c in loaded], dataset=dataset,
        data_dir=opts.data_dir, view=opts.view,
    )


def landscape_attack(spec: AttackSpec) -> Attack:
    """The attack recomputed at every point. It measures, so it keeps each example's worst
    iterate as `advcli eval` does (`first-success`: the first iterate that fools the model, else
    the highest-loss one), not the last iterate, which can overstate the accuracy at a point."""
    return build_attack(spec if spec.keep is not None else replace(spec, keep=Keep.first_success))


def _subset(
    loaded: Sequence[LoadedCheckpoint], opts: LandscapeOptions, data: Any, warnings: list[str]
) -> _Subset:
    """The examples every point is evaluated on: the first n clean test images (attacked at
    every point when `opts.attack` is set), or the first n of a fixed adversarial set."""
    if opts.adv_data is None:
        images = _images(loaded, opts, opts.dataset or None, data)
        index = test_subset(images.test_y, opts.n, opts.seed, opts.subset, dataset=images.name,
                            streamed=images.streamed, x=images.test_x, classes=images.classes)
        index, skipped = drop_undecodable(images.test_x, index, opts.view.skip_bad)
        if skipped:
            warnings.append(skipped_line(skipped))
        attack = attack_info = None
        if opts.attack is not None:
            attack = landscape_attack(opts.attack)
            attack_info = attack_record(opts.attack, attack)
        y = images.test_y[index]
        record = {
            "kind": (DataKind.clean if attack is None else DataKind.attack).value,
            "dataset": images.name, "split": "test", "n": int(y.shape[0]), "seed": opts.seed,
            **subset_record(opts.subset), "index_sha256": index_sha256(index),
            "attack": attack_info, "adv_data": None, **view_record(images, skipped),
        }
        return _Subset(to_float(images.test_x[index]), y, None, attack, record, images.num_classes)

    adv = load_adv_set(opts.adv_data)
    _check_adv_fits(adv, loaded)
    made_by = adv.attack.get("name")
    if opts.data != "clean" and made_by and made_by != opts.data:
        raise UsageError(
            f"--adv-data holds {made_by} examples but --data is {opts.data}; "
            "drop --data or pass a matching file"
        )
    k = min(opts.n, int(adv.y.shape[0]))
    index = adv.index[:k]
    split = adv.split or "test"
    if not any(c.sha256 == adv.meta.get("checkpoint_sha256") for c in loaded):
        warnings.append(
            "the adversarial set was made against none of these checkpoints: its examples "
            "are transfer examples for all of them"
        )
    bn_x = None
    if opts.settings.bn is BNMode.recompute:
        # Statistics come from the clean images the adversarial examples were made from.
        xs_all, _ = _images(loaded, opts, opts.dataset or adv.dataset, data).split(split)
        bn_x = to_float(xs_all[index])
    record = {
        "kind": DataKind.fixed.value, "dataset": adv.dataset, "split": split, "n": k,
        "seed": adv.meta.get("seed"), "index_sha256": index_sha256(index),
        "attack": adv.meta.get("attack"),
        "adv_data": {
            "path": str(opts.adv_data), "sha256": sha256_file(opts.adv_data),
            "checkpoint_sha256": adv.meta.get("checkpoint_sha256"), "n": int(adv.y.shape[0]),
        },
    }
    return _Subset(adv.x_adv[:k].float(), adv.y[:k], bn_x, None, record)


def _check_adv_fits(adv: AdvSet, loaded: Sequence[LoadedCheckpoint]) -> None:
    """The fixed set's images and labels must be what every checkpoint takes: checked from the
    metadata, before the first point is computed."""
    shape = list(adv.x_adv.shape[1:])
    labels = int(adv.y.max()) + 1 if len(adv.y) else 0
    for c in loaded:
        want = c.meta.get("input_shape")
        if want and list(want) != shape:
            raise AdvSetError(f"--adv-data {str(adv.path)!r} holds images of shape {shape} but {str(c.path)!r} "
                              f"expects {list(want)}; make the set from the checkpoints' data")
        classes = int(c.meta.get("num_classes", labels))
        if labels > classes:
            raise AdvSetError(f"--adv-data {str(adv.path)!r} has labels up to {labels - 1} but {str(c.path)!r} "
                              f"has {classes} classes; make the set from the checkpoints' data")


def _directions(
    loaded: Sequence[LoadedCheckpoint], opts: LandscapeOptions, warnings: list[str]
) -> tuple[
    Callable[[nn.Module], list[Sequence[Direction]]], dict[str, Any], list[Direction] | None,
    list[int] | None,
]:
    """(each model's raw directions per flatness seed, the record, directions still to be
    written to the file, the flatness seeds): one raw set per architecture and seed; the
    grid's is read from `opts.directions` when it exists, else drawn from the seed, and the
    further flatness seeds follow it (each checkpoint filter-normalises them against its own
    weights)."""
    dim, seed, path = opts.settings.dim, opts.directions_seed, opts.directions
    count = opts.flatness_seeds
    if path is not None and path.exists():
        raw, meta = load_directions(path)
        if len(raw) < dim:
            raise UsageError(
                f"{str(path)!r} holds {len(raw)} direction(s) but --dim {dim} needs {dim}; "
                "use another file or a missing path to create one"
            )
        for c in loaded:
            check_compatible(raw[0], c.model, repr(str(path)))
        if meta.get("seed") is not None and meta.get("seed") != seed:
            warnings.append(
                f"using the directions stored in {path} (seed {meta.get('seed')}); "
                "--directions-seed applies only when the file is created"
            )
        file_seed = meta.get("seed")
        has_seed = isinstance(file_seed, int) and not isinstance(file_seed, bool)
        if count > 1 and not has_seed:
            raise UsageError(
                f"{str(path)!r} records no direction seed, so the further --flatness-seeds "
                "cannot follow it; pass --flatness-seeds 1 or a missing path to create a file"
            )
        file_seeds = [int(file_seed) + k for k in range(count)] if has_seed else None
        record = {"seed": file_seed, "file": str(path), "file_sha256": sha256_file(path),
                  "flatness_seeds": file_seeds}
        further = [] if file_seeds is None else file_seeds[1:]
        return (
            lambda model: [raw] + [gaussian_directions(model, dim, s) for s in further]
        ), record, None, file_seeds

    new = None
    if path is not None:
        arches = {str(c.meta.get("arch")) for c in loaded}
        if len(arches) > 1:
            raise UsageError(
                "--directions FILE stores directions for one architecture but the "
                f"checkpoints mix {sorted(arches)}; drop --directions (the seed is enough)"
            )
        new = gaussian_directions(loaded[0].model, dim, seed)
    seeds = [seed + k for k in range(count)]
    record = {"seed": seed, "file": str(path) if path else None, "file_sha256": None,
              "flatness_seeds": seeds}
    return (
        lambda model: [gaussian_directions(model, dim, s) for s in seeds]
    ), record, new, seeds


def _load(checkpoints: Sequence[str | Path | LoadedCheckpoint], opts: LandscapeOptions,
          device: torch.device) -> tuple[list[LoadedCheckpoint], list[list[dict[str, str]]]]:
    """The models, and per model the user code that built it (none without --model/--wrap):
    `--model` and `--wrap` go through `load_target` as in eval, once per checkpoint (whose
    weights the `--model` module gets), or once without one."""
    if not (opts.model or opts.wrap):
        return [c if isinstance(c, LoadedCheckpoint) else _load_checkpoint(c, opts, device)
                for c in checkpoints], []
    loaded, codes = [], []
    for c in list(checkpoints) or [None]:
        target = load_target(c, model=opts.model, wrap=opts.wrap, device=device, dataset=opts.dataset,
                             model_dir=opts.model_dir)
        if c is None:
            target.require_dataset(opts.dataset)
        meta = {**target.meta, "label": target.label(), "arch": target.arch}
        loaded.append(LoadedCheckpoint(model=target.model, meta=meta,  # type: ignore[arg-type]
                                       path=Path(target.name), sha256=target.sha256))  # type: ignore[arg-type]
        codes.append(target.user_code())
    return loaded, codes


def run_landscape(
    checkpoints: Sequence[str | Path | LoadedCheckpoint],
    opts: LandscapeOptions,
    *,
    device: torch.device,
    reporter: Reporter | None = None,
    data: Any = None,
) -> LandscapeRun:
    """Load the checkpoints and their data, compute every landscape on one shared grid, subset
    and set of directions, and describe everything in a `LandscapeRun` (nothing is written).

    `data` (an `advcli.data.ImageData`) skips loading the dataset (tests, notebooks).
    """
    if not checkpoints and not opts.model:
        raise UsageError("give at least one checkpoint, or --model FILE.py:CALLABLE")
    if opts.n < 1:
        raise UsageError(f"--n must be a positive number of examples, got {opts.n}")
    if opts.flatness_seeds < 1:
        raise UsageError(f"--flatness-seeds must be a count >= 1, got {opts.flatness_seeds}")
    opts.settings.check()
    loaded, user_code = _load(checkpoints, opts, device)
    settings = opts.settings
    outside = bool(user_code) or any(outside_arch(c.meta.get("arch")) for c in loaded)
    if outside and settings.channels_last is None:  # outside code keeps its layout
        settings = replace(settings, channels_last=False)
    warnings: list[str] = []
    # The directions file is read before the data is loaded: a bad file costs a second.
    directions_for, directions_record, new, seeds = _directions(loaded, opts, warnings)
    subset = _subset(loaded, opts, data, warnings)
    for c, code in zip(loaded, user_code, strict=False):
        check_logits(c.model, subset.x[:2].to(device), subset.num_classes,
                     code[-1]["file"] + ":" + code[-1]["callable"])
    result = compute_landscapes(
        list(zip(checkpoint_labels(loaded), [c.model for c in loaded], strict=True)),
        subset.x,
        subset.y,
        directions_for,
        settings,
        device=device,
        attack=subset.attack,
        bn_x=subset.bn_x,
        reporter=reporter,
        seeds=seeds,
    )
    return LandscapeRun(
        result=result,
        settings=settings,
        checkpoints=[
            {
                "path": str(c.path),
                "sha256": c.sha256,
                "arch": c.meta.get("arch"),
                "trained_with": trained_with_text(c.meta.get("threat_model")),
                **({"user_code": code} if code else {}),
            }
            for c, code in zip(loaded, user_code or [[]] * len(loaded), strict=True)
        ],
        data=subset.record,
        directions=directions_record,
        provenance=provenance(opts.seed, {"device": str(device),
                                          "channels_last": settings.layout(device)}),
        warnings=warnings,
        new_directions=new,
        new_directions_meta={"seed": opts.directions_seed, "arch": loaded[0].meta.get("arch")},
        directions_path=opts.directions,
    )


def write_landscape(
    run: LandscapeRun, out: str | Path, plot: str | Path | None = None
) -> tuple[dict[str, Any], list[Path]]:
    """Write the new directions file (if any), the picture (if asked) and the YAML file, all or
    nothing; return the document and the paths written."""
    out_path = Path(out)
    plot_path = Path(plot) if plot else None
    directions = dict(run.directions)
    written: list[Path] = []
    with all_or_nothing(written):  # a failure deletes what was already written
        if run.new_directions is not None and run.directions_path is not None:
            written.append(
                save_directions(run.directions_path, run.new_directions, run.new_directions_meta)
            )
            directions["file_sha256"] = sha256_file(run.directions_path)
        doc = build_document(
            run.result,
            run.settings,
            checkpoints=run.checkpoints,
            directions=directions,
            data=run.data,
            provenance=run.provenance,
            outputs={"yaml": str(out_path), "plot": str(plot_path) if plot_path else None},
        )
        if plot_path is not None:
            from advcli.landscape.plot import plot_landscape  # matplotlib only when drawing

            written.append(plot_landscape(doc, plot_path))
        written.append(write_document(out_path, doc))
    return doc, written


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
