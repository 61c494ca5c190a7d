"""`orchestrate view`: a run's report.html, or one page comparing runs on the same questions;
opened in the browser when a display exists."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import handle_errors, out


@handle_errors
def view(
    dirs: Annotated[list[Path], typer.Argument(metavar="DIR...", help="Run folders (the --out of `orchestrate run`).")],
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Page to write [default: DIR/report.html for one run, ./compare.html for several].")] = None,
    browse: Annotated[bool, typer.Option("--open/--no-open", help="Open the page in a browser when a display exists.")] = True,
) -> None:
    """One DIR: (re)write its viewer page (DIR/report.html). Two or more: write one page comparing the runs on
    their common questions (accuracy with 95% intervals, each pair's paired-bootstrap difference,
    the questions whose correctness differs). Prints the page's path."""
    from ..report.html import write_html
    from ..report.html_compare import write_compare

    if len(dirs) == 1:
        path = write_html(dirs[0], out_file)
    else:
        path = write_compare(dirs, out_file or Path("compare.html"))
    out.print(str(path), markup=False, soft_wrap=True)
    if browse and has_display():
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


def has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
