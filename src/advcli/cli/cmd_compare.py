"""`advcli compare`: the seeds' tables from result files and attack summaries."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from advcli.cli import render
from advcli.cli.common import CONFIG_HELP, handle_errors, resolve_options
from advcli.config import parse_choice
from advcli.results import load_any
from advcli.stages import compare as stage


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
            help="Result files (`advcli eval -o`, published result files) and attack summaries "
            "(`advcli attack`), e.g. results/*.yaml.",
            show_default=False,
        ),
    ],
    metric: Annotated[
        str, typer.Option("--metric", help="accuracy, or error (= 1 − accuracy, Stutz's table).")
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
            "trained, columns = attack), from result files and attack summaries.",
        ),
    ] = False,
    worst: Annotated[
        bool,
        typer.Option("--worst", help="Also show the per-example worst case over the attacks run."),
    ] = False,
    alpha: Annotated[
        float, typer.Option("--alpha", help="Significance level for the * mark.")
    ] = 0.05,
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

    Mean ± std over seeds, differences to a baseline with p-values, the trained-with ×
    attacked-with matrix, and mean 1−SSIM from attack summaries.
    """
    opts = resolve_options(ctx, locals())
    out_format = parse_choice(CompareFormat, opts["format"], name="format")
    items = [load_any(p) for p in opts["files"]]
    tables = stage.compare(
        items,
        metric=str(opts["metric"]).strip().lower(),
        baseline=opts["baseline"],
        matrix=bool(opts["matrix"]),
        worst=bool(opts["worst"]),
        alpha=float(opts["alpha"]),
    )
    if out_format is CompareFormat.table:
        for i, t in enumerate(tables):
            if i:
                render.out.print()
            table = render.table(t.title, stage.header(t), stage.text_rows(t))
            notes = stage.footnotes(t)
            if notes:
                table.caption = "\n".join(notes)
            render.out.print(table)
    elif out_format is CompareFormat.json:
        sys.stdout.write(json.dumps(stage.to_data(tables), indent=2, ensure_ascii=False) + "\n")
    else:
        writer = {
            CompareFormat.markdown: stage.to_markdown,
            CompareFormat.csv: stage.to_csv,
            CompareFormat.latex: stage.to_latex,
        }[out_format]
        sys.stdout.write(writer(tables))
