"""Pure stage functions: no typer, no rich. Each returns a typed result; the CLI renders it."""
