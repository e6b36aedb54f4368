"""The mean 1−SSIM table: how visible each attack's perturbation is, from attack summaries and
published entries with `ssim_dissimilarity_mean`."""

from __future__ import annotations

from collections.abc import Sequence

from advcli.compare.columns import entry_key, matrix_title, order_attack_first, strength_texts, summary_key
from advcli.compare.model import Column, ColumnKey, CompareTable, Observation, TableKind
from advcli.compare.rows import RowGroup, citation_notes, ordered_groups, place_published, rows_from_groups
from advcli.formats.results import AttackSummary, Entry, EvalResult

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
    extra = strength_texts(list(reproduced))
    # Reproduced attacks first (in attack order): that fixes the row order, and each
    # published row is then placed before its reproduced twin.
    groups: dict[tuple[str, bool], RowGroup] = {}
    for key in sorted(reproduced, key=order_attack_first):
        label = matrix_title(key, False, extra)
        g = groups.setdefault((label, False), RowGroup(label, False))
        for s in reproduced[key]:
            g.add(str(s.path or id(s)), SSIM_KEY,
                  Observation(float(s.metrics["ssim_dissimilarity_mean"]), str(s.path)))
    for key, res, e in pub:
        label = matrix_title(key, False, extra)
        g = groups.setdefault((label, True), RowGroup(label, True, res.citation))
        g.add(f"{res.path}|{label}", SSIM_KEY,
              Observation(float(e.params["ssim_dissimilarity_mean"]), str(res.path)))
    rows = rows_from_groups(ordered_groups(groups), [SSIM_KEY], intervals=False)
    return CompareTable(
        title="Mean 1−SSIM between adversarial and clean images", row_header="Attack",
        columns=[Column(SSIM_KEY, "Mean 1−SSIM")], rows=rows, kind=TableKind.ssim,
        percent=False, n_means="attack summaries", notes=citation_notes(rows),
    )


