"""The `advcli` Typer app: one thin command per stage, imported from the cli/cmd_*.py modules."""

from __future__ import annotations

from typing import Annotated

import typer

import advcli
from advcli.cli.cmd_adv_train import adv_train
from advcli.cli.cmd_attack import attack_cmd
from advcli.cli.cmd_audit import audit_cmd
from advcli.cli.cmd_check_loader import check_loader
from advcli.cli.cmd_compare import compare
from advcli.cli.cmd_eval import eval_cmd
from advcli.cli.cmd_export import app as export_app
from advcli.cli.cmd_import import import_
from advcli.cli.cmd_info import info
from advcli.cli.cmd_landscape import landscape
from advcli.cli.cmd_plot import app as plot_app
from advcli.cli.cmd_train import train

app = typer.Typer(
    name="advcli",
    help=(
        "Adversarial-robustness experiments in PyTorch, one command per stage. Stages talk "
        "through safetensors checkpoints and YAML result files. Images are in [0, 1]; eps is "
        "written like 8/255."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# One thin command per stage, each in its own cli/cmd_*.py module.
app.command("train")(train)
app.command("adv-train")(adv_train)
app.command("info")(info)
app.command("attack")(attack_cmd)
app.command("check-loader")(check_loader)
app.command("eval")(eval_cmd)
app.command("compare")(compare)
app.command("import")(import_)
app.command("landscape")(landscape)
app.command("audit")(audit_cmd)
# Command groups: `advcli plot history ...`.
app.add_typer(plot_app, name="plot")
app.add_typer(export_app, name="export")


def _version(value: bool) -> None:
    if value:
        print(f"advcli {advcli.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """advcli: adversarial-robustness experiments in PyTorch."""


def main() -> None:
    from advcli.device import tune_allocator

    tune_allocator()
    app()
