"""The check-loader entry points: a user pipeline (`check_pipeline`), advcli's own pipeline in one
`--augment` mode (`check_advcli`) or in every mode (`check_all_modes`), and the one call the
command makes (`run_check_loader`). Each runs the probe and returns the analysis's report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from advcli.config import Augment
from advcli.errors import UsageError
from advcli.progress import NullReporter, Reporter
from advcli.stages.check_loader.analysis import ADVCLI_BUGGY_FIX, analyse, fix_for_rng_attributes
from advcli.stages.check_loader.pipeline import (
    call_pipeline,
    loader_parts,
    resolve_pipeline,
    rng_attributes,
)
from advcli.stages.check_loader.probe import (
    advcli_streams,
    check_context,
    fresh_process_rngs,
    loader_streams,
    rank_env,
)
from advcli.stages.check_loader.report import AllModesReport, FindingKind, LoaderReport, ModeRow, Streams


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
    time like a new process (global RNGs from OS entropy, RANK/LOCAL_RANK/WORLD_SIZE set).
    `persistent` lists the persistent_workers settings to run; None means both for a Dataset and
    the loader's own setting for a DataLoader.
    """
    _check_counts(workers, epochs, samples, ranks, item)
    reporter = reporter or NullReporter()
    fn = resolve_pipeline(spec)
    start = time.perf_counter()
    streams: Streams = {}
    hints: list[tuple[str, str, str]] = []
    with check_context():
        with rank_env(0, ranks):
            fresh_process_rngs()
            first = loader_parts(call_pipeline(fn, spec, 0, ranks), spec)
        _check_item(first.dataset, item, spec)
        hints = rng_attributes(first.dataset)
        default = [first.persistent] if first.persistent is not None else [False, True]
        settings = _settings(persistent, default, workers)
        reporter.start(f"check-loader {spec}", len(settings) * ranks)
        for setting in settings:
            for rank in range(ranks):
                with rank_env(rank, ranks):
                    if first is None:
                        fresh_process_rngs()
                        parts = loader_parts(call_pipeline(fn, spec, rank, ranks), spec)
                    else:
                        parts, first = first, None
                    streams.update(loader_streams(
                        parts, workers=workers, epochs=epochs, samples=samples, item=item,
                        persistent=setting, rank=rank,
                    ))
                reporter.advance(1)
        reporter.finish()
    fixes = {}
    rng_fix = fix_for_rng_attributes(hints)
    if rng_fix:
        fixes[FindingKind.duplicate_workers] = rng_fix
        fixes[FindingKind.repeat_epochs] = rng_fix
    return analyse(
        streams, target=spec, workers=workers, epochs=epochs, samples=samples, ranks=ranks,
        item=item, time_s=time.perf_counter() - start, fixes=fixes,
    )


def _check_item(dataset: Any, item: int, spec: str) -> None:
    try:
        n = len(dataset)
    except TypeError:
        return
    if item >= n:
        raise UsageError(f"--item {item} is out of range: pipeline {spec!r} has {n} items")


def check_advcli(
    mode: Augment | str, *, workers: int = 4, epochs: int = 2, samples: int = 64,
    ranks: int = 1, persistent: Sequence[bool] | None = None, seed: int = 0,
    reporter: Reporter | None = None,
) -> LoaderReport:
    """Check advcli's own training pipeline for one `--augment` mode on tiny probe images."""
    mode = Augment(mode)
    _check_counts(workers, epochs, samples, ranks, 0)
    reporter = reporter or NullReporter()
    uses_workers = mode in (Augment.buggy, Augment.fixed)
    notes: list[str] = []
    if not uses_workers:
        notes.append(f"--augment {mode.value} runs in the main process: no workers to compare")
        settings = [False]
    else:
        settings = _settings(persistent, [False, True], workers)
    start = time.perf_counter()
    streams: Streams = {}
    reporter.start(f"check-loader advcli:{mode.value}", len(settings) * ranks)
    with check_context():
        for setting in settings:
            for rank in range(ranks):
                streams.update(advcli_streams(
                    mode, workers=workers if uses_workers else 0, epochs=epochs,
                    samples=samples, rank=rank, ranks=ranks, seed=seed, persistent=setting,
                ))
                reporter.advance(1)
    reporter.finish()
    fixes = {}
    if mode is Augment.buggy:
        fixes = {k: ADVCLI_BUGGY_FIX for k in (FindingKind.duplicate_workers,
                                                FindingKind.repeat_epochs,
                                                FindingKind.duplicate_ranks)}
    return analyse(
        streams, target=f"advcli:{mode.value}", workers=workers if uses_workers else 0,
        epochs=epochs, samples=samples, ranks=ranks, item=0,
        time_s=time.perf_counter() - start, fixes=fixes, notes=notes, advcli_pipeline=True,
    )


def check_all_modes(
    *, workers: int = 4, epochs: int = 2, samples: int = 64, ranks: int = 1,
    persistent: Sequence[bool] | None = None, seed: int = 0, reporter: Reporter | None = None,
) -> AllModesReport:
    """A row per advcli augment mode: `buggy` should be flagged, the others not."""
    rows = [
        ModeRow(mode, mode is Augment.buggy, check_advcli(
            mode, workers=workers, epochs=epochs, samples=samples, ranks=ranks,
            persistent=persistent, seed=seed, reporter=reporter,
        ))
        for mode in Augment
    ]
    return AllModesReport(rows)
