"""The `advcli` Typer app: one thin command per stage, registered from cli/cmd_*.py modules."""

from __future__ import annotations

import importlib

import typer

import advcli

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

# (command name, "module:function"); each module holds one stage's thin command.
COMMANDS: list[tuple[str, str]] = [
    ("train", "advcli.cli.cmd_train:train"),
    ("adv-train", "advcli.cli.cmd_adv_train:adv_train"),
    ("info", "advcli.cli.cmd_info:info"),
    ("attack", "advcli.cli.cmd_attack:attack_cmd"),
    ("check-loader", "advcli.cli.cmd_check_loader:check_loader"),
    ("eval", "advcli.cli.cmd_eval:eval_cmd"),
    ("compare", "advcli.cli.cmd_compare:compare"),
    ("import", "advcli.cli.cmd_import:import_"),
    ("landscape", "advcli.cli.cmd_landscape:landscape"),
]

for _name, _target in COMMANDS:
    _mod, _fn = _target.split(":")
    app.command(_name)(getattr(importlib.import_module(_mod), _fn))

# Command groups: `advcli plot history ...`.
app.add_typer(importlib.import_module("advcli.cli.cmd_plot").app, name="plot")


def _version(value: bool) -> None:
    if value:
        print(f"advcli {advcli.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """advcli: adversarial-robustness experiments in PyTorch."""


def main() -> None:
    from advcli.device import tune_allocator

    tune_allocator()
    app()
