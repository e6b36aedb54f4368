"""`advcli info CKPT`: a checkpoint's metadata, read from the header without loading weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from advcli.cli import render
from advcli.cli.common import FORMAT_HELP, FORMATS, handle_errors
from advcli.errors import UsageError
from advcli.models.checkpoint import read_metadata


@handle_errors
def info(
    path: Annotated[Path, typer.Argument(help="A .safetensors file written by advcli (checkpoint, training state or adversarial set).", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "table",
) -> None:
    """Print a checkpoint's metadata (arch, dataset, threat model, metrics, provenance)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; valid values: {', '.join(FORMATS)}")
    meta = read_metadata(path)
    if fmt != "table":
        render.dump(meta, fmt)
        return
    rows = []
    for key, value in meta.items():
        if key == "history" and isinstance(value, list):
            value = f"{len(value)} epochs (see --format yaml)"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value)
            value = value if len(value) <= 120 else value[:117] + "..."
        rows.append((key, str(value)))
    render.out.print(render.table(str(path), ["key", "value"], rows))
