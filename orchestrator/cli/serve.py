"""`orchestrate serve`: the pool as one OpenAI-compatible model over HTTP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import err, handle_errors


@handle_errors
def serve(
    pool: Annotated[Path, typer.Option(help="Pool manifest (pools/*.yaml).")],
    profile: Annotated[Optional[Path], typer.Option(help="Skill profile JSON (for the profile routers).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Run preset (configs/*.yaml).")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind; anything but loopback exposes the pool to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port).")] = 8000,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key (required on every route but /health when set).")] = "ORCHESTRATOR_API_KEY",
    k: Annotated[Optional[int], typer.Option("--k", help="Default experts per question (requests may send k).")] = None,
    router: Annotated[Optional[str], typer.Option(help="Default router (requests may send router).")] = None,
    window_ms: Annotated[float, typer.Option(min=0, help="Micro-batching window: requests arriving within it share one grouped execution.")] = 20.0,
    max_batch: Annotated[int, typer.Option(min=1, help="Requests per batch at most.")] = 32,
    max_queue: Annotated[int, typer.Option(min=1, help="Waiting requests at most; beyond it 503 with Retry-After.")] = 256,
    deadline_s: Annotated[float, typer.Option(min=0.001, help="Per-request deadline in seconds (504 when missed).")] = 300.0,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body (413 beyond).")] = 1_000_000,
    graceful_timeout_s: Annotated[int, typer.Option(min=0, help="On SIGTERM, seconds for in-flight requests to finish.")] = 30,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Answer with the fake backend; load no model.")] = False,
) -> None:
    """Serve POOL at http://HOST:PORT/v1 (chat completions, streaming, models, route, metrics)."""
    from ..core import Orchestrator
    from ..extras import require_installed

    require_installed(("fastapi", "uvicorn", "prometheus_client"), "`orchestrate serve`")
    from ..server.app import build_app
    from ..server.server import is_loopback, make_server

    api_key = os.environ.get(api_key_env) or None
    if not is_loopback(host) and api_key is None:
        err.print(f"[bold yellow]warning:[/] serving on {host} without an API key: anyone who "
                  f"can reach this port can use the pool. Set {api_key_env} to require a key.")
    with Orchestrator.from_files(pool, config, dry_run=dry_run, k=k, router=router,
                                 profile=str(profile) if profile else None) as orch:
        orch.check()  # every model resolves before the server accepts a request
        app = build_app(orch, api_key=api_key, window_s=window_ms / 1000, max_batch=max_batch,
                        max_queue=max_queue, deadline_s=deadline_s, max_body_bytes=max_body_bytes,
                        drain_timeout_s=graceful_timeout_s)
        err.print(f"serving pool '{orch.pool.name}' as '{orch.model_name}' and "
                  f"{len(orch.specs)} experts at http://{host}:{port}/v1 "
                  f"(API key {'required' if api_key else 'off'})", markup=False)
        make_server(app, host=host, port=port, graceful_timeout_s=graceful_timeout_s).run()
