"""`orchestrate pools up POOL` and `orchestrate pools down MANIFEST` (workers/fleet.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import handle_errors, out


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)


@handle_errors
def up(
    pool: Annotated[Path, typer.Argument(help="Pool manifest with vllm experts.")],
    gpus: Annotated[str | None, typer.Option(help="GPUs to spread the servers over, e.g. 0-7 "
                                             "or 0,1,4 (default: the pool's gpus)")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="The openai_http manifest to "
                                                  "write (default: POOL-served.yaml here).")] = None,
    command: Annotated[str, typer.Option(help="Server command template; fields {model} {args} "
                                         "{python} {host} {port} {name}.")] = "vllm serve {model} {args}",
    host: Annotated[str, typer.Option(help="Address the servers bind to.")] = "127.0.0.1",
    base_port: Annotated[int, typer.Option(help="Port of the first server, then +1 each; 0: "
                                           "any free port.")] = 8100,
    timeout_s: Annotated[float, typer.Option(help="Seconds to wait for every server's "
                                             "/health.")] = 900.0,
) -> None:
    """Start one `vllm serve` per placement and engine of POOL, wait until all are healthy and
    write the equivalent openai_http manifest (stop them with `pools down`)."""
    from ..config import load_pool
    from ..workers.fleet import parse_gpus, start

    spec = load_pool(pool)
    target = out_path or Path(f"{pool.stem}-served.yaml")
    gpu_list = parse_gpus(gpus) if gpus else list(spec.gpus or [])
    running = start(spec, target, gpu_list, command, host, base_port, timeout_s, log=out.print)
    out.print(f"{len(running)} servers healthy; wrote {target}. Run it with `orchestrate run "
              f"... --pool {target}`; stop with `orchestrate pools down {target}`.")


@handle_errors
def down(
    manifest: Annotated[Path, typer.Argument(help="The manifest `pools up --out` wrote.")],
    grace_s: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL.")] = 30.0,
) -> None:
    """Stop the servers `pools up` started for MANIFEST."""
    from ..workers.fleet import down as stop_all

    stopped = stop_all(manifest, grace_s)
    out.print(f"stopped {len(stopped)} servers" + (f": {', '.join(stopped)}" if stopped else ""))
