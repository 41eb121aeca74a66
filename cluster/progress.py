"""A console display of a bring-up: milestones as lines, the waiting steps' latest log line under a spinner."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.status import Status


class ConsoleProgress:
    """Implements cluster.bringup.BringUpProgress on a rich console. Use as a context manager."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self._status: Status | None = None
        self._began = time.monotonic()

    def __enter__(self) -> ConsoleProgress:
        self._status = self.console.status("bringing up")
        self._status.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._status is not None:
            self._status.stop()

    def event(self, step: str | None, message: str, *, log_line: bool = False) -> None:
        elapsed = f"[dim]{time.monotonic() - self._began:6.1f}s[/]"
        who = f"[cyan]{escape(step)}[/] " if step else ""
        if log_line:
            if self._status is not None:
                self._status.update(f"{who}[dim]{escape(message)}[/]")
            return
        self.console.print(f"{elapsed} {who}{escape(message)}")
        if self._status is not None:
            self._status.update(f"{who}{escape(message)}")
