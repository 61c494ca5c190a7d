"""Prometheus text exposition (format 0.0.4) of the server, written by hand: request counts by
route and status, a latency histogram, completion tokens, per-expert calls/loads/tokens from
`orch.totals`, and the micro-batcher's queue depth, batches and rejections."""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ROUTES = ("/v1/chat/completions", "/v1/models", "/v1/route", "/health", "/metrics")


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: dict[str, Any]) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in pairs.items()) + "}" if pairs else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """Counters updated on the event loop; `render` reads the orchestrator and batcher too."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()  # (route, status)
        self.latency: dict[str, list[int]] = {}  # route -> counts per bucket (+Inf last)
        self.latency_sum: Counter[str] = Counter()
        self.tokens: Counter[tuple[str, str]] = Counter()  # (model, prompt|completion)
        self.disconnects = 0

    def observe(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"
        self.requests[(route, status)] += 1
        counts = self.latency.setdefault(route, [0] * (len(BUCKETS) + 1))
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum[route] += seconds

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        self.tokens[(model, "prompt")] += prompt
        self.tokens[(model, "completion")] += completion

    def render(self, orch, batcher) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_: str, samples: Iterable[tuple[dict, float]],
                   suffix: str = "") -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{suffix}{_labels(lb)} {_number(v)}" for lb, v in samples)

        family("orchestrator_http_requests_total", "counter", "HTTP requests by route and status.",
               [({"route": r, "code": c}, n) for (r, c), n in sorted(self.requests.items())])
        out.append("# HELP orchestrator_http_request_duration_seconds Request latency.")
        out.append("# TYPE orchestrator_http_request_duration_seconds histogram")
        name = "orchestrator_http_request_duration_seconds"
        for route, counts in sorted(self.latency.items()):
            total = 0
            for bound, n in zip((*BUCKETS, float("inf")), counts):
                total += n
                le = "+Inf" if bound == float("inf") else _number(bound)
                out.append(f"{name}_bucket{_labels({'route': route, 'le': le})} {total}")
            out.append(f"{name}_sum{_labels({'route': route})} {self.latency_sum[route]!r}")
            out.append(f"{name}_count{_labels({'route': route})} {total}")
        family("orchestrator_completion_tokens_total", "counter", "Tokens of served completions.",
               [({"model": m, "kind": k}, n) for (m, k), n in sorted(self.tokens.items())])
        family("orchestrator_client_disconnects_total", "counter",
               "Requests whose client went away before their answer.", [({}, self.disconnects)])

        experts = _snapshot(lambda: sorted(orch.totals.experts.items()))
        for field, help_ in (("calls", "Generations per expert."), ("loads", "Model loads."),
                             ("errors", "Failed generations."),
                             ("tokens_in", "Prompt tokens per expert."),
                             ("tokens_out", "Generated tokens per expert."),
                             ("generate_s", "Seconds spent generating.")):
            metric = f"orchestrator_expert_{field.removesuffix('_s')}"
            metric += "_seconds_total" if field.endswith("_s") else "_total"
            family(metric, "counter", help_, [({"expert": e}, getattr(s, field)) for e, s in experts])
        family("orchestrator_experts_resident", "gauge", "Experts loaded now.",
               [({}, len(orch.residency.resident))])

        family("orchestrator_queue_depth", "gauge", "Requests waiting for a batch.",
               [({}, batcher.queue_depth if batcher else 0)])
        family("orchestrator_in_flight", "gauge", "Requests in the running batch.",
               [({}, batcher.in_flight if batcher else 0)])
        for attr, help_ in (("batches", "Batches run."), ("items_processed", "Requests batched."),
                            ("rejections", "Requests refused because the queue was full."),
                            ("cancellations", "Requests cancelled while queued or running."),
                            ("deadline_exceeded", "Requests that missed their deadline.")):
            family(f"orchestrator_batcher_{attr}_total", "counter", help_,
                   [({}, getattr(batcher, attr) if batcher else 0)])
        return "\n".join(out) + "\n"


def _snapshot(read: Callable[[], list], tries: int = 5) -> list:
    """The worker thread may grow a dict while we read it; retry instead of locking the batch."""
    for _ in range(tries):
        try:
            return read()
        except RuntimeError:  # dictionary changed size during iteration
            time.sleep(0.001)
    return []


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
