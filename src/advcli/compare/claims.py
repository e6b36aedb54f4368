"""Published claims, checked by `advcli compare` against its tables: the `claims:` block of a
recipe's compare.yaml (or `--claims FILE`).

A claim states what a study found in terms of a table's rows and columns. `check_claims`
evaluates each on the reproduced rows only (published rows are the claim's source, not its
test) and returns pass, fail or inconclusive with the numbers that decided it.

Checks (`check:`):
- `columns`: on every selected row (`rows:`, default all), cell(`left` column) `op`
  cell(`right` column), e.g. "AutoAttack error >= PGD-10 error on every row". Columns pair
  up by threat model (norm, eps) unless one side has none (clean).
- `rows`: in every selected column (`columns:`, default all), cell(`left` row) `op`
  cell(`right` row).
- `max` / `min`: `row` has the largest / smallest value of the column(s) among `rows`
  (default all), e.g. "the FGSM-augmented model is the sharpest".
- `order`: `rows` are in `op` order (each one `op` the next) in the column(s).
- `paired`: `left` row − `right` row over seed-matched pairs (equal training seeds), the mean
  difference's (1 − alpha) Student-t interval (95 % at the default alpha) against ±`margin`.
  `expect: greater` passes when the interval lies above +margin, `less` below −margin,
  `equivalent` inside [−margin, +margin]; an interval lying entirely in one of the other two
  regions fails; one straddling a margin (or fewer than two pairs) is inconclusive.

Noise: a strict comparison (`>`, `<`) passes only when the difference is significant at the
table's alpha (Welch's t across seeds, McNemar's exact test for one run a side on the same
examples); a non-strict one (`>=`, `<=`) fails only on a significant violation; otherwise the
claim is inconclusive. Where no test applies (single numbers without per-example flags) the
numbers themselves decide and the detail says "untested". A missing row or column makes the
claim inconclusive (never a pass).

Flatness cells (every check on the flatness table) are compared direction seed by direction
seed: the two models' per-seed values (each the mean over the row's checkpoints) over the
seeds both were measured along, as a paired t-test with its (1 − alpha) interval of the mean
difference (`stats.paired_difference`). The direction draw is the noise here, and pairing
removes what the models share along one draw. Fewer than `MIN_DIRECTION_SEEDS` shared seeds
is inconclusive, never decided by the numbers alone (one draw says little about a landscape:
`advcli landscape --flatness-seeds 5`). A sign test would need 6 seeds to reach p < 0.05 at
all, so the t interval is used.

Column selectors: `clean`, or a mapping with `kind` (clean, fgsm, fgsm-rs, pgd, autoattack,
apgd-ce+malt-t3 (eval --fast-worst-case), stadv, worst, transfer, ssim, flatness) and optionally
`norm`, `eps` ("8/255"), `steps`, `dim` (flatness: 1 or 2).
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advcli.compare.flatness import direction_pairs
from advcli.compare.model import Cell, Column, ColumnKey, CompareTable, TableKind, format_p, number_text
from advcli.compare.rows import significance
from advcli.config import parse_choice, parse_eps
from advcli.errors import ConfigError, UsageError
from advcli.stats import paired_difference


class Check(str, enum.Enum):
    columns = "columns"
    rows = "rows"
    max = "max"
    min = "min"
    order = "order"
    paired = "paired"


class Op(str, enum.Enum):
    gt = ">"
    ge = ">="
    lt = "<"
    le = "<="


class Expect(str, enum.Enum):
    greater = "greater"
    less = "less"
    equivalent = "equivalent"


class Verdict(str, enum.Enum):
    passed = "pass"
    failed = "fail"
    inconclusive = "inconclusive"


_OPS: dict[Op, Callable[[float, float], bool]] = {
    Op.gt: operator.gt, Op.ge: operator.ge, Op.lt: operator.lt, Op.le: operator.le,
}
_KINDS = ("clean", "fgsm", "fgsm-rs", "pgd", "autoattack", "apgd-ce+malt-t3", "stadv", "worst",
          "transfer", "ssim", "flatness")
# Flatness claims need this many direction seeds shared by the two models (the rule;
# with fewer the t interval is so wide that only a huge difference could ever pass).
MIN_DIRECTION_SEEDS = 5


@dataclass(frozen=True)
class ColumnSelector:
    kind: str
    norm: str | None = None
    eps: float | None = None
    eps_text: str | None = None
    steps: int | None = None
    dim: int | None = None

    def matches(self, key: ColumnKey) -> bool:
        if key.kind != self.kind:
            return False
        if self.norm is not None and key.norm != self.norm:
            return False
        if self.eps is not None and (key.eps is None or abs(key.eps - self.eps) > 1e-6):
            return False
        if self.steps is not None and key.param("steps") != self.steps:
            return False
        return self.dim is None or key.variant == f"{self.dim}-D"

    @property
    def text(self) -> str:
        parts = [self.kind]
        parts += [p for p in (self.norm, self.eps_text) if p]
        if self.steps is not None:
            parts.append(f"{self.steps} steps")
        if self.dim is not None:
            parts.append(f"{self.dim}-D")
        return " ".join(parts)


@dataclass(frozen=True)
class Claim:
    text: str
    check: Check
    table: TableKind | None = None  # None: the first table (the accuracy table or the matrix)
    rows: tuple[str, ...] | None = None  # None: every reproduced row
    columns: tuple[ColumnSelector, ...] | None = None  # None: every column
    left: str | ColumnSelector | None = None
    right: str | ColumnSelector | None = None
    row: str | None = None
    op: Op = Op.gt
    margin: float = 0.0
    expect: Expect | None = None


@dataclass
class ClaimResult:
    claim: Claim
    verdict: Verdict
    detail: str
    table: str | None = None  # the title of the table it was checked on


# --------------------------------------------------------------------------- parsing

_KEYS = {
    Check.columns: {"rows", "left", "right", "op"},
    Check.rows: {"columns", "left", "right", "op"},
    Check.max: {"columns", "row", "rows"},
    Check.min: {"columns", "row", "rows"},
    Check.order: {"columns", "rows", "op"},
    Check.paired: {"columns", "left", "right", "margin", "expect"},
}
_REQUIRED = {
    Check.columns: ("left", "right"),
    Check.rows: ("left", "right"),
    Check.max: ("row",),
    Check.min: ("row",),
    Check.order: ("rows",),
    Check.paired: ("left", "right", "margin", "expect"),
}


def load_claims(specs: Sequence[Any] | None) -> list[Claim]:
    """Claims from a config's `claims:` list; a string item is a YAML file whose `claims:`
    key holds more of them (`--claims compare.yaml`)."""
    out: list[Claim] = []
    for i, spec in enumerate(specs or []):
        if isinstance(spec, (str, Path)):
            out += _claims_file(Path(spec))
        else:
            out.append(parse_claim(spec, where=f"claims[{i}]"))
    return out


def _claims_file(path: Path) -> list[Claim]:
    from advcli.config import load_config_file

    raw = load_config_file(path).get("claims")
    if not isinstance(raw, list):
        raise ConfigError(f"{str(path)!r} has no `claims:` list; add one or pass another file")
    return [parse_claim(spec, where=f"{path}: claims[{i}]") for i, spec in enumerate(raw)]


def parse_claim(spec: Any, *, where: str) -> Claim:
    """One claim mapping, checked at the boundary: every error names the claim and the key."""

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"{where}: {problem}")

    if not isinstance(spec, dict):
        raise fail(f"must be a mapping with `claim:` and `check:`, got {type(spec).__name__}")
    text = spec.get("claim")
    if not isinstance(text, str) or not text.strip():
        raise fail("needs `claim:`, the published claim as text")
    try:
        check = parse_choice(Check, str(spec.get("check")), name="check")
        table = None if spec.get("table") is None else parse_choice(
            TableKind, str(spec["table"]), name="table")
    except UsageError as exc:
        raise fail(str(exc)) from None
    allowed = {"claim", "check", "table"} | _KEYS[check]
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)} for check {check.value}; "
                   f"valid: {', '.join(sorted(allowed))}")
    missing = [k for k in _REQUIRED[check] if spec.get(k) is None]
    if missing:
        raise fail(f"check {check.value} needs {', '.join(missing)}")

    def labels(key: str) -> tuple[str, ...] | None:
        value = spec.get(key)
        if value is None or value == "all":
            return None
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise fail(f"`{key}` must be a row label, a list of them, or all")

    rows = labels("rows")
    if check is Check.order and (rows is None or len(rows) < 2):
        raise fail("check order needs `rows:`, two or more labels in the claimed order")
    columns = None
    if spec.get("columns") is not None:
        raw = spec["columns"]
        columns = tuple(_selector(c, fail) for c in (raw if isinstance(raw, list) else [raw]))
    sides: dict[str, Any] = {}
    for side in ("left", "right"):
        if side in spec:
            value = spec[side]
            if check is Check.columns:
                sides[side] = _selector(value, fail)
            elif isinstance(value, str):
                sides[side] = value
            else:
                raise fail(f"`{side}` must be a row label for check {check.value}")
    row = spec.get("row")
    if row is not None and not isinstance(row, str):
        raise fail("`row` must be a row label")
    try:
        op = parse_choice(Op, str(spec.get("op", ">")), name="op")
        expect = None if spec.get("expect") is None else parse_choice(
            Expect, str(spec["expect"]), name="expect")
    except UsageError as exc:
        raise fail(str(exc)) from None
    margin = spec.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0:
        raise fail(f"`margin` must be a number >= 0 in the table's unit (0.01 = 1 point), "
                   f"got {margin!r}")
    return Claim(text=text.strip(), check=check, table=table, rows=rows, columns=columns,
                 left=sides.get("left"), right=sides.get("right"), row=row, op=op,
                 margin=float(margin), expect=expect)


def _selector(value: Any, fail: Callable[[str], ConfigError]) -> ColumnSelector:
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
        raise fail(f"a column is `clean` or a mapping with `kind`, got {value!r}")
    unknown = sorted(set(value) - {"kind", "norm", "eps", "steps", "dim"})
    if unknown:
        raise fail(f"unknown column key(s) {', '.join(unknown)}; valid: kind, norm, eps, "
                   "steps, dim")
    kind = value["kind"].strip().lower()
    if kind not in _KINDS:
        raise fail(f"unknown column kind {kind!r}; valid values: {', '.join(_KINDS)}")
    eps = eps_text = None
    if value.get("eps") is not None:
        try:
            parsed = parse_eps(str(value["eps"]), name="eps")
        except UsageError as exc:
            raise fail(str(exc)) from None
        eps, eps_text = parsed.value, parsed.text
    for key in ("steps", "dim"):
        if value.get(key) is not None and (isinstance(value[key], bool)
                                           or not isinstance(value[key], int)):
            raise fail(f"column `{key}` must be an integer, got {value[key]!r}")
    return ColumnSelector(kind, value.get("norm"), eps, eps_text, value.get("steps"),
                          value.get("dim"))


# --------------------------------------------------------------------------- checking

@dataclass
class _Outcome:
    verdict: Verdict
    text: str


def _verdict(holds: bool, significant: bool, op: Op) -> Verdict:
    """Strict ops pass only when significant; every op fails only on a significant violation."""
    if holds:
        strict = op in (Op.gt, Op.lt)
        return Verdict.inconclusive if strict and not significant else Verdict.passed
    return Verdict.failed if significant else Verdict.inconclusive


def _compare_flatness(a: Cell, b: Cell, op: Op, table: CompareTable,
                      names: tuple[str, str]) -> _Outcome:
    """`a` op `b` on flatness cells, paired by direction seed (see the module docstring)."""
    seeds, av, bv = direction_pairs(a, b)
    head = (f"{names[0]} {number_text(a.mean, table)} {op.value} {names[1]} "
            f"{number_text(b.mean, table)}")
    if len(seeds) < MIN_DIRECTION_SEEDS:
        return _Outcome(Verdict.inconclusive, (
            f"{head}: {len(seeds)} shared direction seed(s), a flatness claim needs "
            f"{MIN_DIRECTION_SEEDS} or more (advcli landscape --flatness-seeds "
            f"{MIN_DIRECTION_SEEDS})"))
    d = paired_difference(av, bv, confidence=1.0 - table.alpha)
    assert d.low is not None and d.high is not None  # two or more pairs
    holds = _OPS[op](d.mean, 0.0)
    # Identical differences on every seed (p undefined) are as consistent as it gets.
    significant = d.mean != 0.0 if d.p_value is None else d.p_value < table.alpha
    p = "every seed the same difference" if d.p_value is None else format_p(d.p_value)

    def signed(v: float) -> str:
        return f"{v:+.4f}".replace("-", "−")

    return _Outcome(_verdict(holds, significant, op), (
        f"{head}: {'holds' if holds else 'does not hold'} (paired over {len(seeds)} direction "
        f"seeds: Δ = {signed(d.mean)}, {100 * d.confidence:g}% CI [{signed(d.low)}, "
        f"{signed(d.high)}], {p})"))


def _compare_cells(a: Cell, b: Cell, op: Op, table: CompareTable, names: tuple[str, str]) -> _Outcome:
    if table.kind is TableKind.flatness:
        return _compare_flatness(a, b, op, table, names)
    holds = _OPS[op](a.mean, b.mean)
    sig = significance(b.observations, a.observations)
    p = None if sig is None else sig.p_value
    # Untested (no p): the numbers themselves decide, as if every difference were significant.
    verdict = _verdict(holds, p is None or p < table.alpha, op)
    evidence = "untested" if p is None else format_p(p)
    return _Outcome(verdict, f"{names[0]} {number_text(a.mean, table)} {op.value} {names[1]} "
                             f"{number_text(b.mean, table)}: {'holds' if holds else 'does not hold'} "
                             f"({evidence})")


def _paired(left: Cell, right: Cell, claim: Claim, table: CompareTable, column: str) -> _Outcome:
    a = {o.train_seed: o.value for o in left.observations if o.train_seed is not None}
    b = {o.train_seed: o.value for o in right.observations if o.train_seed is not None}
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return _Outcome(Verdict.inconclusive,
                        f"{column}: {len(seeds)} seed-matched pair(s) (seeds {seeds or 'none'}); "
                        "a paired interval needs 2 or more")
    d = paired_difference([a[s] for s in seeds], [b[s] for s in seeds],
                          confidence=1.0 - table.alpha)
    assert d.low is not None and d.high is not None  # two or more pairs
    m = claim.margin
    above, below = d.low > m, d.high < -m
    inside = d.low >= -m and d.high <= m
    want = {Expect.greater: above, Expect.less: below, Expect.equivalent: inside}
    expect = claim.expect or Expect.greater
    if want[expect]:
        verdict = Verdict.passed
    elif any(v for e, v in want.items() if e is not expect):
        verdict = Verdict.failed
    else:
        verdict = Verdict.inconclusive
    scale, unit = (100.0, " pts") if table.percent else (1.0, "")

    def signed(v: float) -> str:
        return f"{scale * v:+.2f}".replace("-", "−")

    p = "" if d.p_value is None else f", {format_p(d.p_value)}"
    return _Outcome(verdict, (
        f"{column}: {claim.left} − {claim.right} = {signed(d.mean)}{unit}, "
        f"{100 * (1 - table.alpha):g}% CI "
        f"[{signed(d.low)}, {signed(d.high)}] (paired t over seeds {seeds}{p}); margin "
        f"±{scale * m:.2f}{unit}"))


def _aggregate(outcomes: list[_Outcome]) -> tuple[Verdict, str]:
    if not outcomes:
        return Verdict.inconclusive, "nothing to compare"
    failed = [o for o in outcomes if o.verdict is Verdict.failed]
    unsure = [o for o in outcomes if o.verdict is Verdict.inconclusive]
    verdict = Verdict.failed if failed else Verdict.inconclusive if unsure else Verdict.passed
    shown = (failed or unsure or outcomes)[:3]
    held = len(outcomes) - len(failed) - len(unsure)
    prefix = f"{held}/{len(outcomes)} hold; " if len(outcomes) > 1 else ""
    more = f"; … {len(failed or unsure or outcomes) - 3} more" if len(failed or unsure
                                                                       or outcomes) > 3 else ""
    return verdict, prefix + "; ".join(o.text for o in shown) + more


def _select(table: CompareTable, selectors: Sequence[ColumnSelector] | None) -> list[Column]:
    if selectors is None:
        return list(table.columns)
    return [c for c in table.columns if any(s.matches(c.key) for s in selectors)]


def _missing(what: str) -> _Outcome:
    return _Outcome(Verdict.inconclusive, f"no {what} in these files")


def _check(claim: Claim, tables: Sequence[CompareTable]) -> ClaimResult:
    if claim.table is None:
        table = tables[0] if tables else None
    else:
        table = next((t for t in tables if t.kind is claim.table), None)
    if table is None:
        what = f"{claim.table.value} table" if claim.table else "table"
        return ClaimResult(claim, Verdict.inconclusive, f"no {what} in these files")
    rows = {r.label: r for r in table.rows if not r.published}
    columns = _select(table, claim.columns)
    outcomes: list[_Outcome] = []
    if claim.columns is not None and not columns:
        outcomes.append(_missing("column " + " / ".join(s.text for s in claim.columns)))

    def cell(label: str, col: Column) -> Cell | None:
        row = rows.get(label)
        return None if row is None else row.cells.get(col.key)

    def need_rows(labels: Sequence[str]) -> list[str]:
        absent = [lb for lb in labels if lb not in rows]
        outcomes.extend(_missing(f"reproduced row {lb!r}") for lb in absent)
        return [lb for lb in labels if lb in rows]

    if claim.check is Check.columns:
        assert isinstance(claim.left, ColumnSelector) and isinstance(claim.right, ColumnSelector)
        lefts, rights = _select(table, [claim.left]), _select(table, [claim.right])
        if not lefts:
            outcomes.append(_missing(f"column {claim.left.text}"))
        if not rights:
            outcomes.append(_missing(f"column {claim.right.text}"))
        pairs = [(lc, rc) for lc in lefts for rc in rights
                 if lc.key.eps is None or rc.key.eps is None
                 or (lc.key.norm, lc.key.eps) == (rc.key.norm, rc.key.eps)]
        for label in need_rows(claim.rows or list(rows)):
            for lc, rc in pairs:
                a, b = cell(label, lc), cell(label, rc)
                if a is None or b is None:
                    outcomes.append(_missing(f"{lc.short if a is None else rc.short} for {label!r}"))
                    continue
                outcomes.append(_compare_cells(a, b, claim.op, table,
                                               (f"{label}: {lc.short}", rc.short)))
    elif claim.check in (Check.rows, Check.paired):
        assert isinstance(claim.left, str) and isinstance(claim.right, str)
        if len(need_rows([claim.left, claim.right])) == 2:
            for col in columns:
                a, b = cell(claim.left, col), cell(claim.right, col)
                if a is None or b is None:
                    if claim.columns is not None:
                        outcomes.append(_missing(f"{col.short} for both rows"))
                    continue
                if claim.check is Check.paired:
                    outcomes.append(_paired(a, b, claim, table, col.short))
                else:
                    outcomes.append(_compare_cells(a, b, claim.op, table,
                                                   (f"{col.short}: {claim.left}", claim.right)))
    elif claim.check in (Check.max, Check.min):
        assert claim.row is not None
        op = Op.gt if claim.check is Check.max else Op.lt
        rivals = need_rows(claim.rows) if claim.rows else list(rows)
        if need_rows([claim.row]):
            for col in columns:
                winner = cell(claim.row, col)
                if winner is None:
                    if claim.columns is not None:
                        outcomes.append(_missing(f"{col.short} for {claim.row!r}"))
                    continue
                for label in rivals:
                    other = cell(label, col)
                    if label != claim.row and other is not None:
                        outcomes.append(_compare_cells(winner, other, op, table,
                                                       (f"{col.short}: {claim.row}", label)))
    elif claim.check is Check.order:
        assert claim.rows is not None
        present = need_rows(claim.rows)
        if len(present) == len(claim.rows):
            for col in columns:
                for first, second in zip(present, present[1:], strict=False):
                    a, b = cell(first, col), cell(second, col)
                    if a is None or b is None:
                        if claim.columns is not None:
                            outcomes.append(_missing(f"{col.short} for {first!r} and {second!r}"))
                        continue
                    outcomes.append(_compare_cells(a, b, claim.op, table,
                                                   (f"{col.short}: {first}", second)))
    verdict, detail = _aggregate(outcomes)
    return ClaimResult(claim, verdict, detail, table.title)


def check_claims(claims: Sequence[Claim], tables: Sequence[CompareTable]) -> list[ClaimResult]:
    """Each claim's verdict on these tables, in the order the claims were given."""
    return [_check(c, tables) for c in claims]
