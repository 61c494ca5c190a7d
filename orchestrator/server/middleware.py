"""Pure ASGI middleware of `orchestrate serve` (none buffers a stream or wraps `receive`).

- `Frontline` (outermost): an `x-request-id` on every answer (the client's when it is sane,
  else a new one); the Host/Origin allow-list of an unkeyed server (DNS rebinding: a page on
  evil.example that resolves its name to 127.0.0.1 sends `Host: evil.example`); while the
  server drains, the envelope's 503 `shutting_down` for every new request but /health and
  /metrics; and the envelope on every path where a response has not started yet: a request
  cancelled by uvicorn past `--graceful-timeout-s` gets 503 `shutting_down`, an unexpected
  exception 500 `internal_error` (never uvicorn's plain-text 500).
- `MetricsMiddleware`: status and latency of every request (metrics.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from .envelope import INTERNAL_MESSAGE

log = logging.getLogger(__name__)

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
OPEN_WHILE_DRAINING = ("/health", "/metrics")
UNCHECKED_HOST_PATHS = ("/health",)


def _envelope(status: int, message: str, type_: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None,
                                 "code": code}}).encode()


def host_name(value: str) -> str:
    """The host of a Host header or an Origin (no port, no brackets, lower case)."""
    value = value.strip().lower()
    if "://" in value:
        return (urlsplit(value).hostname or "").rstrip(".")
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else ""
    return value.rsplit(":", 1)[0].rstrip(".") if value.count(":") == 1 else value.rstrip(".")


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("0.0.0.0", "::", "")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which Host/Origin names an unkeyed server answers: loopback, the bound host and the
    configured extra names. A server bound to every interface also answers IP-literal hosts:
    DNS rebinding needs a name, and a LAN client reaches it by address."""

    def __init__(self, bound_host: str, extra: Iterable[str] = ()):
        names = {*LOOPBACK_NAMES, *(host_name(h) or h.lower() for h in extra)}
        if not is_wildcard(bound_host):
            names.add(bound_host.strip("[]").lower())
        self.names = frozenset(names)
        self.any_ip = is_wildcard(bound_host)

    def allows(self, name: str) -> bool:
        return name in self.names or (self.any_ip and _is_ip(name))


class Frontline:
    """See the module docstring. `keyed()` says whether an API key is required (then the
    key, not the Host, protects the server); `draining()` whether shutdown has begun."""

    def __init__(self, app, *, policy: HostPolicy, keyed: Callable[[], bool],
                 draining: Callable[[], bool]):
        self.app, self.policy, self.keyed, self.draining = app, policy, keyed, draining

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [
                    *[(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"],
                    (b"x-request-id", request_id.encode())]}
            await send(message)

        async def answer(status: int, body: bytes, extra: tuple = ()) -> None:
            await send_with_id({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()), *extra]})
            await send_with_id({"type": "http.response.body", "body": body})

        path = scope.get("path", "")
        refusal = self.refusal(headers, path)
        if refusal is not None:
            await answer(*refusal)
            return
        if self.draining() and path not in OPEN_WHILE_DRAINING:
            await answer(503, _envelope(503, "The server is shutting down and accepts no new "
                                        "requests; retry on another instance.",
                                        "overloaded_error", "shutting_down"))
            return
        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            if started:
                raise
            # uvicorn cancels requests still running past --graceful-timeout-s
            await answer(503, _envelope(503, "The server shut down before this request "
                                        "finished; retry on another instance.",
                                        "overloaded_error", "shutting_down"),
                         ((b"connection", b"close"),))
        except Exception:
            if started:
                raise
            log.exception("unexpected error while serving a request")
            await answer(500, _envelope(500, INTERNAL_MESSAGE, "server_error", "internal_error"))

    def refusal(self, headers: dict[bytes, bytes], path: str) -> tuple[int, bytes] | None:
        """403/421 for a foreign Origin/Host on an unkeyed server; None to go on."""
        if self.keyed() or path in UNCHECKED_HOST_PATHS:
            return None
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if not self.policy.allows(host):
            return 421, _envelope(421, "This server answers only requests addressed to its own "
                                  "host names (no API key is set); add the name to "
                                  "allowed_hosts or set an API key.", "invalid_request_error",
                                  "host_not_allowed")
        origin = headers.get(b"origin")
        if origin is not None and not self.policy.allows(host_name(origin.decode("latin-1"))):
            return 403, _envelope(403, "Cross-origin requests from this Origin are refused (no "
                                  "API key is set); add its host to allowed_hosts or set an "
                                  "API key.", "invalid_request_error", "origin_not_allowed")
        return None
