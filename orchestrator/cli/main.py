"""The `orchestrate` command: a thin typer layer over the SDK, one module per command group."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from .. import __version__
from . import lora, lora_moe, pools, smore
from . import store as store_cli
from .profile import profile
from .report import report
from .route import route
from .run import run
from .samples import samples
from .serve import serve
from .sweep import sweep
from .view import view

app = typer.Typer(
    name="orchestrate", no_args_is_help=True, add_completion=False,
    help="Route questions to a pool of expert LLMs, batched by expert, and aggregate.",
    pretty_exceptions_enable=False,
)
app.command("run")(run)
app.command("profile")(profile)
app.command("route")(route)
app.command("report")(report)
app.command("sweep")(sweep)
app.command("serve")(serve)
app.command("view")(view)
app.command("samples")(samples)
app.add_typer(pools.app, name="pools")
app.add_typer(lora.app, name="lora")
app.add_typer(lora_moe.app, name="lora-moe")
app.add_typer(store_cli.app, name="store")
app.add_typer(store_cli.logs_app, name="logs")
app.add_typer(smore.app, name="smore")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"orchestrate {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Log debug details (per-batch timings, failures).")] = False,
) -> None:
    """Route questions to a pool of expert LLMs, batched by expert, and aggregate."""
    setup_logging(verbose)


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    from .common import err

    logger = logging.getLogger("orchestrator")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=err, show_path=False, show_time=False))
        logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def main() -> None:
    app()
