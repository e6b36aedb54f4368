"""How `advcli eval` runs an attack: chunk by chunk, each finished chunk recorded in the run's
`EvalProgress` (and so in the progress file beside -o), and the time left estimated from the
chunks timed so far.

Why chunks: a chunk (--batch-size examples, seeded by its own number) is the unit a kill can
lose and a resume can skip; no chunk depends on another, so skipping finished ones changes
nothing in the result. Under torchrun the pending chunks are dealt out in rounds, one per rank,
and the records of a round are shared with every rank (`torch.distributed.all_gather_object`),
so rank 0 can write them all and every rank can build the same entry.

The estimate: PGD and AutoAttack chunks cost very different times, so each kind has its own
seconds-per-chunk, known from a progress file's records or from this run's first chunk of the
kind; the kinds not timed yet are named, and the total is then a lower bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from advcli import distributed
from advcli.config import Eps, Norm
from advcli.evaluate.progress_file import ChunkRecord, EvalProgress
from advcli.progress import Reporter


def attack_key(attack: str, norm: Norm, eps: Eps) -> str:
    """The progress file's name for one (attack, eps): `pgd linf 8/255`."""
    return f"{attack} {norm.value} {eps.text}"


def _share(item: Any) -> list[Any]:
    """Every rank's item, in rank order (a list of one outside torchrun)."""
    if not distributed.current().enabled:
        return [item]
    out: list[Any] = [None] * distributed.current().world_size
    torch.distributed.all_gather_object(out, item)
    return out


def run_chunks(
    key: str,
    n_chunks: int,
    work: Callable[[int], ChunkRecord],
    progress: EvalProgress,
    after_round: Callable[[list[ChunkRecord], float], None] | None = None,
) -> dict[int, ChunkRecord]:
    """Run the chunks of one (attack, eps) that `progress` does not hold yet, recording each
    round as it finishes; returns all of them by number.

    A round gives one pending chunk to each rank (one round = one chunk outside torchrun); the
    records are shared, so every rank ends with every chunk, and each chunk's `time_s` is its
    share of the round's wall time (the sum over chunks is the attack's time on this many
    ranks). `after_round(records, seconds_per_chunk)` reports progress and estimates."""
    info = distributed.current()
    done = progress.done(key)
    pending = [c for c in range(n_chunks) if c not in done]
    for first in range(0, len(pending), info.world_size):
        t0 = time.perf_counter()
        mine = pending[first + info.rank] if first + info.rank < len(pending) else None
        record = work(mine) if mine is not None else None
        shared = [(c, r) for c, r in _share((mine, record)) if c is not None]
        per_chunk = (time.perf_counter() - t0) / len(shared)
        for c, r in shared:
            r.time_s = per_chunk
            progress.add(key, c, r)
        progress.commit()
        if after_round is not None:
            after_round([r for _, r in shared], per_chunk)
    return {c: done[c] for c in range(n_chunks)}


def duration_text(seconds: float) -> str:
    """45 s, 12 min 5 s, 2 h 05 min: as precise as an estimate deserves."""
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@dataclass
class PlanStep:
    """One (attack, eps) of an evaluation: how many chunks it has and how many are done."""

    kind: str  # pgd | autoattack
    key: str  # `attack_key`
    name: str  # what the log and the plan call it: "pgd-10 linf eps=8/255"
    examples: int  # examples it attacks (PGD: the clean-correct ones, or n when not known)
    chunks: int
    done: int = 0


class Estimator:
    """The remaining time of the plan: seconds per chunk of each kind, from a progress file's
    records or from this run's first chunk of the kind (logged once per kind, when it is first
    known), times the chunks not done yet."""

    def __init__(self, steps: Sequence[PlanStep], progress: EvalProgress, reporter: Reporter) -> None:
        self.steps, self.progress, self.reporter = list(steps), progress, reporter
        self.rates: dict[str, float] = {}
        self.timed: set[str] = set()
        for kind in {s.kind for s in self.steps}:
            recorded = [r.time_s for s in self.steps if s.kind == kind
                        for r in progress.done(s.key).values() if r.time_s > 0]
            if recorded:
                self.rates[kind] = float(np.mean(recorded))

    def left(self) -> tuple[float, list[str]]:
        """(seconds for the kinds with a rate, the kinds without one that still have chunks)."""
        seconds, unknown = 0.0, []
        for s in self.steps:
            left = s.chunks - len(self.progress.done(s.key))
            if left <= 0:
                continue
            if s.kind in self.rates:
                seconds += left * self.rates[s.kind]
            elif s.kind not in unknown:
                unknown.append(s.kind)
        return seconds, unknown

    def text(self) -> str:
        seconds, unknown = self.left()
        parts = []
        for kind in dict.fromkeys(s.kind for s in self.steps):
            left = sum(max(s.chunks - len(self.progress.done(s.key)), 0)
                       for s in self.steps if s.kind == kind)
            if not left:
                continue
            rate = self.rates.get(kind)
            parts.append(f"{kind}: {left} chunks × {duration_text(rate)}" if rate is not None
                         else f"{kind}: {left} chunks, timed after its first")
        bound = "at least " if unknown else "about "
        return f"{bound}{duration_text(seconds)} left ({'; '.join(parts) or 'nothing'})"

    def chunk_timed(self, kind: str, seconds_per_chunk: float) -> None:
        """This run's first chunk of `kind` sets its rate and logs the estimate."""
        if kind in self.timed:
            return
        self.timed.add(kind)
        self.rates[kind] = seconds_per_chunk
        self.reporter.log(f"time estimate: {self.text()}")


def max_perturbation(x_adv: torch.Tensor, x: torch.Tensor, norm: Norm) -> float:
    d = (x_adv.detach().float().cpu() - x.detach().float().cpu()).flatten(1)
    if d.numel() == 0:
        return 0.0
    per = d.abs().amax(1) if norm is Norm.linf else d.norm(dim=1)
    return float(per.max())


def in_memory(progress: EvalProgress | None) -> EvalProgress:
    return progress if progress is not None else EvalProgress(None, {})


def after_round(kind: str, reporter: Reporter, estimator: Estimator | None,
                 advance: bool) -> Callable[[list[ChunkRecord], float], None]:
    def report(records: list[ChunkRecord], per_chunk: float) -> None:
        if advance:
            reporter.advance(sum(len(r.flags) for r in records))
        if estimator is not None:
            estimator.chunk_timed(kind, per_chunk)
    return report
