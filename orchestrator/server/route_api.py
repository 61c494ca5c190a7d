"""POST /v1/route: the routing explanation of questions (experts, scores, skills, evidence),
with optional `k` and `router`; nothing is generated."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response

from ..benchmarks.readers import infer_answer_type
from ..errors import InvalidRequestError
from ..registry import ROUTERS
from ..types import Query
from . import wire
from .envelope import guarded, read_json, require_api_key, require_object

MAX_ROUTE_QUESTIONS = 1024

route_api = APIRouter(dependencies=[Depends(require_api_key)])


@route_api.post("/v1/route")
@guarded
async def route(request: Request) -> Response:
    """Body {"questions": [str, ...]} or {"messages": [...]}, optional "k" and "router": the
    experts, scores, skills and evidence per question; nothing is generated."""
    serving = request.app.state.serving
    body = require_object(await read_json(request, serving.settings.max_body_bytes))
    questions = _route_questions(body)
    k, router = _route_options(serving, body)
    queries = [Query(id=f"q{i}", question=q, answer_type=infer_answer_type(q, None, ()))
               for i, q in enumerate(questions)]
    selections = await asyncio.to_thread(serving.route, queries, router, k)
    data = [{"object": "route", "index": i, "skills": list(sel.evidence.get("skills", [])),
             "experts": [{"id": e, "score": float(s)} for e, s in zip(sel.experts, sel.scores)],
             "evidence": _json_safe({a: b for a, b in sel.evidence.items() if a != "skills"})}
            for i, sel in enumerate(selections)]
    return JSONResponse({"object": "list", "model": serving.settings.served_model_name,
                         "router": router, "k": k, "data": data})


def _route_questions(body: dict[str, Any]) -> list[str]:
    if ("questions" in body) == ("messages" in body):
        raise InvalidRequestError("Send exactly one of 'questions' (a list of strings) or "
                                  "'messages' (an OpenAI chat).", "questions")
    if "messages" in body:
        if not isinstance(body["messages"], list) or not body["messages"]:
            raise InvalidRequestError("'messages' must be a non-empty list.", "messages")
        messages = wire.parse_messages(body["messages"])
        return [next(m.content for m in reversed(messages) if m.role == "user")]
    questions = body["questions"]
    if (not isinstance(questions, list) or not 1 <= len(questions) <= MAX_ROUTE_QUESTIONS
            or not all(isinstance(q, str) and q.strip() for q in questions)):
        raise InvalidRequestError(f"'questions' must be a list of 1 to {MAX_ROUTE_QUESTIONS} "
                                  "non-empty strings.", "questions")
    return questions


def _route_options(serving, body: dict[str, Any]) -> tuple[int, str]:
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
