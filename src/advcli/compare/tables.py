"""The accuracy table: clean and robust accuracy (or test error) per label, one column per
attack, threat model and strength."""

from __future__ import annotations

from collections.abc import Sequence

from advcli.compare.columns import column_title, entry_key, matrix_title, order_threat_first, strength_texts
from advcli.compare.model import Column, CompareTable, Metric
from advcli.compare.rows import (
    RowGroup,
    apply_baseline,
    as_metric,
    citation_notes,
    entry_obs,
    group_notes,
    keys_of,
    one_code_per_checkpoint,
    ordered_groups,
    place_published_rows,
    rows_from_groups,
    seed_id,
)
from advcli.formats.results import EvalResult


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
    metric = as_metric(metric)
    groups: dict[tuple[str, bool], RowGroup] = {}
    for res in results:
        g = groups.setdefault((res.label, res.published),
                              RowGroup(res.label, res.published, res.citation))
        for entry in res.entries:
            if entry.attack == "worst" and not worst:
                continue
            g.add(seed_id(res), entry_key(entry, published=res.published),
                  entry_obs(res, entry, metric))
    ordered = ordered_groups(groups)
    one_code_per_checkpoint(ordered)
    place_published_rows(ordered)
    keys = sorted(keys_of(ordered), key=order_threat_first)
    robust = [k for k in keys if k.kind not in ("clean", "worst", "transfer")]
    with_variant = len({k.variant for k in robust}) > 1
    with_norm = len({k.norm for k in keys if k.kind != "clean"}) > 1
    extra = strength_texts(keys)
    columns = [Column(k, column_title(k, metric, with_variant, with_norm, extra),
                      matrix_title(k, with_norm, extra)) for k in keys]
    rows = rows_from_groups(ordered, keys, intervals=True)
    apply_baseline(ordered, rows, columns, baseline)
    title = ("Clean and robust accuracy" if metric is Metric.accuracy
             else "Clean and robust test error")
    return CompareTable(title=title, row_header="Model", columns=columns, rows=rows,
                        metric=metric, alpha=alpha, show_ci=ci,
                        notes=group_notes(ordered) + citation_notes(rows))


