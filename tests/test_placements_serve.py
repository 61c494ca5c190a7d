"""A hung upstream expert does not delay requests that do not need it: through the
micro-batcher with concurrent batches (workers/batcher.py) over the real chat path, and
through `orchestrate serve` once its batcher runs batches concurrently."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from orchestrator.chat import ChatCall, complete_calls
from orchestrator.types import Message
from orchestrator.workers.batcher import MicroBatcher

from . import test_placements
from .test_placements import http_orch

pytestmark = pytest.mark.timeout(30)
servers = test_placements.servers  # the fixture: a healthy and a hung loopback server


def chat(model: str, text: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8}


def call(model: str, text: str) -> ChatCall:
    return ChatCall((Message("user", text),), model=model, max_tokens=8)


async def healthy_latency(batcher: MicroBatcher, with_hung: bool) -> tuple[float, bool]:
    """Seconds until two requests to the healthy expert, sent 0.2 s after one to the hung
    expert (or alone), are answered, and whether the hung request had failed by then."""
    hung = asyncio.ensure_future(batcher.submit(call("hung", "stuck?"))) if with_hung else None
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    answers = await asyncio.gather(*(batcher.submit(call("healthy", f"hi {i}")) for i in (0, 1)))
    elapsed = time.perf_counter() - t0
    hung_first = hung is not None and hung.done()
    assert all("healthy-model@" in a.content for a in answers)
    if hung is not None:
        with pytest.raises(Exception, match="experts answered"):
            await hung
    return elapsed, hung_first


@pytest.mark.parametrize("concurrency", [4, 1])
def test_hung_expert_and_batcher_concurrency(tmp_path, servers, concurrency):
    o = http_orch(tmp_path, *servers)

    async def main():
        async with MicroBatcher(lambda items: complete_calls(o, items), window_s=0.01,
                                concurrency=concurrency) as batcher:
            alone, _ = await healthy_latency(batcher, with_hung=False)
            beside, hung_first = await healthy_latency(batcher, with_hung=True)
        return alone, beside, hung_first

    alone, beside, hung_first = asyncio.run(main())
    assert alone < 1.0
    if concurrency > 1:
        assert beside < 1.0 and not hung_first, (alone, beside)  # nominal 0.03 s
    else:  # one batch at a time: the healthy requests wait for the hung one's timeout (1.5 s)
        assert hung_first and beside > 0.8, (alone, beside)
    o.close()


def test_hung_expert_does_not_delay_orchestrate_serve(tmp_path, servers):
    from .test_server import live

    o = http_orch(tmp_path, *servers)
    with live(o) as s:
        assert s.serving.batcher.concurrency > 1  # the server's default
        hung = threading.Thread(target=lambda: httpx.post(
            s.url + "/v1/chat/completions", json=chat("hung", "stuck?"), timeout=10))
        hung.start()
        time.sleep(0.3)
        t0 = time.perf_counter()
        for i in range(2):
            r = httpx.post(s.url + "/v1/chat/completions", json=chat("healthy", f"hi {i}"),
                           timeout=10)
            assert r.status_code == 200, r.text
        assert time.perf_counter() - t0 < 1.0
        hung.join(10)
