"""The `orchestrate` command: a thin typer layer over the SDK, one module per command group."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__
from . import pools
from .run import run

app = typer.Typer(
    name="orchestrate", no_args_is_help=True, add_completion=False,
    help="Route questions to a pool of expert LLMs, batched by expert, and aggregate.",
    pretty_exceptions_enable=False,
)
app.command("run")(run)
app.add_typer(pools.app, name="pools")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"orchestrate {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Route questions to a pool of expert LLMs, batched by expert, and aggregate."""


def main() -> None:
    app()
