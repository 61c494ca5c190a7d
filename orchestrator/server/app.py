"""`build_app(orch)`: the pool as one OpenAI-compatible model, over FastAPI.

Endpoints: POST /v1/chat/completions (streamed or not), GET /v1/models, GET /v1/models/{id},
POST /v1/route (routing explanation, no generation), GET /metrics (Prometheus text) and
GET /health (the only route without the API key).

Every chat request goes through one MicroBatcher: requests arriving within `window_s` are
answered by one `complete_batch` call, i.e. one grouped execution (each expert loads once and
generates all the window's prompts as one batch). A streamed request is computed first and then
sent as `chat.completion.chunk` events: the aggregated answer only exists once every chosen
expert has finished, so chunks cannot arrive earlier (serving-behaviours.md 11: stream only
the aggregator's output, after the experts). Errors before the first byte get a real status.

Nothing is created at import time; the batcher lives in the app lifespan, and shutdown drains
it (`drain_timeout_s`): in-flight requests finish, new ones get 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..benchmarks.readers import infer_answer_type
from ..chat import (
    ChatCompletion,
    ChatRequest,
    InvalidRequestError,
    UnknownModelError,
    complete_batch,
    parse_chat_request,
)
from ..errors import ShuttingDownError
from ..registry import ROUTERS
from ..types import Query, Selection
from ..workers.batcher import MicroBatcher
from .metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from .wire import APIError, RequestCancelledError, api_error, read_json, require_object, sse

log = logging.getLogger(__name__)

API_KEY_ENV = "ORCHESTRATOR_API_KEY"
MAX_ROUTE_QUESTIONS = 1024


@dataclass(frozen=True)
class Settings:
    api_key: str | None = None
    window_s: float = 0.02
    max_batch: int = 32
    max_queue: int = 256
    deadline_s: float | None = 300.0
    max_body_bytes: int = 1_000_000
    drain_timeout_s: float = 30.0


class Serving:
    """What the route handlers share (`app.state.serving`): the orchestrator, the batcher and
    the counters. The orchestrator is used by one thread at a time (`lock`)."""

    def __init__(self, orch, settings: Settings, metrics: Metrics):
        self.orch, self.settings, self.metrics = orch, settings, metrics
        self.batcher: MicroBatcher | None = None
        self.draining = False
        self.lock = threading.Lock()
        self.batch_started: float | None = None  # monotonic start of the running batch
        self.created = int(time.time())

    @property
    def model_names(self) -> list[str]:
        return [self.orch.model_name, *self.orch.specs]

    # -- lifetime -----------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self.batcher = MicroBatcher(self.process_batch, window_s=s.window_s, max_batch=s.max_batch,
                                    max_queue=s.max_queue, name=self.orch.model_name)
        self.draining = False

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
        started, deadline = self.batch_started, self.settings.deadline_s
        if started is not None and deadline and time.monotonic() - started > 2 * deadline:
            return "stalled"  # a batch runs far past the request deadline (vllm #17972)
        return "ok"

    # -- work ---------------------------------------------------------------------------------

    def process_batch(self, items: Sequence[ChatRequest], cancelled: Callable[[int], bool]
                      ) -> list[ChatCompletion | Exception]:
        """One grouped execution for the window's requests; requests whose client already left
        are answered with RequestCancelledError and never reach a backend."""
        out: list[ChatCompletion | Exception] = [RequestCancelledError() for _ in items]
        live = [i for i in range(len(items)) if not cancelled(i)]
        if not live:
            return out
        with self.lock:
            self.batch_started = time.monotonic()
            try:
                results = complete_batch(self.orch, [items[i] for i in live])
            finally:
                self.batch_started = None
        for i, result in zip(live, results):
            out[i] = result
        return out

    async def complete(self, chat: ChatRequest, request: Request) -> ChatCompletion:
        """Submit to the batcher while watching the connection: a client that goes away
        cancels its submit, which drops the request from the queue (or marks it cancelled for
        a batch not yet started)."""
        if self.draining or self.batcher is None:
            raise ShuttingDownError(self.orch.model_name)
        submit = asyncio.ensure_future(self.batcher.submit(chat, self.settings.deadline_s))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({submit, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (submit, gone):
                task.cancel()
        if submit.done() and not submit.cancelled():
            return submit.result()
        self.metrics.disconnects += 1
        with contextlib.suppress(BaseException):
            await submit
        raise RequestCancelledError()

    def route(self, queries: list[Query], router: str, k: int) -> list[Selection]:
        with self.lock:
            return self.orch.route_with(queries, router, k)


async def _disconnected(request: Request) -> None:
    """Returns once the client closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def guarded(handler: Callable[[Request], Awaitable[Response]]):
    """Any exception becomes its OpenAI envelope (unexpected ones: a generic 500, logged)."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            return api_error(exc).response()

    return wrapper


async def require_api_key(request: Request) -> None:
    key = request.app.state.serving.settings.api_key
    if not key:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise APIError(401, "Missing API key: send it as 'Authorization: Bearer <key>'.",
                       "authentication_error", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise APIError(401, "Incorrect API key provided.", "authentication_error",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


# -- routes -----------------------------------------------------------------------------------

api = APIRouter(dependencies=[Depends(require_api_key)])


@api.post("/v1/chat/completions")
@guarded
async def chat_completions(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    chat = parse_chat_request(require_object(
        await read_json(request, serving.settings.max_body_bytes)))
    if chat.model not in serving.model_names:  # an allow-list of names, never a path
        raise UnknownModelError(chat.model, serving.model_names)
    completion = await serving.complete(chat, request)
    serving.metrics.count_tokens(completion.model, completion.prompt_tokens,
                                 completion.completion_tokens)
    if not chat.stream:
        return JSONResponse(completion.to_openai())

    async def events():
        for event in sse(completion.chunks()):
            yield event

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@api.get("/v1/models")
@guarded
async def list_models(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    return JSONResponse({"object": "list",
                         "data": [_model_card(serving, m) for m in serving.model_names]})


@api.get("/v1/models/{model_id:path}")
@guarded
async def get_model(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    model = request.path_params["model_id"]
    if model not in serving.model_names:
        raise UnknownModelError(model, serving.model_names)
    return JSONResponse(_model_card(serving, model))


def _model_card(serving: Serving, model: str) -> dict[str, Any]:
    orch = serving.orch
    if model == orch.model_name:
        info = {"kind": "mixture", "experts": list(orch.specs), "k": orch.k,
                "router": orch.config.router, "aggregator": orch.config.aggregator}
    else:
        info = {"kind": "expert", "backend": orch.specs[model].backend}
    return {"id": model, "object": "model", "created": serving.created,
            "owned_by": orch.pool.name, "orchestrator": info}


@api.post("/v1/route")
@guarded
async def route(request: Request) -> Response:
    """Body {"questions": [str, ...]} or {"messages": [...]}, optional "k" and "router": the
    experts, scores, skills and evidence per question; nothing is generated."""
    serving: Serving = request.app.state.serving
    body = require_object(await read_json(request, serving.settings.max_body_bytes))
    questions = _route_questions(serving, body)
    k, router = _route_options(serving, body)
    queries = [Query(id=f"q{i}", question=q, answer_type=infer_answer_type(q, None, ()))
               for i, q in enumerate(questions)]
    selections = await asyncio.to_thread(serving.route, queries, router, k)
    data = [{"object": "route", "index": i, "skills": list(sel.evidence.get("skills", [])),
             "experts": [{"id": e, "score": float(s)} for e, s in zip(sel.experts, sel.scores)],
             "evidence": _json_safe({a: b for a, b in sel.evidence.items() if a != "skills"})}
            for i, sel in enumerate(selections)]
    return JSONResponse({"object": "list", "model": serving.orch.model_name, "router": router,
                         "k": k, "data": data})


def _route_questions(serving: Serving, body: dict[str, Any]) -> list[str]:
    if ("questions" in body) == ("messages" in body):
        raise InvalidRequestError("Send exactly one of 'questions' (a list of strings) or "
                                  "'messages' (an OpenAI chat).", "questions")
    if "messages" in body:
        chat = parse_chat_request({"messages": body["messages"], "model": serving.orch.model_name})
        return [chat.prompt_text()]
    questions = body["questions"]
    if (not isinstance(questions, list) or not 1 <= len(questions) <= MAX_ROUTE_QUESTIONS
            or not all(isinstance(q, str) and q.strip() for q in questions)):
        raise InvalidRequestError(f"'questions' must be a list of 1 to {MAX_ROUTE_QUESTIONS} "
                                  "non-empty strings.", "questions")
    return questions


def _route_options(serving: Serving, body: dict[str, Any]) -> tuple[int, str]:
    orch, size = serving.orch, len(serving.orch.pool.experts)
    k = body.get("k", orch.k)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= size:
        raise InvalidRequestError(f"k must be an integer in 1..{size} (the pool has {size} "
                                  "experts).", "k")
    router = body.get("router") or orch.config.router
    if not isinstance(router, str) or router not in ROUTERS:
        raise InvalidRequestError(f"Unknown router; available: {', '.join(ROUTERS.names())}.",
                                  "router")
    return k, router


def _json_safe(value: Any) -> Any:
    def convert(obj: Any) -> Any:
        return obj.item() if hasattr(obj, "item") else str(obj)  # numpy scalars, paths...

    return json.loads(json.dumps(value, default=convert))


# -- the app ----------------------------------------------------------------------------------

def build_app(orch, *, api_key: str | None = None, window_s: float = 0.02, max_batch: int = 32,
              max_queue: int = 256, deadline_s: float | None = 300.0,
              max_body_bytes: int = 1_000_000, min_experts_ok: int | None = None,
              drain_timeout_s: float = 30.0) -> FastAPI:
    """A FastAPI app serving `orch` (which the caller owns and closes). `api_key` (None: no
    auth) protects every route except /health. `min_experts_ok` overrides the orchestrator's
    setting: fewer experts answering fails a mixture request with 503."""
    if min_experts_ok is not None:
        if min_experts_ok < 1:
            raise ValueError(f"min_experts_ok must be >= 1; got {min_experts_ok}.")
        orch.config = orch.config.model_copy(update={"min_experts_ok": min_experts_ok})
    if max_body_bytes < 1 or window_s < 0 or max_batch < 1 or max_queue < 1:
        raise ValueError(f"build_app needs max_body_bytes, max_batch, max_queue >= 1 and "
                         f"window_s >= 0; got {max_body_bytes}, {max_batch}, {max_queue}, "
                         f"{window_s}.")
    settings = Settings(api_key or None, window_s, max_batch, max_queue, deadline_s,
                        max_body_bytes, drain_timeout_s)
    metrics = Metrics()
    serving = Serving(orch, settings, metrics)

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
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.get("/health")
    async def health() -> Response:
        status = serving.health()
        return JSONResponse({"status": status}, status_code=200 if status == "ok" else 503)

    @app.get("/metrics", dependencies=[Depends(require_api_key)])
    async def prometheus() -> Response:
        return Response(metrics.render(orch, serving.batcher), media_type=CONTENT_TYPE)

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
