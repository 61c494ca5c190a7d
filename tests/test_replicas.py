"""openai_http replicas against real loopback servers: spread by outstanding work, failover
with cooldown on connection errors, timeouts and 5xx (never on other 4xx), a health probe
before a cooled-down replica takes traffic again, and a replica killed mid-run."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from orchestrator import Orchestrator, load_pool
from orchestrator.backends.openai_http import OpenAIHTTPBackend
from orchestrator.config import RunConfig
from orchestrator.errors import ConfigError
from orchestrator.types import ExpertSpec, GenerationRequest, Message

from .conftest import write_pool
from .openai_standin import StandIn, spawn

pytestmark = pytest.mark.timeout(30)
FAST = {"backoff_s": 0.0, "max_retries": 2, "timeout_s": 5.0}


@pytest.fixture
def pair():
    a, b = StandIn("m").start(), StandIn("m").start()
    yield a, b
    a.close()
    b.close()


def backend(urls, expert_id="e0", **options):
    be = OpenAIHTTPBackend()
    be.load(ExpertSpec(id=expert_id, backend="openai_http", model="m",
                       options={"base_url": urls, **FAST, **options}))
    return be


def reqs(n, expert="e0"):
    return [GenerationRequest(expert=expert, messages=(Message("user", f"p{i}"),), index=i)
            for i in range(n)]


def chats(server: StandIn) -> int:
    return sum(1 for method, path in server.log if method == "POST")


def test_requests_spread_over_replicas(pair):
    a, b = pair
    a.engine.latency = b.engine.latency = 0.02
    results = backend([a.url, b.url], concurrency=4).generate(reqs(16))
    assert all(r.ok for r in results)
    assert [r.text.split(": ")[1] for r in results] == [f"p{i}" for i in range(16)]
    assert chats(a) + chats(b) == 16 and abs(chats(a) - chats(b)) <= 2


def test_5xx_fails_over_and_cools_the_replica_down(pair):
    a, b = pair
    a.fail_status = 503
    be = backend([a.url, b.url], concurrency=1)
    results = be.generate(reqs(6))
    assert all(r.ok for r in results) and all(f"@{b.port}" in r.text for r in results)
    assert chats(a) == 1  # cooled down after its first failure: no more traffic
    assert be.take_failovers("e0") == 1 and be.take_failovers("e0") == 0


def test_a_4xx_neither_fails_over_nor_cools_down(pair):
    a, b = pair
    be = OpenAIHTTPBackend()
    be.load(ExpertSpec(id="x", backend="openai_http", model="not-served",
                       options={"base_url": [a.url, b.url], **FAST, "concurrency": 1}))
    [result] = be.generate(reqs(1, "x"))
    assert "HTTP 404" in result.error and "does not exist" in result.error
    assert chats(a) + chats(b) == 1 and be.take_failovers("x") == 0
    assert all(r.healthy(time.monotonic()) for r in be.replicas.group([a.url, b.url]))


def test_cooled_down_replica_is_probed_before_traffic(pair):
    a, b = pair
    a.fail_status = 500
    be = backend([a.url, b.url], concurrency=1, cooldown_s=0.2)
    assert all(r.ok for r in be.generate(reqs(2)))
    a.fail_status = None
    time.sleep(0.25)
    a.log.clear()
    assert all(r.ok for r in be.generate(reqs(4)))
    assert a.log[0] == ("GET", "/v1/models")  # the probe, then real requests
    assert ("POST", "/v1/chat/completions") in a.log[1:]


def test_all_replicas_down_fails_with_the_last_error(pair):
    a, b = pair
    a.fail_status = b.fail_status = 502
    [result] = backend([a.url, b.url], max_retries=1).generate(reqs(1))
    assert "HTTP 502" in result.error and "attempts" in result.error


def test_hung_replica_times_out_once_then_traffic_avoids_it():
    hung, ok = StandIn("m", hang=True).start(), StandIn("m").start()
    try:
        be = backend([hung.url, ok.url], concurrency=1, timeout_s=0.3)
        t0 = time.perf_counter()
        results = be.generate(reqs(5))
        assert all(r.ok for r in results) and time.perf_counter() - t0 < 2.0
        assert chats(hung) == 1 and be.take_failovers("e0") == 1
    finally:
        hung.close()
        ok.close()


def test_replica_urls_are_validated():
    for bad in ([], ["http://x/v1", "http://x/v1"]):
        with pytest.raises(ConfigError, match="base_url"):
            backend(bad)


def test_replica_killed_mid_run_loses_nothing(tmp_path):
    procs = [spawn("m", "--batch-latency-s", "0.05") for _ in range(2)]
    try:
        path = write_pool(tmp_path / "pool.yaml", [
            {"id": "r", "backend": "openai_http", "model": "m",
             "options": {"base_url": [url for _, url in procs], **FAST, "concurrency": 4}}])
        o = Orchestrator(load_pool(path), RunConfig(batch_size=8))
        victim = procs[0][0]
        threading.Timer(0.2, os.kill, args=(victim.pid, signal.SIGKILL)).start()
        batch = [GenerationRequest(expert="r", messages=(Message("user", f"p{i}"),),
                                   query_id=f"q{i}", index=i) for i in range(64)]
        results, stats = o.executor.execute(batch)
        assert victim.wait(5) == -signal.SIGKILL
        assert [r.request.index for r in results] == list(range(64))
        assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
        assert stats.experts["r"].failovers >= 1 and stats.failovers_total >= 1
        o.close()
    finally:
        for proc, _ in procs:
            proc.kill()
            proc.wait(5)
