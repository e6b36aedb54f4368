"""The matrix: trained-with (rows) × attacked-with (columns), from eval results, published
files and attack summaries (their `robust_accuracy`: correct before AND after the attack)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from advcli.compare.audit_column import code_identity
from advcli.compare.columns import entry_key, matrix_title, order_attack_first, strength_texts, summary_key
from advcli.compare.model import Column, ColumnKey, CompareTable, Metric, Observation, TableKind
from advcli.compare.rows import (
    RowGroup,
    apply_baseline,
    as_metric,
    citation_notes,
    defended_name,
    entry_obs,
    group_notes,
    keys_of,
    metric_value,
    one_code_per_checkpoint,
    ordered_groups,
    place_published_rows,
    rows_from_groups,
    seed_id,
)
from advcli.errors import ResultsError
from advcli.formats.results import AttackSummary, EvalResult


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
    metric = as_metric(metric)
    groups: dict[tuple[str, bool], RowGroup] = {}
    for res in results:
        name = defended_name(res.model.trained_with, res.user_code)
        g = groups.setdefault((name, res.published), RowGroup(name, res.published, res.citation))
        for entry in res.entries:
            if entry.attack != "worst":
                g.add(seed_id(res), entry_key(entry, published=res.published),
                      entry_obs(res, entry, metric))
    for s in summaries:
        name = defended_name(s.trained_with, s.user_code)
        g = groups.setdefault((name, False), RowGroup(name, False))
        seed = "|".join((str(s.checkpoint.get("sha256") or s.checkpoint.get("path") or s.label),
                         *code_identity(s.user_code), ""))
        src, examples = str(s.path or s.label), _summary_examples(s)
        n = examples[3]
        g.add(seed, ColumnKey("clean", "Clean"),
              Observation(metric_value(s.metrics["clean_accuracy"], metric), src,
                          examples=examples, n_examples=n))
        g.add(seed, summary_key(s),
              Observation(metric_value(_robust_accuracy(s), metric), src, examples=examples,
                          n_examples=n))
    ordered = ordered_groups(groups)
    one_code_per_checkpoint(ordered)
    place_published_rows(ordered)
    keys = sorted(keys_of(ordered), key=order_attack_first)
    with_norm = len({k.norm for k in keys if k.norm}) > 1
    extra = strength_texts(keys)
    columns = [Column(k, matrix_title(k, with_norm, extra)) for k in keys]
    rows = rows_from_groups(ordered, keys, intervals=True)
    apply_baseline(ordered, rows, columns, baseline)
    what = "Accuracy" if metric is Metric.accuracy else "Test error"
    return CompareTable(
        title=f"{what} (%): trained with (rows) × attacked with (columns)",
        row_header="Trained with", columns=columns, rows=rows, kind=TableKind.matrix,
        metric=metric, alpha=alpha, show_ci=ci,
        notes=group_notes(ordered) + citation_notes(rows),
    )


