"""`advcli compare`: the seeds' tables from result files, attack summaries and landscape files,
with statistics. Pure: no rich/typer.

This module owns the table model (`CompareTable`: columns, rows, cells holding their
observations, with mean ± std and n, a Wilson interval, differences to a baseline with
p-values) and how the tables are built from the inputs. `compare_render` turns tables into
text (markdown, csv, latex, json data; the CLI draws the rich version from the same strings);
`claims` checks a recipe's published claims against the tables.

- Rows are labels, in the order the files were given; a published file (`published: true`)
  is its own row, placed just before the reproduced row of the same label, marked and cited.
- Files of one label are pooled per checkpoint (two eval runs of one checkpoint, say PGD and
  AutoAttack, fill one seed) and the seeds give mean ± sample std and n. One checkpoint in
  one column twice is one measurement when both files were made on the same examples (the
  first file is used); on other examples it is an error, never a silent drop.
- Columns: clean accuracy first, then robust accuracy per norm, eps, attack and every strength
  parameter (PGD steps, step size, restarts; AutoAttack version, attacks, restarts; stAdv tau,
  bound, steps, step size), so that evaluations of different strength never pool as seeds.
  Titles follow the seeds' tables ("Standard Accuracy (%)", "Robust Accuracy (ε = 8/255)
  (%)"); the attack and the norm appear only when the table holds more than one, a strength
  parameter only where two columns differ in it.
- Published files often leave parameters unstated (a missing key, or a name in an entry's
  `unstated:` list for values the schema needs, such as eps). Such an entry goes in the one
  reproduced column that agrees with everything it does state, and a note says what was
  not stated.
- Each accuracy cell carries the 95 % Wilson interval for its n test examples (`ci`: shown):
  test-set sampling only; the ± is the seed spread.
- `baseline`: each other row's difference to it, with McNemar's exact test on the per-example
  flags when both rows are one run on the same examples, or Welch's t-test when both have
  several seeds (and a bootstrap interval from `stats.MIN_BOOTSTRAP_RUNS` seeds a side).
- `matrix`: trained-with × attacked-with (loss-landscape paper, Table 1), from eval results,
  published files and attack summaries (their `robust_accuracy`: correct before AND after the
  attack); summaries and published entries with `ssim_dissimilarity_mean` give the mean 1−SSIM
  table (Table 2).
- Landscape files (`advcli landscape`) give a flatness table: per checkpoint label, the mean
  loss increase at radius r along the filter-normalised directions, one column per dimension.
  Each direction seed of each checkpoint is one sample (`DirectionSample`; a file written
  before `--flatness-seeds` is one seed): mean ± sample std over checkpoints × direction
  seeds, and a note with the seeds and each row's per-seed min..max. `direction_pairs` pairs
  two cells seed by seed, for the claims' paired test.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from advcli.audit.file import SCHEMA as AUDIT_SCHEMA
from advcli.compare.audit_column import AuditEntry, audit_column, code_identity, read_audit_entry
from advcli.errors import ResultsError, UsageError
from advcli.formats.results import AttackSummary, Entry, EvalResult, format_number, load_any
from advcli.stats import (
    Significance,
    bootstrap_diff_ci,
    mcnemar_exact,
    summarize,
    welch_t,
    wilson_interval,
)

if TYPE_CHECKING:  # claims imports this module; run_compare imports it when called
    from advcli.compare.claims import Claim, ClaimResult


class Metric(str, enum.Enum):
    accuracy = "accuracy"
    error = "error"  # 1 − accuracy, Stutz's table


class TableKind(str, enum.Enum):
    """Which table: what claims name in `table:`."""

    accuracy = "accuracy"
    matrix = "matrix"
    ssim = "ssim"
    flatness = "flatness"


_NORM_ORDER = {"linf": 0, "l2": 1, None: 2}
_NORM_TEXT = {"linf": "L∞", "l2": "L2"}
_KIND_ORDER = ["clean", "fgsm", "fgsm-rs", "pgd", "autoattack", "stadv", "worst", "transfer"]
_ATTACK_NAMES = {"fgsm": "FGSM", "fgsm-rs": "FGSM-RS", "pgd": "PGD", "stadv": "stAdv",
                 "autoattack": "AA", "worst": "Worst-case", "clean": "Clean"}
# Every parameter that changes how strong an attack is: two evaluations that differ in one
# are different columns.
_STRENGTH: dict[str, tuple[str, ...]] = {
    "pgd": ("steps", "step_size", "restarts", "random_start", "targeted", "keep"),
    "fgsm": ("targeted", "keep"),
    "fgsm-rs": ("step_size", "restarts", "targeted", "keep"),
    "autoattack": ("version", "attacks", "restarts"),
    "stadv": ("tau", "bound", "steps", "step_size", "targeted"),
}
# What advcli ran with when its own file does not record a parameter (older eval files do not
# write random_start, targeted or keep: they judged the last iterate). A published file's
# missing parameter is unknown instead, except `targeted`: a published robust accuracy is
# untargeted unless it says otherwise.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "pgd": {"restarts": 1, "random_start": True, "targeted": False, "keep": "last"},
    "fgsm": {"targeted": False, "keep": "last"},
    "fgsm-rs": {"restarts": 1, "targeted": False, "keep": "last"},
    "stadv": {"targeted": False},
}
_PUBLISHED_DEFAULTS = {"targeted": False}
# Parameters worth naming in the note about a published row's unstated values.
_NOTE_NAMES = {"eps": "ε", "steps": "steps", "step_size": "step size", "restarts": "restarts",
               "version": "AutoAttack version", "attacks": "AutoAttack attacks", "tau": "τ",
               "bound": "bound"}
_EPS_KINDS = ("fgsm", "fgsm-rs", "pgd", "autoattack", "worst")


# --------------------------------------------------------------------------- table model

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


# --------------------------------------------------------------------------- column keys

def _variant(kind: str, params: dict[str, Any]) -> str:
    """The attack as the papers name it: PGD-10, AA, FGSM, stAdv, ..."""
    name = _ATTACK_NAMES.get(kind, kind)
    if kind == "pgd":
        steps, restarts = params.get("steps"), params.get("restarts") or 1
        name = f"PGD-{steps}" if steps else "PGD"
        if restarts > 1:
            name += f" ×{restarts}"
    elif kind == "autoattack":
        version = params.get("version", "standard")
        if version == "plus":
            name = "AA+"
        elif version == "rand":
            name = "AA-rand"
        elif version == "custom":
            name = f"AA ({', '.join(params.get('attacks') or [])})"
    return name


def _hashable(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 7)  # 2/255 written as a fraction or as a decimal: one column
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _strength(kind: str, params: dict[str, Any], *, published: bool) -> tuple[tuple[str, Any], ...]:
    defaults = _PUBLISHED_DEFAULTS if published else _DEFAULTS.get(kind, {})
    unstated = set(params.get("unstated") or ()) if published else set()
    out = []
    for name in _STRENGTH.get(kind, ()):
        value = None if name in unstated else params.get(name, defaults.get(name))
        out.append((name, _hashable(value)))
    return tuple(out)


def entry_key(entry: Entry, *, published: bool = False) -> ColumnKey:
    """The column an eval entry belongs in."""
    if entry.is_clean:
        return ColumnKey("clean", "Clean")
    unstated = set(entry.params.get("unstated") or ()) if published else set()
    eps = None if "eps" in unstated else entry.eps_key()
    eps_text = None if eps is None else entry.eps_text
    if entry.attack == "transfer":
        source = entry.params.get("source") or {}
        attack = source.get("attack") or {}
        kind = str(attack.get("name", "adversarial set"))
        origin = source.get("label") or source.get("checkpoint_label")
        variant = f"{_variant(kind, attack)} transfer"
        if origin:
            variant += f" from {origin}"
        return ColumnKey("transfer", variant, entry.norm, eps, eps_text,
                         _strength(kind, attack, published=published))
    if entry.attack == "worst":
        of = tuple(sorted(str(a) for a in entry.params.get("of") or ()))
        return ColumnKey("worst", _variant("worst", {}), entry.norm, eps, eps_text,
                         (("of", of or None),))
    return ColumnKey(entry.attack, _variant(entry.attack, entry.params), entry.norm, eps,
                     eps_text, _strength(entry.attack, entry.params, published=published))


def summary_key(summary: AttackSummary) -> ColumnKey:
    """The attacked-with column of an attack summary."""
    a = summary.attack
    kind = str(a["name"])
    eps = a.get("eps")
    eps_f = None if eps is None or kind == "stadv" else round(float(eps), 7)
    eps_text = a.get("eps_text") or (None if eps_f is None else format_number(eps_f))
    return ColumnKey(kind, _variant(kind, a), a.get("norm") if eps_f is not None else None,
                     eps_f, eps_text, _strength(kind, a, published=False))


def _kind_rank(kind: str) -> int:
    return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)


def _order_threat_first(k: ColumnKey) -> tuple:
    return (k.kind != "clean", _NORM_ORDER.get(k.norm, 2), k.eps if k.eps is not None else -1.0,
            _kind_rank(k.kind), k.variant, repr(k.strength))


def _order_attack_first(k: ColumnKey) -> tuple:
    return (_kind_rank(k.kind), k.variant, _NORM_ORDER.get(k.norm, 2),
            k.eps if k.eps is not None else -1.0, repr(k.strength))


def pixel_text(value: float) -> str:
    """A [0, 1]-scale pixel quantity as the papers write it: "2/255" when it is a round
    number of 255ths (to 2 decimals), else a short decimal."""
    scaled = value * 255
    # Keys hold values rounded to 7 decimals: 1/255 comes back as 1.0000080/255.
    if scaled >= 0.01 and abs(scaled - round(scaled, 2)) < 5e-5:
        return f"{round(scaled, 2):g}/255"
    return f"{value:.4g}"


def _param_text(name: str, value: Any) -> str:
    if value is None:
        return "unbounded" if name == "bound" else f"{_NOTE_NAMES.get(name, name)} not stated"
    if name == "step_size":
        return f"step {pixel_text(float(value))}"
    if name == "bound":
        return f"bound {value:g} px"
    if name == "tau":
        return f"τ = {value:g}"
    if name in ("steps", "restarts"):
        return f"{value} {name}"
    if name in ("random_start", "targeted"):
        return name.replace("_", " ") if value else f"no {name.replace('_', ' ')}"
    if name == "keep":
        return "robust at every iterate" if value == "first-success" else "last iterate only"
    if name in ("attacks", "of"):
        return ", ".join(value)
    return f"{name} {value}"


def _strength_texts(keys: Sequence[ColumnKey]) -> dict[ColumnKey, str]:
    """For columns that share attack, variant and threat model but differ in strength: the
    parameters they differ in, as text ("step 1/255"); nothing for the others."""
    groups: dict[tuple, list[ColumnKey]] = {}
    for k in keys:
        groups.setdefault((k.kind, k.variant, k.norm, k.eps), []).append(k)
    out: dict[ColumnKey, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        names = list(dict.fromkeys(n for k in members for n, _ in k.strength))
        differ = [n for n in names if len({k.param(n) for k in members}) > 1]
        for k in members:
            out[k] = ", ".join(_param_text(n, k.param(n)) for n in differ)
    return out


def _threat_text(k: ColumnKey, with_norm: bool) -> str:
    parts = []
    if with_norm and k.norm:
        parts.append(_NORM_TEXT.get(k.norm, k.norm))
    if k.eps_text is not None:
        parts.append(f"ε = {k.eps_text}")
    return ", ".join(parts)


def _variant_text(k: ColumnKey, extra: dict[ColumnKey, str]) -> str:
    return f"{k.variant} ({extra[k]})" if extra.get(k) else k.variant


def _title(k: ColumnKey, metric: Metric, with_variant: bool, with_norm: bool,
           extra: dict[ColumnKey, str]) -> str:
    if k.kind == "clean":
        return "Standard Accuracy (%)" if metric is Metric.accuracy else "Test Error (%)"
    base = "Robust Accuracy" if metric is Metric.accuracy else "Robust Test Error"
    if with_variant or k.kind in ("worst", "transfer") or extra.get(k):
        base = f"{_variant_text(k, extra)} {base}"
    threat = _threat_text(k, with_norm)
    return f"{base} ({threat}) (%)" if threat else f"{base} (%)"


def _matrix_title(k: ColumnKey, with_norm: bool, extra: dict[ColumnKey, str]) -> str:
    threat = _threat_text(k, with_norm)
    name = _variant_text(k, extra)
    return f"{name} ({threat})" if threat else name


def _column_text(k: ColumnKey) -> str:
    """A column for error messages: the attack, every parameter and the threat model."""
    params = ", ".join(_param_text(n, v) for n, v in k.strength)
    threat = _threat_text(k, with_norm=True)
    return ", ".join(p for p in (k.variant, threat, params) if p)


# --------------------------------------------------------------------------- observations

def _metric_value(accuracy: float, metric: Metric) -> float:
    return accuracy if metric is Metric.accuracy else 1.0 - accuracy


def _entry_obs(result: EvalResult, entry: Entry, metric: Metric) -> Observation:
    index = entry.index_sha256 or result.data.index_sha256
    content = result.data.examples_sha256
    if entry.attack == "transfer":
        # Transfer flags are about the adversarial set's images, not the clean examples.
        content = (entry.params.get("source") or {}).get("sha256")
    examples = None
    if index is not None:
        examples = (result.data.dataset, result.data.split, index, entry.n, content)
    return Observation(_metric_value(entry.accuracy, metric), str(result.path or result.label),
                       entry.flags, examples, entry.n or None, result.model.seed)


def _same_examples(a: Observation, b: Observation) -> bool | None:
    """True: made on the same examples in the same order; False: not; None: cannot tell."""
    if a.examples is None or b.examples is None:
        return None
    (da, sa, ia, na, ca), (db, sb, ib, nb, cb) = a.examples, b.examples
    if ia is None or ib is None or na is None or nb is None:
        return None
    if (ia, na, sa) != (ib, nb, sb):
        return False
    return not ((da and db and da != db) or (ca and cb and ca != cb))


def _examples_text(obs: Observation) -> str:
    if obs.examples is None:
        return "unknown examples"
    dataset, split, index, n, content = obs.examples
    text = f"{dataset}/{split} n={n} index {str(index)[:12]}"
    return text + (f" content {content[:12]}" if content else "")


@dataclass
class _Group:
    """A row in the making: per seed (checkpoint), the observation per column."""

    label: str
    published: bool
    citation: str | None = None
    seeds: dict[str, dict[ColumnKey, Observation]] = field(default_factory=dict)
    unstated: set[str] = field(default_factory=set)  # published parameters placed by matching
    notes: list[str] = field(default_factory=list)  # clean accuracies that disagreed

    def add(self, seed: str, key: ColumnKey, obs: Observation) -> None:
        cols = self.seeds.setdefault(seed, {})
        prev = cols.get(key)
        if prev is None:
            cols[key] = obs
            return
        same = _same_examples(prev, obs)
        if same is not False and abs(prev.value - obs.value) <= 1e-9:
            return  # the same measurement twice (e.g. clean accuracy in every summary)
        if same and key.kind == "clean":
            # One checkpoint's clean accuracy from two runs on the same examples: GPU kernels
            # may flip a near-tie. Keep the first, and say so; never drop it silently.
            self.notes.append(f"{self.label}: clean {_metric_text(prev.value)} in {prev.source} "
                              f"but {_metric_text(obs.value)} in {obs.source} (same checkpoint "
                              "and examples); the first is shown")
            return
        if same:
            why = (f"on the same examples with different numbers ({_metric_text(prev.value)} vs "
                   f"{_metric_text(obs.value)}): they measured different things under one "
                   "label (other --model/--wrap code, other data or options); give them "
                   "different labels (--label)")
            raise ResultsError(f"{obs.source} and {prev.source} both measure {self.label!r} in "
                               f"column '{_column_text(key)}' for one checkpoint {why}")
        why = (f"on different examples ({_examples_text(obs)} vs {_examples_text(prev)})"
               if same is False else "with different numbers and no record of their examples")
        raise ResultsError(
            f"{obs.source} and {prev.source} both measure {self.label!r} in column '{_column_text(key)}' "
            f"for one checkpoint {why}; compare them in separate calls, or re-run one with the "
            "same examples (--n, --seed) so that a checkpoint has one number per column"
        )

    def cell_obs(self, key: ColumnKey) -> list[Observation]:
        return [cols[key] for cols in self.seeds.values() if key in cols]


def _seed_id(result: EvalResult) -> str:
    if result.model.sha256 and not result.published:
        return "|".join((result.model.sha256, *code_identity(result.user_code), ""))
    return str(result.path or id(result))


def _defended(name: str, user_code: Sequence[dict[str, str]]) -> str:
    """A matrix row name: how the model was trained, plus any --model/--wrap code around it
    ("static:fgsm + quantize"), so a defended model never pools with the bare one."""
    for c in user_code:
        code = Path(str(c.get("file", "code"))).stem
        if c.get("callable") not in (None, "wrap"):
            code += f":{c.get('callable')}"
        name += f" + {code}" if c.get("role") != "model" else f" (model {code})"
    return name


def _matches(stated: ColumnKey, column: ColumnKey) -> bool:
    """Whether a published key agrees with a reproduced column on everything it states."""
    if stated.kind != column.kind or stated.kind in ("clean", "transfer"):
        return False
    if stated.norm is not None and stated.norm != column.norm:
        return False
    if stated.eps is not None and stated.eps != column.eps:
        return False
    if stated.kind not in _EPS_KINDS and stated.eps != column.eps:
        return False  # stAdv has no eps: None is a value there, not a gap
    theirs = dict(column.strength)
    return all(v is None or theirs.get(n) == v for n, v in stated.strength)


def _unstated_names(key: ColumnKey) -> set[str]:
    names = {n for n, v in key.strength if v is None and n in _NOTE_NAMES}
    if key.eps is None and key.kind in _EPS_KINDS:
        names.add("eps")
    return names


def place_published(key: ColumnKey, reproduced: set[ColumnKey]) -> ColumnKey | None:
    """The one reproduced column a published key with unstated parameters belongs in."""
    if key in reproduced:
        return key
    found = [k for k in reproduced if _matches(key, k)]
    return found[0] if len(found) == 1 else None


def _place_published(groups: Sequence[_Group]) -> None:
    reproduced = {k for g in groups if not g.published for cols in g.seeds.values() for k in cols}
    for g in groups:
        if not g.published:
            continue
        for cols in g.seeds.values():
            for key in list(cols):
                target = place_published(key, reproduced)
                if target is None or target == key or target in cols:
                    continue
                cols[target] = cols.pop(key)
                g.unstated |= _unstated_names(key)


def _metric_text(value: float) -> str:
    return f"{value:.6g}"


def _one_code_per_checkpoint(groups: Sequence[_Group]) -> None:
    """A row's seeds are different checkpoints: one checkpoint behind two different pieces of
    --model/--wrap code under one label would count one set of weights as two seeds."""
    for g in groups:
        shas = [sid.split("|")[0] for sid in g.seeds if "|" in sid]
        twice = sorted({s for s in shas if shas.count(s) > 1})
        if twice:
            raise ResultsError(
                f"row {g.label!r} holds checkpoint {twice[0][:12]} twice, behind different "
                "--model/--wrap code: they are different models, not seeds; give them "
                "different labels (eval --label)")


def _group_notes(groups: Sequence[_Group]) -> list[str]:
    """The rows' notes: clean accuracies that disagreed, then published rows' unstated values."""
    conflicts = [n for g in groups for n in g.notes]
    return conflicts + _published_notes(groups)


def _published_notes(groups: Sequence[_Group]) -> list[str]:
    by_text: dict[str, list[str]] = {}
    order = list(_NOTE_NAMES)
    for g in groups:
        if g.unstated:
            names = [_NOTE_NAMES[n] for n in sorted(g.unstated, key=order.index)]
            by_text.setdefault(_and(names), []).append(g.label)
    return [f"{_and(labels)} (published): {text} not stated by the source; shown in the column "
            "that matches everything it states" for text, labels in by_text.items()]


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --------------------------------------------------------------------------- statistics

def paired_significance(base: Observation, other: Observation) -> Significance | None:
    """McNemar's exact test when both observations carry flags on the same examples."""
    if base.flags is None or other.flags is None or _same_examples(base, other) is not True:
        return None
    return mcnemar_exact(other.flags, base.flags)


def _paired_test(base: Observation, other: Observation,
                 labels: tuple[str, str]) -> Significance | None:
    if base.flags is None or other.flags is None or base.examples is None or other.examples is None:
        return None
    if _same_examples(base, other) is False:
        raise ResultsError(
            f"cannot pair {labels[1]!r} ({other.source}) with baseline {labels[0]!r} "
            f"({base.source}): they were evaluated on different examples "
            f"({_examples_text(other)} vs {_examples_text(base)}); re-run "
            "`advcli eval` with the same dataset, --n and --seed, or drop --baseline"
        )
    return paired_significance(base, other)


def significance(base: Sequence[Observation], other: Sequence[Observation]) -> Significance | None:
    """The test compare uses for two cells: Welch across seeds (two or more a side), McNemar
    for one run a side on the same examples, else none."""
    bv, ov = [o.value for o in base], [o.value for o in other]
    if len(bv) >= 2 and len(ov) >= 2:
        return welch_t(ov, bv)
    if len(bv) == 1 and len(ov) == 1:
        return paired_significance(base[0], other[0])
    return None


def _diff(base: list[Observation], other: list[Observation], labels: tuple[str, str]) -> Diff:
    bv, ov = [o.value for o in base], [o.value for o in other]
    diff = Diff(delta=float(np.mean(ov) - np.mean(bv)))
    if len(bv) >= 2 and len(ov) >= 2:
        sig = welch_t(ov, bv)
        diff.test, diff.p_value = sig.test, sig.p_value
        diff.ci95 = bootstrap_diff_ci(ov, bv, n_resamples=2000)
    elif len(bv) == 1 and len(ov) == 1:
        paired = _paired_test(base[0], other[0], labels)
        if paired is not None:
            diff.test, diff.p_value = paired.test, paired.p_value
    return diff


def _apply_baseline(groups: list[_Group], rows: list[Row], columns: list[Column],
                    baseline: str | None) -> None:
    if baseline is None:
        return
    candidates = [i for i, g in enumerate(groups) if g.label == baseline and not g.published]
    candidates = candidates or [i for i, g in enumerate(groups) if g.label == baseline]
    if not candidates:
        labels = ", ".join(dict.fromkeys(g.label for g in groups))
        raise UsageError(f"--baseline {baseline!r} is not a label of these files; labels: {labels}")
    b = candidates[0]
    rows[b].baseline = True
    for i, group in enumerate(groups):
        if i == b:
            continue
        for col in columns:
            base_obs, obs = groups[b].cell_obs(col.key), group.cell_obs(col.key)
            if base_obs and obs:
                rows[i].cells[col.key].diff = _diff(base_obs, obs, (baseline, group.label))


def _wilson(obs: Sequence[Observation]) -> tuple[float, float] | None:
    """The Wilson interval of the cell's mean for the smallest n among its runs."""
    ns = [o.n_examples for o in obs]
    if not ns or any(n is None or n < 1 for n in ns):
        return None
    mean = float(np.mean([o.value for o in obs]))
    return wilson_interval(min(1.0, max(0.0, mean)), min(n for n in ns if n is not None))


# --------------------------------------------------------------------------- building tables

def _rows_from_groups(groups: list[_Group], keys: list[ColumnKey], *,
                      intervals: bool) -> list[Row]:
    rows = []
    for g in groups:
        cells = {}
        for k in keys:
            obs = g.cell_obs(k)
            if obs:
                cells[k] = Cell(obs, wilson95=_wilson(obs) if intervals else None)
        rows.append(Row(label=g.label, n=len(g.seeds), cells=cells, published=g.published,
                        citation=g.citation))
    return rows


def _ordered_groups(groups: dict[tuple[str, bool], _Group]) -> list[_Group]:
    """First-seen label order; a published row sits right before its reproduced twin."""
    labels = list(dict.fromkeys(label for label, _ in groups))
    ordered = []
    for label in labels:
        for published in (True, False):
            if (label, published) in groups:
                ordered.append(groups[(label, published)])
    return ordered


def _citation_notes(rows: list[Row]) -> list[str]:
    """One note per distinct citation, naming the published rows it is the source of."""
    by_source: dict[str, list[str]] = {}
    for r in rows:
        if r.published and r.citation:
            by_source.setdefault(r.citation, []).append(r.label)
    return [f"{_and(labels)} (published): {source}" for source, labels in by_source.items()]


def _keys(groups: Sequence[_Group]) -> set[ColumnKey]:
    return {k for g in groups for cols in g.seeds.values() for k in cols}


def _metric(metric: Metric | str) -> Metric:
    try:
        return Metric(str(getattr(metric, "value", metric)).strip().lower())
    except ValueError:
        valid = ", ".join(m.value for m in Metric)
        raise UsageError(f"unknown metric {metric!r}; valid values: {valid}") from None


def build_table(
    results: Sequence[EvalResult],
    *,
    metric: Metric | str = Metric.accuracy,
    baseline: str | None = None,
    worst: bool = False,
    alpha: float = 0.05,
    ci: bool = False,
) -> CompareTable:
    """Rows = labels, columns = clean + robust per (norm, eps, attack, strength)."""
    metric = _metric(metric)
    groups: dict[tuple[str, bool], _Group] = {}
    for res in results:
        g = groups.setdefault((res.label, res.published),
                              _Group(res.label, res.published, res.citation))
        for entry in res.entries:
            if entry.attack == "worst" and not worst:
                continue
            g.add(_seed_id(res), entry_key(entry, published=res.published),
                  _entry_obs(res, entry, metric))
    ordered = _ordered_groups(groups)
    _one_code_per_checkpoint(ordered)
    _place_published(ordered)
    keys = sorted(_keys(ordered), key=_order_threat_first)
    robust = [k for k in keys if k.kind not in ("clean", "worst", "transfer")]
    with_variant = len({k.variant for k in robust}) > 1
    with_norm = len({k.norm for k in keys if k.kind != "clean"}) > 1
    extra = _strength_texts(keys)
    columns = [Column(k, _title(k, metric, with_variant, with_norm, extra),
                      _matrix_title(k, with_norm, extra)) for k in keys]
    rows = _rows_from_groups(ordered, keys, intervals=True)
    _apply_baseline(ordered, rows, columns, baseline)
    title = ("Clean and robust accuracy" if metric is Metric.accuracy
             else "Clean and robust test error")
    return CompareTable(title=title, row_header="Model", columns=columns, rows=rows,
                        metric=metric, alpha=alpha, show_ci=ci,
                        notes=_group_notes(ordered) + _citation_notes(rows))


def _summary_examples(s: AttackSummary) -> tuple[Any, Any, Any, Any, None]:
    d = s.data
    n = d.get("n")
    return (d.get("dataset"), d.get("split"), d.get("index_sha256"),
            int(n) if isinstance(n, (int, float)) else None, None)


def _robust_accuracy(s: AttackSummary) -> float:
    value = s.metrics.get("robust_accuracy")
    src = str(s.path or s.label)
    if value is None:
        raise ResultsError(
            f"attack summary {src!r} has no metrics.robust_accuracy (an older advcli wrote it, "
            "and its adv_accuracy counts examples misclassified before the attack as robust); "
            f"re-run `advcli attack` on {s.checkpoint.get('path') or 'its checkpoint'} to rewrite it"
        )
    if not 0.0 <= float(value) <= 1.0:
        raise ResultsError(f"attack summary {src!r}: metrics.robust_accuracy must be a fraction "
                           f"in [0, 1], got {value!r}; re-run `advcli attack`")
    return float(value)


def build_matrix(
    results: Sequence[EvalResult],
    summaries: Sequence[AttackSummary],
    *,
    metric: Metric | str = Metric.accuracy,
    baseline: str | None = None,
    alpha: float = 0.05,
    ci: bool = False,
) -> CompareTable:
    """Rows = trained with, columns = attacked with (clean first), from eval results, published
    files and attack summaries; one value per checkpoint and column, mean ± std over
    checkpoints. Robust accuracy counts an example only if it is correct before and after."""
    metric = _metric(metric)
    groups: dict[tuple[str, bool], _Group] = {}
    for res in results:
        name = _defended(res.model.trained_with, res.user_code)
        g = groups.setdefault((name, res.published), _Group(name, res.published, res.citation))
        for entry in res.entries:
            if entry.attack != "worst":
                g.add(_seed_id(res), entry_key(entry, published=res.published),
                      _entry_obs(res, entry, metric))
    for s in summaries:
        name = _defended(s.trained_with, s.user_code)
        g = groups.setdefault((name, False), _Group(name, False))
        seed = "|".join((str(s.checkpoint.get("sha256") or s.checkpoint.get("path") or s.label),
                         *code_identity(s.user_code), ""))
        src, examples = str(s.path or s.label), _summary_examples(s)
        n = examples[3]
        g.add(seed, ColumnKey("clean", "Clean"),
              Observation(_metric_value(s.metrics["clean_accuracy"], metric), src,
                          examples=examples, n_examples=n))
        g.add(seed, summary_key(s),
              Observation(_metric_value(_robust_accuracy(s), metric), src, examples=examples,
                          n_examples=n))
    ordered = _ordered_groups(groups)
    _one_code_per_checkpoint(ordered)
    _place_published(ordered)
    keys = sorted(_keys(ordered), key=_order_attack_first)
    with_norm = len({k.norm for k in keys if k.norm}) > 1
    extra = _strength_texts(keys)
    columns = [Column(k, _matrix_title(k, with_norm, extra)) for k in keys]
    rows = _rows_from_groups(ordered, keys, intervals=True)
    _apply_baseline(ordered, rows, columns, baseline)
    what = "Accuracy" if metric is Metric.accuracy else "Test error"
    return CompareTable(
        title=f"{what} (%): trained with (rows) × attacked with (columns)",
        row_header="Trained with", columns=columns, rows=rows, kind=TableKind.matrix,
        metric=metric, alpha=alpha, show_ci=ci,
        notes=_group_notes(ordered) + _citation_notes(rows),
    )


SSIM_KEY = ColumnKey("ssim", "1−SSIM")


def build_ssim_table(
    summaries: Sequence[AttackSummary], published: Sequence[EvalResult] = ()
) -> CompareTable | None:
    """Mean 1−SSIM between adversarial and clean images per attack (rows), over summaries;
    a published file's entries with `ssim_dissimilarity_mean` give published rows."""
    reproduced: dict[ColumnKey, list[AttackSummary]] = {}
    for s in summaries:
        if s.metrics.get("ssim_dissimilarity_mean") is not None:
            reproduced.setdefault(summary_key(s), []).append(s)
    pub: list[tuple[ColumnKey, EvalResult, Entry]] = []
    for res in published:
        for e in res.entries:
            if res.published and e.params.get("ssim_dissimilarity_mean") is not None:
                key = entry_key(e, published=True)
                pub.append((place_published(key, set(reproduced)) or key, res, e))
    if not reproduced and not pub:
        return None
    extra = _strength_texts(list(reproduced))
    # Reproduced attacks first (in attack order): that fixes the row order, and each
    # published row is then placed before its reproduced twin.
    groups: dict[tuple[str, bool], _Group] = {}
    for key in sorted(reproduced, key=_order_attack_first):
        label = _matrix_title(key, False, extra)
        g = groups.setdefault((label, False), _Group(label, False))
        for s in reproduced[key]:
            g.add(str(s.path or id(s)), SSIM_KEY,
                  Observation(float(s.metrics["ssim_dissimilarity_mean"]), str(s.path)))
    for key, res, e in pub:
        label = _matrix_title(key, False, extra)
        g = groups.setdefault((label, True), _Group(label, True, res.citation))
        g.add(f"{res.path}|{label}", SSIM_KEY,
              Observation(float(e.params["ssim_dissimilarity_mean"]), str(res.path)))
    rows = _rows_from_groups(_ordered_groups(groups), [SSIM_KEY], intervals=False)
    return CompareTable(
        title="Mean 1−SSIM between adversarial and clean images", row_header="Attack",
        columns=[Column(SSIM_KEY, "Mean 1−SSIM")], rows=rows, kind=TableKind.ssim,
        percent=False, n_means="attack summaries", notes=_citation_notes(rows),
    )


# --------------------------------------------------------------------------- flatness

@dataclass
class FlatnessModel:
    """One checkpoint's flatness in one landscape file."""

    sha256: str | None
    radius: float
    # direction seed -> mean loss increase at the radius along that seed's direction(s)
    samples: dict[Any, float]


@dataclass
class FlatnessSet:
    """The parts of one `advcli.landscape/1` file a flatness table needs."""

    path: Path
    dim: int
    directions_seed: Any
    examples: tuple[Any, Any, Any, Any, None]
    models: dict[str, FlatnessModel]
    # What the loss was measured on: data kind (clean, an attack, --adv-data), its attack
    # parameters and the BatchNorm mode; different measurements are different columns.
    measure: tuple[tuple[str, Any], ...] = ()


@dataclass
class DirectionSample(Observation):
    """A flatness observation: one checkpoint along one direction seed's directions."""

    direction_seed: Any = None


def flatness_set(doc: dict[str, Any], path: Path) -> FlatnessSet:
    """Read the flatness numbers of a landscape document (`landscape.run.read_document`).
    A file written before flatness seeds holds one sample, along `directions.seed`."""
    try:
        shas = {str(c["label"]): c.get("sha256") for c in doc.get("checkpoints") or []}
        seed = (doc.get("directions") or {}).get("seed")
        models = {}
        for label, f in (doc.get("flatness") or {}).items():
            seeds, means = f.get("seeds"), f.get("seed_means")
            if seeds is None or means is None:
                seeds, means = [seed], [f["increase_mean"]]
            if len(seeds) != len(means) or len(set(seeds)) != len(seeds):
                raise ValueError(f"{label}: {len(seeds)} seeds, {len(means)} seed_means")
            models[str(label)] = FlatnessModel(
                shas.get(str(label)), float(f["radius"]),
                {s: float(v) for s, v in zip(seeds, means, strict=True)})
        data = doc.get("data") or {}
        examples = (data.get("dataset"), data.get("split"), data.get("index_sha256"),
                    data.get("n"), None)
        measure = (("data", data.get("kind") or "clean"), ("attack", _hashable(
            sorted((data.get("attack") or {}).items()))), ("adv_data", data.get("adv_data")),
            ("bn", doc.get("bn") or "eval"))
        return FlatnessSet(path, int(doc["dim"]), seed, examples, models, measure)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(f"landscape file {str(path)!r} lacks its flatness numbers ({exc}); "
                           "re-create it with `advcli landscape`") from exc


def direction_pairs(a: Cell, b: Cell) -> tuple[list[Any], list[float], list[float]]:
    """Two flatness cells paired by direction seed: (shared seeds, a's values, b's values),
    each value the mean over the cell's checkpoints along that seed's directions."""

    def by_seed(cell: Cell) -> dict[Any, float]:
        groups: dict[Any, list[float]] = {}
        for o in cell.observations:
            if isinstance(o, DirectionSample):
                groups.setdefault(o.direction_seed, []).append(o.value)
        return {s: float(np.mean(v)) for s, v in groups.items()}

    sa, sb = by_seed(a), by_seed(b)
    seeds = sorted((s for s in sa if s in sb), key=_seed_order)
    return seeds, [sa[s] for s in seeds], [sb[s] for s in seeds]


def _seed_order(seed: Any) -> tuple[bool, int, str]:
    # Seeds are integers; a very old file may record none (None), and sorts last.
    return (not isinstance(seed, int), seed if isinstance(seed, int) else 0, str(seed))


def _seed_range_text(seeds: Sequence[Any]) -> str:
    ints = sorted(s for s in seeds if isinstance(s, int))
    if len(ints) == len(seeds) and ints and ints == list(range(ints[0], ints[-1] + 1)):
        return f"{ints[0]}–{ints[-1]}" if len(ints) > 1 else str(ints[0])
    return ", ".join(str(s) for s in seeds)


def _flatness_notes(rows: list[Row], columns: list[Column]) -> list[str]:
    """What the ± is, and per column the seeds and each row's per-seed range."""
    notes = []
    if any(c.n > 1 for r in rows for c in r.cells.values()):
        note = ("each sample is one checkpoint along one direction seed: the mean loss increase "
                "at ±r along that seed's filter-normalised direction(s)")
        seed_sets = {col.key: {frozenset(o.direction_seed for o in cell.observations
                                         if isinstance(o, DirectionSample))
                               for r in rows if (cell := r.cells.get(col.key)) is not None}
                     for col in columns}
        # One checkpoint per row: as many samples in a cell as direction seeds.
        one_ckpt = all(c.n == len({o.direction_seed for o in c.observations
                                   if isinstance(o, DirectionSample)})
                       for r in rows for c in r.cells.values())
        if one_ckpt and all(len(sets) == 1 for sets in seed_sets.values()):
            note += ("; every model was measured along the same seeds, so claims compare "
                     "models seed by seed (paired t)")
        else:
            note += ("; models were not all measured along the same seeds (or a row holds "
                     "several checkpoints): claims pair only the seeds two cells share, "
                     "averaging a row's checkpoints per seed")
        notes.append(note)
    for col in columns:
        seeds: set[Any] = set()
        ranges = []
        for r in rows:
            cell = r.cells.get(col.key)
            if cell is None:
                continue
            seeds |= {o.direction_seed for o in cell.observations
                      if isinstance(o, DirectionSample)}
            if cell.n > 1:
                ranges.append(f"{r.label} {min(cell.values):.4f}..{max(cell.values):.4f}")
        if ranges:
            ordered = sorted(seeds, key=_seed_order)
            notes.append(f"{col.short}, direction seeds {_seed_range_text(ordered)}; "
                         f"per-seed min..max: {'; '.join(ranges)}")
    return notes


def _flatness_variant(key: ColumnKey) -> str:
    """"1-D", or "1-D, pgd data, BN recompute" when the loss was not measured on clean data
    with the trained BatchNorm statistics."""
    text = key.variant
    data = key.param("data")
    if data not in (None, "clean"):
        text += f", {data} data"
    if key.param("bn") not in (None, "eval"):
        text += f", BN {key.param('bn')}"
    return text


def build_flatness_table(sets: Sequence[FlatnessSet]) -> CompareTable | None:
    """Rows = checkpoint labels, columns = mean loss increase at radius r per dimension; each
    (checkpoint, direction seed) is one sample of the cell."""
    groups: dict[tuple[str, bool], _Group] = {}
    for fs in sets:
        for label, m in fs.models.items():
            key = ColumnKey("flatness", f"{fs.dim}-D",
                            strength=(("radius", _hashable(m.radius)), *fs.measure))
            g = groups.setdefault((label, False), _Group(label, False))
            for seed, increase in m.samples.items():
                g.add(f"{m.sha256 or label}|{seed}", key,
                      DirectionSample(increase, str(fs.path), examples=fs.examples,
                                      direction_seed=seed))
    if not groups:
        return None
    ordered = _ordered_groups(groups)
    keys = sorted(_keys(ordered), key=lambda k: (k.variant, repr(k.strength)))
    columns = [Column(k, f"Loss increase at r = {k.param('radius'):g}, {_flatness_variant(k)}",
                      f"loss increase at r = {k.param('radius'):g}, {_flatness_variant(k)}")
               for k in keys]
    rows = _rows_from_groups(ordered, keys, intervals=False)
    return CompareTable(
        title="Flatness: mean loss increase at radius r along filter-normalised directions",
        row_header="Model", columns=columns, rows=rows,
        kind=TableKind.flatness, percent=False, n_means="checkpoints × direction draws",
        notes=_flatness_notes(rows, columns),
    )


# --------------------------------------------------------------------------- the stage

Input = EvalResult | AttackSummary | FlatnessSet | AuditEntry

def load_input(path: str | Path) -> Input:
    """A result file, an attack summary or a landscape file, told apart by `schema`."""
    from advcli.io import read_yaml_document

    p = Path(path)
    head = read_yaml_document(p, what="result file", schema=None,
                              make_hint="pass files written by advcli eval, attack or landscape")
    from advcli.landscape.run import SCHEMA as LANDSCAPE_SCHEMA
    from advcli.landscape.run import read_document

    if head.get("schema") == LANDSCAPE_SCHEMA:
        return flatness_set(read_document(p), p)
    if head.get("schema") == AUDIT_SCHEMA:
        return read_audit_entry(p)
    return load_any(p)


def compare(
    items: Sequence[Input],
    *,
    metric: Metric | str = Metric.accuracy,
    baseline: str | None = None,
    matrix: bool = False,
    worst: bool = False,
    alpha: float = 0.05,
    ci: bool = False,
) -> list[CompareTable]:
    """Every table the inputs support: the accuracy table (or the matrix), the 1−SSIM table
    and the flatness table."""
    if not items:
        raise UsageError("compare needs at least one result file")
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha must be between 0 and 1, got {alpha}")
    results = [x for x in items if isinstance(x, EvalResult)]
    summaries = [x for x in items if isinstance(x, AttackSummary)]
    flatness = [x for x in items if isinstance(x, FlatnessSet)]
    audits = [x for x in items if isinstance(x, AuditEntry)]
    if audits and (matrix or not results):
        raise UsageError("audit files add an Audit column to the accuracy table: pass them with "
                         "the `advcli eval` results of the same checkpoints, without --matrix")
    tables: list[CompareTable] = []
    if matrix:
        tables.append(build_matrix(results, summaries, metric=metric, baseline=baseline,
                                   alpha=alpha, ci=ci))
    elif results:
        tables.append(build_table(results, metric=metric, baseline=baseline, worst=worst,
                                  alpha=alpha, ci=ci))
        if audits:
            _add_audit_column(tables[-1], results, audits)
    elif baseline is not None:
        raise UsageError("--baseline needs `advcli eval` result files, or --matrix")
    ssim = build_ssim_table(summaries, [r for r in results if r.published])
    if ssim is not None and (summaries or matrix):
        tables.append(ssim)
    flat = build_flatness_table(flatness)
    if flat is not None:
        tables.append(flat)
    return tables


def _add_audit_column(table: CompareTable, results: Sequence[EvalResult],
                      audits: Sequence[AuditEntry]) -> None:
    """Fill each reproduced row's audit cell from the audits of its checkpoints."""
    identities: dict[str, list[tuple[str | None, tuple[str, ...]]]] = {}
    for r in results:
        if not r.published:
            ident = (r.model.sha256, code_identity(r.user_code))
            ids = identities.setdefault(r.label, [])
            if ident not in ids:
                ids.append(ident)
    column = audit_column([(label, ids) for label, ids in identities.items()], audits)
    for row in table.rows:
        if not row.published:
            row.audit = column.cells.get(row.label, "—")
    table.show_audit = True
    table.notes += column.notes


@dataclass
class CompareOptions:
    files: list[Path]
    metric: Metric = Metric.accuracy
    baseline: str | None = None
    matrix: bool = False
    worst: bool = False
    alpha: float = 0.05
    ci: bool = False
    claims: list[Claim] = field(default_factory=list)


@dataclass
class CompareReport:
    tables: list[CompareTable]
    claims: list[ClaimResult]  # in the order the claims were given


def run_compare(opts: CompareOptions) -> CompareReport:
    """Read the files, build the tables, check the claims."""
    from advcli.compare.claims import check_claims

    items = [load_input(p) for p in opts.files]
    tables = compare(items, metric=opts.metric, baseline=opts.baseline, matrix=opts.matrix,
                     worst=opts.worst, alpha=opts.alpha, ci=opts.ci)
    return CompareReport(tables, check_claims(opts.claims, tables))
