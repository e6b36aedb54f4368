"""Shared plumbing for the CLI commands: error mapping and `--config` merging."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from advcli.cli import render
from advcli.config import load_config_file, merge_config, parse_choice
from advcli.errors import AdvcliError, UsageError

F = TypeVar("F", bound=Callable[..., Any])

CONFIG_HELP = "YAML file of this command's options (keys = option names); flags on the command line win."
DEVICE_HELP = "Where to compute: auto (CUDA if present, else CPU), cpu, cuda or cuda:N."
FORMAT_HELP = "Output on stdout: table (human), yaml or json (machines)."
FORMATS = ("table", "yaml", "json")


def _prints_errors() -> bool:
    """Under torchrun every rank meets the same error: rank 0 alone says it (every rank still
    exits with its code). Read from the environment: the process group may be gone by now."""
    from advcli.distributed import env_info

    return env_info().is_main


def handle_errors(func: F) -> F:
    """Turn an AdvcliError into one red line and its exit code (traceback with ADVCLI_DEBUG=1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AdvcliError as exc:
            if os.environ.get("ADVCLI_DEBUG") == "1":
                raise
            if _prints_errors():
                render.error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if _prints_errors():
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


STREAM_HELP = (
    "How the images are read: on (streamed: decoded on the fly in DataLoader workers, resized "
    "and centre-cropped to --image-size; training crops and flips at random), off (decoded whole "
    "into memory once, at their own size, which must be one size) or auto (streamed when the "
    "dataset is too large to cache in memory or its images differ in size, else off). Default: {default}."
)
IMAGE_SIZE_HELP = (
    "Side of the square images a streamed dataset (folder:PATH, shards:PATH) is resized and "
    "cropped to, in pixels. Giving it streams the dataset (refused with --stream off and for "
    "datasets read at their own size). Default: {default}."
)
SKIP_BAD_HELP = (
    "Skip image files that do not decode (corrupt or not images) and say how many, instead of "
    "stopping at the first with an error naming it (streamed datasets; the count is logged{where})."
)


def stream_option(default: str) -> Any:
    """`--stream auto|on|off`; `default` describes the command's default in the help."""
    return typer.Option("--stream", metavar="auto|on|off", help=STREAM_HELP.format(default=default),
                        show_default=False)


def image_size_option(default: str) -> Any:
    """`--image-size PX`; `default` describes the command's default in the help."""
    return typer.Option("--image-size", metavar="PX", min=1, help=IMAGE_SIZE_HELP.format(default=default),
                        show_default=False)


def skip_bad_option(where: str) -> Any:
    """`--skip-bad`; `where` says where the count goes (after "logged")."""
    return typer.Option("--skip-bad", help=SKIP_BAD_HELP.format(where=where))


# The commands that evaluate checkpoints (eval, attack, audit, landscape) read the images as
# the training run did unless told otherwise: no default of their own.
CheckpointStream = Annotated[str | None, stream_option("the training run's (from the checkpoint), else auto")]
CheckpointImageSize = Annotated[int | None, image_size_option(
    "the training run's (from the checkpoint), else 224 for streamed data")]
CheckpointSkipBad = Annotated[bool, skip_bad_option(" and listed in the output file's data block")]


def data_view(opts: dict[str, Any]) -> Any:
    """The `--stream`, `--image-size`, `--skip-bad` options as a `DataView` (checked when the
    dataset is known: `DataView.load_kwargs`)."""
    from advcli.data.datasets import StreamMode
    from advcli.data.view import DataView

    stream, size = opts.get("stream"), opts.get("image_size")
    if stream is not None:
        stream = parse_choice(StreamMode, stream, name="--stream").value
    if size is not None:  # a config file's value has not been through typer
        if isinstance(size, bool) or not str(size).strip().isdigit() or int(size) < 1:
            raise UsageError(f"--image-size must be a positive number of pixels, got {size!r}")
        size = int(size)
    return DataView(stream=stream, image_size=size, skip_bad=bool(opts.get("skip_bad")))
