"""`/metrics` from `prometheus_client`, one CollectorRegistry per app (two apps in one process
never share counters): request counts by route and status, a latency histogram, served tokens,
and, read at scrape time, per-expert calls/loads/tokens from `orch.totals`, the micro-batcher's
queue and the connection guard's counters; process metrics (CPU, memory, open files) come with
the library's ProcessCollector."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ROUTES = ("/v1/chat/completions", "/v1/models", "/v1/route", "/health", "/metrics", "/version")
EXPERT_FIELDS = (("calls", "Generations per expert."), ("loads", "Model loads."),
                 ("errors", "Failed generations."), ("tokens_in", "Prompt tokens per expert."),
                 ("tokens_out", "Generated tokens per expert."),
                 ("generate_s", "Seconds spent generating."))
BATCHER_FIELDS = (("batches", "Batches run."), ("items_processed", "Requests batched."),
                  ("rejections", "Requests refused because the queue was full."),
                  ("cancellations", "Requests cancelled while queued or running."),
                  ("deadline_exceeded", "Requests that missed their deadline."))


def _snapshot(read: Callable[[], list], tries: int = 5) -> list:
    """The worker thread may grow a dict while we read it; retry instead of locking the batch."""
    for _ in range(tries):
        try:
            return read()
        except RuntimeError:  # dictionary changed size during iteration
            time.sleep(0.001)
    return []


class ServingCollector(Collector):
    """Reads the orchestrator, the batcher and the connection guard when scraped."""

    def __init__(self, serving: Any):
        self.serving = serving

    def collect(self):
        orch, batcher = self.serving.orch, self.serving.batcher
        experts = _snapshot(lambda: sorted(orch.totals.experts.items()))
        for field, help_ in EXPERT_FIELDS:
            name = f"orchestrator_expert_{field.removesuffix('_s')}"
            name += "_seconds" if field.endswith("_s") else ""
            family = CounterMetricFamily(name, help_, labels=["expert"])
            for expert, stats in experts:
                family.add_metric([expert], getattr(stats, field))
            yield family
        yield GaugeMetricFamily("orchestrator_experts_resident", "Experts loaded now.",
                                value=len(orch.residency.resident))
        yield GaugeMetricFamily("orchestrator_queue_depth", "Requests waiting for a batch.",
                                value=batcher.queue_depth if batcher else 0)
        yield GaugeMetricFamily("orchestrator_in_flight", "Requests in the running batch.",
                                value=batcher.in_flight if batcher else 0)
        for field, help_ in BATCHER_FIELDS:
            yield CounterMetricFamily(f"orchestrator_batcher_{field}", help_,
                                      value=getattr(batcher, field) if batcher else 0)
        protocol = self.serving.protocol
        yield CounterMetricFamily("orchestrator_connections_timed_out",
                                  "Connections closed by the header or body read timeout.",
                                  value=protocol.closed_slow if protocol else 0)
        yield CounterMetricFamily("orchestrator_connections_refused",
                                  "Connections answered 503 beyond max_connections.",
                                  value=protocol.refused if protocol else 0)


class Metrics:
    """The app's registry and the counters updated on the event loop."""

    def __init__(self, serving: Any):
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.requests = Counter("orchestrator_http_requests", "HTTP requests by route and status.",
                                ["route", "code"], registry=self.registry)
        self.latency = Histogram("orchestrator_http_request_duration_seconds", "Request latency.",
                                 ["route"], buckets=BUCKETS, registry=self.registry)
        self.tokens = Counter("orchestrator_completion_tokens", "Tokens of served completions.",
                              ["model", "kind"], registry=self.registry)
        self.disconnect_counter = Counter("orchestrator_client_disconnects",
                                          "Requests whose client went away before their answer.",
                                          registry=self.registry)
        self.disconnects = 0
        self.registry.register(ServingCollector(serving))

    def disconnected(self) -> None:
        self.disconnects += 1
        self.disconnect_counter.inc()

    def observe(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES or path.startswith("/v1/models/") else "other"
        route = "/v1/models/{id}" if route.startswith("/v1/models/") else route
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        self.tokens.labels(model, "prompt").inc(prompt)
        self.tokens.labels(model, "completion").inc(completion)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI (it neither buffers streams nor wraps `receive`): status and latency of every
    HTTP request, including the ones that end in an error handler."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe(scope["path"], status, time.perf_counter() - start)
