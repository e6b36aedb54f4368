"""Rows in the making: observations grouped per label and seed (checkpoint), published rows
placed before their reproduced twins, pooled into cells, and each row's difference to the
baseline with its test (McNemar on per-example flags, Welch across seeds, a bootstrap
interval)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from advcli.compare.audit_column import code_identity
from advcli.compare.columns import EPS_KINDS, NOTE_NAMES, column_text
from advcli.compare.model import Cell, Column, ColumnKey, Diff, Metric, Observation, Row
from advcli.errors import ResultsError, UsageError
from advcli.formats.results import Entry, EvalResult
from advcli.stats import Significance, bootstrap_diff_ci, mcnemar_exact, welch_t, wilson_interval


def metric_value(accuracy: float, metric: Metric) -> float:
    return accuracy if metric is Metric.accuracy else 1.0 - accuracy


def entry_obs(result: EvalResult, entry: Entry, metric: Metric) -> Observation:
    index = entry.index_sha256 or result.data.index_sha256
    content = result.data.examples_sha256
    if entry.attack == "transfer":
        # Transfer flags are about the adversarial set's images, not the clean examples.
        content = (entry.params.get("source") or {}).get("sha256")
    examples = None
    if index is not None:
        examples = (result.data.dataset, result.data.split, index, entry.n, content)
    return Observation(metric_value(entry.accuracy, metric), str(result.path or result.label),
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
class RowGroup:
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
                               f"column '{column_text(key)}' for one checkpoint {why}")
        why = (f"on different examples ({_examples_text(obs)} vs {_examples_text(prev)})"
               if same is False else "with different numbers and no record of their examples")
        raise ResultsError(
            f"{obs.source} and {prev.source} both measure {self.label!r} in column '{column_text(key)}' "
            f"for one checkpoint {why}; compare them in separate calls, or re-run one with the "
            "same examples (--n, --seed) so that a checkpoint has one number per column"
        )

    def cell_obs(self, key: ColumnKey) -> list[Observation]:
        return [cols[key] for cols in self.seeds.values() if key in cols]


def seed_id(result: EvalResult) -> str:
    if result.model.sha256 and not result.published:
        return "|".join((result.model.sha256, *code_identity(result.user_code), ""))
    return str(result.path or id(result))


def defended_name(name: str, user_code: Sequence[dict[str, str]]) -> str:
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
    if stated.kind not in EPS_KINDS and stated.eps != column.eps:
        return False  # stAdv has no eps: None is a value there, not a gap
    theirs = dict(column.strength)
    return all(v is None or theirs.get(n) == v for n, v in stated.strength)


def _unstated_names(key: ColumnKey) -> set[str]:
    names = {n for n, v in key.strength if v is None and n in NOTE_NAMES}
    if key.eps is None and key.kind in EPS_KINDS:
        names.add("eps")
    return names


def place_published(key: ColumnKey, reproduced: set[ColumnKey]) -> ColumnKey | None:
    """The one reproduced column a published key with unstated parameters belongs in."""
    if key in reproduced:
        return key
    found = [k for k in reproduced if _matches(key, k)]
    return found[0] if len(found) == 1 else None


def place_published_rows(groups: Sequence[RowGroup]) -> None:
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


def one_code_per_checkpoint(groups: Sequence[RowGroup]) -> None:
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


def group_notes(groups: Sequence[RowGroup]) -> list[str]:
    """The rows' notes: clean accuracies that disagreed, then published rows' unstated values."""
    conflicts = [n for g in groups for n in g.notes]
    return conflicts + _published_notes(groups)


def _published_notes(groups: Sequence[RowGroup]) -> list[str]:
    by_text: dict[str, list[str]] = {}
    order = list(NOTE_NAMES)
    for g in groups:
        if g.unstated:
            names = [NOTE_NAMES[n] for n in sorted(g.unstated, key=order.index)]
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


def apply_baseline(groups: list[RowGroup], rows: list[Row], columns: list[Column],
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

def rows_from_groups(groups: list[RowGroup], keys: list[ColumnKey], *,
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


def ordered_groups(groups: dict[tuple[str, bool], RowGroup]) -> list[RowGroup]:
    """First-seen label order; a published row sits right before its reproduced twin."""
    labels = list(dict.fromkeys(label for label, _ in groups))
    ordered = []
    for label in labels:
        for published in (True, False):
            if (label, published) in groups:
                ordered.append(groups[(label, published)])
    return ordered


def citation_notes(rows: list[Row]) -> list[str]:
    """One note per distinct citation, naming the published rows it is the source of."""
    by_source: dict[str, list[str]] = {}
    for r in rows:
        if r.published and r.citation:
            by_source.setdefault(r.citation, []).append(r.label)
    return [f"{_and(labels)} (published): {source}" for source, labels in by_source.items()]


def keys_of(groups: Sequence[RowGroup]) -> set[ColumnKey]:
    return {k for g in groups for cols in g.seeds.values() for k in cols}


def as_metric(metric: Metric | str) -> Metric:
    try:
        return Metric(str(getattr(metric, "value", metric)).strip().lower())
    except ValueError:
        valid = ", ".join(m.value for m in Metric)
        raise UsageError(f"unknown metric {metric!r}; valid values: {valid}") from None


