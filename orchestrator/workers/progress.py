"""A rich progress bar per expert (on stderr), or nothing."""

from __future__ import annotations

from contextlib import AbstractContextManager


class NoProgress(AbstractContextManager):
    def add(self, expert: str, total: int) -> None: ...

    def advance(self, expert: str, n: int) -> None: ...

    def __exit__(self, *exc) -> None:
        return None


class RichProgress(AbstractContextManager):
    def __init__(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=Console(stderr=True), transient=False,
        )
        self._tasks: dict[str, int] = {}

    def __enter__(self):
        self._progress.start()
        return self

    def add(self, expert: str, total: int) -> None:
        self._tasks[expert] = self._progress.add_task(expert, total=total)

    def advance(self, expert: str, n: int) -> None:
        self._progress.advance(self._tasks[expert], n)

    def __exit__(self, *exc) -> None:
        self._progress.stop()


def make_progress(enabled: bool):
    return RichProgress() if enabled else NoProgress()
