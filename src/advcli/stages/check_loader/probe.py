"""Running a pipeline: the probe. One DataLoader per (persistent_workers setting, rank), built from
the pipeline's parts with check-loader's own sampler, iterated for every epoch; each worker's
fingerprints per epoch form one sequence (`Streams`). Also advcli's own training pipeline run
the way `advcli train` runs it, and the contexts that make each simulated run start like a fresh
process and leave the caller's RNG states and environment as they were."""

from __future__ import annotations

import contextlib
import math
import os
import random
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from advcli.config import Augment
from advcli.errors import DataError
from advcli.stages.check_loader.fingerprint import Fingerprinter, fingerprint
from advcli.stages.check_loader.pipeline import LoaderParts
from advcli.stages.check_loader.report import MAIN, StreamKey, Streams

# Per-batch DataLoader timeout: a hung worker becomes an error instead of a hang.
LOAD_TIMEOUT_S = 120
# Probe image side for advcli's own pipeline: crop (pad 4) + flip has 162 outcomes at any size,
# so tiny random images are as informative as CIFAR ones and much cheaper to hash.
PROBE_SIZE = 16


def chunk(samples: int) -> int:
    # Batches of several loads cut IPC round trips; a divisor of `samples` so that round-robin
    # dispatch gives every worker exactly `samples` loads.
    return math.gcd(samples, 16)


def loader_streams(
    parts: LoaderParts, *, workers: int, epochs: int, samples: int, item: int,
    persistent: bool, rank: int,
) -> Streams:
    """Load `item` `samples` times per worker per epoch through one DataLoader built from
    `parts`; return each worker's sequence of fingerprints per epoch."""
    multi = workers > 0
    loader = DataLoader(
        parts.dataset,
        batch_size=chunk(samples),
        sampler=[item] * (samples * max(workers, 1)),
        num_workers=workers,
        collate_fn=Fingerprinter(parts.collate_fn, parts.batched),
        worker_init_fn=parts.worker_init_fn,
        generator=parts.generator,
        persistent_workers=persistent and multi,
        multiprocessing_context=parts.context if multi else None,
        timeout=LOAD_TIMEOUT_S if multi else 0,
    )
    setting = persistent if multi else None
    streams: Streams = {}
    try:
        for epoch in range(epochs):
            for worker, fps in loader:
                streams.setdefault(StreamKey(setting, rank, epoch, worker), []).extend(fps)
    except Exception as exc:  # the pipeline's own code failed inside a worker or the main process
        raise DataError(
            f"loading item {item} through {workers} worker(s) failed: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    finally:
        del loader  # shuts persistent workers down now, not at some later garbage collection
    return streams


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


def _probe_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    # n copies of ONE random image, so whatever index a sampler picks, it is the same item.
    g = torch.Generator().manual_seed(20260509)
    img = torch.randint(0, 256, (1, 3, PROBE_SIZE, PROBE_SIZE), generator=g, dtype=torch.uint8)
    return img.expand(n, -1, -1, -1).contiguous(), torch.zeros(n, dtype=torch.int64)


def advcli_streams(
    mode: Augment, *, workers: int, epochs: int, samples: int, rank: int, ranks: int,
    seed: int, persistent: bool,
) -> Streams:
    """advcli's pipeline as `advcli train` runs it, for one simulated rank (seeded seed + rank).

    persistent=False: `train_batches`, which builds one DataLoader per epoch (what training does);
    DataLoader dispatches batches round-robin, so batch i came from worker i % workers.
    persistent=True (buggy/fixed only): the same `worker_loader`, built once and reused across
    epochs with persistent workers."""
    from advcli.data.loaders import train_batches, worker_loader

    uses_workers = mode in (Augment.buggy, Augment.fixed) and workers > 0
    n_workers = workers if uses_workers else 0
    per_epoch = samples * max(n_workers, 1)
    x, y = _probe_data(per_epoch * ranks)
    streams: Streams = {}
    if persistent:
        loader = worker_loader(
            x[:per_epoch], y[:per_epoch], mode, chunk(samples), n_workers, seed, 0,
            shuffle=False, persistent_workers=True, rank=rank,
        )
        parts = LoaderParts(
            dataset=loader.dataset, worker_init_fn=loader.worker_init_fn,
            generator=loader.generator,
        )
        del loader
        return loader_streams(
            parts, workers=n_workers, epochs=epochs, samples=samples, item=0,
            persistent=True, rank=rank,
        )
    setting = False if n_workers else None
    for epoch in range(epochs):
        batches = train_batches(
            x, y, augment=mode, batch_size=chunk(samples), workers=n_workers, seed=seed,
            epoch=epoch, device=torch.device("cpu"), rank=rank, world_size=ranks,
        )
        for i, (xb, _yb) in enumerate(batches):
            worker = i % n_workers if n_workers else MAIN
            key = StreamKey(setting, rank, epoch, worker)
            streams.setdefault(key, []).extend(fingerprint(s) for s in xb)
    return streams

