"""`advcli compare`: the seeds' tables from result files, with statistics. Pure: no rich/typer.

This module owns the table model (`CompareTable`: columns, rows, cells with mean ± std and n,
differences to a baseline with p-values) and its text renderings (markdown, csv, latex, json);
the CLI draws the rich version from the same model.

- Rows are labels, in the order the files were given; a published file (`published: true`)
  is its own row, placed just before the reproduced row of the same label, marked and cited.
- Files of one label are pooled per checkpoint (two eval runs of one checkpoint, say PGD and
  AutoAttack, fill one seed) and the seeds give mean ± sample std and n.
- Columns: clean accuracy first, then robust accuracy per (norm, eps, attack), titled like the
  seeds' tables ("Standard Accuracy (%)", "Robust Accuracy (ε = 8/255) (%)"); the attack
  (PGD-10, AA, ...) and the norm appear in titles only when the table holds more than one.
- `baseline`: each other row's difference to it, with McNemar's exact test on the per-example
  flags when both rows are one run on the same examples, or Welch's t-test when both have
  several seeds.
- `matrix`: trained-with × attacked-with (loss-landscape paper, Table 1), from eval results
  and attack summaries; attack summaries also give a mean 1−SSIM table (Table 2).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from advcli.errors import ResultsError, UsageError
from advcli.results import AttackSummary, Entry, EvalResult, format_number
from advcli.stats import Significance, bootstrap_diff_ci, mcnemar_exact, summarize, welch_t

METRICS = ("accuracy", "error")
_NORM_ORDER = {"linf": 0, "l2": 1, None: 2}
_NORM_TEXT = {"linf": "L∞", "l2": "L2"}
_KIND_ORDER = ["clean", "fgsm", "fgsm-rs", "pgd", "autoattack", "stadv", "worst", "transfer"]
_ATTACK_NAMES = {"fgsm": "FGSM", "fgsm-rs": "FGSM-RS", "pgd": "PGD", "stadv": "stAdv",
                 "autoattack": "AA", "worst": "Worst-case", "clean": "Clean"}


# --------------------------------------------------------------------------- table model

@dataclass(frozen=True)
class ColumnKey:
    """What a column holds: an attack variant at one threat model (eps compared rounded)."""

    kind: str
    variant: str
    norm: str | None = None
    eps: float | None = None
    eps_text: str | None = field(default=None, compare=False)


@dataclass
class Column:
    key: ColumnKey
    title: str


@dataclass
class Diff:
    """A row's difference to the baseline in the shown metric (fractions; × 100 for points)."""

    delta: float
    test: str | None = None
    p_value: float | None = None
    ci95: tuple[float, float] | None = None


@dataclass
class Cell:
    values: list[float]
    diff: Diff | None = None

    @property
    def mean(self) -> float:
        return summarize(self.values).mean

    @property
    def std(self) -> float:
        return summarize(self.values).std

    @property
    def n(self) -> int:
        return len(self.values)


@dataclass
class Row:
    label: str
    n: int
    cells: dict[ColumnKey, Cell]
    published: bool = False
    citation: str | None = None
    baseline: bool = False

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
    percent: bool = True  # values are fractions shown as %; False: plain numbers (1−SSIM)
    metric: str = "accuracy"
    alpha: float = 0.05
    notes: list[str] = field(default_factory=list)
    n_means: str = "seeds (checkpoints)"  # what n counts, for the footnote

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


def entry_key(entry: Entry) -> ColumnKey:
    """The column an eval entry belongs in."""
    if entry.is_clean:
        return ColumnKey("clean", "Clean")
    if entry.attack == "transfer":
        source = entry.params.get("source") or {}
        attack = source.get("attack") or {}
        kind = str(attack.get("name", "adversarial set"))
        origin = source.get("label") or source.get("checkpoint_label")
        variant = f"{_variant(kind, attack)} transfer"
        if origin:
            variant += f" from {origin}"
        return ColumnKey("transfer", variant, entry.norm, entry.eps_key(), entry.eps_text)
    return ColumnKey(entry.attack, _variant(entry.attack, entry.params), entry.norm,
                     entry.eps_key(), entry.eps_text)


def summary_key(summary: AttackSummary) -> ColumnKey:
    """The attacked-with column of an attack summary."""
    a = summary.attack
    kind = str(a["name"])
    eps = a.get("eps")
    eps_f = None if eps is None or kind == "stadv" else round(float(eps), 7)
    eps_text = a.get("eps_text") or (None if eps_f is None else format_number(eps_f))
    return ColumnKey(kind, _variant(kind, a), a.get("norm") if eps_f is not None else None,
                     eps_f, eps_text)


def _kind_rank(kind: str) -> int:
    return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)


def _order_threat_first(k: ColumnKey) -> tuple:
    return (k.kind != "clean", _NORM_ORDER.get(k.norm, 2), k.eps if k.eps is not None else -1.0,
            _kind_rank(k.kind), k.variant)


def _order_attack_first(k: ColumnKey) -> tuple:
    return (_kind_rank(k.kind), k.variant, _NORM_ORDER.get(k.norm, 2),
            k.eps if k.eps is not None else -1.0)


def _threat_text(k: ColumnKey, with_norm: bool) -> str:
    parts = []
    if with_norm and k.norm:
        parts.append(_NORM_TEXT.get(k.norm, k.norm))
    if k.eps_text is not None:
        parts.append(f"ε = {k.eps_text}")
    return ", ".join(parts)


def _title(k: ColumnKey, metric: str, with_variant: bool, with_norm: bool) -> str:
    if k.kind == "clean":
        return "Standard Accuracy (%)" if metric == "accuracy" else "Test Error (%)"
    base = "Robust Accuracy" if metric == "accuracy" else "Robust Test Error"
    if with_variant or k.kind in ("worst", "transfer"):
        base = f"{k.variant} {base}"
    threat = _threat_text(k, with_norm)
    return f"{base} ({threat}) (%)" if threat else f"{base} (%)"


def _matrix_title(k: ColumnKey, with_norm: bool) -> str:
    threat = _threat_text(k, with_norm)
    return f"{k.variant} ({threat})" if threat else k.variant


# --------------------------------------------------------------------------- observations

@dataclass
class _Obs:
    """One number for one cell, with what a paired test needs."""

    value: float  # in the shown metric, as a fraction
    flags: np.ndarray | None
    # dataset, split, index hash, n, content hash: equal tuples = the same examples in order
    examples: tuple[str | None, str, str | None, int, str | None] | None
    source: str


def _metric_value(accuracy: float, metric: str) -> float:
    return accuracy if metric == "accuracy" else 1.0 - accuracy


def _entry_obs(result: EvalResult, entry: Entry, metric: str) -> _Obs:
    index = entry.index_sha256 or result.data.index_sha256
    content = result.data.examples_sha256
    if entry.attack == "transfer":
        # Transfer flags are about the adversarial set's images, not the clean examples.
        content = (entry.params.get("source") or {}).get("sha256")
    examples = None
    if entry.flags is not None and index is not None:
        examples = (result.data.dataset, result.data.split, index, entry.n, content)
    return _Obs(_metric_value(entry.accuracy, metric), entry.flags, examples,
                str(result.path or result.label))


@dataclass
class _Group:
    """A row in the making: per seed (checkpoint), the observations per column."""

    label: str
    published: bool
    citation: str | None = None
    seeds: dict[str, dict[ColumnKey, _Obs]] = field(default_factory=dict)

    def add(self, seed: str, key: ColumnKey, obs: _Obs) -> None:
        # First file wins: the same checkpoint evaluated twice on one column is one seed.
        self.seeds.setdefault(seed, {}).setdefault(key, obs)

    def cell_obs(self, key: ColumnKey) -> list[_Obs]:
        return [cols[key] for cols in self.seeds.values() if key in cols]


def _seed_id(result: EvalResult) -> str:
    if result.model.sha256:
        return result.model.sha256
    return str(result.path or id(result))


def _split_inputs(
    items: Sequence[EvalResult | AttackSummary],
) -> tuple[list[EvalResult], list[AttackSummary]]:
    results = [x for x in items if isinstance(x, EvalResult)]
    summaries = [x for x in items if isinstance(x, AttackSummary)]
    return results, summaries


# --------------------------------------------------------------------------- statistics

def _paired_test(base: _Obs, other: _Obs, labels: tuple[str, str]) -> Significance | None:
    if base.flags is None or other.flags is None or base.examples is None or other.examples is None:
        return None
    if base.examples != other.examples:
        raise ResultsError(
            f"cannot pair {labels[1]!r} ({other.source}) with baseline {labels[0]!r} "
            f"({base.source}): they were evaluated on different examples "
            f"({_examples_text(other.examples)} vs {_examples_text(base.examples)}); re-run "
            "`advcli eval` with the same dataset, --n and --seed, or drop --baseline"
        )
    return mcnemar_exact(other.flags, base.flags)


def _examples_text(ex: tuple[str | None, str, str | None, int, str | None] | None) -> str:
    if ex is None:
        return "unknown examples"
    dataset, split, index, n, content = ex
    text = f"{dataset}/{split} n={n} index {str(index)[:12]}"
    return text + (f" content {content[:12]}" if content else "")


def _diff(base: list[_Obs], other: list[_Obs], labels: tuple[str, str]) -> Diff:
    bv, ov = [o.value for o in base], [o.value for o in other]
    diff = Diff(delta=float(np.mean(ov) - np.mean(bv)))
    if len(bv) >= 2 and len(ov) >= 2:
        sig = welch_t(ov, bv)
        diff.test, diff.p_value = sig.test, sig.p_value
        diff.ci95 = bootstrap_diff_ci(ov, bv, n_resamples=2000)
    elif len(bv) == 1 and len(ov) == 1:
        sig = _paired_test(base[0], other[0], labels)
        if sig is not None:
            diff.test, diff.p_value = sig.test, sig.p_value
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


# --------------------------------------------------------------------------- building tables

def _rows_from_groups(groups: list[_Group], keys: list[ColumnKey]) -> list[Row]:
    rows = []
    for g in groups:
        cells = {k: Cell([o.value for o in g.cell_obs(k)]) for k in keys if g.cell_obs(k)}
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
    return [
        f"{labels[0] if len(labels) == 1 else ', '.join(labels[:-1]) + ' and ' + labels[-1]} (published): {source}"
        for source, labels in by_source.items()
    ]


def build_table(
    results: Sequence[EvalResult],
    *,
    metric: str = "accuracy",
    baseline: str | None = None,
    worst: bool = False,
    alpha: float = 0.05,
) -> CompareTable:
    """Rows = labels, columns = clean + robust per (norm, eps, attack)."""
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; valid values: {', '.join(METRICS)}")
    groups: dict[tuple[str, bool], _Group] = {}
    for res in results:
        g = groups.setdefault((res.label, res.published),
                              _Group(res.label, res.published, res.citation))
        for entry in res.entries:
            if entry.attack == "worst" and not worst:
                continue
            g.add(_seed_id(res), entry_key(entry), _entry_obs(res, entry, metric))
    ordered = _ordered_groups(groups)
    keys = sorted({k for g in ordered for cols in g.seeds.values() for k in cols},
                  key=_order_threat_first)
    robust = [k for k in keys if k.kind not in ("clean", "worst", "transfer")]
    with_variant = len({k.variant for k in robust}) > 1
    with_norm = len({k.norm for k in keys if k.kind != "clean"}) > 1
    columns = [Column(k, _title(k, metric, with_variant, with_norm)) for k in keys]
    rows = _rows_from_groups(ordered, keys)
    _apply_baseline(ordered, rows, columns, baseline)
    title = "Clean and robust accuracy" if metric == "accuracy" else "Clean and robust test error"
    return CompareTable(title=title, row_header="Model", columns=columns, rows=rows,
                        metric=metric, alpha=alpha, notes=_citation_notes(rows))


def build_matrix(
    results: Sequence[EvalResult],
    summaries: Sequence[AttackSummary],
    *,
    metric: str = "accuracy",
    baseline: str | None = None,
    alpha: float = 0.05,
) -> CompareTable:
    """Rows = trained with, columns = attacked with (clean first), from eval results and
    attack summaries; one value per checkpoint and column, mean ± std over checkpoints."""
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; valid values: {', '.join(METRICS)}")
    groups: dict[tuple[str, bool], _Group] = {}
    for res in results:
        g = groups.setdefault((res.model.trained_with, res.published),
                              _Group(res.model.trained_with, res.published, res.citation))
        for entry in res.entries:
            if entry.attack != "worst":
                g.add(_seed_id(res), entry_key(entry), _entry_obs(res, entry, metric))
    for s in summaries:
        g = groups.setdefault((s.trained_with, False), _Group(s.trained_with, False))
        seed = str(s.checkpoint.get("sha256") or s.checkpoint.get("path") or s.label)
        src = str(s.path or s.label)
        g.add(seed, ColumnKey("clean", "Clean"),
              _Obs(_metric_value(s.metrics["clean_accuracy"], metric), None, None, src))
        g.add(seed, summary_key(s),
              _Obs(_metric_value(s.metrics["adv_accuracy"], metric), None, None, src))
    ordered = _ordered_groups(groups)
    keys = sorted({k for g in ordered for cols in g.seeds.values() for k in cols},
                  key=_order_attack_first)
    with_norm = len({k.norm for k in keys if k.norm}) > 1
    columns = [Column(k, _matrix_title(k, with_norm)) for k in keys]
    rows = _rows_from_groups(ordered, keys)
    _apply_baseline(ordered, rows, columns, baseline)
    what = "Accuracy" if metric == "accuracy" else "Test error"
    return CompareTable(
        title=f"{what} (%): trained with (rows) × attacked with (columns)",
        row_header="Trained with", columns=columns, rows=rows, metric=metric, alpha=alpha,
        notes=_citation_notes(rows),
    )


def build_ssim_table(summaries: Sequence[AttackSummary]) -> CompareTable | None:
    """Mean 1−SSIM between adversarial and clean images per attack (rows), over summaries."""
    groups: dict[tuple[str, bool], _Group] = {}
    key = ColumnKey("ssim", "1−SSIM")
    for s in summaries:
        value = s.metrics.get("ssim_dissimilarity_mean")
        if value is None:
            continue
        k = summary_key(s)
        label = _matrix_title(k, with_norm=False)
        g = groups.setdefault((label, False), _Group(label, False))
        g.add(str(s.path or id(s)), key, _Obs(float(value), None, None, str(s.path)))
    if not groups:
        return None
    ordered = _ordered_groups(groups)
    return CompareTable(
        title="Mean 1−SSIM between adversarial and clean images", row_header="Attack",
        columns=[Column(key, "Mean 1−SSIM")], rows=_rows_from_groups(ordered, [key]),
        percent=False, n_means="attack summaries",
    )


def compare(
    items: Sequence[EvalResult | AttackSummary],
    *,
    metric: str = "accuracy",
    baseline: str | None = None,
    matrix: bool = False,
    worst: bool = False,
    alpha: float = 0.05,
) -> list[CompareTable]:
    """Every table the inputs support: the accuracy table (or the matrix) and the 1−SSIM table."""
    if not items:
        raise UsageError("compare needs at least one result file")
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha must be between 0 and 1, got {alpha}")
    results, summaries = _split_inputs(items)
    tables: list[CompareTable] = []
    if matrix:
        tables.append(build_matrix(results, summaries, metric=metric, baseline=baseline,
                                   alpha=alpha))
    elif results:
        tables.append(build_table(results, metric=metric, baseline=baseline, worst=worst,
                                  alpha=alpha))
    elif baseline is not None:
        raise UsageError("--baseline needs `advcli eval` result files, or --matrix")
    ssim = build_ssim_table(summaries)
    if ssim is not None:
        tables.append(ssim)
    return tables


# --------------------------------------------------------------------------- text

def _num(value: float, table: CompareTable) -> str:
    return f"{100 * value:.2f}" if table.percent else f"{value:.4f}"


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _signed(value: float, table: CompareTable) -> str:
    text = _num(abs(value), table)
    return f"+{text}" if value >= 0 else f"−{text}"


def cell_text(cell: Cell | None, table: CompareTable) -> str:
    """"94.41", "94.41 ± 0.23", with "Δ −1.20 (p = 0.031)*" against a baseline."""
    if cell is None:
        return "—"
    text = _num(cell.mean, table)
    if cell.n > 1:
        text += f" ± {_num(cell.std, table)}"
    if cell.diff is not None:
        d = cell.diff
        text += f" (Δ {_signed(d.delta, table)}"
        if d.p_value is not None:
            text += f", {format_p(d.p_value)}" + ("*" if d.p_value < table.alpha else "")
        text += ")"
    return text


def header(table: CompareTable) -> list[str]:
    cols = [table.row_header] + [c.title for c in table.columns]
    return cols + ["n"] if table.show_n else cols


def text_rows(table: CompareTable) -> list[list[str]]:
    """The table as strings, one list per row (what the rich table and markdown show)."""
    out = []
    for row in table.rows:
        cells = [row.display] + [cell_text(row.cells.get(c.key), table) for c in table.columns]
        out.append(cells + [str(row.n)] if table.show_n else cells)
    return out


def footnotes(table: CompareTable) -> list[str]:
    notes = []
    if any(r.n > 1 for r in table.rows):
        notes.append(f"mean ± sample std over n {table.n_means}")
    if any(c.diff is not None for r in table.rows for c in r.cells.values()):
        notes.append(
            "Δ: difference to the baseline in percentage points; p from McNemar's exact test "
            "(one run each, same examples) or Welch's t-test (several seeds each); "
            f"* p < {table.alpha:g}"
        )
    return notes + table.notes


def _md_escape(text: str) -> str:
    # `|` would split a cell; `*` (the significance mark) must not start emphasis.
    return text.replace("|", "\\|").replace("*", "\\*")


def to_markdown(tables: Sequence[CompareTable]) -> str:
    """GitHub-flavoured markdown tables, pasteable as they are."""
    parts = []
    for t in tables:
        head = header(t)
        lines = [f"**{t.title}**", "",
                 "| " + " | ".join(_md_escape(h) for h in head) + " |",
                 "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|"]
        lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in text_rows(t)]
        notes = footnotes(t)
        if notes:
            lines += [""] + [f"{_md_escape(n)}  " for n in notes]
        parts.append("\n".join(lines).rstrip() + "\n")
    return "\n".join(parts)


def to_csv(tables: Sequence[CompareTable]) -> str:
    """Numbers for spreadsheets: per column its mean (in % for accuracies), and, where they
    apply, std, n, the difference to the baseline and p. Tables are separated by a blank line."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for i, t in enumerate(tables):
        if i:
            buf.write("\n")
        has_std = t.show_n
        has_diff = any(c.diff is not None for r in t.rows for c in r.cells.values())
        head = [t.row_header, "published"]
        for c in t.columns:
            head.append(c.title)
            if has_std:
                head += [f"{c.title} std", f"{c.title} n"]
            if has_diff:
                head += [f"{c.title} diff", f"{c.title} p"]
        w.writerow(head)
        scale = 100.0 if t.percent else 1.0
        for r in t.rows:
            line: list[Any] = [r.label, str(r.published).lower()]
            for c in t.columns:
                cell = r.cells.get(c.key)
                line.append("" if cell is None else f"{scale * cell.mean:.4f}")
                if has_std:
                    line += ["", ""] if cell is None else [f"{scale * cell.std:.4f}", cell.n]
                if has_diff:
                    d = None if cell is None else cell.diff
                    line.append("" if d is None else f"{scale * d.delta:.4f}")
                    line.append("" if d is None or d.p_value is None else f"{d.p_value:.6g}")
            w.writerow(line)
    return buf.getvalue()


# Backslash first (through a placeholder) so the later substitutions' backslashes survive.
_LATEX_SUBS = [("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"), ("{", r"\{"),
               ("}", r"\}"), ("$", r"\$"), ("~", r"\textasciitilde{}"), ("^", r"\^{}"),
               ("±", r"$\pm$"), ("ε", r"$\varepsilon$"), ("−", "$-$"), ("Δ", r"$\Delta$"),
               ("∞", r"$\infty$"), ("×", r"$\times$"), ("—", "---"), ("<", r"$<$")]


def _latex_escape(text: str) -> str:
    text = text.replace("\\", "\x00")
    for old, new in _LATEX_SUBS:
        text = text.replace(old, new)
    return text.replace("\x00", r"\textbackslash{}")


def to_latex(tables: Sequence[CompareTable]) -> str:
    """A booktabs `table` environment per table (needs \\usepackage{booktabs})."""
    parts = []
    for t in tables:
        head = header(t)
        lines = [r"\begin{table}[t]", r"\centering", f"\\caption{{{_latex_escape(t.title)}}}",
                 r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule",
                 " & ".join(_latex_escape(h) for h in head) + r" \\", r"\midrule"]
        lines += [" & ".join(_latex_escape(c) for c in r) + r" \\" for r in text_rows(t)]
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines += [f"% {n}" for n in footnotes(t)]
        lines.append(r"\end{table}")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def to_data(tables: Sequence[CompareTable]) -> list[dict[str, Any]]:
    """Plain data for `--format json`: values are fractions (not %), as in result files."""
    out = []
    for t in tables:
        rows = []
        for r in t.rows:
            cells: dict[str, Any] = {}
            for c in t.columns:
                cell = r.cells.get(c.key)
                if cell is None:
                    continue
                item: dict[str, Any] = {"mean": cell.mean, "std": cell.std, "n": cell.n,
                                        "values": cell.values}
                if cell.diff is not None:
                    item["diff"] = {"delta": cell.diff.delta, "test": cell.diff.test,
                                    "p_value": cell.diff.p_value,
                                    "ci95": list(cell.diff.ci95) if cell.diff.ci95 else None}
                cells[c.title] = item
            rows.append({"label": r.label, "published": r.published, "citation": r.citation,
                         "baseline": r.baseline, "n": r.n, "cells": cells})
        out.append({
            "title": t.title,
            "metric": t.metric if t.percent else "1-ssim",
            "unit": "fraction" if t.percent else "number",
            "row_header": t.row_header,
            "columns": [{"title": c.title, "attack": c.key.kind, "variant": c.key.variant,
                         "norm": c.key.norm, "eps": c.key.eps, "eps_text": c.key.eps_text}
                        for c in t.columns],
            "rows": rows,
            "notes": footnotes(t),
        })
    return out
