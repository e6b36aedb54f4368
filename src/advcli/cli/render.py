"""Everything rich: the stdout/stderr consoles, the error line, progress bars, tables."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

out = Console(soft_wrap=True)
err = Console(stderr=True)


def error_line(message: str) -> None:
    # One line, no wrapping or markup surprises from the message text itself: escaped, or
    # rich would read "pip install 'advcli[tensorboard]'" as a style tag and drop it.
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


def warn_line(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


def info_line(message: str) -> None:
    err.print(message, markup=False, highlight=False, soft_wrap=True)


class RichReporter:
    """A `advcli.progress.Reporter` drawing one progress bar at a time on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet or bool(os.environ.get("ADVCLI_NO_PROGRESS"))
        self._progress: Progress | None = None
        self._task: Any = None
        self.messages: list[str] = []

    def start(self, description: str, total: int | None) -> None:
        self.finish()
        if self.quiet:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def log(self, message: str) -> None:
        self.messages.append(message)
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            info_line(message)


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    t = Table(title=title, show_lines=False)
    for i, c in enumerate(columns):
        t.add_column(str(c), justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*[str(v) for v in r])
    return t


def dump(data: Any, fmt: str) -> None:
    """Machine-readable output on stdout."""
    if fmt == "json":
        out.print_json(json.dumps(data)) if False else print(json.dumps(data, indent=2, sort_keys=False))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")


STATUS_STYLES = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def status_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                 status_column: int) -> Table:
    """A table whose `status_column` (pass / warn / fail / skip) is coloured; cells are plain
    text (no rich markup is read from them, so brackets in measured values stay as they are)."""
    from rich.text import Text

    t = Table(title=title, show_lines=True)
    for c in columns:
        t.add_column(str(c), justify="left", overflow="fold")
    for r in rows:
        cells = [Text(str(v)) for v in r]
        status = str(r[status_column])
        cells[status_column] = Text(status, style=STATUS_STYLES.get(status, ""))
        t.add_row(*cells)
    return t


def verdict_line(status: str, message: str) -> None:
    """The one-line verdict of a check run, on stdout (it is a result), coloured by status."""
    from rich.text import Text

    out.print(Text(f"verdict: {message}", style=STATUS_STYLES.get(status, "")))
