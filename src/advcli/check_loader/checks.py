"""The check-loader entry points: a user pipeline (`check_pipeline`), advcli's own pipeline in one
`--augment` mode (`check_advcli`) or in every mode (`check_all_modes`), and the one call the
command makes (`run_check_loader` with `CheckLoaderOptions`). Each runs the judged runs and the
control runs of the probe and returns the analysis's report.

The bugs it looks for: DataLoader workers that share one random stream produce the same "random"
augmentations (an RNG object made before the workers start, a constant re-seed in a
`worker_init_fn`, advcli's emulated pre-1.9 seeding), often the same ones every epoch; DDP ranks
seeded alike produce the same ones on every rank; and an RNG seeded per item from something
fixed for the run (the index alone, or the worker seed with persistent workers) gives each image
the same augmentation every epoch.

Method (the probe): every worker loads the same list of distinct items in the same order, then
in a second order, in every epoch, for each persistent_workers setting and simulated rank; every
output is hashed (the fingerprint) and the per-worker output *sequences* are compared pair by
pair, position by position and item by item across the two orders (see `analysis`). Chance
agreement is estimated from control runs (the same items under other seeds), and each agreement
gets a p(chance) against a Bonferroni threshold. What this tells apart: streams duplicated
across workers, repeated across epochs or shared by ranks (a shared RNG); augmentations frozen
per item (an RNG seeded by the index alone) or fixed per worker for the run (seeded by worker
seed and index with persistent workers); correct per-item seeding (clean); and pipelines with no
randomness at all, told from frozen ones by recording random-number calls in the probe's
workers (`rng_use`). "Inconclusive" when even identical sequences would not beat chance.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from advcli.check_loader.analysis import ADVCLI_BUGGY_FIX, analyse, fix_for_rng_attributes
from advcli.check_loader.layout import make_layout
from advcli.check_loader.pipeline import (
    LoaderParts,
    call_pipeline,
    loader_parts,
    resolve_pipeline,
    rng_attributes,
)
from advcli.check_loader.probe import (
    CONTROL_RUNS,
    advcli_control,
    advcli_streams,
    check_context,
    control_run,
    control_seeds,
    fresh_process_rngs,
    loader_streams,
    rank_env,
    seed_globals,
)
from advcli.check_loader.report import AllModesReport, FindingKind, LoaderReport, ModeRow, Streams
from advcli.config import Augment
from advcli.data.datasets import load_dataset
from advcli.data.for_checkpoint import is_lazy
from advcli.data.view import DataView
from advcli.errors import UsageError
from advcli.progress import NullReporter, Reporter


def _check_counts(workers: int, epochs: int, samples: int, ranks: int, item: int) -> None:
    if workers < 0:
        raise UsageError(f"--workers must be >= 0, got {workers}")
    if epochs < 2:
        raise UsageError(f"--epochs must be >= 2 to see repeats across epochs, got {epochs}")
    if samples < 2:
        raise UsageError(f"--samples must be >= 2, got {samples}")
    if ranks < 1:
        raise UsageError(f"--ranks must be >= 1, got {ranks}")
    if item < 0:
        raise UsageError(f"--item must be >= 0, got {item}")


def _settings(
    persistent: Sequence[bool] | None, default: list[bool], workers: int
) -> list[bool]:
    if workers == 0:
        return [False]  # no worker processes: nothing persists, one run
    return default if persistent is None else sorted(set(persistent))


def check_pipeline(
    spec: str, *, workers: int = 4, epochs: int = 2, samples: int = 64, ranks: int = 1,
    persistent: Sequence[bool] | None = None, item: int = 0, reporter: Reporter | None = None,
) -> LoaderReport:
    """Check a user pipeline (`module:callable` or `path/to/file.py:callable`).

    The callable is called afresh for every persistent_workers setting and simulated rank, each
    time like a new process (global RNGs from OS entropy, RANK/LOCAL_RANK/WORLD_SIZE set), and
    for each control run (global RNGs seeded with the run's own seed). `persistent` lists the
    persistent_workers settings to run; None means both for a Dataset and the loader's own
    setting for a DataLoader.
    """
    _check_counts(workers, epochs, samples, ranks, item)
    reporter = reporter or NullReporter()
    fn = resolve_pipeline(spec)
    start = time.perf_counter()
    streams: Streams = {}
    calls: set[str] = set()
    control: list[list[list[str]]] = []
    with check_context():
        with rank_env(0, ranks):
            fresh_process_rngs()
            given = loader_parts(call_pipeline(fn, spec, 0, ranks), spec)
        n_items = _dataset_len(given.dataset)
        if n_items is not None and item >= n_items:
            raise UsageError(f"--item {item} is out of range: pipeline {spec!r} has {n_items} items")
        layout = make_layout(item, n_items, samples)
        hints = rng_attributes(given.dataset)
        set_epoch = callable(getattr(given.dataset, "set_epoch", None))
        default = [given.persistent] if given.persistent is not None else [False, True]
        first: LoaderParts | None = given  # the first run uses the call made above
        settings = _settings(persistent, default, workers)
        reporter.start(f"check-loader {spec}", len(settings) * ranks + CONTROL_RUNS)
        for setting in settings:
            for rank in range(ranks):
                with rank_env(rank, ranks):
                    if first is None:
                        fresh_process_rngs()
                        parts = loader_parts(call_pipeline(fn, spec, rank, ranks), spec)
                    else:
                        parts, first = first, None
                    got, seen = loader_streams(parts, layout=layout, workers=workers,
                                               epochs=epochs, persistent=setting, rank=rank)
                streams.update(got)
                calls |= seen
                reporter.advance(1)
        for run, seed in enumerate(control_seeds(CONTROL_RUNS)):
            with rank_env(0, ranks):
                seed_globals(seed)
                parts = loader_parts(call_pipeline(fn, spec, 0, ranks), spec)
                outputs, seen = control_run(parts, layout=layout, run=run, runs=CONTROL_RUNS,
                                            workers=workers)
            control.append(outputs)
            calls |= seen
            reporter.advance(1)
        reporter.finish()
    fixes = {}
    rng_fix = fix_for_rng_attributes(hints)
    if rng_fix:
        fixes[FindingKind.duplicate_workers] = rng_fix
        fixes[FindingKind.repeat_epochs] = rng_fix
    return analyse(
        streams, target=spec, workers=workers, epochs=epochs, samples=samples, ranks=ranks,
        item=item, time_s=time.perf_counter() - start, fixes=fixes, layout=layout,
        control=control, rng_calls=sorted(calls), set_epoch=set_epoch,
    )


def _dataset_len(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None


# What advcli's own modes draw while loading: known, not recorded (`train_batches` builds its own
# DataLoaders), so `none`, which draws nothing, says None (not recorded) rather than [] (none seen).
_ADVCLI_DRAWS: dict[Augment, list[str] | None] = {
    Augment.none: None,
    Augment.buggy: ["numpy.random (global state)"],
    Augment.fixed: ["numpy.random (global state)"],
    Augment.device: ["torch.Generator"],
}


# A streamed training set is decoded and augmented in DataLoader workers in every mode, each
# item's crop and flip drawn from a generator seeded by (seed, epoch, index), except `buggy`.
_STREAMED_DRAWS: dict[Augment, list[str] | None] = {
    Augment.none: None,
    Augment.buggy: ["numpy.random (global state)"],
    Augment.fixed: ["torch.Generator"],
    Augment.device: ["torch.Generator"],
}


def check_advcli(
    mode: Augment | str, *, workers: int = 4, epochs: int = 2, samples: int = 64,
    ranks: int = 1, persistent: Sequence[bool] | None = None, seed: int = 0,
    reporter: Reporter | None = None, images: Any = None,
) -> LoaderReport:
    """Check advcli's own training pipeline for one `--augment` mode on tiny probe images, or on
    the first training images `images` of a dataset (a uint8 tensor, or a streamed split: then
    through the streaming pipeline)."""
    mode = Augment(mode)
    _check_counts(workers, epochs, samples, ranks, 0)
    reporter = reporter or NullReporter()
    streamed = images is not None and is_lazy(images)
    uses_workers = streamed or mode in (Augment.buggy, Augment.fixed)
    n_workers = workers if uses_workers else 0
    notes: list[str] = []
    if not uses_workers:
        notes.append(f"--augment {mode.value} runs in the main process: no workers to compare")
        settings = [False]
    elif streamed:
        notes.append("streamed data: training builds one DataLoader per epoch, so persistent workers "
                     "are not part of its pipeline")
        settings = [False]
    else:
        settings = _settings(persistent, [False, True], workers)
    layout = make_layout(0, None if images is None else len(images), samples)
    start = time.perf_counter()
    streams: Streams = {}
    control: list[list[list[str]]] = []
    reporter.start(f"check-loader advcli:{mode.value}", len(settings) * ranks + CONTROL_RUNS)
    with check_context():
        for setting in settings:
            for rank in range(ranks):
                streams.update(advcli_streams(
                    mode, layout=layout, workers=n_workers, epochs=epochs, rank=rank,
                    ranks=ranks, seed=seed, persistent=setting, images=images,
                ))
                reporter.advance(1)
        for run, control_seed in enumerate(control_seeds(CONTROL_RUNS)):
            control.append(advcli_control(mode, layout=layout, run=run, runs=CONTROL_RUNS,
                                          workers=n_workers, seed=control_seed, images=images))
            reporter.advance(1)
    reporter.finish()
    fixes = {}
    if mode is Augment.buggy:
        fixes = {k: ADVCLI_BUGGY_FIX for k in (FindingKind.duplicate_workers,
                                                FindingKind.repeat_epochs,
                                                FindingKind.duplicate_ranks)}
    return analyse(
        streams, target=f"advcli:{mode.value}", workers=n_workers, epochs=epochs,
        samples=samples, ranks=ranks, item=0, time_s=time.perf_counter() - start, fixes=fixes,
        notes=notes, advcli_pipeline=True, layout=layout, control=control,
        rng_calls=(_STREAMED_DRAWS if streamed else _ADVCLI_DRAWS)[mode],
    )


def check_all_modes(
    *, workers: int = 4, epochs: int = 2, samples: int = 64, ranks: int = 1,
    persistent: Sequence[bool] | None = None, seed: int = 0, reporter: Reporter | None = None,
    images: Any = None,
) -> AllModesReport:
    """A row per advcli augment mode: `buggy` should be flagged, the others not."""
    rows = [
        ModeRow(mode, mode is Augment.buggy, check_advcli(
            mode, workers=workers, epochs=epochs, samples=samples, ranks=ranks,
            persistent=persistent, seed=seed, reporter=reporter, images=images,
        ))
        for mode in Augment
    ]
    return AllModesReport(rows)


@dataclass(frozen=True)
class CheckLoaderOptions:
    """`advcli check-loader`'s options, checked at the boundary: a user pipeline (`pipeline`),
    advcli's own in one mode (`augment`, default fixed), or advcli's in every mode."""

    pipeline: str | None = None
    augment: Augment | None = None
    all_modes: bool = False
    workers: int = 4
    epochs: int = 2
    samples: int = 64
    ranks: int = 1
    persistent: list[bool] | None = None  # None: the default settings (see check_pipeline)
    item: int = 0
    seed: int = 0
    dataset: str | None = None  # advcli's pipeline on this dataset's training images (None: probe images)
    data_dir: str | None = None
    view: DataView = field(default_factory=DataView)  # --stream, --image-size, --skip-bad


def run_check_loader(
    opts: CheckLoaderOptions, *, reporter: Reporter | None = None
) -> LoaderReport | AllModesReport:
    """The command's one stage call."""
    counts: dict[str, Any] = {
        "workers": opts.workers, "epochs": opts.epochs, "samples": opts.samples,
        "ranks": opts.ranks, "persistent": opts.persistent,
    }
    if opts.pipeline:
        return check_pipeline(opts.pipeline, item=opts.item, reporter=reporter, **counts)
    images = None
    if opts.dataset:
        images = load_dataset(opts.dataset, opts.data_dir, seed=opts.seed,
                              **opts.view.load_kwargs(opts.dataset)).train_x
    if opts.all_modes:
        return check_all_modes(seed=opts.seed, reporter=reporter, images=images, **counts)
    return check_advcli(opts.augment or Augment.fixed, seed=opts.seed, reporter=reporter,
                        images=images, **counts)
