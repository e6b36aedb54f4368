"""`advcli info CKPT`: a checkpoint's metadata, read from the header without loading weights."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from advcli.checkpoint import read_metadata
from advcli.cli import render
from advcli.cli.common import FORMAT_HELP, handle_errors
from advcli.errors import UsageError


@handle_errors
def info(
    path: Path = typer.Argument(..., help="A .safetensors file written by advcli (checkpoint, training state or adversarial set)."),
    fmt: str = typer.Option("table", "--format", help=FORMAT_HELP),
) -> None:
    """Print a checkpoint's metadata (arch, dataset, threat model, metrics, provenance)."""
    meta = read_metadata(path)
    if fmt in ("yaml", "json"):
        render.dump(meta, fmt)
        return
    if fmt != "table":
        raise UsageError(f"unknown format {fmt!r}; valid values: table, yaml, json")
    rows = []
    for key, value in meta.items():
        if key == "history" and isinstance(value, list):
            value = f"{len(value)} epochs (see --format yaml)"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value)
            value = value if len(value) <= 120 else value[:117] + "..."
        rows.append((key, str(value)))
    render.out.print(render.table(str(path), ["key", "value"], rows))
