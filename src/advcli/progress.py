"""How pure stages report progress without importing rich: they call a `Reporter`.

The CLI passes a rich-backed reporter (cli/render.py); library users get `NullReporter`.
"""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def start(self, description: str, total: int | None) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def finish(self) -> None: ...

    def log(self, message: str) -> None: ...


class NullReporter:
    """Reports nothing; also records log lines so tests and callers can inspect warnings."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass

    def log(self, message: str) -> None:
        self.messages.append(message)
