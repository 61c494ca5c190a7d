"""`build_app(orch)`: the pool as OpenAI-compatible models, over FastAPI.

Endpoints: POST /v1/chat/completions (streamed or not), GET /v1/models, GET /v1/models/{id},
POST /v1/route (routing explanation, no generation), GET /metrics (Prometheus), and, without
the API key, GET /health and GET /version.

Model names: the served name (`--served-model-name`, default `orchestrator`) is the routed
mixture with the server's defaults; each alias is the mixture with its own k/router/aggregator/
mode (settings.py); each expert id asks that expert alone. The request body is read by
`wire.py` into a `ChatCall`; every chat request goes through one MicroBatcher, whose batches
are answered by one `complete_calls` (one grouped execution: each expert loads once and
generates all the window's prompts as one batch). A streamed request is computed first and
then sent as `chat.completion.chunk` events: the aggregated answer exists only once every chosen
expert has finished (serving-behaviours.md 11). Errors before the first byte get a real status.

Nothing is created at import time; the batcher lives in the app lifespan, which also warms the
routers (embedder, annotator, profile) in a thread: /health says 503 `loading` until then, so
the first request after a 200 does not pay the embedder's load. Shutdown drains the batcher
(`drain_timeout_s`): in-flight requests finish, new ones get 503 `shutting_down`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from .. import __version__
from ..benchmarks.readers import infer_answer_type
from ..chat import ChatCall, ChatResult, complete_calls
from ..errors import ConfigError, ShuttingDownError, UnknownModelError
from ..registry import AGGREGATORS, ROUTERS
from ..types import Query, Selection
from ..workers.batcher import MicroBatcher
from . import wire
from .envelope import (
    APIError,
    RequestCancelledError,
    guarded,
    read_json,
    require_api_key,
    require_object,
    sse,
)
from .metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from .middleware import Frontline, HostPolicy
from .route_api import route_api
from .settings import Alias

log = logging.getLogger(__name__)

WARMUP_QUESTION = "What is 2 + 3?"


@dataclass(frozen=True)
class Settings:
    api_key: str | None = None
    window_s: float = 0.02
    max_batch: int = 32
    max_queue: int = 256
    deadline_s: float | None = 300.0
    max_body_bytes: int = 1_000_000
    drain_timeout_s: float = 30.0
    served_model_name: str = "orchestrator"
    aliases: Mapping[str, Alias] = field(default_factory=dict)
    host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    log_requests: bool = False
    concurrency: int = 4  # batches running at once: a hung expert never holds up the others
    request_log: Any = None  # a GenerationStore: each chat request, its routing and answer


class Serving:
    """What the route handlers share (`app.state.serving`): the orchestrator, the batcher,
    the model names and the metrics. Up to `settings.concurrency` batches run at once: the
    pipeline routes one batch at a time (its own lock) and the grouped executor runs each
    placement under its own lock, so a batch waiting on a hung expert holds up only the
    batches that need that expert's placement."""

    def __init__(self, orch, settings: Settings):
        self.orch, self.settings = orch, settings
        self.batcher: MicroBatcher | None = None
        self.draining = False
        self.lock = threading.Lock()  # guards `running`
        self.running: dict[int, float] = {}  # batch id -> monotonic start
        self.created = int(time.time())
        self.warm_state = "loading"  # -> "ok" | "failed"
        self.protocol = None  # the connection guard's class, set by make_server
        self.names: dict[str, wire.Routing] = {settings.served_model_name: wire.Routing()}
        for name, alias in settings.aliases.items():
            self.names[name] = wire.Routing(alias.k, alias.router, alias.aggregator, alias.mode,
                                            escalation=alias.escalation)
        for expert in orch.specs:
            self.names[expert] = wire.Routing(expert=expert)
        self.metrics = Metrics(self)

    # -- lifetime -----------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self.batcher = MicroBatcher(self.process_batch, window_s=s.window_s, max_batch=s.max_batch,
                                    max_queue=s.max_queue, name=s.served_model_name,
                                    concurrency=s.concurrency)
        self.draining = False
        threading.Thread(target=self.warm, name="orchestrator-warmup", daemon=True).start()

    def warm(self) -> None:
        """Route one question with every router a served name uses: loads the profile's
        embedder and annotator before /health says ok."""
        routers = {r.router or self.orch.config.router for r in self.names.values()
                   if r.expert is None}
        query = Query(id="warmup", question=WARMUP_QUESTION,
                      answer_type=infer_answer_type(WARMUP_QUESTION, None, ()))
        try:
            for router in sorted(routers):
                self.orch.route_with([query], router, self.orch.k)
        except Exception:
            log.exception("warming the routers failed; /health reports 'warmup_failed'")
            self.warm_state = "failed"
            return
        self.warm_state = "ok"

    def begin_drain(self) -> None:
        """Refuse new requests (503) and report unhealthy; in-flight requests go on."""
        self.draining = True

    async def stop(self) -> None:
        self.draining = True
        if self.batcher is not None:
            finished = await self.batcher.drain(self.settings.drain_timeout_s)
            if not finished:
                log.warning("requests still running after the drain timeout of %gs were failed",
                            self.settings.drain_timeout_s)
            await self.batcher.close()

    def health(self) -> str:
        if self.batcher is None or self.draining or not self.batcher.accepting:
            return "draining"
        if self.warm_state != "ok":
            return "warmup_failed" if self.warm_state == "failed" else "loading"
        with self.lock:
            started = min(self.running.values(), default=None)
        deadline = self.settings.deadline_s
        if started is not None and deadline and time.monotonic() - started > 2 * deadline:
            return "stalled"  # a batch runs far past the request deadline (vllm #17972)
        return "ok"

    # -- work ---------------------------------------------------------------------------------

    def process_batch(self, items: Sequence[ChatCall], cancelled: Callable[[int], bool]
                      ) -> list[ChatResult | Exception]:
        """One grouped execution for the window's calls; calls whose client already left are
        answered with RequestCancelledError and never reach a backend."""
        out: list[ChatResult | Exception] = [RequestCancelledError() for _ in items]
        live = [i for i in range(len(items)) if not cancelled(i)]
        if not live:
            return out
        key = id(items)
        with self.lock:
            self.running[key] = time.monotonic()
        try:
            results = complete_calls(self.orch, [items[i] for i in live])
        finally:
            with self.lock:
                self.running.pop(key, None)
        for i, result in zip(live, results):
            out[i] = result
        return out

    async def complete(self, call: ChatCall, request: Request) -> ChatResult:
        """Submit to the batcher while watching the connection: a client that goes away
        cancels its submit, which drops the request from the queue (or marks it cancelled for
        a batch not yet started)."""
        if self.draining or self.batcher is None:
            raise ShuttingDownError(self.settings.served_model_name)
        submit = asyncio.ensure_future(self.batcher.submit(call, self.settings.deadline_s))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({submit, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (submit, gone):
                task.cancel()
        if submit.done() and not submit.cancelled():
            return submit.result()
        self.metrics.disconnected()
        with contextlib.suppress(BaseException):
            await submit
        raise RequestCancelledError()

    def route(self, queries: list[Query], router: str, k: int) -> list[Selection]:
        return self.orch.route_with(queries, router, k)


async def _disconnected(request: Request) -> None:
    """Returns once the client closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# -- routes -----------------------------------------------------------------------------------

api = APIRouter(dependencies=[Depends(require_api_key)])


@api.post("/v1/chat/completions")
@guarded
async def chat_completions(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    raw = require_object(await read_json(request, serving.settings.max_body_bytes))
    raw.setdefault("model", serving.settings.served_model_name)
    body = wire.parse_body(raw)
    routing = serving.names.get(body.model)
    if routing is None:  # an allow-list of names, never a path
        raise UnknownModelError(body.model, list(serving.names))
    call = wire.to_call(body, routing)
    started = time.perf_counter()
    try:
        result = await serving.complete(call, request)
    except Exception as exc:
        _record(serving, raw, None, None, str(exc)[:500], time.perf_counter() - started)
        raise
    serving.metrics.count_tokens(body.model, result.prompt_tokens, result.completion_tokens)
    _log_request(serving, request, body, call, result, time.perf_counter() - started)
    _record(serving, raw, wire.completion(result, body.model), result.info, None,
            time.perf_counter() - started)
    if not body.stream:
        return JSONResponse(wire.completion(result, body.model))

    async def events():
        for event in sse(wire.chunks(result, body.model, body.stream_usage)):
            yield event

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _record(serving: Serving, raw: Mapping[str, Any], response, routing, error: str | None,
            seconds: float) -> None:
    """The request in the store's request log (`orchestrate logs`), when one is configured;
    a log that cannot be written costs a warning, never the answer."""
    store = serving.settings.request_log
    if store is None:
        return
    try:
        store.log_request(raw, response, routing=routing, error=error, duration_s=seconds)
    except Exception as exc:  # a full or read-only store must not fail the request
        log.warning("could not log the request in %s: %s", store.path, exc)


def _log_request(serving: Serving, request: Request, body: wire.ChatBody, call: ChatCall,
                 result: ChatResult, seconds: float) -> None:
    level = logging.INFO if serving.settings.log_requests else logging.DEBUG
    if not log.isEnabledFor(level):
        return
    info = result.info
    log.log(level, "chat %s model=%s k=%s router=%s user=%s metadata=%s tokens=%d+%d "
            "finish=%s %.3fs", request.scope.get("state", {}).get("request_id"), body.model,
            info.get("k", call.k), info.get("router", call.router), call.user,
            json.dumps(dict(call.metadata)), result.prompt_tokens, result.completion_tokens,
            result.finish_reason, seconds)


@api.get("/v1/models")
@guarded
async def list_models(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    return JSONResponse({"object": "list",
                         "data": [_model_card(serving, m) for m in serving.names]})


@api.get("/v1/models/{model_id:path}")
@guarded
async def get_model(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    model = request.path_params["model_id"]
    if model not in serving.names:
        raise UnknownModelError(model, list(serving.names))
    return JSONResponse(_model_card(serving, model))


def _model_card(serving: Serving, model: str) -> dict[str, Any]:
    orch, routing = serving.orch, serving.names[model]
    if routing.expert is not None:
        info: dict[str, Any] = {"kind": "expert", "backend": orch.specs[model].backend}
    else:
        info = {"kind": "mixture" if model == serving.settings.served_model_name else "alias",
                "experts": list(orch.specs), "k": routing.k or orch.k,
                "router": routing.router or orch.config.router,
                "aggregator": routing.aggregator or orch.config.aggregator,
                "mode": routing.mode or "chat"}
    return {"id": model, "object": "model", "created": serving.created,
            "owned_by": orch.pool.name, "orchestrator": info}


# -- the app ----------------------------------------------------------------------------------

def check_aliases(orch, aliases: Mapping[str, Alias]) -> None:
    size = len(orch.pool.experts)
    for name, alias in aliases.items():
        if alias.k is not None and alias.k > size:
            raise ConfigError(f"Alias '{name}' has k={alias.k}; the pool has {size} experts.")
        if alias.router is not None and alias.router not in ROUTERS and alias.router != "auto":
            raise ConfigError(f"Alias '{name}': unknown router '{alias.router}'; available: "
                              f"{', '.join(ROUTERS.names())}.")
        if alias.aggregator is not None and alias.aggregator not in AGGREGATORS:
            raise ConfigError(f"Alias '{name}': unknown aggregator '{alias.aggregator}'; "
                              f"available: {', '.join(AGGREGATORS.names())}.")
        if name in orch.specs:
            raise ConfigError(f"Alias '{name}' is also an expert id of the pool; rename it.")


def build_app(orch, *, api_key: str | None = None, window_s: float = 0.02, max_batch: int = 32,
              max_queue: int = 256, deadline_s: float | None = 300.0,
              max_body_bytes: int = 1_000_000, drain_timeout_s: float = 30.0,
              served_model_name: str = "orchestrator", aliases: Mapping[str, Alias] | None = None,
              host: str = "127.0.0.1", allowed_hosts: Sequence[str] = (),
              log_requests: bool = False, concurrency: int = 4,
              request_log: Any = None) -> FastAPI:
    """A FastAPI app serving `orch` (which the caller owns and closes). `api_key` (None: no
    auth, and then only requests addressed to loopback, `host` or `allowed_hosts` are
    answered) protects every route except /health and /version."""
    if max_body_bytes < 1 or window_s < 0 or max_batch < 1 or max_queue < 1:
        raise ValueError(f"build_app needs max_body_bytes, max_batch, max_queue >= 1 and "
                         f"window_s >= 0; got {max_body_bytes}, {max_batch}, {max_queue}, "
                         f"{window_s}.")
    aliases = dict(aliases or {})
    check_aliases(orch, aliases)
    if served_model_name in orch.specs or served_model_name in aliases:
        raise ConfigError(f"The served model name '{served_model_name}' is also an expert id "
                          "or an alias; choose another --served-model-name.")
    settings = Settings(api_key or None, window_s, max_batch, max_queue, deadline_s,
                        max_body_bytes, drain_timeout_s, served_model_name, aliases, host,
                        tuple(allowed_hosts), log_requests, concurrency, request_log)
    serving = Serving(orch, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        serving.start()
        try:
            yield
        finally:
            await serving.stop()

    app = FastAPI(title="orchestrator", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # every route but /health needs the key: no open docs
    app.state.serving = serving
    app.include_router(api)
    app.include_router(route_api)
    app.add_middleware(MetricsMiddleware, metrics=serving.metrics)
    app.add_middleware(Frontline, policy=HostPolicy(host, allowed_hosts),
                       keyed=lambda: bool(settings.api_key), draining=lambda: serving.draining)

    @app.get("/health")
    async def health() -> Response:
        status = serving.health()
        return JSONResponse({"status": status}, status_code=200 if status == "ok" else 503)

    @app.get("/version")
    async def version() -> Response:
        return JSONResponse({"version": __version__})

    @app.get("/metrics", dependencies=[Depends(require_api_key)])
    async def prometheus() -> Response:
        return Response(serving.metrics.render(), media_type=CONTENT_TYPE)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = "No such route." if exc.status_code == 404 else str(exc.detail)
        return APIError(exc.status_code, message, param=None, code=code,
                        headers=dict(exc.headers or {})).response()

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        return APIError(400, "The request is malformed.").response()

    return app
