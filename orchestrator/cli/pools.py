"""`orchestrate pools check POOL`: what would stop a run of POOL, found before it starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from . import pools_up
from .common import err, handle_errors, out

app = typer.Typer(help="Inspect pool manifests; serve them (up, down).", no_args_is_help=True)
pools_up.register(app)


@app.command("check")
@handle_errors
def check(
    pool: Annotated[Path, typer.Argument(help="Pool manifest (pools/*.yaml).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Check every expert of POOL without loading it: options, models (local files, the Hugging
    Face cache), adapter and LoRA-MoE folders, the backend's packages, openai_http servers
    (GET /v1/models). Exit 0 and a table when all is well; exit 2 and one line per problem."""
    from ..errors import OrchestratorError
    from ..poolcheck import check_pool

    try:
        report = check_pool(pool)
    except OrchestratorError as exc:  # the manifest itself: no expert to check
        if not as_json:
            raise
        typer.echo(json.dumps({"pool": str(pool), "ok": False, "experts": [], "problems": [
            {"expert": None, "kind": "invalid_manifest", "message": str(exc)}]}, indent=2))
        raise typer.Exit(exc.exit_code) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        out.print(_table(report))
        for problem in report.problems:
            who = "" if f"'{problem.expert}'" in problem.message else f"expert '{problem.expert}': "
            err.print(f"[bold red]problem:[/] {escape(who + problem.message)}", soft_wrap=True)
        if report.ok:
            out.print("ok")
    if not report.ok:
        raise typer.Exit(2)


def _table(report) -> Table:
    n = len(report.experts)
    table = Table(title=f"pool {report.pool.name}: {n} experts, resident_limit "
                        f"{report.pool.resident_limit}", title_justify="left")
    for col in ("expert", "backend", "model", "resolves to", "status", "max_tokens", "temperature"):
        table.add_column(col, overflow="fold", no_wrap=col in ("expert", "backend"))
    for row in report.experts:
        spec = row.spec
        status = "ok" if not row.problems else ", ".join(dict.fromkeys(p.kind for p in row.problems))
        table.add_row(spec.id, spec.backend, spec.model or "-", row.resolved, status,
                      str(spec.max_tokens or "default"),
                      "default" if spec.temperature is None else str(spec.temperature),
                      style=None if not row.problems else "red")
    return table
