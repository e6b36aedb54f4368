"""The `check-loader` stage: is a data pipeline's augmentation randomness really random?

The bug it looks for: DataLoader workers that share one random stream produce the same "random"
augmentations (an RNG object made before the workers start, a constant re-seed in a
`worker_init_fn`, advcli's emulated pre-1.9 seeding), often the same ones every epoch, and DDP
ranks seeded alike produce the same ones on every rank.

Method: load ONE item many times through N workers over >= 2 epochs, hash every output (the
fingerprint), and compare the per-worker output *sequences* position by position: worker against
worker in one epoch (duplicated streams), epoch against epoch (repeats), rank against rank.
Sequences, not sets, so a flip alone (two outcomes) is judged right: two independent streams of
64 flips agree in about half the positions, duplicated ones in all. Each agreement gets a
p(chance): the binomial tail P[X >= matches], X ~ Binomial(length, q), where q is the per-draw
collision probability estimated from the empirical distribution of all fingerprints of the check
(pooled, so duplication only inflates q and makes p conservative). A pair is flagged when p is
below ALPHA divided by the number of pairs compared (Bonferroni). Outputs that never change are
reported as "no randomness", not as a bug.

This module never imports typer or rich; it returns typed reports (`LoaderReport`).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import random
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations, islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from advcli.config import Augment
from advcli.errors import DataError, UsageError
from advcli.progress import NullReporter, Reporter

SCHEMA = "advcli.check-loader/1"
# Family-wise false-alarm rate over all sequence comparisons of one check: one clean pipeline in
# a million is flagged by chance, while a duplicated stream of 32 coin flips (p = 2e-10) is still
# caught among the ~250 comparisons of a 4-worker, 2-rank check.
ALPHA = 1e-6
# Per-batch DataLoader timeout: a hung worker becomes an error instead of a hang.
LOAD_TIMEOUT_S = 120
# Probe image side for advcli's own pipeline: crop (pad 4) + flip has 162 outcomes at any size,
# so tiny random images are as informative as CIFAR ones and much cheaper to hash.
PROBE_SIZE = 16
MAIN = -1  # worker id of the main process (workers=0, or advcli's device mode)


class Verdict(str, enum.Enum):
    bug = "bug"
    clean = "clean"
    no_randomness = "no randomness"
    inconclusive = "inconclusive"


class FindingKind(str, enum.Enum):
    duplicate_workers = "duplicated across workers"
    repeat_epochs = "repeated across epochs"
    duplicate_ranks = "duplicated across ranks"
    no_randomness = "no randomness"
    low_power = "too little randomness to judge"


@dataclass(frozen=True, order=True)
class StreamKey:
    """One output sequence: the loads of one worker in one epoch of one run."""

    persistent: bool | None  # None: no worker processes, so nothing to persist
    rank: int
    epoch: int
    worker: int  # MAIN for the main process


@dataclass(frozen=True)
class Agreement:
    """Two sequences compared position by position."""

    a: StreamKey
    b: StreamKey
    matches: int
    length: int
    p_chance: float


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    bug: bool
    evidence: str
    fix: str
    p_chance: float | None = None
    pairs_flagged: int = 0
    pairs_compared: int = 0
    persistent_workers: list[str] = field(default_factory=list)  # settings where it showed


@dataclass(frozen=True)
class LoaderReport:
    target: str  # "advcli:<mode>" or the --pipeline spec
    verdict: Verdict
    findings: list[Finding]
    workers: int
    epochs: int
    samples: int  # loads per worker per epoch
    ranks: int
    item: int
    persistent_workers: list[str]  # "off" / "on" / "n/a" (no worker processes)
    loads: int
    distinct_outputs: int
    collision_probability: float
    threshold: float  # per-comparison p below which agreement is flagged
    pairs_compared: int
    smallest_p: float | None  # the most suspicious agreement of all pairs compared
    time_s: float
    notes: list[str] = field(default_factory=list)
    advcli_pipeline: bool = False  # advcli's own pipeline on probe images (item is moot)

    @property
    def is_bug(self) -> bool:
        return self.verdict is Verdict.bug

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        d["findings"] = [{**asdict(f), "kind": f.kind.value} for f in self.findings]
        return {"schema": SCHEMA, **d}


@dataclass(frozen=True)
class ModeRow:
    mode: Augment
    expected_bug: bool
    report: LoaderReport

    @property
    def as_expected(self) -> bool:
        return self.report.is_bug == self.expected_bug


@dataclass(frozen=True)
class AllModesReport:
    """One row per advcli augment mode; `buggy` is the bug emulated on purpose."""

    rows: list[ModeRow]

    @property
    def as_expected(self) -> bool:
        return all(r.as_expected for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "as_expected": self.as_expected,
            "modes": [
                {"mode": r.mode.value, "expected_bug": r.expected_bug,
                 "as_expected": r.as_expected, **r.report.to_dict()}
                for r in self.rows
            ],
        }


# ---------------------------------------------------------------------------------------------
# Fingerprints


def fingerprint(obj: Any) -> str:
    """A hash of an output's bytes (tensors, arrays, PIL images, nested tuples/lists/dicts)."""
    h = hashlib.blake2b(digest_size=12)
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, (bytes, bytearray)):
        h.update(b"B" + bytes(obj))
    elif isinstance(obj, dict):
        h.update(b"{")
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"(")
        for v in obj:
            _feed(h, v)
        h.update(b")")
    elif callable(getattr(obj, "tobytes", None)):  # PIL images and the like
        size, mode = getattr(obj, "size", ""), getattr(obj, "mode", "")
        h.update(f"O{type(obj).__name__}{size}{mode}".encode())
        h.update(obj.tobytes())
    else:
        h.update(f"R{obj!r}".encode())


class _Fingerprinter:
    """Stands in for the collate function and runs inside each worker: the pipeline's own collate
    on each sample, then a fingerprint per sample, tagged with the worker id."""

    def __init__(self, collate_fn: Callable[[Any], Any] | None, batched: bool) -> None:
        self.collate_fn = collate_fn
        self.batched = batched

    def __call__(self, samples: list[Any]) -> tuple[int, list[str]]:
        info = get_worker_info()
        worker = info.id if info is not None else MAIN
        if self.collate_fn is None:
            return worker, [fingerprint(s) for s in samples]
        wrap = (lambda s: [s]) if self.batched else (lambda s: s)
        return worker, [fingerprint(self.collate_fn(wrap(s))) for s in samples]


# ---------------------------------------------------------------------------------------------
# Statistics


def binomial_tail(matches: int, length: int, q: float) -> float:
    """P[X >= matches] for X ~ Binomial(length, q), summed in log space (no underflow surprises)."""
    if matches <= 0:
        return 1.0
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    logs = [
        math.lgamma(length + 1) - math.lgamma(k + 1) - math.lgamma(length - k + 1)
        + k * math.log(q) + (length - k) * math.log1p(-q)
        for k in range(matches, length + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def collision_probability(fingerprints: list[str]) -> float:
    """Chance that two independent loads give the same output: sum_k c_k(c_k-1) / n(n-1), floored
    at 1/n so that a never-seen collision is not taken as impossible."""
    n = len(fingerprints)
    if n < 2:
        return 1.0
    counts = Counter(fingerprints).values()
    q = sum(c * (c - 1) for c in counts) / (n * (n - 1))
    return max(q, 1.0 / n)


def format_p(p: float) -> str:
    if p < 1e-9:
        return "p(chance) < 1e-9"
    return f"p(chance) = {p:.1e}" if p < 1e-3 else f"p(chance) = {p:.2g}"


# ---------------------------------------------------------------------------------------------
# Running a pipeline: one DataLoader per (persistent setting, rank), iterated for every epoch

Streams = dict[StreamKey, list[str]]


@dataclass
class LoaderParts:
    """What check-loader keeps from a pipeline; the sampler and batch size are its own."""

    dataset: Any
    collate_fn: Callable[[Any], Any] | None = None
    batched: bool = True  # the collate expects a list of samples (DataLoader auto-collation)
    worker_init_fn: Callable[[int], None] | None = None
    generator: torch.Generator | None = None
    context: Any = None  # multiprocessing context
    persistent: bool | None = None  # as given by a DataLoader; None for a bare Dataset


def _chunk(samples: int) -> int:
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
        batch_size=_chunk(samples),
        sampler=[item] * (samples * max(workers, 1)),
        num_workers=workers,
        collate_fn=_Fingerprinter(parts.collate_fn, parts.batched),
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
def _check_context() -> Iterator[None]:
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
def _rank_env(rank: int, ranks: int) -> Iterator[None]:
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


def _fresh_process_rngs() -> None:
    # Each simulated rank starts like a new process: PyTorch, NumPy and `random` seeded from OS
    # entropy, so any agreement across ranks comes from the pipeline's own seeding.
    random.seed()
    np.random.seed()
    torch.seed()


# ---------------------------------------------------------------------------------------------
# User pipelines: --pipeline module:callable | path/to/file.py:callable


def resolve_pipeline(spec: str) -> Callable[..., Any]:
    """Import the callable named by `module:callable` or `path/to/file.py:callable`."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UsageError(
            f"--pipeline {spec!r} must be module:callable or path/to/file.py:callable"
        )
    if target.endswith(".py") or "/" in target or os.sep in target:
        module = _import_file(Path(target))
    else:
        module = _import_module(target)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"pipeline {target!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(
            f"pipeline {spec!r} is a {type(obj).__name__}, not a callable returning a "
            "Dataset or DataLoader"
        )
    return obj  # type: ignore[no-any-return]


def _import_module(name: str) -> Any:
    # Like `python -m`: modules in the current folder are importable.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise UsageError(
                f"no module named {name!r}: run from the folder that holds it, or pass "
                "path/to/file.py:callable"
            ) from exc
        raise UsageError(f"importing pipeline module {name!r} failed: {exc}") from exc
    except Exception as exc:
        raise UsageError(
            f"importing pipeline module {name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise UsageError(f"pipeline file {str(path)!r} does not exist")
    path = path.resolve()
    # The file's folder goes on sys.path (kept, since spawned workers import by name from it), so
    # the file can import its siblings and its classes pickle by reference.
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = path.stem
    loaded = sys.modules.get(name)
    if not name.isidentifier() or (
        loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() != path
    ):
        name = "advcli_pipeline_" + hashlib.sha1(str(path).encode()).hexdigest()[:10]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"pipeline file {str(path)!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise UsageError(
            f"importing pipeline file {str(path)!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def call_pipeline(fn: Callable[..., Any], spec: str, rank: int, ranks: int) -> Any:
    """Call the user's callable as rank `rank` would (env already set): `rank=`/`world_size=`
    are passed when its signature names them."""
    kwargs: dict[str, Any] = {}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "rank" in params:
        kwargs["rank"] = rank
    if "world_size" in params:
        kwargs["world_size"] = ranks
    try:
        return fn(**kwargs)
    except Exception as exc:
        raise UsageError(
            f"calling pipeline {spec!r} failed: {type(exc).__name__}: {exc}"
        ) from exc


def loader_parts(obj: Any, spec: str) -> LoaderParts:
    """Split what a pipeline returned into the parts check-loader uses."""
    if isinstance(obj, DataLoader):
        dataset = obj.dataset
        parts = LoaderParts(
            dataset=dataset,
            collate_fn=obj.collate_fn,
            batched=obj.batch_size is not None or obj.batch_sampler is not None,
            worker_init_fn=obj.worker_init_fn,
            generator=obj.generator,
            context=obj.multiprocessing_context,
            persistent=bool(obj.persistent_workers),
        )
    elif hasattr(obj, "__getitem__") and not isinstance(obj, (str, bytes, dict)):
        dataset = obj
        parts = LoaderParts(dataset=obj, collate_fn=None)
    else:
        raise UsageError(
            f"pipeline {spec!r} returned a {type(obj).__name__}; it must return a torch "
            "Dataset or DataLoader"
        )
    if isinstance(dataset, IterableDataset):
        raise UsageError(
            f"pipeline {spec!r} gives an IterableDataset; check-loader loads one item many "
            "times, so it needs a map-style Dataset (with __getitem__)"
        )
    return parts


_RNG_TYPES: tuple[tuple[type, str, str], ...] = (
    (np.random.Generator, "numpy Generator", "np.random.default_rng(info.seed)"),
    (np.random.RandomState, "numpy RandomState", "np.random.RandomState(info.seed % 2**32)"),
    (random.Random, "random.Random", "random.Random(info.seed)"),
    (torch.Generator, "torch.Generator", "torch.Generator().manual_seed(info.seed)"),
)


def rng_attributes(dataset: Any, depth: int = 3) -> list[tuple[str, str, str]]:
    """RNG objects held by the dataset (or its transforms): (path, type name, re-seed example).

    Used only to word the fix; the verdict is empirical."""
    found: list[tuple[str, str, str]] = []
    seen: set[int] = set()

    def visit(obj: Any, path: str, d: int) -> None:
        if id(obj) in seen or d < 0:
            return
        seen.add(id(obj))
        for cls, name, example in _RNG_TYPES:
            if isinstance(obj, cls):
                found.append((path, name, example))
                return
        # Bounded look: datasets may hold long lists of file names.
        if isinstance(obj, (list, tuple)):
            for i, v in enumerate(islice(obj, 32)):
                visit(v, f"{path}[{i}]", d - 1)
        elif isinstance(obj, dict):
            for k, v in islice(obj.items(), 32):
                visit(v, f"{path}[{k!r}]", d - 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.Tensor, np.ndarray)):
            if inspect.ismodule(obj) or inspect.isroutine(obj):
                return
            for k, v in islice(vars(obj).items(), 64):
                visit(v, f"{path}.{k}", d - 1)

    visit(dataset, "dataset", depth)
    return found


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
            x[:per_epoch], y[:per_epoch], mode, _chunk(samples), n_workers, seed, 0,
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
            x, y, augment=mode, batch_size=_chunk(samples), workers=n_workers, seed=seed,
            epoch=epoch, device=torch.device("cpu"), rank=rank, world_size=ranks,
        )
        for i, (xb, _yb) in enumerate(batches):
            worker = i % n_workers if n_workers else MAIN
            key = StreamKey(setting, rank, epoch, worker)
            streams.setdefault(key, []).extend(fingerprint(s) for s in xb)
    return streams


# ---------------------------------------------------------------------------------------------
# Analysis


_GENERIC_FIX = {
    FindingKind.duplicate_workers: (
        "Seed each worker's RNG from torch.utils.data.get_worker_info().seed in a worker_init_fn "
        "(never from a constant), or draw from torch's or NumPy's global RNG, which PyTorch "
        "seeds per worker."
    ),
    FindingKind.repeat_epochs: (
        "Derive worker seeds from get_worker_info().seed, which changes every epoch, not from a "
        "constant or the worker id alone; RNG objects made in __init__ must be re-seeded so."
    ),
    FindingKind.duplicate_ranks: (
        "Seed with seed + rank (torch.manual_seed, the DataLoader generator, any seed the workers "
        "derive from), so every DDP rank draws different worker seeds."
    ),
    FindingKind.no_randomness: (
        "Nothing to fix if the pipeline is meant to be deterministic; if you expected "
        "augmentation, it is not applied."
    ),
    FindingKind.low_power: (
        "Raise --samples so that a duplicated sequence could be told from chance."
    ),
}

_ADVCLI_BUGGY_FIX = (
    "advcli's buggy mode emulates the pre-1.9 seeding on purpose: train with --augment fixed "
    "(NumPy seeded per worker and epoch) or --augment device."
)


def _rng_fix(hints: list[tuple[str, str, str]]) -> str | None:
    if not hints:
        return None
    path, name, example = hints[0]
    others = f" (and {len(hints) - 1} more)" if len(hints) > 1 else ""
    attr = path.removeprefix("dataset")
    return (
        f"{path} ({name}){others} is made before the workers start, so each worker gets a copy: "
        f"re-seed it in a worker_init_fn: info = get_worker_info(); "
        f"info.dataset{attr} = {example}."
    )


def _who(k: StreamKey) -> str:
    return "the main process" if k.worker == MAIN else f"worker {k.worker}"


def _setting(k: StreamKey) -> str:
    return "n/a" if k.persistent is None else ("on" if k.persistent else "off")


def _describe(kind: FindingKind, ag: Agreement, ranks: int) -> str:
    a, b = ag.a, ag.b
    n, full = ag.length, ag.matches == ag.length
    seqs = "identical sequences" if full else "sequences"
    if kind is FindingKind.duplicate_workers:
        text = f"{_who(a)} and {_who(b)} produced {seqs} of {n} samples in epoch {a.epoch}"
    elif kind is FindingKind.repeat_epochs:
        whose = "its" if a.worker == b.worker else f"{_who(a)}'s"
        verb = "repeated" if full else "partly repeated"
        text = (f"{_who(b)} {verb} {whose} epoch-{a.epoch} sequence of {n} samples in epoch "
                f"{b.epoch}")
    else:
        where = f"{_who(a)}, epoch {a.epoch}"
        if (a.worker, a.epoch) != (b.worker, b.epoch):
            where += f" / {_who(b)}, epoch {b.epoch}"
        text = f"rank {a.rank} and rank {b.rank} produced {seqs} of {n} samples ({where})"
    if ranks > 1 and kind is not FindingKind.duplicate_ranks:
        text += f", rank {a.rank}"
    if a.persistent is not None:
        text += f", persistent_workers={_setting(a)}"
    if not full:
        text += f" (agreeing in {ag.matches} of {n} positions)"
    return text


def _kind(a: StreamKey, b: StreamKey) -> FindingKind:
    if a.rank != b.rank:
        return FindingKind.duplicate_ranks
    if a.epoch != b.epoch:
        return FindingKind.repeat_epochs
    return FindingKind.duplicate_workers


_PAIR_NOUN = {
    FindingKind.duplicate_workers: "same-epoch worker pairs",
    FindingKind.repeat_epochs: "cross-epoch pairs",
    FindingKind.duplicate_ranks: "rank pairs",
}


def analyse(
    streams: Streams, *, target: str, workers: int, epochs: int, samples: int, ranks: int,
    item: int, time_s: float = 0.0, fixes: dict[FindingKind, str] | None = None,
    notes: list[str] | None = None, advcli_pipeline: bool = False,
) -> LoaderReport:
    """Compare every pair of sequences within one persistent_workers setting; build the report."""
    fixes = {**_GENERIC_FIX, **(fixes or {})}
    keys = sorted(streams, key=lambda k: (k.persistent is None, bool(k.persistent), k.rank,
                                          k.epoch, k.worker))
    fps = [f for k in keys for f in streams[k]]
    counts = Counter(fps)
    q = collision_probability(fps)
    settings = sorted({_setting(k) for k in keys}, key=["off", "on", "n/a"].index)

    def report(
        verdict: Verdict, findings: list[Finding], threshold: float, pairs: int,
        smallest: float | None = None,
    ) -> LoaderReport:
        return LoaderReport(
            target=target, verdict=verdict, findings=findings, workers=workers, epochs=epochs,
            samples=samples, ranks=ranks, item=item, persistent_workers=settings,
            loads=len(fps), distinct_outputs=len(counts), collision_probability=q,
            threshold=threshold, pairs_compared=pairs, smallest_p=smallest, time_s=time_s,
            notes=list(notes or []), advcli_pipeline=advcli_pipeline,
        )

    if len(counts) <= 1:
        evidence = (f"item {item} came out byte-identical in all {len(fps)} loads "
                    f"({len(keys)} sequences)")
        finding = Finding(FindingKind.no_randomness, False, evidence,
                          fixes[FindingKind.no_randomness], persistent_workers=settings)
        return report(Verdict.no_randomness, [finding], 0.0, 0)

    pairs = [(a, b) for a, b in combinations(keys, 2) if a.persistent == b.persistent]
    threshold = ALPHA / max(len(pairs), 1)
    flagged: dict[FindingKind, list[Agreement]] = {}
    compared: Counter[FindingKind] = Counter()
    smallest = 1.0
    for a, b in pairs:
        kind = _kind(a, b)
        compared[kind] += 1
        sa, sb = streams[a], streams[b]
        length = min(len(sa), len(sb))
        matches = sum(x == y for x, y in zip(sa[:length], sb[:length], strict=True))
        p = binomial_tail(matches, length, q)
        smallest = min(smallest, p)
        if p < threshold:
            flagged.setdefault(kind, []).append(Agreement(a, b, matches, length, p))

    findings: list[Finding] = []
    for kind in (FindingKind.duplicate_workers, FindingKind.repeat_epochs,
                 FindingKind.duplicate_ranks):
        hits = flagged.get(kind)
        if not hits:
            continue
        best = min(hits, key=lambda ag: (ag.p_chance, ag.a, ag.b))
        evidence = (f"{_describe(kind, best, ranks)}; {len(hits)} of {compared[kind]} "
                    f"{_PAIR_NOUN[kind]} agree; {format_p(best.p_chance)}")
        shown = sorted({_setting(ag.a) for ag in hits}, key=["off", "on", "n/a"].index)
        findings.append(Finding(kind, True, evidence, fixes[kind], best.p_chance, len(hits),
                                compared[kind], shown))
    if findings:
        return report(Verdict.bug, findings, threshold, len(pairs), smallest)

    lengths = [len(s) for s in streams.values()]
    best_possible = q ** min(lengths) if lengths else 1.0
    if pairs and best_possible >= threshold:
        evidence = (f"even identical sequences of {min(lengths)} samples would have "
                    f"{format_p(best_possible)} (per-load collision probability {q:.2f}); "
                    f"the threshold is {threshold:.0e}")
        finding = Finding(FindingKind.low_power, False, evidence, fixes[FindingKind.low_power],
                          persistent_workers=settings)
        return report(Verdict.inconclusive, [finding], threshold, len(pairs), smallest)
    return report(Verdict.clean, [], threshold, len(pairs), smallest if pairs else None)


# ---------------------------------------------------------------------------------------------
# Entry points


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
    with _check_context():
        with _rank_env(0, ranks):
            _fresh_process_rngs()
            first = loader_parts(call_pipeline(fn, spec, 0, ranks), spec)
        _check_item(first.dataset, item, spec)
        hints = rng_attributes(first.dataset)
        default = [first.persistent] if first.persistent is not None else [False, True]
        settings = _settings(persistent, default, workers)
        reporter.start(f"check-loader {spec}", len(settings) * ranks)
        for setting in settings:
            for rank in range(ranks):
                with _rank_env(rank, ranks):
                    if first is None:
                        _fresh_process_rngs()
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
    rng_fix = _rng_fix(hints)
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
    with _check_context():
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
        fixes = {k: _ADVCLI_BUGGY_FIX for k in (FindingKind.duplicate_workers,
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
