"""What `check-loader` returns: verdicts, findings and reports (typed, with `to_dict` for YAML and
JSON), and the key of one output sequence (`StreamKey`). No behaviour beyond describing itself."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from advcli.config import Augment

SCHEMA = "advcli.check-loader/1"
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
    # The output follows the item, not the epoch: an RNG seeded per item from something fixed
    # for the whole run (the index alone; or the worker seed with persistent workers).
    frozen = "augmentation frozen per item"
    per_worker = "one augmentation per item per worker"
    no_randomness = "no randomness"
    low_power = "too little randomness to judge"


@dataclass(frozen=True, order=True)
class StreamKey:
    """One output sequence: the loads of one worker in one epoch of one run."""

    persistent: bool | None  # None: no worker processes, so nothing to persist
    rank: int
    epoch: int
    worker: int  # MAIN for the main process


# Each stream's fingerprints in load order.
Streams = dict[StreamKey, list[str]]


@dataclass(frozen=True)
class Agreement:
    """Two sequences compared position by position, or item by item across the two load orders
    (`by_item`)."""

    a: StreamKey
    b: StreamKey
    matches: int
    length: int
    p_chance: float
    by_item: bool = False
    # By item: p(chance) with each distinct item counted once (its repeated loads are one draw
    # when the output is fixed per worker); what tells "frozen" from "per worker" (None: not by item).
    p_items: float | None = None
    # Counted over distinct items (both sequences gave one output per item), not loads.
    distinct: bool = False

    @property
    def unit(self) -> str:
        return "items" if self.distinct else "samples"


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
    item: int  # the first of the items loaded
    persistent_workers: list[str]  # "off" / "on" / "n/a" (no worker processes)
    loads: int  # judged loads (control runs not counted)
    distinct_outputs: int
    collision_probability: float  # two independent loads of one item agree (from the control)
    threshold: float  # per-comparison p below which agreement is flagged
    pairs_compared: int
    smallest_p: float | None  # the most suspicious agreement of all pairs compared
    time_s: float
    notes: list[str] = field(default_factory=list)
    advcli_pipeline: bool = False  # advcli's own pipeline on probe images (item is moot)
    items: int = 1  # distinct items per sequence, from `item` on
    control_runs: int = 0  # runs under other seeds that gave the chance-agreement estimate
    rng_calls: list[str] = field(default_factory=list)  # random-number calls seen while loading

    @property
    def is_bug(self) -> bool:
        return self.verdict is Verdict.bug

    @property
    def failed(self) -> bool:
        """The command exits 1 when this is true."""
        return self.is_bug

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

    @property
    def failed(self) -> bool:
        """The command exits 1 when this is true."""
        return not self.as_expected

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
