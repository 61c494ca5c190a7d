"""Run an app from `build_app` under uvicorn (imported here, lazily, by the callers of
`make_server`). The listening socket is bound first (`bind`), so that a port in use is one
line and exit 2, not a uvicorn traceback. Connections go through the guarded h11 protocol
(limits.py: header/body read timeouts, connection cap). SIGTERM/SIGINT mark the app draining at
once (/health and new requests answer 503), uvicorn stops accepting connections and lets
in-flight requests finish within `graceful_timeout_s`; requests still running then are
answered 503 `shutting_down` (middleware.py), then the app's lifespan drains the batcher."""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

from ..errors import UserError
from .settings import Limits


class PortInUseError(UserError):
    """The port is taken by another process (the CLI prints one line and exits 2)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port), or PortInUseError."""
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise PortInUseError(f"Port {port} on {host} is already in use; stop the other "
                                 "server or choose another --port.") from None
        if err.errno == errno.EADDRNOTAVAIL or isinstance(err, socket.gaierror):
            raise UserError(f"Cannot bind {host}:{port}: this machine has no such address; "
                            "use --host 127.0.0.1 or one of its interfaces.") from None
        raise UserError(f"Cannot bind {host}:{port}: {err.strerror}.") from None
    sock.setblocking(False)
    return sock


def make_server(app, *, host: str = "127.0.0.1", port: int = 8000, graceful_timeout_s: int = 30,
                log_level: str = "info", access_log: bool = True, limits: Limits | None = None,
                sock: socket.socket | None = None):
    """A `uvicorn.Server` for `app`; `.run()` blocks (signals are handled in the main thread)
    and listens on `sock` when given (see `bind`), else binds host:port itself; `port=0` picks
    a free port (see `bound_port`)."""
    import uvicorn

    from .limits import guarded_protocol, limit_error_logs

    limits = limits or Limits()
    protocol = guarded_protocol(limits.header_timeout_s, limits.body_timeout_s,
                                limits.max_connections)
    app.state.serving.protocol = protocol

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.serving.begin_drain()
            super().handle_exit(sig, frame)

        def run(self, sockets=None) -> None:
            super().run(sockets=sockets or ([sock] if sock is not None else None))

    config = uvicorn.Config(
        app, host=host, port=port, timeout_graceful_shutdown=graceful_timeout_s,
        log_level=log_level, access_log=access_log, server_header=False, lifespan="on",
        http=protocol, timeout_keep_alive=limits.keep_alive_s,
        h11_max_incomplete_event_size=limits.max_header_bytes,
    )
    server = Server(config)
    limit_error_logs(limits.error_log_lines, limits.error_log_interval_s)  # after uvicorn's
    return server                                                           # logging config


def bound_port(server) -> int:
    """The port a started server listens on (useful with port=0)."""
    return server.servers[0].sockets[0].getsockname()[1]
