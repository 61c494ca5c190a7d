"""`orchestrate serve`: the pool as OpenAI-compatible models over HTTP. Settings come from
`--config serve.yaml` (orchestrator/server/settings.py; configs/serve.yaml is the example);
flags given on the command line override the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import err, handle_errors


@handle_errors
def serve(
    pool: Annotated[Optional[Path], typer.Option(help="Pool manifest (pools/*.yaml); required here or in --config.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Serving configuration (configs/serve.yaml): host, port, pool, aliases, limits...")] = None,
    profile: Annotated[Optional[Path], typer.Option(help="Skill profile JSON (for the profile routers).")] = None,
    run: Annotated[Optional[Path], typer.Option("--run", help="Run preset (configs/*.yaml): router, k, aggregator, generation.")] = None,
    host: Annotated[Optional[str], typer.Option(help="Interface to bind (default 127.0.0.1); anything but loopback exposes the pool to the network.")] = None,
    port: Annotated[Optional[int], typer.Option(min=0, max=65535, help="TCP port (default 8000; 0: any free port).")] = None,
    served_model_name: Annotated[Optional[str], typer.Option(help="The mixture's model name (default 'orchestrator').")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="Environment variable holding the API key (default ORCHESTRATOR_API_KEY), required on every route but /health and /version when set.")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Default experts per question (requests may send k).")] = None,
    router: Annotated[Optional[str], typer.Option(help="Default router (requests may send router).")] = None,
    window_ms: Annotated[Optional[float], typer.Option(min=0, help="Micro-batching window (default 20): requests arriving within it share one grouped execution.")] = None,
    max_batch: Annotated[Optional[int], typer.Option(min=1, help="Requests per batch at most (default 32).")] = None,
    max_queue: Annotated[Optional[int], typer.Option(min=1, help="Waiting requests at most (default 256); beyond it 503 with Retry-After.")] = None,
    deadline_s: Annotated[Optional[float], typer.Option(min=0.001, help="Per-request deadline in seconds (default 300; 504 when missed).")] = None,
    max_body_bytes: Annotated[Optional[int], typer.Option(min=1, help="Largest request body (default 1000000; 413 beyond).")] = None,
    graceful_timeout_s: Annotated[Optional[int], typer.Option(min=0, help="On SIGTERM, seconds for in-flight requests to finish (default 30); then 503 shutting_down.")] = None,
    log_requests: Annotated[Optional[bool], typer.Option("--log-requests/--no-log-requests", help="Record every chat request, its routing and answer in the generation store (`orchestrate logs`), plus one log line each.")] = None,
    store: Annotated[Optional[Path], typer.Option(help="The store request records go to [default: the per-user store].")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Answer with the fake backend; load no model.")] = False,
) -> None:
    """Serve a pool at http://HOST:PORT/v1 (chat completions, streaming, models, route, metrics)."""
    from ..core import Orchestrator
    from ..errors import ConfigError
    from ..extras import require_installed

    require_installed(("fastapi", "uvicorn", "prometheus_client"), "`orchestrate serve`")
    from ..server.app import build_app
    from ..server.server import bind, is_loopback, make_server
    from ..server.settings import load_serve_config

    cfg = load_serve_config(config, pool=pool, profile=profile, run=run, host=host, port=port,
                            served_model_name=served_model_name, api_key_env=api_key_env,
                            window_ms=window_ms, max_batch=max_batch, max_queue=max_queue,
                            deadline_s=deadline_s, max_body_bytes=max_body_bytes,
                            graceful_timeout_s=graceful_timeout_s, log_requests=log_requests,
                            store=store)
    if cfg.pool is None:
        raise ConfigError("No pool to serve: pass --pool pools/NAME.yaml or set 'pool' in --config.")
    api_key = os.environ.get(cfg.api_key_env) or None
    if not is_loopback(cfg.host) and api_key is None:
        err.print(f"[bold yellow]warning:[/] serving on {cfg.host} without an API key: anyone who "
                  f"can reach this port can use the pool. Set {cfg.api_key_env} to require a key.")
    overrides = {"k": k, "router": router, "profile": str(cfg.profile) if cfg.profile else None,
                 "min_experts_ok": cfg.min_experts_ok}
    request_log = None
    if cfg.log_requests:  # opened before any model loads: a bad store is one line, exit 2
        from ..store import GenerationStore

        request_log = GenerationStore(cfg.store)
    with Orchestrator.from_files(cfg.pool, cfg.run, dry_run=dry_run,
                                 **{n: v for n, v in overrides.items() if v is not None}) as orch:
        orch.check()  # every model resolves before the server accepts a request
        cfg.check_names(list(orch.specs))
        app = build_app(orch, api_key=api_key, window_s=cfg.window_ms / 1000,
                        max_batch=cfg.max_batch, max_queue=cfg.max_queue,
                        deadline_s=cfg.deadline_s, max_body_bytes=cfg.max_body_bytes,
                        drain_timeout_s=cfg.graceful_timeout_s,
                        served_model_name=cfg.served_model_name, aliases=cfg.aliases,
                        host=cfg.host, allowed_hosts=cfg.allowed_hosts,
                        log_requests=cfg.log_requests, concurrency=cfg.concurrency,
                        request_log=request_log)
        sock = bind(cfg.host, cfg.port)  # a port in use: one line, exit 2
        bound = sock.getsockname()[1]
        names = ", ".join([cfg.served_model_name, *cfg.aliases])
        err.print(f"serving pool '{orch.pool.name}' as {names} and {len(orch.specs)} experts at "
                  f"http://{cfg.host}:{bound}/v1 (API key {'required' if api_key else 'off'})",
                  markup=False)
        make_server(app, host=cfg.host, port=bound, graceful_timeout_s=cfg.graceful_timeout_s,
                    limits=cfg.limits, sock=sock).run()
