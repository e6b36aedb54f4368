"""The terminal front end: parse options, call a stage, render. The only home of typer and rich."""
