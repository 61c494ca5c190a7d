"""`orchestrate pools check POOL`: validate a manifest and resolve every model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import pools_up
from .common import handle_errors, out

app = typer.Typer(help="Inspect pool manifests; serve them (up, down).", no_args_is_help=True)
pools_up.register(app)


@app.command("check")
@handle_errors
def check(pool: Annotated[Path, typer.Argument(help="Pool manifest (pools/*.yaml).")]) -> None:
    """Validate POOL, resolve every expert's model (loading nothing) and list the experts."""
    from ..core import Orchestrator

    with Orchestrator.from_files(pool) as orch:
        rows = orch.check()
    table = Table(title=f"pool {orch.pool.name}: {len(rows)} experts, resident_limit "
                        f"{orch.pool.resident_limit}", title_justify="left")
    for col in ("expert", "backend", "model", "status", "max_tokens", "temperature"):
        table.add_column(col, overflow="fold", no_wrap=col in ("expert", "backend"))
    for spec, resolved in rows:
        table.add_row(spec.id, spec.backend, spec.model or "-", resolved,
                      str(spec.max_tokens or "default"),
                      "default" if spec.temperature is None else str(spec.temperature))
    out.print(table)
    out.print("ok")
