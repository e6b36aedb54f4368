"""Text renderings of `advcli compare`'s tables and claim verdicts: cell text, header, rows and
footnotes (what the rich table in `cli/render.py` shows too), markdown, csv, latex, and plain
data for `--format json`. Pure string work on `compare.model.CompareTable`; no rich/typer.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from advcli.compare.claims import ClaimResult
from advcli.compare.model import Cell, CompareTable, TableKind, format_p, number_text

_UNITLESS = {TableKind.ssim: "1-ssim", TableKind.flatness: "loss-increase"}


def _signed(value: float, table: CompareTable) -> str:
    text = number_text(abs(value), table)
    return f"+{text}" if value >= 0 else f"−{text}"


def cell_text(cell: Cell | None, table: CompareTable) -> str:
    """"94.41", "94.41 ± 0.23", "94.41 [92.78, 95.69]" with --ci, and "(Δ −1.20, p = 0.031*)"
    against a baseline."""
    if cell is None:
        return "—"
    text = number_text(cell.mean, table)
    if cell.n > 1:
        text += f" ± {number_text(cell.std, table)}"
    if table.show_ci and cell.wilson95 is not None:
        low, high = cell.wilson95
        text += f" [{number_text(low, table)}, {number_text(high, table)}]"
    if cell.diff is not None:
        d = cell.diff
        text += f" (Δ {_signed(d.delta, table)}"
        if d.p_value is not None:
            text += f", {format_p(d.p_value)}" + ("*" if d.p_value < table.alpha else "")
        text += ")"
    return text


def header(table: CompareTable) -> list[str]:
    cols = [table.row_header] + [c.title for c in table.columns]
    if table.show_audit:
        cols.append("Audit")
    return cols + ["n"] if table.show_n else cols


def text_rows(table: CompareTable) -> list[list[str]]:
    """The table as strings, one list per row (what the rich table and markdown show)."""
    out = []
    for row in table.rows:
        cells = [row.display] + [cell_text(row.cells.get(c.key), table) for c in table.columns]
        if table.show_audit:
            cells.append(row.audit or "—")
        out.append(cells + [str(row.n)] if table.show_n else cells)
    return out


def footnotes(table: CompareTable) -> list[str]:
    notes = []
    if any(r.n > 1 for r in table.rows):
        notes.append(f"mean ± sample std over n {table.n_means}")
    if table.show_ci and any(c.wilson95 for r in table.rows for c in r.cells.values()):
        # Not "[low, high]: ...": rich would read a leading "[low" as markup in the caption.
        notes.append("in brackets: 95 % Wilson interval for the test examples of one run "
                     "(test-set sampling only; the ± is the spread over seeds)")
    if any(c.diff is not None for r in table.rows for c in r.cells.values()):
        notes.append(
            "Δ: difference to the baseline in percentage points; p from McNemar's exact test "
            "(one run each, same examples) or Welch's t-test (several seeds each); "
            f"* p < {table.alpha:g}"
        )
    return notes + table.notes


def claim_line(result: ClaimResult) -> str:
    """"pass: AutoAttack error >= PGD-10 error on every row — 3/3 hold; ..."."""
    return f"{result.verdict.value}: {result.claim.text} — {result.detail}"


def _md_escape(text: str) -> str:
    # `|` would split a cell; `*` (the significance mark) must not start emphasis.
    return text.replace("|", "\\|").replace("*", "\\*")


def to_markdown(tables: Sequence[CompareTable], claims: Sequence[ClaimResult] = ()) -> str:
    """GitHub-flavoured markdown tables, pasteable as they are, then the claims as a list."""
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
    if claims:
        lines = ["**Claims**", ""]
        lines += [f"- **{c.verdict.value}**: {_md_escape(c.claim.text)} — {_md_escape(c.detail)}"
                  for c in claims]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def to_csv(tables: Sequence[CompareTable], claims: Sequence[ClaimResult] = ()) -> str:
    """Numbers for spreadsheets: per column its mean (in % for accuracies), and, where they
    apply, std, n, the Wilson interval, the difference to the baseline and p. Tables (and the
    claims, last) are separated by a blank line."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for i, t in enumerate(tables):
        if i:
            buf.write("\n")
        has_std = t.show_n
        has_ci = t.show_ci and any(c.wilson95 for r in t.rows for c in r.cells.values())
        has_diff = any(c.diff is not None for r in t.rows for c in r.cells.values())
        head = [t.row_header, "published"]
        for c in t.columns:
            head.append(c.title)
            if has_std:
                head += [f"{c.title} std", f"{c.title} n"]
            if has_ci:
                head += [f"{c.title} ci low", f"{c.title} ci high"]
            if has_diff:
                head += [f"{c.title} diff", f"{c.title} p"]
        if t.show_audit:
            head.append("audit")
        w.writerow(head)
        scale = 100.0 if t.percent else 1.0
        for r in t.rows:
            line: list[Any] = [r.label, str(r.published).lower()]
            for c in t.columns:
                cell = r.cells.get(c.key)
                line.append("" if cell is None else f"{scale * cell.mean:.4f}")
                if has_std:
                    line += ["", ""] if cell is None else [f"{scale * cell.std:.4f}", cell.n]
                if has_ci:
                    ci = None if cell is None else cell.wilson95
                    line += ["", ""] if ci is None else [f"{scale * v:.4f}" for v in ci]
                if has_diff:
                    d = None if cell is None else cell.diff
                    line.append("" if d is None else f"{scale * d.delta:.4f}")
                    line.append("" if d is None or d.p_value is None else f"{d.p_value:.6g}")
            if t.show_audit:
                line.append(r.audit or "")
            w.writerow(line)
    if claims:
        if tables:
            buf.write("\n")
        w.writerow(["claim", "verdict", "detail"])
        for c in claims:
            w.writerow([c.claim.text, c.verdict.value, c.detail])
    return buf.getvalue()


# Backslash first (through a placeholder) so the later substitutions' backslashes survive.
_LATEX_SUBS = [("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"), ("{", r"\{"),
               ("}", r"\}"), ("$", r"\$"), ("~", r"\textasciitilde{}"), ("^", r"\^{}"),
               ("±", r"$\pm$"), ("ε", r"$\varepsilon$"), ("−", "$-$"), ("Δ", r"$\Delta$"),
               ("∞", r"$\infty$"), ("×", r"$\times$"), ("—", "---"), ("<", r"$<$"),
               ("τ", r"$\tau$")]


def _latex_escape(text: str) -> str:
    text = text.replace("\\", "\x00")
    for old, new in _LATEX_SUBS:
        text = text.replace(old, new)
    return text.replace("\x00", r"\textbackslash{}")


def to_latex(tables: Sequence[CompareTable], claims: Sequence[ClaimResult] = ()) -> str:
    """A booktabs `table` environment per table (needs \\usepackage{booktabs}); the claims
    follow as comments."""
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
    if claims:
        parts.append("".join(f"% claim {claim_line(c)}\n" for c in claims))
    return "\n".join(parts)


def to_data(tables: Sequence[CompareTable], claims: Sequence[ClaimResult] = ()) -> list[dict[str, Any]]:
    """Plain data for `--format json`: values are fractions (not %), as in result files. One
    item per table; with claims, a last item `{"title": "Claims", "claims": [...]}`."""
    out: list[dict[str, Any]] = []
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
                if t.show_ci:
                    item["wilson95"] = list(cell.wilson95) if cell.wilson95 else None
                if cell.diff is not None:
                    item["diff"] = {"delta": cell.diff.delta, "test": cell.diff.test,
                                    "p_value": cell.diff.p_value,
                                    "ci95": list(cell.diff.ci95) if cell.diff.ci95 else None}
                cells[c.title] = item
            row: dict[str, Any] = {"label": r.label, "published": r.published,
                                   "citation": r.citation, "baseline": r.baseline, "n": r.n,
                                   "cells": cells}
            if t.show_audit:
                row["audit"] = r.audit
            rows.append(row)
        out.append({
            "title": t.title,
            "metric": t.metric.value if t.percent else _UNITLESS.get(t.kind, t.kind.value),
            "unit": "fraction" if t.percent else "number",
            "row_header": t.row_header,
            "columns": [{"title": c.title, "attack": c.key.kind, "variant": c.key.variant,
                         "norm": c.key.norm, "eps": c.key.eps, "eps_text": c.key.eps_text,
                         "params": dict(c.key.strength)}
                        for c in t.columns],
            "rows": rows,
            "notes": footnotes(t),
        })
    if claims:
        out.append({"title": "Claims", "claims": [
            {"claim": c.claim.text, "check": c.claim.check.value, "table": c.table,
             "verdict": c.verdict.value, "detail": c.detail} for c in claims]})
    return out
