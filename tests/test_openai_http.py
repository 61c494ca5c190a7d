"""The openai_http backend against a real HTTP server on a loopback port.

The server is stdlib `ThreadingHTTPServer` speaking the `/v1/chat/completions` JSON shape; each
test scripts its answers with `server.respond = fn(hit_number, body) -> Reply`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from orchestrator import Orchestrator, load_pool
from orchestrator.backends import openai_http
from orchestrator.backends.base import request_seed
from orchestrator.backends.openai_http import OpenAIHTTPBackend
from orchestrator.config import RunConfig
from orchestrator.errors import BackendError, ConfigError
from orchestrator.registry import BACKENDS
from orchestrator.types import ExpertSpec, GenerationRequest, Message, Sampling

from .conftest import write_pool

pytestmark = pytest.mark.timeout(10)


# --- the scripted server ----------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list/str -> JSON; bytes -> sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds the server holds the request before answering


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: dict
    t: float  # time.monotonic() on arrival


def completion(text: str, prompt_tokens: int = 5, completion_tokens: int = 2) -> dict:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def error(status: int, message: str, **extra: Any) -> Reply:
    return Reply(status, {"error": {"message": message, "type": "error", "param": None,
                                    "code": None}}, **extra)


def prompt(body: dict) -> str:
    return body["messages"][-1]["content"]


def echo(n: int, body: dict) -> Reply:
    text = prompt(body)
    return Reply(body=completion(f"  echo {text}\n", len(text), 3))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        fake: FakeOpenAI = self.server.fake  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(raw)
        with fake.lock:
            n = len(fake.hits)
            fake.hits.append(Hit(self.path, dict(self.headers), body, time.monotonic()))
            fake.inflight += 1
            fake.max_inflight = max(fake.max_inflight, fake.inflight)
        try:
            reply = fake.respond(n, body)
            if reply.delay:
                fake.stop.wait(reply.delay)
        finally:
            with fake.lock:  # before answering, so the client cannot have sent its next one yet
                fake.inflight -= 1
        data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler still sleeping for a timed-out client must not hold close

    def handle_error(self, request, client_address) -> None:
        pass  # broken pipes from clients that gave up (timeouts) are expected here


class FakeOpenAI:
    def __init__(self) -> None:
        self.respond: Callable[[int, dict], Reply] = echo
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        self.stop = threading.Event()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.fake = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    fake = FakeOpenAI()
    yield fake
    fake.close()


# --- helpers ----------------------------------------------------------------------------------

FAST = {"backoff_s": 0.0, "max_retries": 2, "timeout_s": 5.0}


def backend_for(server: FakeOpenAI, expert_id: str = "e0", model: str = "tiny", **options):
    backend = OpenAIHTTPBackend()
    spec = ExpertSpec(id=expert_id, backend="openai_http", model=model,
                      options={"base_url": server.url, **FAST, **options})
    backend.load(spec)
    return backend


def reqs(*prompts: str, expert: str = "e0"):
    return [GenerationRequest(expert=expert, messages=(Message("user", p),), query_id=f"q{i}",
                              index=i) for i, p in enumerate(prompts)]


# --- happy path -------------------------------------------------------------------------------


def test_registered_by_name():
    assert BACKENDS.get("openai_http") is OpenAIHTTPBackend


def test_batch_keeps_order_text_and_usage(server):
    # later prompts are answered first: the results must still come back in request order
    server.respond = lambda n, body: Reply(
        body=completion(f" ans-{prompt(body)} ", 10 + int(prompt(body)[1:]), 3),
        delay=0.02 * (5 - int(prompt(body)[1:])),
    )
    backend = backend_for(server, concurrency=8)
    prompts = [f"p{i}" for i in range(6)]
    results = backend.generate(reqs(*prompts))
    assert [r.request.query_id for r in results] == [f"q{i}" for i in range(6)]
    assert [r.text for r in results] == [f"ans-p{i}" for i in range(6)]  # stripped
    assert [r.tokens_in for r in results] == [10 + i for i in range(6)]
    assert all(r.ok and r.tokens_out == 3 for r in results)
    assert len(server.hits) == 6
    assert {h.path for h in server.hits} == {"/v1/chat/completions"}
    assert backend.generate([]) == []


def test_two_experts_interleaved_keep_order(server):
    backend = backend_for(server, "a", remote_model="model-a")
    backend.load(ExpertSpec(id="b", backend="openai_http", model="model-b",
                            options={"base_url": server.url + "/", **FAST}))  # trailing slash ok
    server.respond = lambda n, body: Reply(body=completion(f"{body['model']}:{prompt(body)}"))
    batch = [GenerationRequest(expert=e, messages=(Message("user", f"x{i}"),), index=i)
             for i, e in enumerate(["a", "b", "a", "b", "a"])]
    results = backend.generate(batch)
    assert [r.text for r in results] == [f"model-{r.request.expert}:{r.request.messages[0].content}"
                                         for r in results]
    assert [r.request.index for r in results] == [r.index for r in batch]


def test_sampling_messages_and_extra_body_are_forwarded(server):
    backend = backend_for(server, remote_model="served-name",
                          extra_body={"stop": ["\n\n"], "repetition_penalty": 1.1})
    sampling = Sampling(max_tokens=17, temperature=0.7, top_p=0.9, seed=42)
    request = GenerationRequest(
        expert="e0", sampling=sampling,
        messages=(Message("system", "Be brief."), Message("user", "2+2?")),
    )
    [result] = backend.generate([request])
    assert result.ok, result.error
    body = server.hits[0].body
    assert body["model"] == "served-name"
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "2+2?"}]
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (17, 0.7, 0.9)
    assert body["seed"] == request_seed(42, "e0")  # sampled: the run seed mixed per expert
    assert body["stop"] == ["\n\n"] and body["repetition_penalty"] == 1.1
    assert server.hits[0].headers["Content-Type"] == "application/json"


def test_model_defaults_to_the_experts_model(server):
    backend_for(server, model="my-model").generate(reqs("hi"))
    assert server.hits[0].body["model"] == "my-model"


def test_through_the_executor(server, tmp_path):
    pool = write_pool(tmp_path / "pool.yaml", [
        {"id": "h0", "backend": "openai_http", "model": "m0", "max_tokens": 33,
         "options": {"base_url": server.url, **FAST}},
        {"id": "h1", "backend": "openai_http", "model": "m1",
         "options": {"base_url": server.url, **FAST}},
    ])
    o = Orchestrator(load_pool(pool), RunConfig())
    pairs = [("q0", "h1"), ("q0", "h0"), ("q1", "h1")]
    batch = [GenerationRequest(expert=e, messages=(Message("user", f"prompt {q}"),), query_id=q,
                               index=i) for i, (q, e) in enumerate(pairs)]
    results, stats = o.executor.execute(batch)
    assert [(r.request.query_id, r.request.expert) for r in results] == pairs
    assert all(r.ok for r in results)
    assert [r.text for r in results] == ["echo prompt q0", "echo prompt q0", "echo prompt q1"]
    assert stats.experts["h1"].calls == 2


# --- API key ----------------------------------------------------------------------------------


def test_bearer_key_from_the_named_env_var(server, monkeypatch):
    monkeypatch.setenv("ORCH_TEST_KEY", "sk-test-123")
    backend = backend_for(server, api_key_env="ORCH_TEST_KEY")
    assert backend.generate(reqs("a", "b"))[0].ok
    assert [h.headers["Authorization"] for h in server.hits] == ["Bearer sk-test-123"] * 2


def test_no_key_configured_sends_no_authorization(server):
    backend_for(server).generate(reqs("a"))
    assert "Authorization" not in server.hits[0].headers


@pytest.mark.parametrize("value", [None, ""])
def test_missing_key_env_var_is_a_config_error(server, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("ORCH_TEST_MISSING_KEY", raising=False)
    else:
        monkeypatch.setenv("ORCH_TEST_MISSING_KEY", value)
    spec = ExpertSpec(id="e0", backend="openai_http", model="m",
                      options={"base_url": server.url, "api_key_env": "ORCH_TEST_MISSING_KEY"})
    backend = OpenAIHTTPBackend()
    for call in (backend.check, backend.load):
        with pytest.raises(ConfigError, match=r"'e0'.*'ORCH_TEST_MISSING_KEY'.*not set"):
            call(spec)
    assert not backend.is_loaded("e0") and server.hits == []


def test_unknown_option_is_a_config_error(server):
    spec = ExpertSpec(id="e0", backend="openai_http", model="m",
                      options={"base_url": server.url, "api_key": "sk-inline"})
    with pytest.raises(ConfigError, match="api_key: unknown option"):
        OpenAIHTTPBackend().load(spec)


# --- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_overload_is_retried_then_succeeds(server, status):
    server.respond = lambda n, body: error(status, "busy") if n < 2 else echo(n, body)
    [result] = backend_for(server, max_retries=3).generate(reqs("hello"))
    assert result.ok, result.error
    assert result.text == "echo hello"
    assert len(server.hits) == 3


def test_retry_after_is_honoured_without_jitter_below_it(server, monkeypatch):
    # the lowest jitter draw must not bring the wait under the server's Retry-After
    monkeypatch.setattr(openai_http.random, "random", lambda: 0.0)
    server.respond = lambda n, body: (
        error(429, "slow down", headers={"Retry-After": "0.3"}) if n == 0 else echo(n, body))
    [result] = backend_for(server, backoff_s=0.01, backoff_max_s=5).generate(reqs("x"))
    assert result.ok, result.error
    gap = server.hits[1].t - server.hits[0].t
    assert 0.3 <= gap < 1.0


def test_retry_after_is_capped_by_backoff_max(server):
    server.respond = lambda n, body: (
        error(503, "down", headers={"Retry-After": "60"}) if n == 0 else echo(n, body))
    t0 = time.monotonic()
    [result] = backend_for(server, backoff_max_s=0.05).generate(reqs("x"))
    assert result.ok and time.monotonic() - t0 < 1.0


def test_backoff_doubles_each_retry(server, monkeypatch):
    monkeypatch.setattr(openai_http.random, "random", lambda: 0.5)  # jitter factor 1.0
    server.respond = lambda n, body: error(502, "bad gateway") if n < 2 else echo(n, body)
    [result] = backend_for(server, backoff_s=0.1, backoff_max_s=5).generate(reqs("x"))
    assert result.ok, result.error
    t = [h.t for h in server.hits]
    assert 0.1 <= t[1] - t[0] < 0.18
    assert 0.2 <= t[2] - t[1] < 0.28


def test_400_is_not_retried_and_fails_only_its_item(server):
    def respond(n, body):
        if prompt(body) == "too long":
            return error(400, "This model's maximum context length is 2048 tokens.")
        return echo(n, body)

    server.respond = respond
    results = backend_for(server, max_retries=5).generate(reqs("a", "too long", "c"))
    assert [r.ok for r in results] == [True, False, True]
    assert [r.text for r in (results[0], results[2])] == ["echo a", "echo c"]
    assert "HTTP 400" in results[1].error
    assert "maximum context length is 2048" in results[1].error
    assert "attempts" not in results[1].error
    assert [prompt(h.body) for h in server.hits].count("too long") == 1


@pytest.mark.parametrize("status", [401, 404, 422])
def test_other_4xx_are_not_retried(server, status):
    server.respond = lambda n, body: error(status, "nope")
    [result] = backend_for(server, max_retries=5).generate(reqs("x"))
    assert f"HTTP {status}" in result.error and "nope" in result.error
    assert len(server.hits) == 1


def test_error_body_that_is_not_an_object_stays_a_per_item_error(server):
    # e.g. a proxy answering with a JSON list or string instead of the OpenAI envelope
    def respond(n, body):
        p = prompt(body)
        if p == "list":
            return Reply(422, [{"loc": ["body"], "msg": "field required"}])
        if p == "string":
            return Reply(403, "forbidden by proxy")
        if p == "html":
            return Reply(404, b"<html>Not Found</html>")
        return echo(n, body)

    server.respond = respond
    results = backend_for(server).generate(reqs("list", "ok", "string", "html"))
    assert [r.ok for r in results] == [False, True, False, False]
    assert "HTTP 422" in results[0].error
    assert "HTTP 403" in results[2].error and "forbidden by proxy" in results[2].error
    assert "HTTP 404" in results[3].error and "Not Found" in results[3].error
    assert len(server.hits) == 4


def test_exhausted_retries_on_500_name_the_status(server):
    server.respond = lambda n, body: (
        error(500, "engine crashed") if prompt(body) == "bad" else echo(n, body))
    results = backend_for(server, max_retries=2).generate(reqs("bad", "good"))
    assert results[1].ok and results[1].text == "echo good"
    assert "HTTP 500" in results[0].error
    assert "after 3 attempts" in results[0].error and "engine crashed" in results[0].error
    assert [prompt(h.body) for h in server.hits].count("bad") == 3


def test_malformed_success_bodies_are_per_item_errors(server):
    def respond(n, body):
        p = prompt(body)
        if p == "no-choices":
            return Reply(body={"object": "chat.completion", "choices": []})
        if p == "not-json":
            return Reply(body=b"this is not json")
        if p == "parts":
            reply = completion("x")
            reply["choices"][0]["message"]["content"] = [{"type": "text", "text": "x"}]
            return Reply(body=reply)
        if p == "no-usage":
            return Reply(body={**completion("fine"), "usage": None})
        if p == "odd-usage":
            return Reply(body={**completion("fine"), "usage": "n/a"})
        return echo(n, body)

    server.respond = respond
    prompts = ("no-choices", "not-json", "parts", "no-usage", "odd-usage", "ok")
    results = backend_for(server).generate(reqs(*prompts))
    assert [r.ok for r in results] == [False, False, False, True, True, True]
    assert all("bad response" in r.error for r in results[:3])
    assert "content is a list" in results[2].error
    assert all((r.text, r.tokens_in, r.tokens_out) == ("fine", 0, 0) for r in results[3:5])
    assert len(server.hits) == 6  # a malformed 200 is not retried


def test_timeout_is_retried_then_succeeds(server):
    server.respond = lambda n, body: Reply(body=completion("late"), delay=1.0) if n == 0 \
        else echo(n, body)
    t0 = time.monotonic()
    [result] = backend_for(server, timeout_s=0.2, max_retries=2).generate(reqs("x"))
    assert result.ok and result.text == "echo x"
    assert len(server.hits) == 2
    assert time.monotonic() - t0 < 0.9  # did not wait for the slow answer


def test_timeout_exhausted_is_a_per_item_error(server):
    server.respond = lambda n, body: (
        Reply(body=completion("late"), delay=1.0) if prompt(body) == "slow" else echo(n, body))
    t0 = time.monotonic()
    results = backend_for(server, timeout_s=0.15, max_retries=1).generate(reqs("slow", "fast"))
    assert results[1].ok and results[1].text == "echo fast"
    assert "ReadTimeout" in results[0].error and "after 2 attempts" in results[0].error
    assert "no answer within timeout_s=0.15" in results[0].error
    assert [prompt(h.body) for h in server.hits].count("slow") == 2
    assert time.monotonic() - t0 < 0.9


def test_unreachable_server_is_a_per_item_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIHTTPBackend()
    backend.load(ExpertSpec(id="e0", backend="openai_http", model="m", options={
        "base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 1, "backoff_s": 0}))
    results = backend.generate(reqs("a", "b"))
    assert all(not r.ok and "ConnectError" in r.error and "after 2 attempts" in r.error
               for r in results)


# --- concurrency ------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_limit_is_respected(server, limit):
    server.respond = lambda n, body: Reply(body=completion("ok"), delay=0.05)
    results = backend_for(server, concurrency=limit).generate(reqs(*[f"p{i}" for i in range(8)]))
    assert all(r.ok for r in results)
    assert len(server.hits) == 8
    assert server.max_inflight <= limit
    if limit > 1:
        assert server.max_inflight > 1  # the batch really runs in parallel


# --- event loops ------------------------------------------------------------------------------


def test_generate_from_inside_a_running_event_loop(server):
    backend = backend_for(server)

    async def handler():
        asyncio.get_running_loop()  # as in an async server's request handler
        return backend.generate(reqs("a", "b"))

    results = asyncio.run(handler())
    assert [r.text for r in results] == ["echo a", "echo b"]


def test_errors_raised_inside_a_running_loop_reach_the_caller(server):
    backend = backend_for(server)

    async def handler():
        return backend.generate(reqs("a", expert="not-loaded"))

    with pytest.raises(BackendError, match="'not-loaded' is not loaded"):
        asyncio.run(handler())


def test_agenerate_can_be_awaited(server):
    backend = backend_for(server)
    results = asyncio.run(backend.agenerate(reqs("a", "b", "c")))
    assert [r.text for r in results] == ["echo a", "echo b", "echo c"]


def test_release_forgets_the_expert(server):
    backend = backend_for(server)
    backend.release("e0")
    with pytest.raises(BackendError, match="call load"):
        backend.generate(reqs("a"))


def test_an_adapter_is_requested_by_its_served_name(server):
    backend = OpenAIHTTPBackend()
    spec = ExpertSpec(id="e0", backend="openai_http", model="base-model", adapter="math-lora",
                      options={"base_url": server.url, **FAST})
    backend.load(spec)
    backend.generate(reqs("hi"))
    assert server.hits[0].body["model"] == "math-lora"  # vLLM names LoRA adapters as models
    assert "model=math-lora" in backend.check(spec)
