"""A server that bad clients cannot take down (issue 12, item 7), each fault on loopback with a
bounded number of connections and a bounded time: slow headers and bodies are timed out, the
connection cap answers 503, error logs are rate-limited, shutdown past the graceful timeout
answers the envelope's 503, an unkeyed server refuses foreign Host/Origin, and a lone
surrogate is a 400."""

from __future__ import annotations

import json
import logging
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import orchestrator.server.app as app_module
from orchestrator.server.limits import RateLimitFilter
from orchestrator.server.settings import Limits

from .test_server import KEY, USER, error_of, hold, live, make_orch, until


def port_of(s) -> int:
    return int(s.url.rsplit(":", 1)[1])


def connect(s, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port_of(s)), timeout=5)
    if data:
        sock.sendall(data)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes the connection (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def response_of(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    sock.settimeout(5)
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_slow_headers_and_slow_bodies_are_closed_and_health_still_answers(tmp_path):
    limits = Limits(header_timeout_s=0.5, body_timeout_s=0.5)
    with live(make_orch(tmp_path), limits=limits) as s:
        start = time.monotonic()
        slow = [connect(s, b"GET /health HTTP/1.1\r\nHost: 127") for _ in range(30)]
        body = json.dumps({"messages": USER}).encode()
        slow_body = [connect(s, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                + b"Content-Type: application/json\r\n"
                                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
                     for _ in range(5)]
        assert httpx.get(s.url + "/health", timeout=5).status_code == 200  # not starved
        assert all(closed_within(sock, 3) for sock in slow + slow_body)
        elapsed = time.monotonic() - start
        assert 0.4 < elapsed < 4
        for sock in slow + slow_body:
            sock.close()
        assert s.serving.protocol.closed_slow == 35
        until(lambda: len(s.server.server_state.connections) == 0)
        assert s.backend.history == []  # no partial body reached an expert
        metrics = httpx.get(s.url + "/metrics", timeout=5).text
        assert "orchestrator_connections_timed_out_total 35.0" in metrics


def test_a_keep_alive_connection_is_timed_out_on_its_next_headers(tmp_path):
    with live(make_orch(tmp_path), limits=Limits(header_timeout_s=0.5, keep_alive_s=30)) as s:
        sock = connect(s, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the next request, never finished
        assert closed_within(sock, 3)
        sock.close()


def test_beyond_the_connection_cap_new_connections_get_the_503_envelope(tmp_path):
    limits = Limits(max_connections=5, header_timeout_s=5)
    with live(make_orch(tmp_path), limits=limits) as s:
        held = [connect(s, b"GET /health HTTP/1.1\r\nHost: 127") for _ in range(5)]
        until(lambda: len(s.server.server_state.connections) == 5)
        extra = [connect(s, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                 for _ in range(10)]
        for sock in extra:
            status, headers, body = response_of(sock)  # then closed by the server
            assert status == 503 and headers["connection"] == "close"
            assert headers["retry-after"] == "1" and len(headers["x-request-id"]) == 32
            assert json.loads(body)["error"]["code"] == "too_many_connections"
            sock.close()
        probe = connect(s, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert probe.recv(4096).startswith(b"HTTP/1.1 200")  # a probe is still answered
        probe.close()
        silent = connect(s)  # over the cap and silent: closed after at most 1 s
        assert closed_within(silent, 3)
        silent.close()
        for sock in held:
            sock.close()
        until(lambda: len(s.server.server_state.connections) == 0)
        assert httpx.get(s.url + "/health", timeout=5).status_code == 200
        assert s.serving.protocol.refused == 12


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def collect():
    handlers = []

    def attach(name: str) -> Collect:
        handler = Collect()
        logging.getLogger(name).addHandler(handler)
        handlers.append((name, handler))
        return handler

    yield attach
    for name, handler in handlers:
        logging.getLogger(name).removeHandler(handler)


def test_a_flood_of_bad_requests_logs_a_bounded_number_of_lines(tmp_path, collect, monkeypatch):
    limits = Limits(error_log_lines=5, error_log_interval_s=60)
    with live(make_orch(tmp_path), limits=limits) as s:
        uvicorn_log = collect("uvicorn.error")
        for _ in range(100):  # malformed HTTP: uvicorn warns once per request
            with connect(s, b"NOT HTTP AT ALL\r\n\r\n") as sock:
                closed_within(sock, 3)
        assert 1 <= len(uvicorn_log.records) <= 5

        app_log = collect("orchestrator.server.envelope")

        def broken(*args, **kwargs):
            raise RuntimeError("boom")

        monkeypatch.setattr(app_module, "complete_calls", broken)
        with httpx.Client(base_url=s.url, timeout=10) as client:
            statuses = {client.post("/v1/chat/completions", json={"messages": USER}).status_code
                        for _ in range(30)}
        assert statuses == {500}
        errors = [r for r in app_log.records if r.levelno >= logging.ERROR]
        assert 1 <= len(errors) <= 5
        assert sum(r.exc_info is not None for r in errors) == 1  # one traceback, not 30


def test_the_rate_limit_reports_what_it_suppressed():
    log = logging.getLogger("test.ratelimit")
    handler, limit = Collect(), RateLimitFilter(lines=3, interval_s=0.2)
    log.addHandler(handler)
    logging.getLogger("orchestrator.server.limits").addHandler(handler)
    log.addFilter(limit)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        for i in range(50):
            log.warning("bad request %d", i)
        log.info("info passes")
        time.sleep(0.25)
        log.warning("later")
    finally:
        log.removeHandler(handler)
        logging.getLogger("orchestrator.server.limits").removeHandler(handler)
        log.removeFilter(limit)
    messages = [r.getMessage() for r in handler.records]
    assert messages[:3] == ["bad request 0", "bad request 1", "bad request 2"]
    assert messages[3] == "info passes"
    assert messages[4:] == ["suppressed 47 test.ratelimit log records in the last 0.2s", "later"]


def test_shutdown_past_the_graceful_timeout_answers_503_shutting_down(tmp_path):
    with live(make_orch(tmp_path), graceful_timeout_s=1) as s, ThreadPoolExecutor(1) as pool:
        first = hold(s, pool)
        until(lambda: s.serving.batcher.in_flight == 1)
        s.server.handle_exit(signal.SIGTERM, None)
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                             ("POST", "/v1/route"), ("GET", "/nothing")):
            try:
                response = httpx.request(method, s.url + path, json={"messages": USER}, timeout=5)
            except httpx.ConnectError:
                break  # uvicorn closed the listening socket: nothing is answered, not a 500
            assert response.status_code == 503 and error_of(response)["code"] == "shutting_down"
        response = first.result(timeout=10)  # cancelled by uvicorn after 1 s
        assert response.status_code == 503, response.text
        assert error_of(response)["code"] == "shutting_down"
        assert response.headers["content-type"] == "application/json"
        s.backend.gate.set()


@pytest.mark.parametrize("headers, status, code", [
    ({"Host": "evil.example"}, 421, "host_not_allowed"),
    ({"Host": "evil.example:8000"}, 421, "host_not_allowed"),
    ({"Host": "127.0.0.1.evil.example"}, 421, "host_not_allowed"),
    ({"Origin": "http://evil.example"}, 403, "origin_not_allowed"),
    ({"Origin": "null"}, 403, "origin_not_allowed"),
    ({"Host": "localhost:1234"}, 200, None),
    ({"Host": "[::1]:1234", "Origin": "http://localhost:3000"}, 200, None),
    ({"Host": "my.lan:80", "Origin": "https://my.lan"}, 200, None),
])
def test_an_unkeyed_server_answers_only_its_own_host_names(unkeyed, headers, status, code):
    response = httpx.get(unkeyed.url + "/v1/models", headers=headers, timeout=5)
    assert response.status_code == status
    if code:
        assert error_of(response)["code"] == code and "x-request-id" in response.headers
    assert httpx.get(unkeyed.url + "/health", headers=headers, timeout=5).status_code == 200


@pytest.fixture(scope="module")
def unkeyed(tmp_path_factory):
    with live(make_orch(tmp_path_factory.mktemp("unkeyed")), allowed_hosts=["my.lan"]) as s:
        yield s


def test_a_keyed_server_does_not_check_the_host(tmp_path):
    with live(make_orch(tmp_path), api_key=KEY) as s:
        response = httpx.get(s.url + "/v1/models", timeout=5,
                             headers={"Host": "evil.example", "Authorization": f"Bearer {KEY}"})
        assert response.status_code == 200


def test_a_lone_surrogate_is_a_400_not_a_retryable_503(unkeyed):
    body = b'{"model": "orchestrator", "messages": [{"role": "user", "content": "hi \\ud800"}]}'
    response = httpx.post(unkeyed.url + "/v1/chat/completions", content=body, timeout=5,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert error_of(response)["param"] == "messages[0].content"
