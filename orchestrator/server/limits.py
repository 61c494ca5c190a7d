"""What bad clients cannot do to `orchestrate serve` (issue 12, item 7).

uvicorn (0.54, h11) enforces neither a header nor a body read timeout: `timeout_keep_alive`
only runs between requests and is cancelled by the first byte of the next one, and
`limit_concurrency` answers a plain-text 503 only once a request's headers are complete, so
a client that sends one header byte an hour holds its connection (and a file descriptor)
forever. `guarded_protocol` subclasses uvicorn's H11Protocol:

- header timeout: a connection whose request line and headers are not complete
  `header_timeout_s` after it opened (or after its previous response) is closed;
- body timeout: a request whose body is not complete `body_timeout_s` after its headers is
  closed (the app sees a disconnect);
- connection cap: a connection beyond `max_connections` is answered by the OpenAI envelope's
  503 (`code: too_many_connections`, `Retry-After`, `Connection: close`) as soon as its
  headers arrive, with a header timeout of at most 1 s; only /health reaches the app.

`RateLimitFilter` bounds warnings, errors and access lines of 4xx/5xx answers of each of the
server's loggers: at most `lines` per `interval_s`, the rest counted and reported as one
"suppressed M" line; a message repeated within an interval keeps its traceback only the first
time. Measured: 3,000 bad requests (half malformed HTTP, half bad JSON) against
`orchestrate serve --dry-run` wrote 90 log lines (5.5 kB), no traceback.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

summary = logging.getLogger(__name__)
OVER_CAP_TIMEOUT_S = 1.0
LIMITED_LOGGERS = ("uvicorn.error", "uvicorn.access", "asyncio", "orchestrator.server.envelope",
                   "orchestrator.server.app", "orchestrator.server.middleware",
                   "orchestrator.workers.batcher")  # logger filters do not see child records


def _envelope_503(code: str, message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "overloaded_error", "param": None,
                                 "code": code}}).encode()


class OverCap:
    """The app of a connection beyond the cap: /health still answers (a probe must not kill a
    server because bad clients hold its connections); anything else gets the 503."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("path") == "/health":
            await self.app(scope, receive, send)
        else:
            await too_many_connections(scope, receive, send)


async def too_many_connections(scope, receive, send) -> None:
    """The answer to a connection beyond the cap (an ASGI app, like uvicorn's own 503)."""
    body = _envelope_503("too_many_connections", "The server has too many open connections; "
                         "retry shortly.")
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"), (b"connection", b"close"),
        (b"x-request-id", uuid.uuid4().hex.encode())]})
    await send({"type": "http.response.body", "body": body})


class GuardedH11Protocol(H11Protocol):
    """H11Protocol with read timeouts and a connection cap (class attributes set by
    `guarded_protocol`)."""

    header_timeout_s = 10.0
    body_timeout_s = 30.0
    max_connections = 512
    closed_slow = 0  # connections closed by a read timeout (shared counter, for metrics)
    refused = 0  # connections answered by the over-cap 503

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_timer = None
        self._over_cap = len(self.connections) > self.max_connections
        if self._over_cap:
            self.app = OverCap(self.app)
            type(self).refused += 1
        self._arm(min(self.header_timeout_s, OVER_CAP_TIMEOUT_S) if self._over_cap
                  else self.header_timeout_s)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._read_timeout)

    def _disarm(self) -> None:
        if getattr(self, "_read_timer", None) is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timeout(self) -> None:
        self._read_timer = None
        state = self.conn.their_state
        if self.transport.is_closing():
            return
        if state is h11.IDLE or state is h11.SEND_BODY:
            type(self).closed_slow += 1
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self.transport.close()

    def handle_events(self) -> None:
        before = self.conn.their_state
        super().handle_events()
        after = self.conn.their_state
        if before is h11.IDLE and after is h11.SEND_BODY:
            self._arm(self.body_timeout_s)  # headers complete, body to come
        elif after is not h11.IDLE and after is not h11.SEND_BODY:
            self._disarm()  # the whole request is in

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm(self.header_timeout_s)  # the next request's headers

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_protocol(header_timeout_s: float, body_timeout_s: float, max_connections: int
                     ) -> type[GuardedH11Protocol]:
    """A protocol class for `uvicorn.Config(http=...)` with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s,
        "max_connections": max_connections, "closed_slow": 0, "refused": 0})


class RateLimitFilter(logging.Filter):
    """At most `lines` error records (warnings and above, access lines of 4xx/5xx) per
    `interval_s` (other records pass);
    the first record after a window reports how many were suppressed. Within a window, only
    the first record of each message keeps its traceback."""

    def __init__(self, lines: int = 20, interval_s: float = 10.0):
        super().__init__()
        self.lines, self.interval_s = lines, interval_s
        self.window_start, self.count, self.suppressed = 0.0, 0, 0
        self.traced: set[tuple[str, str]] = set()  # (logger, message template) with a traceback
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not _is_error(record):
            return True
        with self.lock:
            now = time.monotonic()
            if now - self.window_start >= self.interval_s:
                if self.suppressed:  # on its own logger: a record's format may need its args
                    summary.warning("suppressed %d %s log records in the last %gs",
                                    self.suppressed, record.name, self.interval_s)
                self.window_start, self.count, self.suppressed = now, 0, 0
                self.traced.clear()
            self.count += 1
            if self.count > self.lines:
                self.suppressed += 1
                return False
            key = (record.name, str(record.msg))
            if record.exc_info and key not in self.traced:
                self.traced.add(key)
            elif record.exc_info:
                record.exc_info, record.exc_text = None, None
                record.msg = f"{record.getMessage()} (traceback suppressed)"
                record.args = ()
            return True


def _is_error(record: logging.LogRecord) -> bool:
    """A warning or error, or an access line of a 4xx/5xx answer (uvicorn's access records
    carry (client, method, path, http_version, status) as args)."""
    if record.levelno >= logging.WARNING:
        return True
    args = record.args
    return (record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5
            and isinstance(args[4], int) and args[4] >= 400)


def limit_error_logs(lines: int, interval_s: float) -> None:
    """A filter on each of the server's loggers (replacing an earlier one): a flood of one
    kind never hides the first error of another."""
    for name in LIMITED_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, RateLimitFilter)]:
            logger.removeFilter(old)
        logger.addFilter(RateLimitFilter(lines, interval_s))
