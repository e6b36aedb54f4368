"""Shared plumbing for the CLI commands: error mapping and `--config` merging."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from advcli.cli import render
from advcli.config import load_config_file, merge_config
from advcli.errors import AdvcliError

F = TypeVar("F", bound=Callable[..., Any])

CONFIG_HELP = "YAML file of this command's options (keys = option names); flags on the command line win."
DEVICE_HELP = "Where to compute: auto (CUDA if present, else CPU), cpu, cuda or cuda:N."
FORMAT_HELP = "Output on stdout: table (human), yaml or json (machines)."
FORMATS = ("table", "yaml", "json")


def handle_errors(func: F) -> F:
    """Turn an AdvcliError into one red line and its exit code (traceback with ADVCLI_DEBUG=1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AdvcliError as exc:
            if os.environ.get("ADVCLI_DEBUG") == "1":
                raise
            render.error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            render.error_line("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def resolve_options(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The command's options with its `--config` file (if any) filled in under explicit flags.

    Call as `opts = resolve_options(ctx, locals())` first thing in a command.
    """
    given = {p.name: values[p.name] for p in ctx.command.params if p.name in values}
    config = given.get("config")
    if not config:
        return given
    explicit = {
        # Compared by name: typer >= 0.24 vendors click, older typer uses click's own enum.
        name for name in given if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    }
    # Options named after Python builtins are declared `range_`, `format_`...: their config
    # key is the option's name without the underscore.
    alias = {name.rstrip("_"): name for name in given}
    file_values = {alias.get(k, k): v for k, v in load_config_file(Path(config)).items()}
    return merge_config(file_values, given, explicit, stage=ctx.command.name or "", path=config)


def channels_last_option(default: str) -> Any:
    """`--channels-last/--no-channels-last`, None when neither is given (the command's `default`,
    described in the help)."""
    from advcli.models.layout import CHANNELS_LAST_HELP

    return typer.Option("--channels-last/--no-channels-last",
                        help=CHANNELS_LAST_HELP.format(default=default), show_default=False)
