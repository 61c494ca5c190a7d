"""What every command shares: the consoles and the translation of library errors into one
clear line and an exit code (2 for a user mistake, 1 for a failure), never a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import OrchestratorError

# Rich falls back to 80 columns when not writing to a terminal (CI logs, pipes); tables of
# numbers read better wider there.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


def handle_errors(func: Callable) -> Callable:
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except OrchestratorError as exc:
            if os.environ.get("ORCHESTRATOR_DEBUG"):
                raise
            err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted; nothing was written for the unfinished run.")
            raise typer.Exit(130) from None

    return wrapper


def split_ids(value: str | None) -> list[str] | None:
    if value is None:
        return None
    ids = [v.strip() for v in value.split(",") if v.strip()]
    return ids or None
