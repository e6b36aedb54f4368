"""Running a pipeline: the probe.

Judged runs: one DataLoader per (persistent_workers setting, rank), built from the pipeline's
parts with check-loader's own sampler so that every worker loads the same distinct items in the
same order (`Layout`), iterated for every epoch (with `set_epoch` when the dataset has it); each
worker's fingerprints per epoch form one sequence (`Streams`).

Control runs: the same items loaded once per run by a fresh copy of the pipeline under its own
seeds (global RNGs, DataLoader worker seed, epoch, load order): independent draws of each item's
augmentation, from which the analysis estimates how often two independent loads agree by chance,
without trusting the streams it judges.

Also advcli's own training pipeline run the way `advcli train` runs it, and the contexts that
make each simulated run start like a fresh process and leave the caller's RNG states and
environment as they were."""

from __future__ import annotations

import contextlib
import math
import os
import random
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from advcli.check_loader import rng_use
from advcli.check_loader.fingerprint import Fingerprinter, fingerprint
from advcli.check_loader.layout import Layout
from advcli.check_loader.pipeline import LoaderParts
from advcli.check_loader.report import MAIN, StreamKey, Streams
from advcli.config import Augment
from advcli.errors import DataError

# Per-batch DataLoader timeout: a hung worker becomes an error instead of a hang.
LOAD_TIMEOUT_S = 120
# Probe image side for advcli's own pipeline: crop (pad 4) + flip has 162 outcomes at any size,
# so tiny random images are as informative as CIFAR ones and much cheaper to hash.
PROBE_SIZE = 16
# Control runs per check, and their loads per judged stream's loads. A run costs a fresh pipeline
# and one worker start (~50 ms of fork); loads are cheap, so each run loads every item several
# times. Only pairs of loads from different runs count: simulated for a flip (q = 0.5) over 8
# items, 6 runs of 8 loads per item give q with sd 0.006 (8 runs of 4 loads: 0.008).
CONTROL_RUNS = 6
CONTROL_LOADS = 2


def chunk(loads: int) -> int:
    # Batches of several loads cut IPC round trips; a divisor of `loads` so that round-robin
    # dispatch gives every worker exactly `loads` loads.
    return math.gcd(loads, 16)


class ProbeError(RuntimeError):
    """An assumption of the probe itself failed (a bug here, not in the pipeline checked)."""


def _round_robin(loads: list[int], workers: int, size: int) -> list[int]:
    # Batch i goes to worker i % workers (DataLoader's round-robin dispatch), so repeating each
    # batch of `size` loads once per worker gives every worker the same sequence.
    return [i for r in range(len(loads) // size) for _ in range(max(workers, 1))
            for i in loads[r * size:(r + 1) * size]]


def _set_epoch(dataset: Any, epoch: int) -> None:
    # The DistributedSampler convention, on the dataset: a training loop calls it before each
    # epoch. With persistent workers it reaches only the main process's copy, as in training.
    fn = getattr(dataset, "set_epoch", None)
    if callable(fn):
        fn(epoch)


def _run_loader(
    parts: LoaderParts, *, loads: list[int], workers: int, epochs: Sequence[int], persistent: bool,
) -> tuple[dict[tuple[int, int], list[str]], set[str]]:
    """Every worker loads `loads` in order, in each of `epochs` (one DataLoader, iterated once per
    epoch); returns {(epoch, worker): fingerprints} and the random-number calls seen."""
    multi = workers > 0
    size = chunk(len(loads))
    sampler = _round_robin(loads, workers, size)
    loader = DataLoader(
        parts.dataset,
        batch_size=size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=Fingerprinter(parts.collate_fn, parts.batched),
        worker_init_fn=rng_use.WorkerInit(parts.worker_init_fn) if multi else None,
        generator=parts.generator,
        persistent_workers=persistent and multi,
        multiprocessing_context=parts.context if multi else None,
        timeout=LOAD_TIMEOUT_S if multi else 0,
    )
    out: dict[tuple[int, int], list[str]] = {}
    calls: set[str] = set()
    try:
        for epoch in epochs:
            _set_epoch(parts.dataset, epoch)
            batches = iter(loader)  # draws the workers' base seed: before recording starts
            with contextlib.nullcontext() if multi else rng_use.watching():
                for i, (worker, fps, names) in enumerate(batches):
                    if worker != (i % workers if multi else MAIN):
                        raise ProbeError(f"batch {i} came from worker {worker}, not round-robin")
                    out.setdefault((epoch, worker), []).extend(fps)
                    calls.update(names)
    except ProbeError:
        raise
    except Exception as exc:  # the pipeline's own code failed inside a worker or the main process
        raise _load_error(exc, loads, workers) from exc
    finally:
        del loader  # shuts persistent workers down now, not at some later garbage collection
    return out, calls


def _load_error(exc: BaseException, loads: list[int], workers: int) -> DataError:
    first, last = min(loads), max(loads)
    which = f"item {first}" if first == last else f"items {first}-{last}"
    return DataError(f"loading {which} through {workers} worker(s) failed: "
                     f"{type(exc).__name__}: {_first_line(exc)}")


def loader_streams(
    parts: LoaderParts, *, layout: Layout, workers: int, epochs: int, persistent: bool, rank: int,
) -> tuple[Streams, set[str]]:
    """One run of the pipeline's parts: each worker's fingerprints per epoch, and the
    random-number calls seen while loading."""
    out, calls = _run_loader(parts, loads=layout.loads, workers=workers, epochs=range(epochs),
                             persistent=persistent)
    setting = persistent if workers > 0 else None
    return {StreamKey(setting, rank, e, w): fps for (e, w), fps in out.items()}, calls


def control_run(
    parts: LoaderParts, *, layout: Layout, run: int, runs: int, workers: int,
) -> tuple[list[list[str]], set[str]]:
    """One control run: the layout's items in this run's order, through one worker (the main
    process for workers=0) in epoch `run`; the fingerprints come back grouped by item."""
    order = layout.control_positions(run, runs, CONTROL_LOADS * len(layout.positions))
    out, calls = _run_loader(parts, loads=[layout.items[j] for j in order],
                             workers=min(workers, 1), epochs=[run], persistent=False)
    (fps,) = out.values()
    return _by_item(order, fps), calls


def control_seeds(runs: int) -> list[int]:
    """Seeds for the control runs, from OS entropy (no run repeats a seed a user might pick)."""
    return [int(s) for s in np.random.SeedSequence().generate_state(runs)]


def seed_globals(seed: int) -> None:
    """A control run starts like a script that seeds everything with `seed`."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    # DataLoader re-raises worker errors with the worker traceback; the last line is the error.
    return lines[-1].strip() if lines else ""


@contextlib.contextmanager
def check_context() -> Iterator[None]:
    """The check re-seeds the global RNGs (fresh-process emulation, advcli's buggy mode); the
    caller's states are put back afterwards."""
    py, npy, tch = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        with warnings.catch_warnings():
            # More workers than cores is deliberate here: the bug is about workers, not speed.
            warnings.filterwarnings("ignore", message="This DataLoader will create")
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(tch)


@contextlib.contextmanager
def rank_env(rank: int, ranks: int) -> Iterator[None]:
    """The environment `torchrun` gives rank `rank` of `ranks` (on one node)."""
    new = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(ranks)}
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def fresh_process_rngs() -> None:
    # Each simulated rank starts like a new process: PyTorch, NumPy and `random` seeded from OS
    # entropy, so any agreement across ranks comes from the pipeline's own seeding.
    random.seed()
    np.random.seed()
    torch.seed()


# ---------------------------------------------------------------------------------------------
# advcli's own training pipeline


def _probe_images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(20260509)
    return torch.randint(0, 256, (n, 3, PROBE_SIZE, PROBE_SIZE), generator=g, dtype=torch.uint8)


def _training_order(n: int, *, seed: int, epoch: int, rank: int, ranks: int) -> torch.Tensor:
    """The indices `train_batches` visits in this epoch on this rank: read off by running it once
    on n labelled 1-pixel images, so the probe does not depend on how training shuffles."""
    from advcli.data.loaders import train_batches

    batches = train_batches(
        torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.arange(n), augment=Augment.none,
        batch_size=n, workers=0, seed=seed, epoch=epoch, device=torch.device("cpu"), rank=rank,
        world_size=ranks,
    )
    return torch.cat([yb for _xb, yb in batches])


def _advcli_epoch(
    mode: Augment, images: Any, *, loads: list[int], workers: int, seed: int,
    epoch: int, rank: int, ranks: int,
) -> dict[int, list[str]]:
    """One epoch of `train_batches` (what `advcli train` runs, one DataLoader per epoch) whose
    data is arranged so that every worker loads `loads` in order; {worker: fingerprints}.
    `images`: a uint8 tensor, or a streamed split (arranged as a view, decoded by the workers)."""
    from advcli.data.loaders import train_batches

    size = chunk(len(loads))
    sequence = _round_robin(loads, workers, size)
    order = _training_order(len(sequence) * ranks, seed=seed, epoch=epoch, rank=rank, ranks=ranks)
    # The other ranks' positions hold image 0 (never visited here) and label -1.
    source = torch.zeros(len(sequence) * ranks, dtype=torch.int64)
    y = torch.full((len(sequence) * ranks,), -1, dtype=torch.int64)
    source[order], y[order] = torch.tensor(sequence), torch.tensor(sequence)
    x = images[source] if isinstance(images, torch.Tensor) else images.take(source)
    out: dict[int, list[str]] = {}
    batches = train_batches(
        x, y, augment=mode, batch_size=size, workers=workers, seed=seed, epoch=epoch,
        device=torch.device("cpu"), rank=rank, world_size=ranks,
    )
    for i, (xb, yb) in enumerate(batches):
        if yb.tolist() != sequence[i * size:(i + 1) * size]:
            raise ProbeError("train_batches visited the probe images out of the order it "
                             "showed for the same seed, epoch and rank")
        out.setdefault(i % workers if workers else MAIN, []).extend(fingerprint(s) for s in xb)
    return out


def advcli_streams(
    mode: Augment, *, layout: Layout, workers: int, epochs: int, rank: int, ranks: int,
    seed: int, persistent: bool, images: Any = None,
) -> Streams:
    """advcli's pipeline as `advcli train` runs it, for one simulated rank, on `layout`'s probe
    images (item j is probe image j), or on `images` (a dataset's training images).

    persistent=False: `train_batches`, which builds one DataLoader per epoch (what training does).
    persistent=True (buggy/fixed only): the same `worker_loader`, built once and reused across
    epochs with persistent workers, fed by the probe's own sampler."""
    from advcli.data.loaders import worker_loader

    n_workers = workers
    if images is None:
        n_workers = workers if mode in (Augment.buggy, Augment.fixed) else 0
        images = _probe_images(len(layout.items))
    if persistent and n_workers:
        loader = worker_loader(
            images, torch.arange(len(images)), mode, chunk(len(layout.positions)), n_workers,
            seed, 0, shuffle=False, persistent_workers=True, rank=rank,
        )
        parts = LoaderParts(dataset=loader.dataset, worker_init_fn=loader.worker_init_fn,
                            generator=loader.generator)
        del loader
        streams, _calls = loader_streams(parts, layout=layout, workers=n_workers, epochs=epochs,
                                         persistent=True, rank=rank)
        return streams
    setting = False if n_workers else None
    streams: Streams = {}
    for epoch in range(epochs):
        out = _advcli_epoch(mode, images, loads=list(layout.positions), workers=n_workers,
                            seed=seed, epoch=epoch, rank=rank, ranks=ranks)
        streams.update({StreamKey(setting, rank, epoch, w): fps for w, fps in out.items()})
    return streams


def advcli_control(
    mode: Augment, *, layout: Layout, run: int, runs: int, workers: int, seed: int, images: Any = None,
) -> list[list[str]]:
    """One control run of advcli's pipeline: training seed `seed`, epoch `run`, one worker."""
    n_workers = min(workers, 1)
    if images is None:
        n_workers = n_workers if mode in (Augment.buggy, Augment.fixed) else 0
        images = _probe_images(len(layout.items))
    order = layout.control_positions(run, runs, CONTROL_LOADS * len(layout.positions))
    out = _advcli_epoch(mode, images, loads=order, workers=n_workers,
                        seed=seed, epoch=run, rank=0, ranks=1)
    (fps,) = out.values()
    return _by_item(order, fps)


def _by_item(order: list[int], fps: list[str]) -> list[list[str]]:
    # A control run's fingerprints grouped by item, in load order within each item.
    by_item: list[list[str]] = [[] for _ in range(max(order) + 1)]
    for j, fp in zip(order, fps, strict=True):
        by_item[j].append(fp)
    return by_item
