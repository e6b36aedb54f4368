"""`advcli export robustbench RESULT.yaml`: a result file as a RobustBench leaderboard entry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from advcli.cli import render
from advcli.cli.common import handle_errors

app = typer.Typer(help="Export a result in another project's format.", no_args_is_help=True)


@app.command("robustbench")
@handle_errors
def robustbench_cmd(
    result: Annotated[Path, typer.Argument(help="Result file (.yaml) of advcli eval --autoattack on the "
                                           "full test set.", show_default=False)],
    name: Annotated[str | None, typer.Option("--name", help="The paper's title (default: the shipped "
                                             "leaderboard entry of the zoo model measured).")] = None,
    authors: Annotated[str | None, typer.Option("--authors", help="The paper's authors.")] = None,
    venue: Annotated[str | None, typer.Option("--venue", help="Where it was published, e.g. 'ICLR 2020'.")] = None,
    link: Annotated[str | None, typer.Option("--link", help="The paper's URL.")] = None,
    architecture: Annotated[str | None, typer.Option(
        "--architecture", help="As the leaderboard writes it, e.g. WideResNet-28-10 (default: from "
        "advcli's arch, or the shipped entry).")] = None,
    additional_data: Annotated[bool | None, typer.Option(
        "--additional-data/--no-additional-data", help="Whether training used data beyond the "
        "dataset's training set.", show_default=False)] = None,
    number_forward_passes: Annotated[int | None, typer.Option(
        "--number-forward-passes", help="Forward passes per prediction (default 1 for an advcli "
        "architecture; needed for --model/--wrap code).")] = None,
    reported: Annotated[float | None, typer.Option(
        "--reported", help="The paper's own robust accuracy in percent (written only when known).")] = None,
    footnote: Annotated[str | None, typer.Option("--footnote", help="A note for the leaderboard.")] = None,
) -> None:
    """Print the RobustBench model_info JSON entry of a result: clean and standard-AutoAttack
    accuracy on the full test set, eps, architecture and the paper's details.

    Refuses (exit 1, saying why) a subset, a custom AutoAttack, an eps or dataset the
    leaderboard has no track for, and a field the result cannot know (give its flag).
    """
    from advcli.formats.results import load_results
    from advcli.models.robustbench.export import EntryFields, export_entry

    fields = EntryFields(name=name, authors=authors, venue=venue, link=link, architecture=architecture,
                         additional_data=additional_data, number_forward_passes=number_forward_passes,
                         reported=reported, footnote=footnote)
    entry = export_entry(load_results(result), fields)
    render.out.print(json.dumps(entry, indent=2), markup=False, highlight=False, soft_wrap=True)
