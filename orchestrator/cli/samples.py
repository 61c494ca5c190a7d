"""`orchestrate samples [NAME]`: the benchmark files shipped inside the package."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from .common import handle_errors, out


@handle_errors
def samples(
    name: Annotated[Optional[str], typer.Argument(help="Print only this sample's path (demo, validation).")] = None,
) -> None:
    """List the sample benchmark files shipped in the package, or print one's path, e.g.
    `orchestrate run "$(orchestrate samples demo)" --pool POOL --dry-run`."""
    from ..data import SAMPLES, sample_path

    if name is not None:
        typer.echo(str(sample_path(name)))
        return
    table = Table(title="bundled samples (licences: samples/LICENSE.md beside them)",
                  title_justify="left")
    for col in ("name", "questions", "holds", "path"):
        table.add_column(col, overflow="fold", no_wrap=col in ("name", "questions"))
    for key, (_, what) in SAMPLES.items():
        path = sample_path(key)
        lines = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        table.add_row(key, str(lines), what, str(path))
    out.print(table)
