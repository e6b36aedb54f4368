"""The `advcli compare` stage: the seeds' tables from result files, attack summaries, landscape
and audit files (told apart by their schema), with statistics, and the claims checked against
them. Pure: no rich/typer.

The table model is `model` (`CompareTable`: columns, rows, cells holding their observations,
with mean ± std and n, a Wilson interval, differences to a baseline with p-values); `columns`
keys and titles the columns, `rows` pools observations into rows, and `tables`, `matrix`,
`ssim` and `flatness` build one table each. `render` turns tables into text (markdown, csv,
latex, json data; the CLI draws the rich version from the same strings); `claims` checks a
recipe's published claims against the tables.

- Rows are labels, in the order the files were given; a published file (`published: true`)
  is its own row, placed just before the reproduced row of the same label, marked and cited.
  A measured RobustBench model (`robustbench:NAME`, or a checkpoint imported from the zoo)
  gets its leaderboard entry as such a row by itself (`leaderboard`), when the table measures
  it at the leaderboard's threat model.
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

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from advcli.audit.file import SCHEMA as AUDIT_SCHEMA
from advcli.compare.audit_column import AuditEntry, audit_column, code_identity, read_audit_entry
from advcli.compare.claims import Claim, ClaimResult, check_claims
from advcli.compare.flatness import FlatnessSet, build_flatness_table, flatness_set
from advcli.compare.leaderboard import leaderboard_rows
from advcli.compare.matrix import build_matrix
from advcli.compare.model import CompareTable, Metric
from advcli.compare.ssim import build_ssim_table
from advcli.compare.tables import build_table
from advcli.errors import UsageError
from advcli.formats.results import AttackSummary, EvalResult, load_any

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
    leaderboard: bool = True,
    leaderboard_dir: str | Path | None = None,
) -> list[CompareTable]:
    """Every table the inputs support: the accuracy table (or the matrix), the 1−SSIM table
    and the flatness table. `leaderboard`: the accuracy table adds each measured RobustBench
    model's leaderboard entry (from `leaderboard_dir`, default the package's copy) as a
    published row."""
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
        board, board_notes = leaderboard_rows(results, leaderboard_dir) if leaderboard else ([], [])
        tables.append(build_table([*results, *board], metric=metric, baseline=baseline,
                                  worst=worst, alpha=alpha, ci=ci))
        tables[-1].notes += board_notes
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
    leaderboard: bool = True  # RobustBench leaderboard rows beside measured zoo models
    leaderboard_dir: Path | None = None  # a model_info folder; None: the package's copy


@dataclass
class CompareReport:
    tables: list[CompareTable]
    claims: list[ClaimResult]  # in the order the claims were given


def run_compare(opts: CompareOptions) -> CompareReport:
    """Read the files, build the tables, check the claims."""

    items = [load_input(p) for p in opts.files]
    tables = compare(items, metric=opts.metric, baseline=opts.baseline, matrix=opts.matrix,
                     worst=opts.worst, alpha=opts.alpha, ci=opts.ci,
                     leaderboard=opts.leaderboard, leaderboard_dir=opts.leaderboard_dir)
    return CompareReport(tables, check_claims(opts.claims, tables))
