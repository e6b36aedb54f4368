"""`advcli compare`: the seeds' tables from result files, attack summaries and landscape files,
and the published claims checked against them."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from advcli.cli import render
from advcli.cli.common import CONFIG_HELP, handle_errors, resolve_options
from advcli.compare import CompareOptions, Metric, run_compare
from advcli.compare import render as text
from advcli.compare.claims import load_claims
from advcli.config import parse_choice
from advcli.errors import UsageError


class CompareFormat(str, enum.Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"
    latex = "latex"


@handle_errors
def compare(
    ctx: typer.Context,
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Result files (`advcli eval -o`, published result files), attack summaries "
            "(`advcli attack`), landscape files (`advcli landscape`) and audit files "
            "(`advcli audit -o`: an Audit column beside the accuracies of the same "
            "checkpoints), e.g. results/*.yaml.",
            show_default=False,
        ),
    ],
    metric: Annotated[
        str, typer.Option("--metric", help="accuracy, or error (= 1 − accuracy, Stutz's table); "
                          "cells in %.")
    ] = "accuracy",
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="Label of the reference row: other rows show their difference to it and a "
            "p-value (McNemar on paired examples for single runs, Welch t across seeds).",
        ),
    ] = None,
    matrix: Annotated[
        bool,
        typer.Option(
            "--matrix",
            help="Trained-with × attacked-with accuracy matrix (rows = how each model was "
            "trained, columns = attack), from result files, published files and attack "
            "summaries (robust = correct before and after the attack).",
        ),
    ] = False,
    worst: Annotated[
        bool,
        typer.Option("--worst", help="Also show the per-example worst case over the attacks run."),
    ] = False,
    alpha: Annotated[
        float, typer.Option("--alpha", help="Significance level (0-1) for the * mark and for "
                            "claims that need a significant difference.")
    ] = 0.05,
    ci: Annotated[
        bool,
        typer.Option(
            "--ci",
            help="Show each accuracy cell's 95 % Wilson interval in brackets after the value "
            "(in %), for the test examples of one run (test-set sampling only; ± is the seed "
            "spread).",
        ),
    ] = False,
    claims: Annotated[
        list[Path] | None,
        typer.Option(
            "--claims",
            help="YAML file whose `claims:` list states published claims to check (e.g. a "
            "recipe's compare.yaml); each is printed as pass / fail / inconclusive under the "
            "tables. In a --config file, `claims:` is the list itself.",
            show_default=False,
        ),
    ] = None,
    leaderboard: Annotated[
        bool,
        typer.Option(
            "--leaderboard/--no-leaderboard",
            help="Beside each measured RobustBench model (robustbench:NAME, or a checkpoint from "
            "`advcli import robustbench:NAME`), its leaderboard entry as a published row: clean, "
            "AutoAttack and the paper's reported accuracy, cited with venue and link; only when "
            "the table measures it at the leaderboard's norm and eps (a note says otherwise).",
        ),
    ] = True,
    leaderboard_dir: Annotated[
        Path | None,
        typer.Option(
            "--leaderboard-dir",
            help="Read the leaderboard entries from this copy of robustbench's model_info/ "
            "(DATASET/THREAT/NAME.json) instead of the one shipped with advcli.",
            show_default=False,
        ),
    ] = None,
    format: Annotated[
        str,
        typer.Option(
            "--format", "-f",
            help="table (rich), markdown (pasteable), csv (numbers), json, or latex (booktabs).",
        ),
    ] = "table",
    config: Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)] = None,
) -> None:
    """Tabulate result files: clean and robust accuracy per label, with statistics.

    Mean ± std over seeds, Wilson intervals, differences to a baseline with p-values, the
    trained-with × attacked-with matrix, mean 1−SSIM from attack summaries, flatness from
    landscape files, each model's audit verdict from audit files, and published claims checked as pass / fail / inconclusive.
    """
    opts = resolve_options(ctx, locals())
    out_format = parse_choice(CompareFormat, opts["format"], name="format")
    raw_claims = opts["claims"]
    if raw_claims is not None and not isinstance(raw_claims, list):
        raise UsageError("`claims:` in a --config file must be a list of claims")
    report = run_compare(CompareOptions(
        files=[Path(p) for p in opts["files"]],
        metric=parse_choice(Metric, str(opts["metric"]), name="metric"),
        baseline=opts["baseline"],
        matrix=bool(opts["matrix"]),
        worst=bool(opts["worst"]),
        alpha=float(opts["alpha"]),
        ci=bool(opts["ci"]),
        claims=load_claims(raw_claims),
        leaderboard=bool(opts["leaderboard"]),
        leaderboard_dir=None if opts["leaderboard_dir"] is None else Path(opts["leaderboard_dir"]),
    ))
    tables, verdicts = report.tables, report.claims
    if out_format is CompareFormat.table:
        for i, t in enumerate(tables):
            if i:
                render.out.print()
            table = render.table(t.title, text.header(t), text.text_rows(t))
            notes = text.footnotes(t)
            if notes:
                table.caption = "\n".join(notes)
            render.out.print(table)
        if verdicts:
            render.out.print()
            render.out.print("Claims", markup=False, highlight=False)
            for v in verdicts:
                render.out.print(f"  {text.claim_line(v)}", markup=False, highlight=False,
                                 soft_wrap=True)
    elif out_format is CompareFormat.json:
        sys.stdout.write(json.dumps(text.to_data(tables, verdicts), indent=2,
                                    ensure_ascii=False) + "\n")
    else:
        writer = {
            CompareFormat.markdown: text.to_markdown,
            CompareFormat.csv: text.to_csv,
            CompareFormat.latex: text.to_latex,
        }[out_format]
        sys.stdout.write(writer(tables, verdicts))
