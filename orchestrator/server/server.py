"""Run an app from `build_app` under uvicorn (imported here, lazily, by the callers of
`make_server`). SIGTERM/SIGINT mark the app draining at once (/health and new chat requests
answer 503), uvicorn stops accepting connections and lets in-flight requests finish within
`graceful_timeout_s`, then the app's lifespan drains the batcher."""

from __future__ import annotations

import ipaddress
from typing import Any


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_server(app, *, host: str = "127.0.0.1", port: int = 8000, graceful_timeout_s: int = 30,
                log_level: str = "info", access_log: bool = True):
    """A `uvicorn.Server` for `app`; `.run()` blocks (signals are handled in the main thread),
    `port=0` picks a free port (see `bound_port`)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.serving.begin_drain()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=host, port=port, timeout_graceful_shutdown=graceful_timeout_s,
        log_level=log_level, access_log=access_log, server_header=False, lifespan="on",
    )
    return Server(config)


def bound_port(server) -> int:
    """The port a started server listens on (useful with port=0)."""
    return server.servers[0].sockets[0].getsockname()[1]
