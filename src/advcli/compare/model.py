"""The table model of `advcli compare`, what every table is built into and rendered from:
columns (`ColumnKey`), rows, cells holding their observations (mean ± std and n, a Wilson
interval, a difference to the baseline), and how a cell's number reads."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from advcli.stats import summarize


class Metric(str, enum.Enum):
    accuracy = "accuracy"
    error = "error"  # 1 − accuracy, Stutz's table


class TableKind(str, enum.Enum):
    """Which table: what claims name in `table:`."""

    accuracy = "accuracy"
    matrix = "matrix"
    ssim = "ssim"
    flatness = "flatness"


@dataclass(frozen=True)
class ColumnKey:
    """What a column holds: an attack variant at one threat model (eps compared rounded) and
    its strength parameters as sorted (name, value) pairs; None = not stated."""

    kind: str
    variant: str
    norm: str | None = None
    eps: float | None = None
    eps_text: str | None = field(default=None, compare=False)
    strength: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str) -> Any:
        return dict(self.strength).get(name)


@dataclass
class Column:
    key: ColumnKey
    title: str
    name: str = ""  # short, for claim verdicts: "PGD-10 (ε = 8/255)"; the title if empty

    @property
    def short(self) -> str:
        return self.name or self.title


@dataclass
class Observation:
    """One number for one cell (one checkpoint, one file), with what tests need."""

    value: float  # in the table's metric; accuracies as fractions
    source: str  # the file it came from
    flags: np.ndarray | None = None  # per-example correctness (also in an error table)
    # dataset, split, index hash, n, content hash: equal tuples = the same examples in order
    examples: tuple[str | None, str | None, str | None, int | None, str | None] | None = None
    n_examples: int | None = None
    train_seed: int | None = None  # the checkpoint's training seed, to pair seeds


@dataclass
class Diff:
    """A row's difference to the baseline in the shown metric (fractions; × 100 for points)."""

    delta: float
    test: str | None = None
    p_value: float | None = None
    ci95: tuple[float, float] | None = None


@dataclass
class Cell:
    observations: list[Observation]
    diff: Diff | None = None
    wilson95: tuple[float, float] | None = None  # accuracy cells with a known n

    @property
    def values(self) -> list[float]:
        return [o.value for o in self.observations]

    @property
    def mean(self) -> float:
        return summarize(self.values).mean

    @property
    def std(self) -> float:
        return summarize(self.values).std

    @property
    def n(self) -> int:
        return len(self.observations)


@dataclass
class Row:
    label: str
    n: int
    cells: dict[ColumnKey, Cell]
    published: bool = False
    citation: str | None = None
    baseline: bool = False
    audit: str | None = None  # the audit column's text (`compare.audit_column`), when shown

    @property
    def display(self) -> str:
        text = f"{self.label} (published)" if self.published else self.label
        return f"{text} (baseline)" if self.baseline else text


@dataclass
class CompareTable:
    title: str
    row_header: str
    columns: list[Column]
    rows: list[Row]
    kind: TableKind = TableKind.accuracy
    percent: bool = True  # values are fractions shown as %; False: plain numbers
    metric: Metric = Metric.accuracy
    alpha: float = 0.05
    notes: list[str] = field(default_factory=list)
    n_means: str = "seeds (checkpoints)"  # what n counts, for the footnote
    show_ci: bool = False  # show each cell's Wilson interval
    show_audit: bool = False  # an Audit column after the numbers (audit files were given)

    @property
    def show_n(self) -> bool:
        return any(r.n > 1 for r in self.rows)


def number_text(value: float, table: CompareTable) -> str:
    """A cell value as shown: % with 2 decimals for accuracies, 4 decimals otherwise."""
    return f"{100 * value:.2f}" if table.percent else f"{value:.4f}"


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
