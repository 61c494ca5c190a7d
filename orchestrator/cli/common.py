"""What every command shares: the consoles and the translation of library errors into one
clear line and an exit code (2 for a user mistake, 1 for a failure), never a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import OrchestratorError

K_BY_EVIDENCE_HELP = ("With a profile router, --k is a cap: each question takes the number of "
                      "experts (1..k) whose vote did best on validation for its skills (the "
                      "default); --fixed-k calls exactly k.")

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
            err.print(f"interrupted; {written_so_far()}", markup=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except (UnicodeDecodeError, RecursionError, OSError) as exc:
            # readers name the file themselves (orchestrator/safeio.py); this is the backstop
            # for one that does not, still one line and no traceback
            if os.environ.get("ORCHESTRATOR_DEBUG"):
                raise
            err.print(f"[bold red]error:[/] {escape(describe_failure(exc))}", soft_wrap=True)
            raise typer.Exit(1 if isinstance(exc, OSError) else 2) from None

    return wrapper


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return (f"an input file is not UTF-8 text (byte 0x{exc.object[exc.start:exc.start + 1].hex()}"
                f" at offset {exc.start}); save it as UTF-8.")
    if isinstance(exc, RecursionError):
        return "an input is nested too deeply to read (JSON or YAML thousands of levels deep)."
    return f"{type(exc).__name__}: {exc}"


def written_so_far() -> str:
    """What this process wrote completely before the interrupt (orchestrator.outputs.WRITTEN),
    so an interrupt while plotting never claims that nothing was written."""
    outputs = sys.modules.get("orchestrator.outputs")
    written = [p for p in dict.fromkeys(getattr(outputs, "WRITTEN", []))
               if p.exists()]  # a file removed since (a failed run's run.json) was not kept
    if not written:
        return "nothing was written."
    folder = Path(os.path.commonpath([str(p.parent) for p in written]))
    names = ", ".join(str(p.relative_to(folder)) for p in written)
    return (f"written completely before the interrupt, in {folder}/: {names}; the rest of "
            "this command's outputs were not written.")


def split_ids(value: str | None) -> list[str] | None:
    if value is None:
        return None
    ids = [v.strip() for v in value.split(",") if v.strip()]
    return ids or None
